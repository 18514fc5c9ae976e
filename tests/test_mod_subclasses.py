"""A subclass of one of attend's score modifiers (ALiBi, soft-capping, relative bias) or of its
AND of rules that scores or joins differently is run by its own ``__call__`` on every backend,
never by the fast path that knows its parent's formula. Before, ``inductor`` computed a soft-capping
subclass as soft-capping (an error of 0.8 here, no warning), a relative-bias subclass got its
table's gradient from the parent's diagonal sums, Triton compiled the parents in (and took an
``And`` subclass's terms as an AND), ALiBi's reach took any ALiBi subclass, and the all-to-all's
per-head view sliced a subclass's tensors by head. Each backend that can run the call is checked
against attend's eager path in float64 by the tolerance rule, gradients included; the reach and
the AND's terms are checked directly too (they fail without Triton). And ``flex`` keeps block
masks by the rule's class, not its name (a class of one's own named ``Window`` got the built-in
window's mask)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import attend
import reference as R
from attend._rules import Alibi, And, Causal, RelativeBias, Softcap, Window
from attend._rule_prep import and_terms
from attend.backends import Flex, UnsupportedCall, _alibi_reach
from attend.distributed._rules import heads
from attend.functional import _prepare
from cases import backend_arg, device, inputs

pytestmark = pytest.mark.skipif(bool(attend.backends.inductor._no_compiler()), reason="no C++ compiler")


@dataclasses.dataclass(frozen=True, eq=False)
class HalfScores(Softcap):
    """Not a cap: half the score."""

    def __call__(self, score, b, h, i, j):
        return score * 0.5


@dataclasses.dataclass(frozen=True, eq=False)
class NoPenalty(Alibi):
    """Keeps ALiBi's slopes (steep: its reach would leave far blocks out) but adds nothing."""

    def __call__(self, score, b, h, i, j):
        return score + 0.0 * self.slopes.to(score.device, score.dtype)[h]


@dataclasses.dataclass(frozen=True, eq=False)
class Mirrored(RelativeBias):
    """The table read at i - j, where relative bias reads j - i."""

    def __call__(self, score, b, h, i, j):
        return super().__call__(score, b, h, j, i)


@dataclasses.dataclass(frozen=True, eq=False)
class Either(And):
    """An AND of rules whose ``__call__`` is an OR."""

    def __call__(self, b, h, i, j):
        return self.mods[0](b, h, i, j) | self.mods[1](b, h, i, j)


B, H, L, E = 2, 4, 40, 16
SLOPES = torch.tensor([4.0, 2.0, 1.0, 0.5])
BACKENDS = ["auto", "eager", "chunked", "flex16", "inductor", "triton"]


def _table(learned: bool):
    g = torch.Generator().manual_seed(3)
    return torch.randn(H, 2 * 6 + 1, generator=g).requires_grad_(learned)


def _kwargs(kind: str) -> dict:
    if kind == "softcap":
        return dict(score_mod=HalfScores(5.0), causal=True)
    if kind == "alibi":
        return dict(score_mod=NoPenalty(SLOPES), causal=True)
    if kind == "relative bias":
        return dict(score_mod=Mirrored(_table(False)))
    if kind == "learned relative bias":
        return dict(score_mod=Mirrored(_table(True)), causal=True)
    return dict(mask=Either((Causal(), Window(2, 2))))  # "and": causal OR a window of 2


def _run(backend, q, k, v, kw, training: bool):
    """(out, grads of q, k, v and a learned table) on ``backend``."""
    mod = kw.get("score_mod")
    table = mod.table if isinstance(mod, RelativeBias) and mod.table.requires_grad else None
    dev = device(backend)
    with torch.set_grad_enabled(training):  # (inductor takes a rule of one's own only without autograd)
        ins = [t.detach().to(dev).requires_grad_(training) for t in (q, k, v)]
        if table is not None:
            kw = dict(kw, score_mod=dataclasses.replace(mod, table=table.detach().to(dev, q.dtype).requires_grad_()))
        out = attend.attention(*ins, backend=backend, **kw)
        if not training:
            return [out.detach().cpu()]
        wrt = ins + ([kw["score_mod"].table] if table is not None else [])
        return [out.detach().cpu()] + [g.cpu() for g in torch.autograd.grad(out, wrt, torch.ones_like(out))]


def _backend(name):
    return Flex(block_size=16) if name == "flex16" else backend_arg(name)


@pytest.mark.parametrize("kind", ["softcap", "alibi", "relative bias", "learned relative bias", "and"])
def test_a_subclass_runs_by_its_own_call_on_every_backend(kind):
    q, k, v = inputs(B, H, H, L, L, E, E, torch.float32)
    kw = _kwargs(kind)
    training = kind in ("softcap", "learned relative bias", "and")
    ref = _run("eager", q.double(), k.double(), v.double(), kw, training)
    base = _run("eager", q, k, v, kw, training)
    parent = {"softcap": dict(score_mod=attend.mods.softcap(5.0), causal=True),
              "alibi": dict(score_mod=attend.mods.alibi(SLOPES), causal=True)}.get(kind)
    if parent is not None:  # the subclass really scores otherwise than its parent
        assert (attend.attention(q.double(), k.double(), v.double(), backend="eager", **parent) - ref[0]).abs().max() > 1e-2
    ran = []
    for name in BACKENDS:
        try:
            got = _run(_backend(name), q, k, v, kw, training)
        except UnsupportedCall:
            try:  # (flex has no backward on the CPU: its forward is still checked)
                got = _run(_backend(name), q, k, v, kw, False)
            except UnsupportedCall:
                continue
        ran.append(name)
        for what, x, b, r in zip(["out", "dq", "dk", "dv", "dtable"], got, base, ref):
            R.check(x, b, r, dtype=torch.float32, m=2 if what == "out" else 3, what=f"{name} {kind} {what}")
    assert {"auto", "chunked", "inductor"} <= set(ran), ran
    if attend.backends.triton.interpreting() or torch.cuda.is_available():
        # Triton evaluates the AND subclass into a dense mask; it compiles no score_mod of one's
        # own, so it refuses the modifier subclasses (before, it compiled their parents in)
        assert ("triton" in ran) == (kind == "and"), ran
    if kind in ("softcap", "alibi", "and"):
        assert "flex16" in ran, ran


def test_the_fast_paths_do_not_take_a_subclass():
    """Without Triton or a long sequence: ALiBi's reach does not apply to a subclass (it does to
    ALiBi itself), and an AND subclass is one term, not its parent's terms."""
    q, k, v = inputs(1, H, H, 256, 256, E, E, torch.float32)
    own, sub = (_prepare(q, k, v, causal=True, score_mod=m)[0] for m in (attend.mods.alibi(SLOPES), NoPenalty(SLOPES)))
    assert _alibi_reach.applies(own) and not _alibi_reach.applies(sub)
    either = Either((Causal(), Window(2, 2)))
    assert list(and_terms(either)) == [either]
    both = And((Causal(), Window(2, 2)))
    assert len(list(and_terms(both))) == 2


def test_flex_keeps_block_masks_by_the_rules_class_not_its_name():
    """One ``Flex`` runs attend's window, then a class of one's own named ``Window`` with the same
    fields that allows every key: the second gets its own blocks, not the first's cached mask."""
    @dataclasses.dataclass(frozen=True, eq=False)
    class Window(attend._rules.Window):  # noqa: F811 - the same name on purpose
        def __call__(self, b, h, i, j):
            return (i >= 0) & (j >= 0)

    flex = Flex(block_size=16)
    q, k, v = inputs(1, 2, 2, L, L, 8, 8, torch.float32)
    for rule in (attend._rules.Window(2, 2), Window(2, 2)):
        ref = attend.attention(q.double(), k.double(), v.double(), mask=rule, backend="eager")
        base = attend.attention(q, k, v, mask=rule, backend="eager")
        R.check(attend.attention(q, k, v, mask=rule, backend=flex), base, ref, dtype=torch.float32, m=2,
                what=type(rule).__module__)


@pytest.mark.parametrize("cls", [NoPenalty, Mirrored])
def test_the_per_head_view_evaluates_a_subclass_at_its_own_heads(cls):
    """``distributed._rules.heads`` (the all-to-all's view of query heads 1:3) evaluates a subclass
    at the full head index, not rebuilt from its parent's sliced tensors."""
    class Headed(cls):  # reads the head index beyond its tensor
        def __call__(self, score, b, h, i, j):
            return cls.__call__(self, score, b, h, i, j) + h.to(score.dtype)

    fn = Headed(SLOPES if cls is NoPenalty else _table(False))
    local = heads(fn, 1, 3, score=True)
    s = torch.randn(1, 2, 5, 7, dtype=torch.float64)
    b, h = torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.arange(2).view(1, -1, 1, 1)
    i, j = torch.arange(5).view(1, 1, -1, 1), torch.arange(7).view(1, 1, 1, -1)
    want = fn(s, b, h + 1, i, j)
    assert torch.equal(local(s, b, h, i, j), want)


@dataclasses.dataclass(frozen=True, eq=False)
class ListBias(attend._rules.Rule):
    """A rule of one's own holding its learned tensor in a list (where attend's walk of a rule's
    fields does not look)."""

    tables: list
    role = "score"

    def __call__(self, score, b, h, i, j):
        return score + self.tables[0][h] * j.to(score.dtype) / 16


def test_a_rule_of_ones_own_gets_its_tensors_gradient_or_is_refused():
    """``inductor`` took any Rule subclass as attend's own under autograd and trained it without
    the gradient of a tensor it could not find (None, no error); now it refuses it, and ``auto``
    runs it where autograd sees every tensor."""
    q, k, v = inputs(1, 2, 2, L, L, 8, 8, torch.float64)
    w = torch.randn(2, dtype=torch.float64)

    def grads(backend):
        ins = [t.clone().requires_grad_() for t in (q, k, v)] + [w.clone().requires_grad_()]
        out = attend.attention(*ins[:3], score_mod=ListBias([ins[3]]), backend=backend)
        return torch.autograd.grad((out * torch.arange(8.0, dtype=torch.float64)).sum(), ins, allow_unused=True)

    ref = grads("eager")
    assert ref[3].abs().max() > 1e-3  # the tensor's gradient is not 0
    with pytest.raises(UnsupportedCall, match="of your own while autograd is on"):
        grads("inductor")
    for name in ("auto", "chunked"):
        for got, want in zip(grads(name), ref):
            assert got is not None and torch.allclose(got, want, rtol=1e-9, atol=1e-12), name
