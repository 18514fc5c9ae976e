"""How the ``inductor`` backend cuts a tile's keys into chunks: as few chunks as the chunk width
allows, with the keys every mask rule allows to all of the tile's rows (``full``) in chunks of
their own where that costs no extra chunk, run by a program compiled without the rules."""
from __future__ import annotations


def varied(tiles) -> bool:
    """Whether the tiles' chunks have more than one width (the key dimension is then compiled as dynamic)."""
    return len({j1 - j0 for _, _, _, c in tiles for j0, j1, _ in c}) > 1


def cut(lo: int, hi: int, flo: int, fhi: int, chunk: int) -> list:
    """Keys ``[lo, hi)`` as ``[(j0, j1, full)]``: as few chunks of at most ``chunk`` keys as an even
    cut needs, and where that many suffice, the keys ``[flo, fhi)`` (allowed to every row) in
    chunks of their own, marked full: the rest go to the chunks beside them where those have room.
    Otherwise the even cut, its chunks marked full where they fall inside ``[flo, fhi)``."""
    if hi <= lo:
        return []
    n = -(-(hi - lo) // chunk)
    flo, fhi = max(flo, lo), min(fhi, hi)
    if fhi > flo:
        a, b = flo - lo, hi - fhi
        na, nb = -(-a // chunk), -(-b // chunk)
        extra = (fhi - flo) - (n - na - nb) * chunk  # full keys that do not fit the chunks left for them
        if n - na - nb >= 1 and extra <= (na * chunk - a) + (nb * chunk - b):
            right = min(max(extra, 0), nb * chunk - b)
            flo, fhi = flo + max(extra, 0) - right, fhi - right
            return [c for j0, j1, full in ((lo, flo, False), (flo, fhi, True), (fhi, hi, False))
                    for c in _even(j0, j1, chunk, full)]
    full = fhi > flo
    return [(j0, j1, full and flo <= j0 and j1 <= fhi) for j0, j1, _ in _even(lo, hi, chunk, False)]


def _even(lo: int, hi: int, chunk: int, full: bool) -> list:
    """``[lo, hi)`` in the fewest chunks of at most ``chunk`` keys, of (nearly) equal widths."""
    if hi <= lo:
        return []
    size = -(-(hi - lo) // -(-(hi - lo) // chunk))
    return [(j, min(hi, j + size), full) for j in range(lo, hi, size)]


def full_cut(call, tiles: list, fits: int) -> list:
    """``tiles`` (``[(i0, i1, skip, chunks)]``) with each one's keys cut again by :func:`cut` at the
    edges of the keys every rule allows to all its rows (``call.full_span``), in chunks no wider
    than the widest already there or than ``fits`` (the most keys a tile's budget holds): the
    same number of chunks."""
    widest = max((j1 - j0 for *_, c in tiles for j0, j1, _ in c), default=1)
    cap = max(widest, fits)
    return [(i0, i1, skip, cut(c[0][0], c[-1][1], *call.full_span(i0, i1), cap) if c else c)
            for i0, i1, skip, c in tiles]


def full_key(key: tuple) -> tuple:
    """The program key of a chunk every rule allows whole: no causal, window or mask rule."""
    return key[:2] + (False, False) + key[4:5] + (None,) + key[6:]
