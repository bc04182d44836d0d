"""Trial artifact: at Anderson's fixed point on some bikes frames, power iteration for 20-200 steps and a 1e-3
perturbation iterated by plain iteration (does the point repel?).

    python archive/trials/G_test/radius_check.py CHECKPOINT 4,0,1,2   (from the repository root)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.convergence import flat_cell, real_frames, residual_trace
from export.contraction import FlatMap
from export.train import load_model


def power_log(cell: FlatMap, z: torch.Tensor, steps: int = 200) -> list[float]:
    """log ||J v|| per power-iteration step at z (J = df/dz by forward-mode JVPs)."""
    v = torch.randn(cell.numel, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v /= v.norm()
    logs = []
    for _ in range(steps):
        with torch.no_grad():
            u = torch.func.jvp(cell, (z,), (v.float(),))[1].double()
        g = float(u.norm())
        logs.append(np.log(g))
        v = u / g
    return logs


def perturbation_growth(cell: FlatMap, z: torch.Tensor) -> dict[int, float]:
    """||z_k - z|| / ||d|| after k plain iterations from z + d, ||d|| = 1e-3 ||z||."""
    d = torch.randn(cell.numel, generator=torch.Generator().manual_seed(1))
    d *= 1e-3 * z.norm() / d.norm()
    x, ratios = z + d, {}
    with torch.no_grad():
        for k in range(1, 61):
            x = cell(x)
            if k in (10, 20, 40, 60):
                ratios[k] = float((x - z).norm() / d.norm())
    return ratios


def main() -> None:
    torch.set_num_threads(1)
    model, _ = load_model(Path(sys.argv[1]))
    model.eval()
    idx = [int(x) for x in sys.argv[2].split(",")]
    frames = real_frames("bikes", max(idx) + 1, 256, 512)
    for i in idx:
        t0 = time.time()
        cell = flat_cell(model, frames[i])
        _, z = residual_trace(cell, "anderson", 60)
        logs = power_log(cell, z)
        est: dict[int | str, float] = {n: float(np.exp(np.mean(logs[n - 5 : n]))) for n in (20, 40, 100, 200)}
        est["mean100-200"] = float(np.exp(np.mean(logs[100:200])))
        ratios = perturbation_growth(cell, z)
        took = time.time() - t0
        print(f"frame {i}: power {est}; plain from z*+1e-3 perturbation |z_k-z*|/|d| {ratios} ({took:.0f}s)")


if __name__ == "__main__":
    main()
