"""Motion vectors of ordinary H.264 files (B-frames, several reference frames): every forward vector resolved to the
frame it references and expressed as displacement from the previous frame, checked against a known translation."""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import av
import numpy as np
import pytest

from runtime import motion_vectors as mv
from runtime.encode import VideoWriter
from runtime.run import main
from tests.runtime.test_motion_vectors import VX, VY, encode, render, texture
from tests.runtime.test_propagation import pan_frames

pytestmark = pytest.mark.skipif("libx264" not in av.codecs_available, reason="PyAV build without libx264")
FRAMES = 24


@pytest.fixture(scope="module")
def pan() -> list[np.ndarray]:
    tex = texture(seed=3)
    return [render(tex, t) for t in range(FRAMES)]


def fields(path: Path, stride: int) -> list[mv.MotionField]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mv.MultiFrameMotionWarning)
        with mv.MotionVectorDecoder(path, stride=stride) as dec:
            return [f for _, f in dec]


@pytest.mark.parametrize("options", [{"bf": "3", "refs": "3"}, {"bf": "2", "refs": "1"}, {"bf": "0", "refs": "4"}])
def test_displacement_of_p_and_b_pictures(pan, tmp_path: Path, options: dict[str, str]) -> None:
    """Stride 16: every inner cell of every P and B picture within 0.25 feature px of the true motion; stride 4: 95 %
    of them. Without resolving, a vector to the frame n back reads n times the motion (checked to be present)."""
    path = encode(tmp_path / "clip.mp4", pan, options)
    raw_spans = []
    for stride, share in ((16, 1.0), (4, 0.95)):
        out = fields(path, stride)
        assert len(out) == FRAMES and out[0].is_key
        kinds = {f.pict_type for f in out[1:]}
        assert kinds == ({"P"} if options["bf"] == "0" else {"P", "B"})
        want = np.array([-VX, -VY]) / stride
        b = max(1, 16 // stride)
        for f in out[1:]:
            valid = f.valid[b:-b, b:-b]
            assert valid.mean() > 0.5, f"frame {f.index} ({f.pict_type}): {valid.mean():.2f} covered"
            err = np.abs(f.disp[:, b:-b, b:-b] - want[:, None, None]).max(axis=0)[valid]
            ok = float((err <= 0.25).mean())
            assert ok >= share, f"stride {stride}, frame {f.index} ({f.pict_type}): {ok:.3f} within 0.25"
            raw_spans.append(f.mean_span)
    assert max(raw_spans) > 1.5  # the stream really has vectors reaching several frames back


def test_single_reference_stream_needs_no_matching(pan, tmp_path: Path) -> None:
    path = encode(tmp_path / "p.mp4", pan[:6], {"bf": "0", "refs": "1"})
    with mv.MotionVectorDecoder(path, stride=16) as dec:
        assert dec.resolver.single
        assert all(f.mean_span == 1.0 and f.dropped == 0.0 for _, f in list(dec)[1:])


def test_composition_uses_the_chain_of_earlier_frames() -> None:
    """A vector to the frame 2 back = this frame's motion + the previous frame's motion (the chain), not twice either:
    with an accelerating block the composed displacement is v - G, not v / 2."""
    res = mv.ReferenceResolver(window=4)
    h, w = 32, 32
    g = np.full((2, h // mv.UNIT, w // mv.UNIT), np.nan, np.float32)
    g[:, :, :] = np.array([1.0, 0.0], np.float32)[:, None, None]  # previous frame from the one before: 1 px right
    res.fields.append((9, g))
    dt = np.dtype([("w", "u1"), ("h", "u1"), ("dst_x", "i2"), ("dst_y", "i2")])
    blocks = np.array([(16, 16, 8, 8)], dtype=dt)
    d = res._compose(blocks, np.array([[4.0], [0.0]]), np.array([2]), 10)
    np.testing.assert_allclose(d[:, 0], [3.0, 0.0])
    res.fields.clear()
    d = res._compose(blocks, np.array([[4.0], [0.0]]), np.array([2]), 10)
    np.testing.assert_allclose(d[:, 0], [2.0, 0.0])  # no chain: constant velocity


# ----------------------------------------------------------------------------- end to end through the CLI
def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]


def _cli(engine: Path, clip: Path, out: Path, *args: str) -> int:
    return main(
        ["--engine", str(engine), str(clip), "--out", str(out), "--no-progress", "--save-maps", "none", "--no-video"]
        + list(args)
    )


@pytest.fixture(scope="module")
def bclip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 px/frame pan with x264's usual settings: B-frames (pyramid) and three reference frames."""
    frames = pan_frames(30)
    path = tmp_path_factory.mktemp("bclip") / "b.mp4"
    with VideoWriter(path, 10, {"crf": "14", "preset": "medium", "x264-params": "bframes=3:ref=3"}) as out:
        for f in frames:
            out.write(f)
    return path


def test_mv_on_a_bframe_file_propagates_and_warns_in_one_line(bundle64, bclip, tmp_path, capsys) -> None:
    """--mode mv --key-interval 5 on an ordinary B-frame file: the cell runs on the first frame and every 5th (no
    coverage "shot changes" on B pictures), and the multi-frame note is one CLI line, not a Python warning."""
    assert "B" in {f.pict_type for f in fields(bclip, 16)}
    rc = _cli(bundle64 / "deq_cell.onnx", bclip, tmp_path / "o", "--mode", "mv", "--key-interval", "5")
    err = capsys.readouterr().err
    assert rc == 0
    recs = _records(tmp_path / "o")
    ran = [r["frame"] for r in recs if r["iterations"] > 0]
    assert ran == list(range(0, 30, 5)), ran
    assert all(r["reset"] is None for r in recs[1:] if r["frame"] % 5) and len(ran) / len(recs) <= 0.3
    lines = [ln for ln in err.splitlines() if "motion vectors may span" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "re-encode" in lines[0]
    assert "UserWarning" not in err and "motion_vectors.py" not in err


def test_reencode_flag(bundle64, bclip, tmp_path, capsys) -> None:
    before = set(Path(tempfile.gettempdir()).glob("deqstream_mv_*"))
    rc = _cli(bundle64 / "deq_cell.onnx", bclip, tmp_path / "o", "--mode", "stream-mv", "--iters", "1", "--reencode-mv")
    err = capsys.readouterr().err
    assert rc == 0 and "re-encoded for single-reference motion vectors" in err and "may span" not in err
    assert len(_records(tmp_path / "o")) == 30
    assert set(Path(tempfile.gettempdir()).glob("deqstream_mv_*")) == before  # the temporary file is gone


def test_p_only_stream_with_several_references_is_reported(bundle64, tmp_path, capsys) -> None:
    path = tmp_path / "refs3.mp4"
    with VideoWriter(path, 10, {"crf": "14", "preset": "medium", "x264-params": "bframes=0:ref=3"}) as out:
        for f in pan_frames(8):
            out.write(f)
    assert _cli(bundle64 / "deq_cell.onnx", path, tmp_path / "o", "--mode", "stream-mv", "--iters", "1") == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "max_ref_frames=3" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: ")


@pytest.mark.skipif("libx265" not in av.codecs_available, reason="PyAV build without libx265")
@pytest.mark.parametrize("mode", ["mv", "stream-mv", "mv-interp"])
def test_hevc_falls_back_to_stream_mode(bundle64, tmp_path, capsys, mode: str) -> None:
    """HEVC exports no motion vectors: one line, stream mode (2 iterations for mv-interp, whose --iters counts key
    frames), the policy in every record and in the summary."""
    path = tmp_path / "hevc.mp4"
    with VideoWriter(path, 10, {"x265-params": "log-level=error"}, codec="libx265") as out:
        for f in pan_frames(8):
            out.write(f)
    rc = _cli(bundle64 / "deq_cell.onnx", path, tmp_path / "o", "--mode", mode)
    err = capsys.readouterr().err
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if "no motion vectors" in ln]
    assert len(lines) == 1 and f"--mode {mode} runs as stream mode" in lines[0]
    recs = _records(tmp_path / "o")
    assert len(recs) == 8 and all(r["mode"] == "stream" and r["fallback"].startswith("stream: hevc") for r in recs)
    assert [r["iterations"] for r in recs[1:]] == [2] * 7
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["fallback"]["requested_mode"] == mode and summary["fallback"]["mode"] == "stream"


def test_dff_runs_on_an_image_folder(bundle64, tmp_path) -> None:
    from PIL import Image

    from export.flownet_export import add_flownet, identity_flownet
    from tests.runtime.test_propagation import CHANNELS

    eng = tmp_path / "engines"
    shutil.copytree(bundle64, eng)
    add_flownet(eng, identity_flownet(CHANNELS))
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(pan_frames(6)):
        Image.fromarray(f).save(folder / f"{i:03d}.png")
    assert _cli(eng / "deq_cell.onnx", folder, tmp_path / "o", "--mode", "dff", "--key-interval", "3") == 0
    assert [r["iterations"] > 0 for r in _records(tmp_path / "o")] == [True, False, False, True, False, False]
