"""Motion vectors of ordinary H.264 files (B-frames, several reference frames): every forward vector resolved to the
frame it references and expressed as displacement from the previous frame, checked against a known translation."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from runtime import motion_vectors as mv
from runtime.encode import VideoWriter
from runtime.run import main
from runtime.solve import Solve
from tests.runtime.conftest import decode_clip
from tests.runtime.test_motion_vectors import VX, VY, encode, render, texture
from tests.runtime.test_propagation import pan_frames

av = pytest.importorskip("av", reason="PyAV is not installed (the GPU machines lack it unless carried)")

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


def test_ties_go_to_the_frames_usual_reference() -> None:
    """A P picture after two B pictures references the frame 3 back: a textured block shows it; a flat block matches
    every past frame and must take that span too, not the nearest frame's (which would triple its motion)."""
    rng = np.random.default_rng(0)
    h, w = 64, 64
    world = rng.integers(0, 256, (h, w + 16)).astype(np.uint8)
    world[:, :24] = 128  # a flat strip
    past = [world[:, 12 - 2 * k : 12 - 2 * k + w] for k in range(3, 0, -1)]  # cur(p) = frame k back(p + 2k)
    cur = world[:, 12 : 12 + w]
    res = mv.ReferenceResolver(window=4)
    for i, img in enumerate(past, start=7):
        res.remember(i, img)
    dt = np.dtype([("source", "i4"), ("w", "u1"), ("h", "u1"), ("dst_x", "i2"), ("dst_y", "i2"),
                   ("motion_x", "i4"), ("motion_y", "i4"), ("motion_scale", "u2")])  # fmt: skip
    rows = [(-1, 16, 16, x, y, 6 * 4, 0, 4) for x in (8, 24, 40, 56) for y in (8, 24, 40, 56)]
    blocks, motion, spans = res._spans(np.array(rows, dtype=dt), cur, 10)
    assert (spans == 3).all(), spans
    np.testing.assert_allclose(motion[0], 2.0)  # per frame: 6 px over 3 frames


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
    """--reencode-mv: one line, no multi-frame note, every frame's vectors single-reference and on the true motion."""
    rc = _cli(bundle64 / "deq_cell.onnx", bclip, tmp_path / "o", "--mode", "stream-mv", "--iters", "1", "--reencode-mv")
    err = capsys.readouterr().err
    assert rc == 0 and "re-encoding on the fly for single-reference motion vectors" in err and "may span" not in err
    assert len(_records(tmp_path / "o")) == 30


def test_reencoding_source_gives_single_reference_vectors(bclip) -> None:
    """On the fly (as for a live source): P pictures only after the first, every vector one frame back, the pan's
    4 px per frame (content moves left: cur(p) = prev(p + 4)), and the original pixels."""
    from runtime.mv_source import ReencodingSource
    from runtime.sources import open_source

    src = ReencodingSource(open_source(str(bclip)))
    items = list(src)
    src.close()
    assert len(items) == 30 and src.errors == 0
    fields_ = [side["motion"] for _, _, _, side in items]
    assert fields_[0].is_key and {f.pict_type for f in fields_[1:]} == {"P"}
    for f in fields_[2:]:
        inner = f.disp[0][2:-2, 2:-2][f.valid[2:-2, 2:-2]]
        assert f.mean_span == 1.0 and np.median(np.abs(inner - 1.0)) < 0.05  # 4 px = one stride-4 cell
    np.testing.assert_array_equal(items[5][0], decode_clip(bclip)[5])


def test_p_only_stream_with_several_references_is_reported(bundle64, tmp_path, capsys) -> None:
    path = tmp_path / "refs3.mp4"
    with VideoWriter(path, 10, {"crf": "14", "preset": "medium", "x264-params": "bframes=0:ref=3"}) as out:
        for f in pan_frames(8):
            out.write(f)
    assert _cli(bundle64 / "deq_cell.onnx", path, tmp_path / "o", "--mode", "stream-mv", "--iters", "1") == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "max_ref_frames=3" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: ")


@pytest.mark.parametrize(
    "mode, codec",
    [("mv", "libx265"), ("stream-mv", "libx265"), ("mv-interp", "libx265"), ("mv", "libvpx-vp9")],
)
def test_hevc_falls_back_to_stream_mode(bundle64, tmp_path, capsys, mode: str, codec: str) -> None:
    """HEVC (and VP9) export no motion vectors: one line, stream mode (2 iterations for mv-interp, whose --iters
    counts key frames), the policy in every record and in the summary."""
    if codec not in av.codecs_available:
        pytest.skip(f"PyAV build without {codec}")
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, 10, {"x265-params": "log-level=error"} if codec == "libx265" else {}, codec=codec) as out:
        for f in pan_frames(8):
            out.write(f)
    name = "hevc" if codec == "libx265" else "vp9"
    rc = _cli(bundle64 / "deq_cell.onnx", path, tmp_path / "o", "--mode", mode)
    err = capsys.readouterr().err
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if "no motion vectors" in ln]
    assert len(lines) == 1 and f"--mode {mode} runs as stream mode" in lines[0]
    recs = _records(tmp_path / "o")
    assert len(recs) == 8 and all(r["mode"] == "stream" and r["fallback"].startswith(f"stream: {name}") for r in recs)
    assert [r["iterations"] for r in recs[1:]] == [2] * 7
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["fallback"]["requested_mode"] == mode and summary["fallback"]["mode"] == "stream"
    if mode == "mv":  # --reencode-mv runs the mode as asked, on vectors of an on-the-fly H.264 re-encode
        assert _cli(bundle64 / "deq_cell.onnx", path, tmp_path / "r", "--mode", mode, "--reencode-mv") == 0
        assert f"re-encoding on the fly for single-reference motion vectors ({name} carries none)" in (
            capsys.readouterr().err
        )
        recs = _records(tmp_path / "r")
        assert all(r["mode"] == "mv" and "fallback" not in r for r in recs)
        assert [r["iterations"] > 0 for r in recs] == [True, False, False, False, False, True, False, False]


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


@pytest.fixture(scope="module")
def cut_bclip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """A validation clip (seed 900000, never a test seed) with one shot change, x264 B-frames and 3 references."""
    from export.synthetic import render_clip_with_meta
    from runtime.encode import EncodeOptions, encode_mp4
    from tests.runtime.conftest import H, W

    frames, _, _, meta = render_clip_with_meta(900_000, 30, H, W, shot_change=True)
    path = tmp_path_factory.mktemp("cutb") / "cut.mp4"
    encode_mp4(path, frames, EncodeOptions(crf=20, bframes=3, refs=3, gop=250))
    return path, meta["cuts"]


@pytest.mark.parametrize(
    "args", [("--mode", "stream", "--iters", "1"), ("--mode", "mv", "--key-interval", "5"), ("--mode", "stream-mv")]
)
def test_each_cut_resets_once_with_its_cause(bundle64, cut_bclip, tmp_path, args) -> None:
    """One from-zero start per shot change (no second one on the next frame at k = 1, none on B pictures), its cause
    in the record and counted in the summary."""
    path, cuts = cut_bclip
    assert len(cuts) == 1
    assert _cli(bundle64 / "deq_cell.onnx", path, tmp_path / "o", *args) == 0
    recs = _records(tmp_path / "o")
    zero = [r for r in recs if r["start"] == "zero" and r["frame"] > 0]
    assert [r["frame"] for r in zero] == cuts and zero[0]["reset"].startswith("shot change")
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert sum(summary["streams"][0]["reset_causes"].values()) == 1


def test_fallback_policy_without_vectors() -> None:
    """mv / mv-interp -> dff when the bundle has a FlowNet, else stream; stream-mv -> stream at its --iters (>= 1);
    a stream with vectors or another mode is left alone."""
    from types import SimpleNamespace

    from runtime.loop import RunConfig
    from runtime.mv_source import fallback_without_vectors

    hevc = SimpleNamespace(no_vectors="hevc", name="a.mp4")
    lines: list[str] = []
    with_flow, without = SimpleNamespace(engines={"flownet": 1}), SimpleNamespace(engines={})
    cases = [
        ("mv", 3, with_flow, "dff", 3),
        ("mv-interp", 20, with_flow, "dff", 2),
        ("mv-interp", 20, without, "stream", 2),
        ("stream-mv", 0, with_flow, "stream", 1),
        ("mv", 3, without, "stream", 3),
    ]
    for mode, iters, bundle, want, want_iters in cases:
        cfg = fallback_without_vectors(
            RunConfig(engine="e", sources=[], mode=mode, iters=iters), [hevc], bundle, lines.append
        )
        assert (cfg.mode, cfg.iters) == (want, want_iters), (mode, cfg.mode, cfg.iters)
        assert cfg.extra["summary"]["fallback"]["requested_mode"] == mode and cfg.extra["record"]["fallback"]
    assert len(lines) == len(cases) and all("hevc carries no motion vectors" in ln for ln in lines)
    for bundle, want in ((without, "stream"), (with_flow, "dff")):  # mv's default key frames iterate to a tolerance
        cfg = RunConfig(engine="e", sources=[], mode="mv", iters=20, key_solve=Solve(tol=0.01))
        cfg = fallback_without_vectors(cfg, [hevc], bundle, lines.append)
        assert (cfg.mode, cfg.iters, cfg.key_solve) == (want, 2, None)
    cfg = RunConfig(engine="e", sources=[], mode="mv")
    assert fallback_without_vectors(cfg, [SimpleNamespace(name="b.mp4")], without, lines.append) is cfg
    cfg = RunConfig(engine="e", sources=[], mode="stream")
    assert fallback_without_vectors(cfg, [hevc], without, lines.append) is cfg


@pytest.mark.parametrize(
    "extra, want",
    [((), ("f_thres", 0.01)), (("--iters", "3"), (3, None)), (("--tol", "0.1"), (2, None)),
     (("--key-start", "zero"), (2, None))],
)  # fmt: skip
def test_mv_key_frames_default_to_a_tolerance(bundle64, extra: tuple[str, ...], want: tuple) -> None:
    """mv without --iters/--tol: warm key frames iterate until the relative residual is below MV_KEY_TOL (at most
    f_thres); an explicit --iters, --tol or --key-start zero keeps the earlier meaning."""
    from runtime.bundle import open_bundle
    from runtime.run import MV_KEY_TOL, _validate, build_parser, config_from_args

    p = build_parser()
    args = p.parse_args(["--engine", str(bundle64 / "deq_cell.onnx"), "clip.mp4", "--mode", "mv", *extra])
    _validate(p, args)
    cfg = config_from_args(args, ["clip.mp4"])
    f_thres = open_bundle(bundle64 / "deq_cell.onnx", check_hash=False).f_thres
    key_tol = cfg.key_solve.tol if cfg.key_solve is not None else None
    assert (cfg.iters, key_tol) == tuple(f_thres if w == "f_thres" else w for w in want)
    assert MV_KEY_TOL == 0.01 and cfg.solve.tol == (0.1 if "--tol" in extra else None)


def test_mv_default_key_frames_stop_at_the_tolerance(bundle64, bclip, tmp_path) -> None:
    """The default's key frames stop once the residual is below 0.01 (checked every 4 iterations), or at f_thres."""
    assert _cli(bundle64 / "deq_cell.onnx", bclip, tmp_path / "o", "--mode", "mv", "--key-interval", "4") == 0
    from runtime.bundle import open_bundle

    f_thres = open_bundle(bundle64 / "deq_cell.onnx", check_hash=False).f_thres
    keys = [r for r in _records(tmp_path / "o") if r["iterations"] > 0 and r["start"] == "previous"]
    assert keys and all(r["residual"] < 0.01 or r["iterations"] == f_thres for r in keys)
    assert all(r["iterations"] % 4 == 0 or r["iterations"] == f_thres for r in keys)
    assert any(r["iterations"] < f_thres for r in keys)  # warm keys of a contraction stop early
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["solve"]["tol"] == 0.01
