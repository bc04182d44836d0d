"""export.train_pose: the crops and their joints, the heatmap loss, SUR steps that learn, and the CLI's checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.synthetic_pose import OUTSIDE, pose_targets, render_pose_clip
from export.train_pose import (
    PoseTrainer,
    crop_origin,
    heatmap_loss,
    main,
    parse_args,
    pose_batch,
    pose_model,
    targets_of,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints" / "tiny_sur.pt"


def test_crops_carry_their_joints_shifted_and_flag_the_cut_ones() -> None:
    """Each joint inside a crop shows the same pixel as in the full frame; the others are flagged outside."""
    seeds = [123, 456, 789]
    frames, joints = pose_batch(seeds, (128, 256), (64, 128), np.random.default_rng(0))
    assert frames.shape == (3, 64, 128, 3) and joints.shape == (3, 16, 3)
    for seed, crop, jt in zip(seeds, frames, joints):
        full = render_pose_clip(seed, 1, 128, 256)
        src, dx, dy = full.joints[0], full.joints[0, 0, 0] - jt[0, 0], full.joints[0, 0, 1] - jt[0, 1]
        assert dx == int(dx) and dy == int(dy)  # a whole-pixel shift, the same for every joint
        np.testing.assert_allclose(src[:, :2] - jt[:, :2], np.tile([dx, dy], (16, 1)), atol=1e-4)
        r, c = np.round(jt[:, 1]).astype(int), np.round(jt[:, 0]).astype(int)
        inside = (r >= 0) & (r < 64) & (c >= 0) & (c < 128)
        assert ((jt[:, 2] == OUTSIDE) | inside).all()
        assert (jt[~inside, 2] == OUTSIDE).all() and (jt[inside, 2] == src[inside, 2]).all()
        for (x, y), (sx, sy) in zip(np.round(jt[inside, :2]).astype(int), np.round(src[inside, :2]).astype(int)):
            assert (crop[y, x] == full.frames[0, sy, sx]).all()


@pytest.mark.parametrize("box,crop", [((30, 50, 20, 40), 64), ((10, 110, 5, 90), 64)])
def test_crop_window_holds_the_joint_box_when_it_fits(box, crop) -> None:
    x0, x1, y0, y1 = box
    joints = np.array([[x0, y0, 2], [x1, y1, 2]], np.float32)
    rng = np.random.default_rng(1)
    for _ in range(20):
        oy, ox = crop_origin(joints, (128, 128), (crop, crop), rng)
        assert 0 <= oy <= 128 - crop and 0 <= ox <= 128 - crop
        for lo, hi, o in ((x0, x1, ox), (y0, y1, oy)):
            if hi - lo + 8 <= crop:  # fits with a cell of margin: inside the window
                assert o <= lo - 4 and hi + 4 <= o + crop
            else:  # too large: the window lies inside the box
                assert lo - 4 <= o and o + crop <= hi + 4


def test_heatmap_loss_counts_only_weighted_joints() -> None:
    target = torch.zeros(1, 2, 4, 4)
    heat = torch.zeros(1, 2, 4, 4)
    heat[0, 0, 1, 1], heat[0, 1] = 2.0, 5.0
    assert float(heatmap_loss(heat, target, torch.tensor([[1.0, 0.0]]))) == pytest.approx(4.0 / 32)
    assert float(heatmap_loss(heat, target, torch.tensor([[1.0, 1.0]]))) == pytest.approx((4.0 + 16 * 25) / 32)


def test_sur_steps_reduce_the_heatmap_loss_on_a_fixed_batch() -> None:
    model, _ = pose_model(SHIPPED)
    frames, joints = pose_batch([5, 6], (64, 128), (64, 128), np.random.default_rng(0))
    target, weight = targets_of(joints, (64, 128), 2.0)
    assert torch.equal(target[0], torch.from_numpy(pose_targets(joints[0], (64, 128))[0]))
    x = torch.from_numpy(frames)

    model.eval()  # BatchNorm on its running statistics, no dropout: before and after compare the same function

    def loss_at(iters: int) -> float:
        with torch.no_grad():
            state, _ = model.solve(x, iters)
            return float(heatmap_loss(model.pose_head(*state), target, weight))

    before = loss_at(4)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for n in (1, 4, 2, 3, 4, 1, 2, 4, 3, 2):
        state, _ = model.solve(x, n)
        loss = heatmap_loss(model.pose_head(*state), target, weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_at(4) < 0.5 * before


def test_cli_writes_a_pose_checkpoint_the_exporter_reads(tmp_path) -> None:
    from export.checkpoint import load_checkpoint
    from export.pose_head import KeypointHead

    out = tmp_path / "pose.pt"
    argv = ["--out", str(out), "--steps", "2", "--batch", "1", "--frame", "64", "128", "--crop", "64", "128"]
    assert main([*argv, "--iters", "2", "--val-frames", "1", "--threads", "1"]) == 0
    model, meta = load_checkpoint(out)
    assert isinstance(model.pose_head, KeypointHead) and model.pose_head.layout.joints == 16
    assert meta["task"] == "pose" and meta["steps"] == 2 and meta["init"]["path"].endswith("tiny_sur.pt")
    assert 0.0 <= meta["val_pck"] <= 1.0
    log = out.with_suffix(".jsonl").read_text().splitlines()
    assert '"final_val_pck"' in log[-1]


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--init", "missing.pt"], "not found"),
        (["--crop", "256", "256"], "larger than --frame"),
        (["--sigma", "0"], "--sigma"),
        (["--spec-reg", "1", "--spec-steps", "0"], "--spec-steps"),
        (["--spec-reg", "-1"], "--spec-reg"),
        (["--spec-freq", "0"], "--spec-freq"),
        (["--distill-weight", "-1"], "--distill-weight"),
        (["--distill-iters", "-1"], "--distill-iters"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys, extra, needle) -> None:
    assert main(["--out", str(tmp_path / "p.pt"), "--frame", "128", "256", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def dominant_growth(cell: torch.nn.Module, state: list[torch.Tensor], x: torch.Tensor, steps: int = 40) -> float:
    """||J^T v|| for the dominant v of df/dz at ``state``: plain power iteration with torch.autograd.functional.vjp
    (independent of export.contraction's batched, graph-keeping version)."""
    from torch.autograd.functional import vjp

    def f(*z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(cell(*z, x))

    gen = torch.Generator().manual_seed(3)
    v = [torch.randn(s.shape, generator=gen) for s in state]
    growth = 0.0
    for _ in range(steps):
        norm = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / norm for u in v]
        v = list(vjp(f, tuple(state), tuple(v))[1])
        growth = float(torch.sqrt(sum((u**2).sum() for u in v)))
    return growth


def test_the_spectral_term_lowers_the_cells_dominant_growth(tmp_path) -> None:
    """Steps on --spec-reg's term alone (margin 0, at one batch's state) shrink the growth of df/dz's dominant
    direction at that batch's state, measured by an independent power iteration; the log and meta carry it."""
    argv = ["--out", str(tmp_path / "p.pt"), "--frame", "64", "128", "--crop", "64", "128", "--iters", "4"]
    a = parse_args([*argv, "--spec-reg", "10", "--spec-margin", "0", "--spec-steps", "4"])
    trainer = PoseTrainer(a, "test")
    model = trainer.model
    model.eval()  # no dropout: the measured map is the one the steps change
    frames, _ = pose_batch([7], (64, 128), (64, 128), np.random.default_rng(0))
    x = torch.from_numpy(frames)

    def growth_now() -> float:
        with torch.no_grad():
            state, x0 = model.solve(x, 4)
        return dominant_growth(model.fullstage, state, x0)

    before = growth_now()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(6):
        with torch.no_grad():
            state, _ = model.solve(x, 4)
        x0 = model.injection(x)
        loss = trainer.contraction(frames, [s.detach() for s in state], x0, np.random.default_rng(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert trainer.parts["growth"] > 0 and trainer.parts["spec"] > 0
    assert growth_now() < 0.9 * before
    trainer.step = 1
    trainer.save(0.0)
    from export.checkpoint import load_checkpoint

    _, meta = load_checkpoint(tmp_path / "p.pt")
    assert meta["spec_reg"] == 10 and meta["spec_margin"] == 0 and meta["penalty_on"] == "batch"


def _pose_teacher(tmp_path: Path) -> Path:
    """A small pose checkpoint (tiny_sur's trunk, a fresh head) to distil from."""
    argv = ["--out", str(tmp_path / "teacher.pt"), "--frame", "64", "128", "--crop", "64", "128", "--steps", "1"]
    trainer = PoseTrainer(parse_args(argv), "test")
    trainer.save(0.0)
    return tmp_path / "teacher.pt"


def test_distill_is_zero_against_its_own_init_and_targets_the_teachers_iterations(tmp_path, monkeypatch) -> None:
    """--distill of the init itself: a frozen copy (no gradients, dropout off, BatchNorm on batch statistics like
    the student's); with dropout off in the student too and the student's own iterations (--distill-iters 0) both
    give the same heatmaps, so the term is 0; with --distill-iters 7 the teacher runs 7 iterations instead and the
    term is positive; the meta records the option."""
    from export.mdeq import VariationalDropout2d

    teacher_path = _pose_teacher(tmp_path)
    base = ["--out", str(tmp_path / "s.pt"), "--frame", "64", "128", "--crop", "64", "128", "--iters", "3"]
    base += ["--batch", "1", "--init", str(teacher_path), "--distill", str(teacher_path)]
    for iters, expect_zero in ((0, True), (7, False)):
        trainer = PoseTrainer(parse_args([*base, "--distill-iters", str(iters)]), "test")
        teacher = trainer.teacher
        assert all(not p.requires_grad for p in teacher.parameters())
        drops = [m for m in teacher.modules() if isinstance(m, VariationalDropout2d)]
        assert drops and not any(m.training for m in drops)
        assert all(m.training for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
        trainer.model.train()
        for m in trainer.model.modules():
            if isinstance(m, VariationalDropout2d):
                m.eval()
        seen: list[int] = []
        solve = teacher.solve
        monkeypatch.setattr(
            teacher, "solve", lambda x, n, z=None, seen=seen, solve=solve: seen.append(n) or solve(x, n, z)
        )
        trainer.train_step()
        if expect_zero:
            assert trainer.parts["distill"] == pytest.approx(0.0, abs=1e-9)
        else:
            assert seen == [7] and trainer.parts["distill"] > 0
    meta = trainer.meta(0.0)
    assert meta["distill"] == str(teacher_path) and meta["distill_iters"] == 7 and meta["distill_weight"] == 1.0


def test_distill_from_a_checkpoint_without_a_pose_head_is_one_line(tmp_path, capsys) -> None:
    argv = ["--out", str(tmp_path / "p.pt"), "--frame", "128", "256", "--distill", str(SHIPPED)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no keypoint head" in err


def test_jac_reg_freq_is_accepted_for_spec_freq(tmp_path) -> None:
    """export.train's spelling of the penalty's fraction of steps sets the same option (export/contraction.py)."""
    argv = ["--out", str(tmp_path / "p.pt")]
    assert parse_args([*argv, "--jac-reg-freq", "0.25"]).spec_freq == 0.25
    assert parse_args([*argv, "--spec-freq", "0.5"]).spec_freq == 0.5
