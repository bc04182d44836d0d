"""``--solver auto``: plain iterations until a stream's residual grows within a frame, then Anderson.

References: the same run with ``--solver fixed_point`` (frame 0 starts from zero in both, so its last two plain
residuals decide the switch) and with a contractive cell (auto must then change nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.run import main
from tests.runtime.conftest import H, W, contract, moving_frames, write_clip


@pytest.fixture(scope="module")
def loose_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MDEQ whose cell is not a contraction: plain iteration from zero stalls near a relative residual of
    0.8 and grows between its 7th and 8th evaluation, while Anderson gets to about 0.19 in 12."""
    from export.bundle import export_bundle
    from export.config import get_config
    from export.mdeq import build_model

    model = contract(build_model(get_config("tiny"), seed=0), conv1=1.0, gn2=3.0)
    out = tmp_path_factory.mktemp("loose") / "engines"
    export_bundle(model, out, H, W, batch=1, formats=("onnx",))
    return out


def _run(bundle: Path, clip: Path, out: Path, *extra: str) -> tuple[list[dict], dict]:
    rc = main(["--engine", str(bundle / "deq_cell.onnx"), str(clip), "--out", str(out), "--no-video", "--no-progress",
               "--no-reset", "--device", "cpu", *extra])  # fmt: skip
    assert rc == 0
    recs = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    return recs, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("auto") / "clip.mp4", moving_frames(6))


def test_auto_switches_to_anderson_after_the_residual_grows(loose_bundle, clip, tmp_path) -> None:
    torch.set_num_threads(1)
    plain7, _ = _run(loose_bundle, clip, tmp_path / "p7", "--iters", "7")
    plain8, _ = _run(loose_bundle, clip, tmp_path / "p8", "--iters", "8")
    auto, summary = _run(loose_bundle, clip, tmp_path / "auto", "--iters", "8", "--solver", "auto")
    # precondition from the plain runs: frame 0 (from zero in all three) grows over its last iteration
    assert plain8[0]["residual"] > plain7[0]["residual"]
    assert auto[0]["solver"] == "fixed_point" and auto[0]["residual"] == pytest.approx(plain8[0]["residual"], rel=1e-5)
    assert [r["solver"] for r in auto[1:]] == ["anderson"] * (len(auto) - 1)
    # and Anderson gets closer to the fixed point than plain iteration at the same count, frame by frame
    assert all(a["residual"] < 0.8 * p["residual"] for a, p in zip(auto[1:], plain8[1:]))
    assert summary["streams"][0]["solved_by"] == {"fixed_point": 1, "anderson": len(auto) - 1}
    assert summary["solver"] == "auto"


def test_auto_changes_nothing_where_the_cell_contracts(bundle64, clip, tmp_path) -> None:
    torch.set_num_threads(1)
    plain, _ = _run(bundle64, clip, tmp_path / "plain", "--iters", "3")
    auto, summary = _run(bundle64, clip, tmp_path / "auto", "--iters", "3", "--solver", "auto")
    assert {r["solver"] for r in auto} == {"fixed_point"}
    np.testing.assert_allclose([r["residual"] for r in auto], [r["residual"] for r in plain], rtol=1e-6)
    assert "solver" not in plain[0] and summary["streams"][0]["solved_by"] == {"fixed_point": len(auto)}
