"""Host time per call of attend's ``triton`` path, with the kernel launch replaced by an empty
allocation, so only Python and dispatch are timed (runs on the CPU, no GPU needed):

    python benchmarks/triton_host_overhead.py

The first GPU run (benchmarks/results/gpu-nvidia-h200-probe.md) found the forward far slower
with inputs that require grad than without, with the same kernel. This measures whether
attend's own host work with grad could explain it. attend's input check is left out, as on a
GPU, where it does not run. Prints microseconds per call for the launcher alone,
``attend.attention`` without grad, and with inputs that require grad.
"""
from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernels are never run; Triton must import
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

import torch  # noqa: E402

import attend  # noqa: E402
import attend.functional as functional  # noqa: E402
from attend.backends.triton import launch  # noqa: E402
from attend.backends.triton.plan import plan  # noqa: E402


def main(B=16, H=16, L=1024, E=128, n=300) -> None:
    torch.set_num_threads(1)

    def no_kernel(q, k, v, p, **kw):
        return q.new_empty(*q.shape[:3], v.shape[-1]), torch.empty(q.shape[:3])
    launch.flash_forward = no_kernel
    functional._quarantine = lambda call: (call, None)  # as on a GPU: no input check
    tri = attend.backends.Triton(block_m=16, block_n=16)
    q, k, v = (torch.randn(B, H, L, E, dtype=torch.bfloat16) for _ in range(3))
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    call, _ = functional._prepare(q, k, v, causal=True)
    p = plan(call)
    p.scale = E ** -0.5
    print(f"(B, H, L, E) = {(B, H, L, E)}, causal, bf16, {n} calls each, torch {torch.__version__}")
    for rep in range(2):
        for name, fn in (("launcher alone", lambda: launch.flash_forward(q, k, v, p)),
                         ("attend.attention, no grad", lambda: attend.attention(q, k, v, causal=True, backend=tri)),
                         ("attend.attention, inputs require grad",
                          lambda: attend.attention(qg, kg, vg, causal=True, backend=tri))):
            for _ in range(5):
                fn()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            print(f"  run {rep + 1}: {name}: {(time.perf_counter() - t0) / n * 1e6:.0f} us per call", flush=True)


if __name__ == "__main__":
    main()
