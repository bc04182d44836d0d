"""The accuracy benchmark machinery on a tiny clip set with a randomly initialised model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.accuracy import (
    SPLIT_SEEDS,
    TorchStepper,
    _solve,
    clip_dir,
    main,
    prepare_clips,
    run_accuracy,
    write_outputs,
)
from export.config import get_config
from export.mdeq import build_model
from export.metrics import confusion, iou_per_class, miou

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_miou_matches_hand_computation() -> None:
    pred = np.array([[0, 0, 1], [1, 2, 2]])
    label = np.array([[0, 1, 1], [1, 2, 0]])
    # class 0: tp 1, union {0,1,5} = 3; class 1: tp 2, union {1,2,3} = 3; class 2: tp 1, union {4,5} = 2
    expected = (1 / 3 + 2 / 3 + 1 / 2) / 3
    assert miou(confusion(pred, label, 3)) == pytest.approx(expected)
    ious = iou_per_class(confusion(pred, label, 4))  # class 3 never occurs: ignored, not zero
    assert np.isnan(ious[3]) and miou(confusion(pred, label, 4)) == pytest.approx(expected)
    label_ign = label.copy()
    label_ign[1, 2] = 255  # ignored pixel drops out: class 0 now tp 1 / union 2, class 2 tp 1 / union 1
    assert miou(confusion(pred, label_ign, 3)) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)


def test_validation_and_test_clips_are_disjoint_and_cached_apart(tmp_path) -> None:
    """Settings are tuned on validation seeds and numbers reported on test seeds: no clip in both,
    even with many more clips than the benchmarks use, and the caches never collide."""
    val, test = (set(range(s, s + 1000)) for s in (SPLIT_SEEDS["validation"], SPLIT_SEEDS["test"]))
    assert not val & test
    assert clip_dir(tmp_path, 0, 30, 256, 512, SPLIT_SEEDS["validation"]) != clip_dir(
        tmp_path, 0, 30, 256, 512, SPLIT_SEEDS["test"]
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("acc")
    torch.manual_seed(0)
    model = build_model(get_config("tiny"), seed=3).eval()
    clips = prepare_clips(root / "clips", 2, 3, 64, 128)
    rows = run_accuracy(TorchStepper(model), clips, ks=(1, 2), f_thres=3)
    return model, clips, rows, root


def test_rows_and_invariants(tiny_run) -> None:
    model, clips, rows, _ = tiny_run
    assert set(rows) == {"converged"} | {f"{m} k={k}" for m in ("per-frame", "stream", "stream+reset") for k in (1, 2)}
    for s in rows.values():
        assert 0.0 <= s["miou"] <= 1.0 and len(s["per_frame_miou"]) == 3
    assert rows["converged"]["distance"] == 0.0
    # frame 0 of a stream starts from z = 0, exactly like per-frame
    assert rows["stream k=2"]["per_frame_miou"][0] == rows["per-frame k=2"]["per_frame_miou"][0]
    assert rows["stream k=2"]["per_frame_distance"][0] == pytest.approx(rows["per-frame k=2"]["per_frame_distance"][0])


class _Contraction:
    """A stand-in model with a known solution: z <- 0.9 z + x, x = the frame's mean; class 1 where z > 0."""

    num_classes = 2

    def inject(self, frame: np.ndarray) -> float:
        return float(frame.mean())

    def zeros(self, height: int, width: int) -> list[torch.Tensor]:
        return [torch.zeros(1, 1, height, width, dtype=torch.float64)]

    def cell(self, z: list[torch.Tensor], x: float) -> list[torch.Tensor]:
        return [0.9 * z[0] + x]

    def classes(self, z: list[torch.Tensor], height: int, width: int) -> np.ndarray:
        return (z[0][0, 0] > 0).numpy().astype(np.int64)


def test_stream_reset_restarts_at_a_shot_change() -> None:
    """Six frames of x = 1, then a cut to x = -3. Streaming k=1 carries z = 4.7 over and still says
    class 1 (z = 1.2); the runtime's residual-jump rule resets, so stream+reset equals per-frame
    (z = -3, class 0) at the cut, and equals stream before it."""
    frames = np.concatenate([np.full((6, 4, 4, 3), 1.0), np.full((3, 4, 4, 3), -3.0)])
    labels = np.concatenate([np.ones((6, 4, 4), np.int64), np.zeros((3, 4, 4), np.int64)])
    rows = run_accuracy(_Contraction(), [(frames, labels, {})], ks=(1,), f_thres=60)
    pf, st, rs = (rows[f"{m} k=1"]["per_frame_miou"] for m in ("per-frame", "stream", "stream+reset"))
    assert st[6] == 0.0 and rs[6] == pf[6] == 1.0
    assert rs[:6] == st[:6]


class _Brightness(_Contraction):
    """x barely moves with the picture (1.0 -> 1.1 at a cut from black to white), so the residual rule stays quiet."""

    def inject(self, frame: np.ndarray) -> float:
        return 1.0 + 0.1 * float(frame.mean() > 127)


def test_stream_reset_restarts_at_a_pixel_cut() -> None:
    """A cut the residual can't see (x: 1.0 -> 1.1) but the pixels can (0 -> 255): the before-rule
    starts stream+reset from zero, so at the cut it equals per-frame, and streaming does not."""
    frames = np.concatenate([np.zeros((6, 16, 16, 3), np.uint8), np.full((3, 16, 16, 3), 255, np.uint8)])
    labels = np.ones((9, 16, 16), np.int64)
    rows = run_accuracy(_Brightness(), [(frames, labels, {})], ks=(1,), f_thres=60)
    pf, st, rs = (rows[f"{m} k=1"]["per_frame_distance"] for m in ("per-frame", "stream", "stream+reset"))
    assert rs[6] == pytest.approx(pf[6]) and abs(st[6] - pf[6]) > 0.1
    assert rs[:6] == st[:6]
    # --reset-iters: the first frame and the frame after the cut get 60 iterations from zero (converged), the rest k
    rows = run_accuracy(_Brightness(), [(frames, labels, {})], ks=(1,), f_thres=60, reset_iters=60)
    rs60, st60 = rows["stream+reset k=1"]["per_frame_distance"], rows["stream k=1"]["per_frame_distance"]
    assert rs60[0] == pytest.approx(0.0, abs=1e-9) and rs60[6] == pytest.approx(0.0, abs=1e-9)
    assert rs60[1] < 0.01 < st[1] and st60 == st  # warm frames after a converged start stay close; stream is k


def test_reset_rule_judges_the_runtime_solvers_residual() -> None:
    """stream+reset feeds ResetMonitor the residual runtime.solvers.fixed_point reports (the last
    step's change), not the table's ||f(z) - z|| / ||z||; both computed on a nonlinear cell."""
    from runtime.solvers import fixed_point

    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 16, generator=g, dtype=torch.float64) / 4
    x, z0 = (torch.randn(16, generator=g, dtype=torch.float64) for _ in range(2))
    cell = lambda z: torch.tanh(w @ z + x)  # noqa: E731

    class Stepper:
        def cell(self, z: list, _x: object) -> list:
            return [cell(z[0])]

    for k in (1, 3):
        z, table, step = _solve(Stepper(), [z0.clone()], None, k)
        zr, info = fixed_point(lambda a, b: b.copy_(cell(a)), z0.clone(), k)
        torch.testing.assert_close(z[0], zr)
        assert step == pytest.approx(info.residuals()[0], rel=1e-9)
        assert abs(table - step) > 1e-3 * step  # the two definitions differ, so the test can tell them apart


def test_per_frame_miou_matches_independent_forward(tiny_run) -> None:
    """Recompute per-frame k=1 with the model's own forward and a hand-written mIoU."""
    model, clips, rows, _ = tiny_run
    nc = model.cfg.num_classes
    tp, fp, fn = np.zeros(nc), np.zeros(nc), np.zeros(nc)
    with torch.no_grad():
        for frames, labels, _ in clips:
            for f, lab in zip(frames, labels):
                logits = model(torch.from_numpy(f[None]), iters=1)
                up = torch.nn.functional.interpolate(logits, size=lab.shape, mode="bilinear", align_corners=True)
                pred = up.argmax(1)[0].numpy()
                for c in range(nc):
                    tp[c] += np.sum((pred == c) & (lab == c))
                    fp[c] += np.sum((pred == c) & (lab != c))
                    fn[c] += np.sum((pred != c) & (lab == c))
    present = (tp + fp + fn) > 0
    expected = np.mean(tp[present] / (tp + fp + fn)[present])
    assert rows["per-frame k=1"]["miou"] == pytest.approx(expected)


def test_outputs_written(tiny_run) -> None:
    model, _, rows, root = tiny_run
    stamp = {"command": "test", "machine": "test", "date": "now", "clips": 2, "frames": 3, "height": 64,
             "width": 128, "f_thres": 3}  # fmt: skip
    results = {"random": {"checkpoint_meta": {"mode": "none"}, "rows": rows}}
    md, js, png = write_outputs(results, stamp, root / "out", "accuracy_test")
    assert "| stream | 2 |" in md.read_text() and png.stat().st_size > 1000
    assert json.loads(js.read_text())["results"]["random"]["rows"]["converged"]["miou"] == rows["converged"]["miou"]


def test_cli_end_to_end_and_bad_checkpoint(tiny_run, capsys) -> None:
    model, _, _, root = tiny_run
    ckpt = root / "rand.pt"
    torch.save({"format": "deqstream-ckpt/1", "config": model.cfg.to_dict(), "state_dict": model.state_dict(),
                "meta": {"mode": "none"}}, ckpt)  # fmt: skip
    args = ["--checkpoint", str(ckpt), "--out", str(root / "cli"), "--data", str(root / "clips"), "--clips", "1",
            "--frames", "2", "--height", "64", "--width", "128", "--ks", "1", "--f-thres", "2"]  # fmt: skip
    assert main(args) == 0
    assert (root / "cli" / "accuracy.md").exists() and (root / "cli" / "accuracy.png").exists()
    stamp = json.loads((root / "cli" / "accuracy.json").read_text())["stamp"]
    assert stamp["split"] == "test" and stamp["heldout_seed"] == SPLIT_SEEDS["test"]
    assert main([*args, "--split", "validation"]) == 0
    stamp = json.loads((root / "cli" / "accuracy_validation.json").read_text())["stamp"]
    assert stamp["split"] == "validation" and stamp["heldout_seed"] == SPLIT_SEEDS["validation"]
    bad = root / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main([*args[:1], str(bad), *args[2:]]) == 2
    assert capsys.readouterr().err.startswith("error:")


@pytest.fixture(scope="module")
def tiny_bundle(tiny_run):
    from export.bundle import export_bundle

    model, _, _, root = tiny_run
    export_bundle(model, root / "bundle", 64, 128, weights={"mode": "none", "checkpoint": "rand.pt"})
    return root / "bundle" / "deq_cell.onnx"


def test_engine_stepper_matches_pytorch(tiny_run, tiny_bundle) -> None:
    """The engines through the runtime's runners give the eager model's rows (same metric code)."""
    from benchmarks.accuracy import EngineStepper

    _, clips, rows, _ = tiny_run
    eng = run_accuracy(EngineStepper(tiny_bundle, threads=1), clips, ks=(1, 2), f_thres=3)
    assert set(eng) == set(rows)
    for name in rows:
        assert eng[name]["miou"] == pytest.approx(rows[name]["miou"], abs=2e-3), name
        assert eng[name]["distance"] == pytest.approx(rows[name]["distance"], rel=1e-3, abs=1e-6), name


def test_cli_engine_and_resolution_mismatch(tiny_run, tiny_bundle, capsys) -> None:
    _, _, _, root = tiny_run
    args = ["--engine", str(tiny_bundle), "--out", str(root / "cli_eng"), "--data", str(root / "clips"),
            "--clips", "1", "--frames", "2", "--height", "64", "--width", "128",
            "--ks", "1", "--f-thres", "2"]  # fmt: skip
    assert main(args) == 0
    md = (root / "cli_eng" / "accuracy.md").read_text()
    assert "## rand (onnx)" in md and "exported engines (onnx)" in md
    wrong = [*args[:-8], "--height", "96", "--width", "128", "--ks", "1", "--f-thres", "2"]
    assert main(wrong) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "96x128" in err and "64x128" in err


def test_outputs_without_matplotlib(tiny_run, monkeypatch, capsys) -> None:
    """A machine without matplotlib (the GPU boxes cannot install it) still gets the table and JSON."""
    import sys

    _, _, rows, root = tiny_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    stamp = {"command": "test", "machine": "test", "date": "now", "clips": 2, "frames": 3, "height": 64,
             "width": 128, "f_thres": 3}  # fmt: skip
    paths = write_outputs({"random": {"checkpoint_meta": {}, "rows": rows}}, stamp, root / "noplt", "acc")
    assert [p.suffix for p in paths] == [".md", ".json"] and not (root / "noplt" / "acc.png").exists()
    assert "PNG plots skipped" in capsys.readouterr().err


def test_per_clip_confusions_pool_to_the_row(tiny_run) -> None:
    """Each row keeps one confusion matrix per clip (for paired comparisons); pooled, they give the row's mIoU."""
    _, clips, rows, _ = tiny_run
    for s in rows.values():
        per = np.asarray(s["per_clip_confusion"])
        assert per.shape[0] == len(clips)
        assert miou(per.sum(0)) == pytest.approx(s["miou"])


def test_metric_table_formats_one_row_per_mode_and_k() -> None:
    """The shared table: percentages with one decimal, residuals in 3 significant digits, '-' for a missing one."""
    from benchmarks.accuracy import metric_table

    rows = {
        "converged": {"pck": 0.5, "pck_from10": 0.25, "residual": 1.23456e-7, "distance": 0.0},
        "stream k=2": {"pck": 0.4567, "pck_from10": None, "residual": 0.012345, "distance": None},
    }
    assert metric_table(rows, "pck", "PCK") == [
        "| mode | k | PCK % | PCK % from 10 | rel. residual | rel. distance to z* |",
        "|---|---|---|---|---|---|",
        "| converged | f_thres | 50.0 | 25.0 | 1.23e-07 | 0 |",
        "| stream | 2 | 45.7 | - | 0.0123 | - |",
    ]


@pytest.mark.parametrize(
    "stem", ["accuracy", "accuracy_reset4", "det_accuracy", "pose_accuracy", "pose_accuracy_reset8"]
)
def test_committed_results_files_are_what_markdown_writes_from_their_json(stem) -> None:
    """The three tasks' markdown share stamp_lines and metric_table; each committed .md (written by its command)
    is still exactly what its module writes from the committed .json, so the shared helpers changed no layout."""
    import importlib

    root = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    module = importlib.import_module("benchmarks." + stem.split("_reset")[0])
    data = json.loads((root / f"{stem}.json").read_text())
    results = data["results"] if "results" in data else data
    assert module.markdown(results, data["stamp"]) == (root / f"{stem}.md").read_text()
