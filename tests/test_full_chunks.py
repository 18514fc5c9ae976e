"""Full chunks: the keys every mask rule allows to every row of a block (``Rule.full``,
``AttentionCall.full_span``), which the ``inductor`` backend computes with a program compiled
without the rules. Checked: each rule's span against the rule itself on every (row, key) pair
(never a key the rule forbids; exactly the allowed run where the rule says it); a subclass that
changes ``__call__`` is not answered for by its parent's ``keys``/``full``, nor a class of one's
own named like attend's by attend's program; the chunk cut; the plans; and results with full
chunks against the float64 reference, gradients included."""
from __future__ import annotations

import dataclasses
import random

import pytest
import torch

import attend
import reference as R
from attend._rules import Causal, Rule, full_of, keys_of
from attend.backends import Inductor
from attend.backends._chunks import cut as _cut
from cases import check_case, inputs

needs_compiler = pytest.mark.skipif(bool(attend.backends.inductor._no_compiler()), reason="no C++ compiler")


def _call(L, S, B=2, **kw):
    q = torch.zeros(B, 2, L, 4)
    k = torch.zeros(B, 2, S, 4)
    return attend.functional._prepare(q, k, k, **kw)[0]


DOCS = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 5],
                     [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 4, 4, 4, 5, 5]])
RULES = {  # name: (kwargs, spans are exactly the keys allowed to every row, where that set is one run)
    "causal": ({"causal": True}, True),
    "window": ({"window": (3, 2)}, True),
    "window left": ({"window": (4, None)}, True),
    "window right": ({"window": (None, 1)}, True),
    "causal window": ({"window": (5, 0), "causal": True}, True),
    "chunked": ({"mask": attend.masks.chunked(6)}, True),
    "prefix": ({"mask": attend.masks.prefix_lm(7)}, True),
    "prefix per sequence": ({"mask": attend.masks.prefix_lm(torch.tensor([3, 9]))}, True),
    "padding": ({"mask": attend.masks.padding(torch.tensor([20, 13]))}, True),
    "document": ({"mask": attend.masks.document(DOCS)}, True),
    "document shared": ({"mask": attend.masks.document(DOCS[0])}, True),
    "document unsorted": ({"mask": attend.masks.document(DOCS[0].flip(0))}, False),
    "key mask": ({"mask": attend.masks.key_mask(torch.rand(2, 20, generator=torch.Generator().manual_seed(0)) > 0.2)},
                 False),
    "and": ({"mask": attend.masks.and_masks(attend.masks.document(DOCS), attend.masks.causal())}, False),
    "or": ({"mask": attend.masks.or_masks(attend.masks.prefix_lm(4), attend.masks.sliding_window((2, 0)))}, False),
    "own function": ({"mask": lambda b, h, i, j: j <= i}, False),
}


@pytest.mark.parametrize("L", [20, 17, 26])  # S = 20: L == S, L < S, L > S (rows before key 0)
@pytest.mark.parametrize("name", list(RULES))
def test_full_span_holds_only_keys_every_row_may_see(name, L):
    kw, exact = RULES[name]
    S = 20  # the tensors above hold one entry per key
    call = _call(L, S, **kw)
    seen_full = False
    for i0 in range(L):
        for i1 in range(i0 + 1, L + 1):
            lo, hi = call.full_span(i0, i1)
            ok = call.allowed(i0, i1, 0, S).expand(2, 2, i1 - i0, S)
            every = ok.all(0).all(0).all(0)  # (S,): keys allowed to every row, sequence and head
            assert 0 <= lo <= hi <= S, (name, i0, i1, lo, hi)
            assert bool(every[lo:hi].all()), f"{name}: rows {i0}:{i1} get keys {lo}:{hi}, some forbidden"
            seen_full |= hi > lo
            runs = every.nonzero().flatten().tolist()
            if exact and runs and runs == list(range(runs[0], runs[-1] + 1)):
                assert (lo, hi) == (runs[0], runs[-1] + 1), (name, i0, i1, (lo, hi), runs)
    if name not in ("key mask", "own function", "document unsorted"):
        assert seen_full, f"{name}: no block was ever full"


def test_a_dense_mask_or_a_function_of_ones_own_is_never_full():
    m = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    assert _call(8, 8, mask=m).full_span(0, 4) == (0, 0)
    assert _call(8, 8, mask=lambda b, h, i, j: j >= 0).full_span(0, 4) == (0, 0)
    assert _call(8, 8).full_span(0, 4) == (0, 8)  # no rule: every key


@dataclasses.dataclass(frozen=True, eq=False)
class _Everything(Causal):
    """Changes the rule but inherits Causal's keys and full: they must not be believed."""

    def __call__(self, b, h, i, j):
        return (i + j) >= 0


@dataclasses.dataclass(frozen=True, eq=False)
class _TopLeft(Causal):
    """Changes the rule by its binding (top-left alignment): keys and full must not be believed."""

    def bind(self, L, S):
        return self


@needs_compiler
def test_a_subclass_that_changes_the_rule_is_not_answered_for_by_its_parent():
    rule = _Everything().bind(40, 40)
    assert keys_of(rule, 0, 9, 40) == (0, 40) and full_of(rule, 20, 29, 40) == (0, 0)
    top = _TopLeft().bind(30, 40)
    assert keys_of(top, 10, 19, 40) == (0, 40) and full_of(top, 10, 19, 40) == (0, 0)
    assert keys_of(Causal().bind(40, 40), 0, 9, 40) == (0, 10)
    q, k, v = inputs(1, 2, 2, 40, 40, 8, 8, torch.float32)
    with torch.no_grad():
        want = attend.attention(q, k, v, backend="eager")  # the rule allows every key
        for backend in (Inductor(key_chunk=16, max_rows=16), "chunked"):
            got = attend.attention(q, k, v, mask=_Everything(), backend=backend)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_compiler
def test_a_rule_of_ones_own_named_like_attends_is_computed_by_its_own_call():
    """``inductor`` keys its programs by the rules' class names, so a class of one's own named
    ``Causal`` shares attend's program key: it must still be computed by its own ``__call__``
    (dynamo guards the argument's type and compiles it again), whichever runs first."""

    @dataclasses.dataclass(frozen=True, eq=False)
    class Causal(Rule):  # not attend's: the same name, the opposite rule
        def __call__(self, b, h, i, j):
            return j >= i

    assert Causal.__name__ == type(attend.masks.causal()).__name__
    q, k, v = inputs(1, 2, 2, 40, 40, 8, 8, torch.float32)
    be = Inductor(key_chunk=16, max_rows=16)
    with torch.no_grad():  # a rule of one's own runs on inductor without autograd
        for mask in (attend.masks.causal(), Causal(), attend.masks.causal(), Causal()):
            got = attend.attention(q, k, v, mask=mask, backend=be)
            want = attend.attention(q, k, v, mask=mask, backend="eager")
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=type(mask).__module__)


def test_the_cut_keeps_the_even_count_and_marks_only_allowed_chunks():
    rng = random.Random(0)
    for _ in range(20000):
        lo = rng.randint(0, 40)
        hi = lo + rng.randint(0, 200)
        c, flo, fhi = rng.randint(1, 70), rng.randint(0, 260), rng.randint(0, 260)
        chunks = _cut(lo, hi, flo, fhi, c)
        assert len(chunks) == (-(-(hi - lo) // c) if hi > lo else 0)
        edges = [lo] + [j1 for _, j1, _ in chunks]
        assert [j0 for j0, _, _ in chunks] == edges[:-1] and edges[-1] == hi
        assert all(0 < j1 - j0 <= c and (not full or flo <= j0 and j1 <= fhi) for j0, j1, full in chunks)
    # a causal tile past the first 1024 keys: the cut moves to the diagonal at no extra chunk
    assert _cut(0, 1280, 0, 1025, 1024) == [(0, 1024, True), (1024, 1280, False)]
    assert _cut(0, 512, 0, 257, 1024) == [(0, 512, False)]  # one chunk would become two: not cut
    assert _cut(0, 50, 0, 50, 16) == [(0, 13, True), (13, 26, True), (26, 39, True), (39, 50, True)]


@needs_compiler
def test_plans_and_explain_count_the_full_chunks():
    q = torch.zeros(1, 8, 2048, 64)
    causal, _ = attend.functional._prepare(q, q, q, causal=True)
    plan = Inductor().plan(causal)
    full = [(i0, j0, j1) for i0, _, _, c in plan.tiles for j0, j1, f in c if f]
    assert plan.chunks == 12 and plan.full == len(full) == 4
    assert all(j1 <= i0 + 1 for i0, j0, j1 in full)  # below the diagonal of the tile's first row
    doc, _ = attend.functional._prepare(q, q, q, mask=attend.masks.document(torch.arange(2048) // 512))
    plan = Inductor().plan(doc)
    assert plan.full == plan.chunks == len(plan.tiles)  # every tile inside one document
    line = attend.explain(q, q, q, mask=attend.masks.document(torch.arange(2048) // 512), backend="inductor")
    assert f"{plan.full} of {plan.chunks} chunks without the mask" in str(line)


L, S = 45, 50
IDS = torch.arange(S) // 13
PER_SEQ = torch.stack([torch.arange(S) // 13, (torch.arange(S) + 13) // 26])  # (B, S): documents differ per sequence
CASES = {  # name: (kwargs, the allowed pairs (B|1, 1, L, S) or (L, S), computed here; L and S)
    "causal": ({"causal": True}, R.causal_mask(L, S), (L, S)),
    "causal L > S": ({"causal": True}, R.causal_mask(S, L), (S, L)),
    "causal window": ({"causal": True, "window": (20, 0)}, R.window_mask(L, S, 20, 0), (L, S)),
    "documents": ({"mask": attend.masks.document(IDS)},
                  IDS[(torch.arange(L) + S - L).clamp(min=0)].view(-1, 1) == IDS.view(1, -1), (L, S)),
    "documents per sequence": ({"mask": attend.masks.document(PER_SEQ)},
                               (PER_SEQ[:, torch.arange(L) + S - L].unsqueeze(-1) == PER_SEQ.unsqueeze(-2)).unsqueeze(1),
                               (L, S)),
    "prefix": ({"mask": attend.masks.prefix_lm(21)},
               (torch.arange(S).view(1, -1) < 21) | R.causal_mask(L, S), (L, S)),
    "chunks": ({"mask": attend.masks.chunked(16)},
               (torch.arange(L).view(-1, 1) + S - L) // 16 == torch.arange(S).view(1, -1) // 16, (L, S)),
}


@needs_compiler
@pytest.mark.parametrize("name,mod", [(name, None) for name in CASES] + [("causal", "softcap")])  # each compiles its
def test_full_chunks_match_the_reference_with_gradients(name, mod):  # own programs: a modifier once is enough
    kw, allowed, (L, S) = CASES[name]
    kw = dict(kw)
    be = Inductor(key_chunk=16, back_key_chunk=16, max_rows=8)
    q, k, v = inputs(2, 3, 3, L, S, 8, 8, torch.float64)
    plan = be.plan(attend.functional._prepare(q, k, v, **kw)[0])
    assert 0 < plan.full < plan.chunks, (name, plan.full, plan.chunks)  # both programs run
    ref_mod = None
    if mod == "softcap":
        kw["score_mod"], ref_mod = attend.mods.softcap(2.0), lambda s: 2.0 * torch.tanh(s / 2.0)
    check_case(be, q, k, v, kw=kw, ref_scores=R.scaled_dot(8), allowed=allowed, mod=ref_mod,
               dtype=torch.float64, what=f"{name}/{mod}")


@needs_compiler
def test_full_chunks_give_the_weights_and_key_totals_of_the_reference():
    kw, allowed, _ = CASES["documents"]
    be = Inductor(key_chunk=16, max_rows=8)
    q, k, v = inputs(1, 2, 2, L, S, 8, 8, torch.float32)
    _, w = attend.attention(q, k, v, backend=be, return_weights=True, **kw)
    s = (q.double() @ k.double().transpose(-1, -2)) / 8 ** 0.5
    ref = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1)
    torch.testing.assert_close(w.double(), ref, rtol=0, atol=1e-6)
    assert bool((w[..., ~allowed] == 0).all())


def test_the_backward_keeps_the_forwards_chunks_when_its_own_are_wider():
    """With ``back_key_chunk`` above ``key_chunk`` the backward runs the forward's tiles (as it did
    before full chunks): the cut at the full keys must not widen them."""
    q = torch.zeros(1, 2, 128, 8)
    call, _ = attend.functional._prepare(q, q, q, causal=True)
    plan = Inductor(key_chunk=16, back_key_chunk=64, max_rows=16).plan(call)
    assert plan.back_tiles is plan.tiles and 0 < plan.full < plan.chunks
    assert max(j1 - j0 for *_, c in plan.tiles for j0, j1, _ in c) <= 16


@needs_compiler
def test_explain_says_compiled_when_every_chunk_ran_without_the_rules():
    q, k, v = inputs(1, 2, 2, 64, 64, 8, 8, torch.float32)
    kw = {"mask": attend.masks.document(torch.arange(64) // 16)}
    be = Inductor(key_chunk=16, max_rows=16, min_work=1)
    plan = be.plan(attend.functional._prepare(q, k, v, **kw)[0])
    assert plan.full == plan.chunks > 0  # only the program without the rules runs
    with torch.no_grad():
        attend.attention(q, k, v, backend=be, **kw)
    assert "its program is compiled in this process" in be.describe(attend.functional._prepare(q, k, v, **kw)[0])
