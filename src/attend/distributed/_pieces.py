"""When the ring's pieces are sent and received: one schedule that every rank computes alike.

Each rank computes its query blocks against key pieces in a fixed order (its own pieces
first, then at step ``s`` those of rank ``r - s``), one *block* (query rows x one piece) at a
time; its *clock* counts the blocks done. Every rank can compute every rank's order from the
global lengths alone, so each message gets a time that both of its ends agree on:

- the key/value piece that rank ``x`` computes as its ``j``-th is sent by its owner, and
  its receive posted by ``x``, when ``x`` starts its piece ``j - 2``: it is on its way while
  ``x`` computes the two before; a copy the sender made for it is freed when ``x`` has done it;
- the (dk, dv) shares of that piece are sent home by ``x`` when it has done the piece, and the
  owner posts their receive at that same time; it adds them when ``x`` has done one more.

Leads are counted in the reader's pieces, not in its blocks, so a reader whose pieces each
take few blocks does not have many pieces in flight.

A rank posts, at each block, every message whose time its own clock has reached, in the
order of (time, kind, rank, index): the same order on both ends of every pair, which NCCL's
in-order matching needs (gloo matches by tag as well). A rank then waits only for a message
whose time its clock has reached; the rank that owes it has a clock past that time too (or is
itself waiting on one earlier still), so the lowest-clock rank can always go on: no
deadlock. A rank that has done its own blocks early goes on through the times of what it
still owes, waiting where a copy or a buffer would otherwise pile up (not all at once). Each rank holds a few pieces in flight each way,
however long the sequence (a test measures the buffers held at once: 12-22 pieces of k,
i.e. 6-11 of k and v, forward and backward, in cases where a rank's span is 32 of k and v).

Pacing by the receiver's clock, not the sender's, matters: with zigzag causal on 2 ranks,
rank 0 computes 8 pieces of rank 1's keys against 4 query blocks each while rank 1 computes 4
pieces against 8: a sender that sent its next piece only when it had done one of its own
kept rank 0 waiting half the time (measured: 1.48x half the one-process time at 16k).
"""
from __future__ import annotations

import heapq

import torch.distributed as dist
from torch import Tensor

KV, SHARES = 1, 2  # message kinds (and gloo tags)
LEAD = 2  # a piece's receive is posted when its reader starts the piece this many before it


class Schedule:
    """One call's pieces and messages on this rank (see the module docstring).

    ``ring``: the call's :class:`attend.distributed.ring._Ring`; ``local``: this rank's key
    tensors to send (k, v; or k alone for the weights); ``shares``: this rank's (dk, dv)
    accumulators in the backward, else None."""

    def __init__(self, ring, local: list, shares=None):
        self.ring, self.local, self.shares = ring, local, shares
        W, me = ring.world, ring.rank
        self.me, self.clock = me, 0
        orders = {x: ring.order(x) for x in range(W)}
        self.order = orders[me]
        self.starts = {}  # rank -> its pieces' start times (and its total), in its blocks
        events = []
        for x, order in orders.items():
            t = self.starts[x] = [0]
            for _, _, w in order:
                t.append(t[-1] + w)
            for j, (owner, piece, w) in enumerate(order):
                if owner != x and me in (x, owner):
                    events.append((t[max(j - LEAD, 0)], KV, x, j))
                    if shares is not None:
                        events.append((t[j + 1], SHARES, x, j))
        events.sort()
        self.events, self.next = events, 0
        self.inbox, self.ready = {}, {}  # received pieces by index; computed shares waiting to go home
        self.later = []  # (clock, seq, works, what): waits of this rank's own, in clock order
        self.seq = 0
        self._post_due()

    def __len__(self) -> int:
        return len(self.order)

    def piece(self, j: int):
        """(global key start, tensors) of this rank's ``j``-th piece, received if it is another's."""
        owner, (lk, gk, nk), _ = self.order[j]
        if owner == self.me:
            return gk, [t[:, :, lk:lk + nk] for t in self.local]
        bufs, works = self.inbox.pop(j)
        _wait(works)
        return gk, bufs

    def before_block(self):
        self._post_due()

    def block_done(self):
        self.clock += 1

    def done(self, j: int, shares=None):
        """Piece ``j`` is computed; ``shares``: its (dk, dv) shares (the backward)."""
        owner, (lk, _, nk), _ = self.order[j]
        if shares is not None:
            if owner == self.me:
                for acc, g in zip(self.shares, shares):
                    acc[:, :, lk:lk + nk] += g
            else:
                self.ready[j] = [g.contiguous() for g in shares]
        self._post_due()

    def finish(self):
        """Everything still owed, as if this rank's clock ran on: each message at its time (a
        rank done early must not post, and copy, all it still sends at once), then every wait."""
        while self.next < len(self.events):
            self.clock = max(self.clock, self.events[self.next][0])
            self._post_due()
        while self.later:
            self._settle(heapq.heappop(self.later))

    # ---- internals ---------------------------------------------------------------------------
    def _post_due(self):
        r = self.ring
        while self.next < len(self.events) and self.events[self.next][0] <= self.clock:
            at, kind, x, j = self.events[self.next]
            self.next += 1
            owner, (lk, gk, nk), w = r.order(x)[j]
            t = self.starts[x]
            done, after = t[j + 1], t[min(j + 2, len(t) - 1)]  # x has done piece j; and the piece after
            if kind == KV and owner == self.me:  # send x the piece of ours it computes as its j-th
                part = [t[:, :, lk:lk + nk] for t in self.local]
                copied = [p.contiguous() for p in part]
                works = [dist.isend(p, r.peer(x), group=r.group, tag=KV) for p in copied]
                if any(c.data_ptr() != p.data_ptr() for c, p in zip(copied, part)):  # copies: freed once sent
                    self._later(done, works + copied, None)
                else:
                    self._later(float("inf"), works, None)
            elif kind == KV:  # our j-th piece, from its owner
                bufs = [t.new_empty(*t.shape[:2], nk, t.shape[3]) for t in self.local]
                self.inbox[j] = (bufs, [dist.irecv(b, r.peer(owner), group=r.group, tag=KV) for b in bufs])
            elif x == self.me:  # the shares of our j-th piece, home to its owner
                got = self.ready.pop(j)
                works = [dist.isend(g, r.peer(owner), group=r.group, tag=SHARES) for g in got]
                self._later(after, works + got, None)
            else:  # x's shares of a piece of ours
                bufs = [t.new_empty(*t.shape[:2], nk, t.shape[3], dtype=a.dtype) for t, a in zip(self.local, self.shares)]
                works = [dist.irecv(b, r.peer(x), group=r.group, tag=SHARES) for b in bufs]
                self._later(after, works, (lk, nk, bufs))
        while self.later and self.later[0][0] <= self.clock:
            self._settle(heapq.heappop(self.later))

    def _later(self, when, works, add):
        self.seq += 1
        heapq.heappush(self.later, (when, self.seq, works, add))

    def _settle(self, item):
        _, _, works, add = item
        _wait(works)
        if add is not None:
            lk, nk, bufs = add
            for acc, g in zip(self.shares, bufs):
                acc[:, :, lk:lk + nk] += g


def _wait(works):
    for w in works:
        if not isinstance(w, Tensor):
            w.wait()
