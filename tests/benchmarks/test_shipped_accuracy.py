"""Regression test of the shipped checkpoint's accuracy against the committed quick results.

`make accuracy QUICK=1` writes benchmarks/results/accuracy_quick.json from the exported engines
(test split, 2 clips x 16 frames at 256x512). Here the same clips run through the checkpoint in
eager PyTorch: a change to the model code, the checkpoint, the clips or the metric that moves any
row by more than half a point fails, and so does a results file that no longer matches the code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.accuracy import SPLIT_SEEDS, TorchStepper, prepare_clips, run_accuracy

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "accuracy_quick.json"
CHECKPOINT = ROOT / "checkpoints" / "tiny_sur.pt"
TOLERANCE = 0.005  # half a point of mIoU: engines vs eager differ by float rounding only


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_shipped_checkpoint_matches_committed_quick_accuracy(tmp_path) -> None:
    from export.train import load_model

    committed = json.loads(RESULTS.read_text())
    stamp = committed["stamp"]
    assert stamp["split"] == "test" and stamp["heldout_seed"] == SPLIT_SEEDS["test"]
    rows = next(v["rows"] for k, v in committed["results"].items() if k.startswith("tiny_sur"))
    model, _ = load_model(CHECKPOINT, "cpu")
    clips = prepare_clips(
        tmp_path, stamp["clips"], stamp["frames"], stamp["height"], stamp["width"], SPLIT_SEEDS["test"]
    )
    got = run_accuracy(TorchStepper(model), clips, ks=(1, 2), f_thres=stamp["f_thres"])
    for name in ("converged", "per-frame k=1", "stream k=1", "stream+reset k=1", "stream k=2", "stream+reset k=2"):
        assert got[name]["miou"] == pytest.approx(rows[name]["miou"], abs=TOLERANCE), name
    assert got["stream+reset k=2"]["miou"] > got["per-frame k=2"]["miou"]  # the point of streaming
