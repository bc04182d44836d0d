"""One-off probe (issue #26): relative residual after each of 32 evaluations from zero, plain / Anderson / Broyden,
on one real frame. Run from the repository root: ``PYTHONPATH=. python archive/trials/broyden_carphone/trace.py CLIP
FRAME``."""

from __future__ import annotations

import sys

import torch

import runtime.solvers as S
from benchmarks.convergence import flat_cell, real_frames
from export.train import load_model

torch.set_num_threads(1)
model, _ = load_model("checkpoints/tiny_sur.pt", "cpu")
model.eval()
cell = flat_cell(model, real_frames(sys.argv[1], 1, 256, 512, int(sys.argv[2]))[0])
for name, solve in (("plain", S.fixed_point), ("anderson", S.anderson), ("broyden", S.broyden)):
    z0 = torch.zeros(cell.numel)
    _, info = solve(cell.step, z0, 32, 1e-9, ws=S.flat_workspace(z0, 40), check_every=1)
    print(f"{name:9s}", " ".join(f"{float(r):.1e}" for r in info.trace[:32, 0]))
