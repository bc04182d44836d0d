"""benchmarks.pose_accuracy: PCK per mode and k against counts worked out by hand, and its one-line errors.

The stand-in model halves its distance to the fixed point with every cell iteration (z <- (z + x) / 2 from z = 0,
x = 1), and its keypoints miss the truth by 40 px times that distance: after n iterations in all the miss is
40 / 2^n px. With a head length of 10 px, PCK@0.5 counts a joint within 5 px, so a frame scores when n >= 3. Per
frame at k iterations n = k; streamed, frame t has had n = k (t + 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.pose_accuracy import main, run_pose_accuracy, summary

T, J, H, W = 6, 16, 64, 128


class HalvingStepper:
    num_classes = 1

    def __init__(self, joints: np.ndarray) -> None:
        self.joints, self.t = joints, -1

    def inject(self, frame: np.ndarray) -> torch.Tensor:
        self.t += 1  # one injection per frame, in order
        return torch.ones(1, dtype=torch.float64)

    def zeros(self, height: int, width: int) -> list[torch.Tensor]:
        return [torch.zeros(1, dtype=torch.float64)]

    def cell(self, z: list[torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
        return [(z[0] + x) / 2]

    def keypoints(self, z: list[torch.Tensor], height: int, width: int) -> np.ndarray:
        miss = 40.0 * float((1 - z[0]).abs())
        kp = self.joints[self.t].copy()
        kp[:, 0] += miss
        kp[:, 2] = 1.0
        return kp


def clip() -> tuple[np.ndarray, np.ndarray]:
    joints = np.zeros((T, J, 3), np.float32)
    joints[:, :, 0] = np.linspace(20, 100, J)
    joints[:, :, 1] = 30
    joints[:, 9, 1] = 20  # head_top 10 px above upper_neck (joint 8): the head length
    joints[:, :, 2] = 2
    joints[:, 15, 2] = 0  # outside the frame: never counted
    still = np.full((T, H, W, 3), 90, np.uint8)  # no pixel change: no shot-change reset
    return still, joints


def test_pck_per_mode_and_k_matches_the_hand_count() -> None:
    frames, joints = clip()
    rows = run_pose_accuracy(HalvingStepper(joints), [(frames, joints)], ks=(1, 2, 4), f_thres=30)

    def hit_share(iterations: list[int]) -> float:
        return float(np.mean([n >= 3 for n in iterations]))

    assert rows["converged"]["pck"] == 1.0
    for k in (1, 2, 4):
        assert rows[f"per-frame k={k}"]["pck"] == hit_share([k] * T)
        assert rows[f"stream k={k}"]["pck"] == pytest.approx(hit_share([k * (t + 1) for t in range(T)]))
        assert rows[f"stream+reset k={k}"]["pck"] == rows[f"stream k={k}"]["pck"]  # nothing to reset here
    assert rows["stream k=1"]["per_frame_pck"] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert rows["stream k=1"]["per_clip_counts"] == [[4 * (J - 1), T * (J - 1)]]  # pooled joint counts


def test_summary_pools_joint_counts_rather_than_averaging_frames() -> None:
    from benchmarks.accuracy import Acc

    acc = Acc()
    acc.new_clip()
    acc.add(0, np.array([1, 1]))  # one joint, hit
    acc.add(10, np.array([0, 9]))  # nine joints, missed
    s = summary(acc)
    assert s["pck"] == pytest.approx(0.1)  # not the mean of 1.0 and 0.0
    assert s["pck_from10"] == 0.0 and s["per_frame_pck"] == [1.0, 0.0]


def test_a_checkpoint_without_a_pose_head_is_one_line_and_exit_2(capsys) -> None:
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "checkpoints" / "tiny_sur.pt"
    assert main(["--checkpoint", str(shipped), "--clips", "1", "--frames", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no pose head" in err


@pytest.mark.parametrize("stem,reset_iters", [("pose_accuracy", None), ("pose_accuracy_reset8", 8)])
def test_the_committed_table_is_the_shipped_checkpoint_on_the_test_clips(stem, reset_iters) -> None:
    """benchmarks/results/pose_accuracy.json and pose_accuracy_reset8.json (docs/pose.md's tables, make pose-accuracy)
    measured checkpoints/tiny_pose.pt as shipped, on the test seeds, every mode at k = 1, 2, 4, 8, cold starts with k
    iterations and with the runtime's --reset-iters 8 (chosen on validation clips). With the latter issue 28's
    acceptance holds: stream + reset at k = 2 within 2 PCK points of converged; per-frame k = 2 is below it (here: at
    least 10 points) in both."""
    import json
    from pathlib import Path

    from benchmarks.accuracy import SPLIT_SEEDS
    from export.checkpoint import load_checkpoint

    root = Path(__file__).resolve().parents[2]
    committed = json.loads((root / "benchmarks" / "results" / f"{stem}.json").read_text())
    stamp = committed["stamp"]
    assert stamp["split"] == "test" and stamp["heldout_seed"] == SPLIT_SEEDS["test"] and stamp["ks"] == [1, 2, 4, 8]
    assert stamp["reset_iters"] == reset_iters
    (result,) = committed["results"].values()
    _, meta = load_checkpoint(root / "checkpoints" / "tiny_pose.pt")
    weights = result["checkpoint_meta"]
    assert weights["checkpoint"] == "checkpoints/tiny_pose.pt" and weights["steps"] == meta["steps"]
    assert weights["wall_time_s"] == meta["wall_time_s"]
    rows = result["rows"]
    assert set(rows) == {"converged"} | {
        f"{m} k={k}" for m in ("per-frame", "stream", "stream+reset") for k in (1, 2, 4, 8)
    }
    converged = rows["converged"]["pck"]
    if reset_iters == 8:
        assert abs(converged - rows["stream+reset k=2"]["pck"]) <= 0.02
    assert rows["per-frame k=2"]["pck"] <= converged - 0.10
    # the shipped checkpoint is the contraction fine-tune distilled from the second stage
    assert meta["spec_reg"] > 0 and meta["distill"] and meta["distill_iters"] == 30
