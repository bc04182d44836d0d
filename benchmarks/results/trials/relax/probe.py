"""Probe: does relaxation (1-a) z + a f(z) make the base cell contractive on real footage?"""
import sys, numpy as np, torch
from export.checkpoint import load_checkpoint
from benchmarks.convergence import real_frames, flat_cell, residual_trace, power_radius
from runtime.solvers import fixed_point
torch.set_num_threads(1)
ck = sys.argv[1]; clip = sys.argv[2]; start = int(sys.argv[3]); n = int(sys.argv[4])
model, meta = load_checkpoint(ck); model.eval()
cfg = model.cfg if hasattr(model, "cfg") else None
H, W = 256, 512
try:
    H, W = meta.get("crop", (H, W)) if False else (H, W)
except Exception: pass
frames = real_frames(clip, n, H, W, start)
alphas = [1.0, 0.8, 0.65, 0.5]
for fr in frames:
    cell = flat_cell(model, fr)
    _, za = residual_trace(cell, "anderson", 60)
    def jvp(v):
        with torch.no_grad():
            return torch.func.jvp(cell, (za,), (v,))[1]
    # power iteration with rayleigh quotient
    v = torch.randn(cell.numel); v /= v.norm()
    for _ in range(40):
        u = jvp(v); v = u / u.norm()
    u = jvp(v); rq = float(v @ u); g = float(u.norm())
    # 2-step growth: detects negative real / complex
    u2 = jvp(u / u.norm()); rq2 = float((u/u.norm()) @ u2)
    out = [f"rad={g:.3f} rq={rq:+.3f} rq2={rq2:+.3f}"]
    for a in alphas[1:]:
        r = power_radius(lambda v: (1 - a) * v + a * jvp(v), cell.numel, 40)
        # plain damped iteration residual from zero
        step = lambda z: (1 - a) * z + a * cell.step(z) if False else None
        out.append(f"a={a}:{r:.3f}")
    print(" ".join(out), flush=True)
