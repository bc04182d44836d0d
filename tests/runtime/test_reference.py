"""Runtime class maps vs the PyTorch model run with the same iterations (frame and stream)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.loop import RunConfig, run
from runtime.solve import Solve
from runtime.writers import read_maps
from tests.runtime.conftest import H, W, decode_clip


def reference_maps(model: torch.nn.Module, frames: np.ndarray, iters: int, stream: bool) -> np.ndarray:
    """Class maps from PyTorch: z = 0 per frame, or carried across frames (StreamDEQ)."""
    from export.mdeq import ClassMapHead

    head = ClassMapHead(model.head, (H, W)).eval()
    out, z = [], None
    with torch.no_grad():
        for f in frames:
            state, _ = model.solve(torch.from_numpy(f)[None], iters, z if stream else None)
            z = state
            out.append(head(*state)[0].numpy())
    return np.stack(out)


def runtime_maps(bundle: Path, clip: Path, out: Path, mode: str, iters: int, **kw: object) -> tuple[np.ndarray, dict]:
    summary = run(
        RunConfig(
            engine=bundle / "deq_cell.onnx",
            sources=[str(clip)],
            out=out,
            mode=mode,
            iters=iters,
            save_maps="npz",
            video=False,
            progress=False,
            **kw,
        )
    )
    return np.stack(list(read_maps(out / "maps.npz").values())), summary


@pytest.mark.parametrize("mode,iters", [("frame", 6), ("stream", 2)])
def test_matches_pytorch(tiny_model, bundle64, clip64, tmp_path, mode, iters):
    frames = decode_clip(clip64)
    got, summary = runtime_maps(bundle64, clip64, tmp_path, mode, iters, reset=False)
    want = reference_maps(tiny_model, frames, iters, stream=mode == "stream")
    assert got.shape == want.shape == (len(frames), H, W)
    assert (got != want).mean() < 1e-3  # argmax ties may flip a boundary pixel, a wrong loop flips many
    assert summary["streams"][0]["mean_iterations"] == iters


def test_stream_differs_from_frame_with_few_iterations(tiny_model, bundle64, clip64, tmp_path):
    """Guard against a loop that ignores the warm start: stream k=1 != frame k=1 after frame 0."""
    a, _ = runtime_maps(bundle64, clip64, tmp_path / "s", "stream", 1, reset=False)
    b, _ = runtime_maps(bundle64, clip64, tmp_path / "f", "frame", 1)
    assert (a[0] == b[0]).all()
    assert (a[1:] != b[1:]).mean() > 0.01


def test_solvers_in_runtime_reach_same_maps(tiny_model, bundle64, clip64, tmp_path):
    """Anderson and Broyden with a tolerance land on the same fixed point as 30 plain iterations."""
    frames = decode_clip(clip64)[:2]
    want = reference_maps(tiny_model, frames, 30, stream=False)
    for solver in ("anderson", "broyden"):
        got, summary = runtime_maps(
            bundle64, clip64, tmp_path / solver, "frame", 30, solve=Solve(solver, tol=1e-5, check_every=1), max_frames=2
        )
        assert (got != want).mean() < 1e-3, solver
        assert summary["streams"][0]["mean_iterations"] < 30, solver


def test_relaxed_bundle_matches_pytorch_and_reports_the_models_own_step(tiny_model, clip64, tmp_path):
    """A bundle of a relaxed cell (export MDEQConfig.relax = 0.7): the maps are the relaxed PyTorch model's, and the
    mean residual is f's step ||f(z) - z|| / ||g(z)||, computed here from the unrelaxed cell at the relaxed iterates."""
    import dataclasses

    from export.bundle import export_bundle
    from export.mdeq import build_model

    relaxed = build_model(dataclasses.replace(tiny_model.cfg, relax=0.7)).eval()
    relaxed.load_state_dict(tiny_model.state_dict())
    bundle = tmp_path / "engines"
    export_bundle(relaxed, bundle, H, W, batch=1, formats=("onnx",))
    frames = decode_clip(clip64)[:3]
    got, summary = runtime_maps(bundle, clip64, tmp_path / "run", "frame", 3, max_frames=3)
    assert (got != reference_maps(relaxed, frames, 3, stream=False)).mean() < 1e-3
    want = []
    with torch.no_grad():
        for f in frames:
            z, x = relaxed.solve(torch.from_numpy(f)[None], 2)
            fz, gz = tiny_model.fullstage(*z, x), relaxed.fullstage(*z, x)
            num = sum(float((a - b).pow(2).sum()) for a, b in zip(fz, z))
            den = sum(float(g.pow(2).sum()) for g in gz)
            want.append((num / den) ** 0.5)
    assert summary["streams"][0]["mean_residual"] == pytest.approx(np.mean(want), rel=1e-3)
