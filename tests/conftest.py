import os
import shutil

import pytest
import torch


# One torch thread unless OMP_NUM_THREADS says otherwise (scripts/test sets it): the tests'
# tensors are small, and with other work on the cores more threads are slower, not faster.
if "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"  # for the subprocesses some tests start
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# The triton backend's kernels run on the CPU through Triton's interpreter; it is read
# when Triton is first imported, so it is set here, before any test imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _add_descriptor_reduce() -> None:
    """Triton's interpreter (3.6, 3.9) has no tensor-descriptor reductions (``desc.atomic_add``,
    a TMA reduce on Hopper), which the backward's atomic-dQ path uses. For the tests, give it
    one: the masked read-add-write of the block the descriptor addresses, out-of-bounds
    elements dropped as the copy engine drops them. The interpreter runs one program at a
    time, so the read-add-write is atomic there. On a GPU the real instruction runs."""
    try:
        import numpy as np
        from triton._C.libtriton import ir
        from triton.runtime.interpreter import InterpreterBuilder, TensorHandle
    except ImportError:  # no Triton: the triton tests skip themselves
        return
    if hasattr(InterpreterBuilder, "create_descriptor_reduce"):
        return

    def create_descriptor_reduce(self, kind, desc, value, indices):
        if kind != ir.DESCRIPTOR_REDUCE_KIND.ADD:
            raise NotImplementedError(f"descriptor reduction {kind} in the interpreter")
        ptrs, mask = desc.materialize_pointers(indices)
        zero = TensorHandle(np.zeros_like(value.data), value.dtype.scalar)
        old = self.create_masked_load(ptrs, mask, zero, cache_policy=None, is_volatile=False)
        return self.create_masked_store(ptrs, TensorHandle(old.data + value.data, value.dtype.scalar), mask, None)

    InterpreterBuilder.create_descriptor_reduce = create_descriptor_reduce


if os.environ.get("TRITON_INTERPRET") == "1":
    _add_descriptor_reduce()


# A real headless browser for the HTML viewer and the concept guide's site: Debian's chromium
# driven by Playwright (.ci/run installs chromium; the tests skip, saying why, without it).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (extra 'test')")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()
