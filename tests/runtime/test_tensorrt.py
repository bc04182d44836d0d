"""TensorRT plans built from the tiny bundle's ONNX, run through the runtime, vs ONNX Runtime on the same ONNX.

Marked ``tensorrt`` and ``gpu``: they skip (and are listed) where ``import tensorrt`` fails or there is no GPU, and are
what ``python -m benchmarks.gpu_check`` runs on a machine that has both. The fake-``tensorrt`` tests of the builder's
call sequence stay in tests/export/test_exporters.py. fp32 plans are built with TF32 off (the export's exact_fp32);
fp16 plans come from the fp16-typed ONNX as strongly typed networks (TensorRT 10 and 11).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.loop import RunConfig, run
from runtime.sources import ArraySource
from tests.runtime.conftest import moving_frames

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ROOT / "checkpoints" / "tiny_sur.pt"
H, W = 128, 256
FRAMES = 6
# Largest fraction of class-map pixels allowed to differ from ONNX Runtime's, per precision: fp16 differs from the
# fp32-accumulating CPU kernels by rounding, which flips argmax ties near class boundaries.
MISMATCH = {"fp32": 5e-3, "fp16": 3e-2}
RESIDUAL_REL = {"fp32": 1e-2, "fp16": 5e-2}


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def plan_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The shipped checkpoint as ONNX + TensorRT plans (the export builds each plan from its ONNX and gates it)."""
    from export.bundle import export_bundle
    from export.checkpoint import load_any

    precision = request.param
    model, _, _ = load_any(CHECKPOINT, None)
    out = tmp_path_factory.mktemp(f"trt_{precision}") / "engines"
    man = export_bundle(model, out, H, W, formats=("onnx", "plan"), precision=precision, device="cuda")
    for name, eng in man["engines"].items():
        assert set(eng["files"]) == {"onnx", "plan"}, name
        assert "skipped" not in eng["parity"]["plan"], name
    return precision, out


def run_engine(engine: Path, device: str, frames: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
    maps: list[np.ndarray] = []
    residuals: list[float] = []

    def keep(record: dict, classes: np.ndarray) -> None:
        maps.append(classes.copy())
        residuals.append(record["residual"])

    cfg = RunConfig(
        engine=engine,
        sources=[ArraySource(list(frames))],
        out=None,
        mode="stream",
        iters=2,
        reset_iters=4,
        device=device,
        threads=1,
        progress=False,
        on_frame=keep,
    )
    run(cfg)
    return maps, residuals


def test_plan_class_maps_match_onnxruntime(plan_bundle):
    precision, bundle = plan_bundle
    frames = moving_frames(FRAMES, H, W, seed=5)
    trt_maps, trt_res = run_engine(bundle / "deq_cell.plan", "cuda", frames)
    ort_maps, ort_res = run_engine(bundle / "deq_cell.onnx", "cpu", frames)
    assert len(trt_maps) == len(ort_maps) == FRAMES
    for i, (a, b) in enumerate(zip(trt_maps, ort_maps)):
        assert a.shape == b.shape == (H, W)
        assert (a != b).mean() <= MISMATCH[precision], (precision, i, float((a != b).mean()))
    for i, (a, b) in enumerate(zip(trt_res, ort_res)):
        assert a is not None and b is not None and a > 0
        assert abs(a - b) <= RESIDUAL_REL[precision] * b, (precision, i, a, b)
