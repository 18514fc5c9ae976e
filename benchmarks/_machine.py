"""What every benchmark's results file shares: the machine, the date, the command, an atomic write.

    from _machine import RESULTS, results_path, side_file, write_results

    out = results_path(args.out)                           # its folder created
    write_results(out, "Title", body_lines, data={...})   # out.md, and out.json with data

Each results file starts the same way::

    # Title

    - Machine: <CPU>, <n> cores visible, torch <version> (<threads> threads), Python <version>
    - Date: YYYY-MM-DD
    - Command: `python benchmarks/<script>.py <arguments, without --out>`

then the script's own text. Files are written to a temporary file in the same folder and
renamed over the target, so a run that is cut off leaves the previous file whole.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from typing import Any, Iterable, Optional, Sequence, Union

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")  # the committed results


def describe() -> str:
    """The machine: CPU name (family, model, clock), cores visible, torch version (threads now), Python version."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):  # Linux: the CPU's name, and which chip it is
        with open("/proc/cpuinfo") as f:
            first = f.read().split("\n\n", 1)[0]
        info = dict((k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in first.splitlines()) if v)
        cpu = info.get("model name", cpu)
        # "AMD EPYC" names several chips: machines lent under one name have differed by 1.5x on
        # compiled kernels (FlexAttention), so family, model and clock are recorded too
        chip = [f"{k} {info[k]}" for k in ("cpu family", "model", "stepping") if k in info]
        if "cpu MHz" in info:
            chip.append(f"{float(info['cpu MHz']):.0f} MHz")
        if chip:
            cpu = f"{cpu} ({', '.join(chip)})"
    return (f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def command_line(argv: Optional[Sequence[str]] = None, *, drop: Iterable[str] = ("--out",)) -> str:
    """The command that ran, as ``python benchmarks/<script> <args>``, without the options in
    ``drop`` (and their values): where a result was written is not how it was measured."""
    argv = list(sys.argv if argv is None else argv)
    drop = tuple(drop)
    kept, skip = [], False
    for a in argv[1:]:
        if skip:
            skip = False
            continue
        if a in drop:
            skip = True
            continue
        if a.startswith(tuple(d + "=" for d in drop)):
            continue
        kept.append(a)
    script = "benchmarks/" + os.path.basename(argv[0]) if argv else "benchmarks/?"
    return shlex.join(["python", script] + kept)


def header(*, command: Optional[str] = None) -> dict:
    """``machine``, ``date`` and ``command`` of this run (the JSON file's first keys)."""
    return {"machine": describe(), "date": time.strftime("%Y-%m-%d"),
            "command": command if command is not None else command_line()}


def results_path(path: str) -> str:
    """``path`` with its folder created (figures are saved beside the results before they are written)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path


def side_file(path: str, suffix: str) -> str:
    """The file beside a results file: ``side_file("x/kv-cache.md", ".png")`` is ``x/kv-cache.png``."""
    return os.path.splitext(path)[0] + suffix


def write_atomic(path: str, text: str) -> str:
    """Write ``text`` to ``path`` by a temporary file in the same folder and a rename; the folder
    is created. Returns ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would have made it (mkstemp: 0600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str, data: Any) -> str:
    """``data`` as indented JSON (non-ASCII kept), written atomically. Returns ``path``."""
    return write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_results(path: str, title: str, body: Union[str, Iterable[str]], *, data: Optional[dict] = None,
                  head: Optional[dict] = None) -> str:
    """Write the results file ``path``: ``# title``, the machine, date and command (``head``,
    default :func:`header` now), a blank line, then ``body`` (a string, or lines). With
    ``data``, also ``side_file(path, ".json")``: ``head``'s keys, then ``data``'s. Both are
    written atomically; the text is printed too. Returns ``path``."""
    head = header() if head is None else head
    text = body if isinstance(body, str) else "\n".join(body)
    lines = [f"# {title}", "", f"- Machine: {head['machine']}", f"- Date: {head['date']}",
             f"- Command: `{head['command']}`", "", text.rstrip("\n")]
    md = "\n".join(lines) + "\n"
    if data is not None:
        write_json(side_file(path, ".json"), {**head, **data})
    write_atomic(path, md)
    print(md)
    print("wrote", path, flush=True)
    return path


def check_args(ap, args, *, at_least_one: Iterable[str] = ("reps", "threads")) -> None:
    """Refuse, through ``ap.error``, an option of ``at_least_one`` below 1 (named as given)."""
    for name in at_least_one:
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(args, name)}")


def shapes_args(description: str, *, reps: int, shapes: Optional[str], out: str) -> tuple:
    """The small benchmarks' options, ``--reps``, ``--shapes`` (none where ``shapes`` is None: the
    script's shapes are fixed), ``--threads`` (set for torch here) and ``--out`` (default ``out``
    in :data:`RESULTS`), checked: ``(args, [(B, H, L, E), ...])``."""
    ap = argparse.ArgumentParser(description=description, allow_abbrev=False)
    ap.add_argument("--reps", type=int, default=reps)
    if shapes is not None:
        ap.add_argument("--shapes", default=shapes, help="comma-separated BxHxLxE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(RESULTS, out))
    args = ap.parse_args()
    check_args(ap, args)
    parsed = [parse_shape(ap, s, "--shapes") for s in args.shapes.split(",")] if shapes is not None else []
    torch.set_num_threads(args.threads)
    return args, parsed


def parse_shape(ap, text: str, option: str) -> tuple:
    """``BxHxLxE`` as four ints, or ``ap.error`` naming ``option``."""
    try:
        B, H, L, E = (int(x) for x in text.split("x"))
    except ValueError:
        ap.error(f"{option}: {text!r} is not BxHxLxE")
    return B, H, L, E


def time_rounds(fns: dict, reps: int) -> dict:
    """Median milliseconds of each callable of ``fns`` over ``reps`` rounds, each round calling
    every one once in a random order (so a drift of the machine's speed moves them all)."""
    times = {t: [] for t in fns}
    order = list(fns)
    for _ in range(reps):
        random.shuffle(order)
        for t in order:
            t0 = time.perf_counter()
            fns[t]()
            times[t].append(time.perf_counter() - t0)
    return {t: statistics.median(x) * 1e3 for t, x in times.items()}



def sdpa_timed(q, k, v, dout, *, causal: bool, training: bool):
    """SDPA with no mask (``is_causal`` where ``causal``), forward or forward+backward: the
    small benchmarks' ratio base, as a callable."""
    import torch.nn.functional as F

    def call():
        with torch.set_grad_enabled(training):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            if training:
                torch.autograd.grad(out, (q, k, v), dout)

    return call


def float64_reference(base, dout, kw: dict, training: bool) -> tuple:
    """attend's eager path in float64 on ``base`` (q, k, v) with ``kw``: ``(out,)``, or ``(out, dq,
    dk, dv)`` for ``dout`` when ``training``."""
    import attend

    with torch.enable_grad():
        qd, kd, vd = (t.detach().double().requires_grad_(training) for t in base)
        ref = attend.attention(qd, kd, vd, backend="eager", **kw)
        return (ref, *torch.autograd.grad(ref, (qd, kd, vd), dout.double())) if training else (ref,)


def checked_against(ref: tuple, got: tuple, tolerance: float, what: str) -> float:
    """The largest difference of ``got`` from ``ref``; exits, naming ``what``, where it is over
    ``tolerance`` (or NaN): nothing is written for a wrong result."""
    worst = max((a.double() - b).abs().max().item() for a, b in zip(got, ref))
    if not worst <= tolerance:
        sys.exit(f"{what}: differs from eager float64 by {worst:.1e} (more than {tolerance:.0e}); no results written")
    return worst
