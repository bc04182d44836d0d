"""Probe: would a relaxed cell (1 - a) z + a f(z) contract where the base model's cell does not?

``python archive/trials/relax/probe.py <ckpt> <clip> <start> <frames>`` prints per frame, at Anderson's
fixed point at 256x512: the radius of df/dz after 40 power steps, the Rayleigh quotient of the power direction (rq,
and rq2 one step later: negative where the dominant eigenvalue is negative real), and the radius of the relaxed
map's Jacobian (1 - a) I + a df/dz for a = 0.8, 0.65, 0.5 (``benchmarks.convergence.power_radius``, 40 steps).
The committed ``probe_base_validation_*.txt`` came from a first version of this script whose start vector for the
unrelaxed power iteration was not seeded: rerun, bikes' first validation frame gave rad 1.058, rq -0.861 instead of
1.082, -1.081 (40 steps leave the unrelaxed estimate within a few per cent, the quotient's sign stable; the relaxed
radii came out the same to three decimals).
"""

import sys

import torch

from benchmarks.convergence import flat_cell, power_radius, real_frames, residual_trace
from export.checkpoint import load_checkpoint

ALPHAS = (0.8, 0.65, 0.5)


def probe_frame(model: torch.nn.Module, frame) -> str:
    cell = flat_cell(model, frame)
    _, z_star = residual_trace(cell, "anderson", 60)

    def jvp(v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.func.jvp(cell, (z_star,), (v,))[1]

    v = torch.randn(cell.numel, generator=torch.Generator().manual_seed(0))
    v /= v.norm()
    for _ in range(40):
        u = jvp(v)
        v = u / u.norm()
    u = jvp(v)
    rq, g = float(v @ u), float(u.norm())
    w = u / u.norm()
    rq2 = float(w @ jvp(w))
    out = [f"rad={g:.3f} rq={rq:+.3f} rq2={rq2:+.3f}"]
    for a in ALPHAS:
        r = power_radius(lambda x, a=a: (1 - a) * x + a * jvp(x), cell.numel, 40)
        out.append(f"a={a}:{r:.3f}")
    return " ".join(out)


def main() -> None:
    torch.set_num_threads(1)
    ckpt, clip, start, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    model, _ = load_checkpoint(ckpt)
    model.eval()
    for frame in real_frames(clip, n, 256, 512, start):
        print(probe_frame(model, frame), flush=True)


if __name__ == "__main__":
    main()
