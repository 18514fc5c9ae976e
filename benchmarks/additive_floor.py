"""The additive (Bahdanau) score's floor: its L·S·hidden tanh evaluations at (B, H, L, E) =
(1, 8, 2048, 64), hidden 64, timed as eager elementwise passes over an in-cache buffer, against
torch SDPA plain at the same shape. ``python benchmarks/additive_floor.py``; prints one line."""
import time, torch, torch.nn.functional as F
torch.set_num_threads(2)
B, H, L, E, hid = 1, 8, 2048, 64, 64
q, k, v = [torch.randn(B, H, L, E) for _ in range(3)]
def med(f, n=3):
    f(); ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return sorted(ts)[n // 2]
with torch.no_grad():
    sdpa = med(lambda: F.scaled_dot_product_attention(q, k, v))
    buf = torch.randn(1 << 20)  # 4 MiB, in cache; L·S·hidden·B·H / 2^20 passes
    passes = B * H * L * L * hid // buf.numel()
    tanh = med(lambda: [torch.tanh(buf, out=buf) for _ in range(passes)])
    exp = med(lambda: [torch.exp(buf.clamp_(-20, 20), out=buf) for _ in range(passes)])
print(f"SDPA plain {sdpa * 1e3:.1f} ms; {B * H * L * L * hid / 1e9:.2f} G tanh: {tanh * 1e3:.0f} ms = {tanh / sdpa:.1f}x; "
      f"exp (+clamp): {exp * 1e3:.0f} ms = {exp / sdpa:.1f}x")
