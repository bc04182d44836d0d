"""Train the pose model: SUR on synthetic walking figures, the MDEQ trunk plus a keypoint heatmap head.

Why SUR (N ~ U{1..N_max} cell applications from z = 0 per batch, as ``export.train``): streaming runs one to a
few iterations per frame from the previous frame's state, so the head must read usable heatmaps off the state after
any number of iterations, not only at the fixed point. The trunk starts from a segmentation checkpoint
(``--init``, default the shipped ``checkpoints/tiny_sur.pt``: its cell already converges under plain iteration on
street scenes, which the pose figures walk over); the head (:class:`export.pose_head.KeypointHead`, all branches
resized to stride 4 and concatenated, a 1x1 conv-BN-ReLU, a 3x3 conv to the J heatmaps) starts random.

Data: :func:`export.synthetic_pose.render_pose_clip` frames (one figure, MPII's 16 joints), each rendered at
``--frame`` size and cut to a ``--crop`` window around the figure, so the figures have the size they have in the
full frames the model runs on while a step costs a crop's compute. Windows alone do not make a model for full frames:
the shipped recipe's first stage (36 minutes on 128x256 windows) scored PCK 58 % on windows of its monitor figures
but 11 % on their full frames (the cell's GroupNorm statistics and the coarse branches see the whole input), so its
second stage trains on full frames (``--crop`` equal to ``--frame``: the whole frame). Its cell still converged
slowly under plain iteration (two warm-started iterations per frame left the state 0.2 of its norm from the fixed
point), so the third stage adds ``--spec-reg`` (export/contraction.py's spectral penalty, as ``export.train``'s
contraction fine-tune), weighted for the heatmap loss's small scale: export.train's weight of 4 made the cell
contract and lost the figures.

Loss: MSE between the heatmaps and Gaussian targets (:func:`export.synthetic_pose.pose_targets`, sigma in heatmap
cells) over the joints inside the crop, visible or hidden behind the post (the joints PCK scores). Training seeds
are 10,000,000 and up; the validation frames logged while training are seeds 800,000 and up; the benchmark's
held-out clips (900,000+, 950,000+) are never drawn.

The checkpoint is the usual ``deqstream-ckpt/1`` file with the head's layout (``export.checkpoint``), so
``python -m export --checkpoint <it> --heads pose`` exports it; it keeps the init's segmentation head, which this
training does not update (its meta says so). Written every ``--save-every`` minutes and at the end, with a ``.jsonl``
log beside it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from export.augment import camera_effects
from export.checkpoint import load_checkpoint, save_checkpoint
from export.contraction import add_contraction_args, check_contraction_args, contraction_meta, spectral_term
from export.mdeq import MDEQSegNet, check_resolution
from export.pose_head import KeypointHead, KeypointLayout
from export.synthetic_pose import OUTSIDE, J, pck_counts, pose_targets, render_pose_clip
from export.train import applies_on, frozen_teacher, lr_at, machine, unroll_length
from runtime.pose_decode import decode_heatmaps

STRIDE = 4  # the heatmaps are on the stride-4 branch
LAYOUT = KeypointLayout(J, concat=True, conv_kernels=(1,), final_kernel=3)
TRAIN_SEED, MONITOR_SEED = 10_000_000, 800_000
DEFAULT_INIT = "checkpoints/tiny_sur.pt"


def crop_origin(joints: np.ndarray, frame_hw: tuple[int, int], crop_hw: tuple[int, int], rng: np.random.Generator):
    """(y0, x0) of a crop window holding the figure's joint box as far as it fits (random within that freedom),
    clipped to the frame."""
    (fh, fw), (ch, cw) = frame_hw, crop_hw
    lo, hi = joints[:, :2].min(0), joints[:, :2].max(0)  # (x, y)
    origin = []
    for axis, size, c in ((1, fh, ch), (0, fw, cw)):
        a, b = lo[axis] - STRIDE, hi[axis] + STRIDE  # the joint box with a cell of margin
        first, last = (b - c, a) if b - a <= c else (a, b - c)  # the window holds the box, or lies inside it
        start = rng.uniform(first, last) if last > first else first
        origin.append(int(np.clip(round(start), 0, size - c)))
    return origin[0], origin[1]


def pose_batch(
    seeds: list[int], frame_hw: tuple[int, int], crop_hw: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(B, h, w, 3) uint8 crops and (B, J, 3) joints in crop pixels, flag 0 for joints outside the crop."""
    frames, joints = [], []
    for seed in seeds:
        clip = render_pose_clip(seed, 1, *frame_hw)
        y0, x0 = crop_origin(clip.joints[0], frame_hw, crop_hw, rng)
        frames.append(clip.frames[0, y0 : y0 + crop_hw[0], x0 : x0 + crop_hw[1]])
        jt = clip.joints[0].copy()
        jt[:, 0] -= x0
        jt[:, 1] -= y0
        r, c = np.round(jt[:, 1]), np.round(jt[:, 0])
        inside = (r >= 0) & (r < crop_hw[0]) & (c >= 0) & (c < crop_hw[1])
        jt[~inside, 2] = OUTSIDE
        joints.append(jt)
    return np.ascontiguousarray(np.stack(frames)), np.stack(joints)


def heatmap_loss(heat: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean squared error over the heatmap cells of the weighted joints (MMPose's JointsMSELoss, without its 0.5)."""
    return ((heat - target) ** 2 * weight[:, :, None, None]).mean()


def targets_of(joints: np.ndarray, hw: tuple[int, int], sigma: float) -> tuple[Tensor, Tensor]:
    """Stacked Gaussian targets and joint weights of a batch's joints (pose_targets, one frame at a time)."""
    pairs = [pose_targets(j, hw, STRIDE, sigma) for j in joints]
    return torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs]))


def pose_model(init: str | Path) -> tuple[MDEQSegNet, dict]:
    """The ``--init`` checkpoint's model with a fresh keypoint head (its own head when it has one: a fine-tune)."""
    model, meta = load_checkpoint(init)
    if not isinstance(getattr(model, "pose_head", None), KeypointHead):
        torch.manual_seed(0)
        model.pose_head = KeypointHead(model.cfg.channels, LAYOUT)
    return model, meta


@torch.no_grad()
def keypoints(model: MDEQSegNet, frames: np.ndarray, iters: int) -> np.ndarray:
    """(B, J, 3) keypoints in frame pixels after ``iters`` iterations from zero, decoded as the runtime does."""
    state, _ = model.solve(torch.from_numpy(frames), iters)
    heat = model.pose_head(*state)
    return decode_heatmaps(heat, (STRIDE, STRIDE)).numpy()


def monitor_set(n: int, frame_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Full frames (and joints) of the figures the training log's PCK is taken on (seeds of their own)."""
    clips = [render_pose_clip(MONITOR_SEED + i, 1, *frame_hw) for i in range(n)]
    return np.stack([c.frames[0] for c in clips]), np.stack([c.joints[0] for c in clips])


def monitor_pck(model: MDEQSegNet, frames: np.ndarray, joints: np.ndarray, iters: int) -> float:
    """PCK@0.5 of the eval-mode model on the monitor frames, one at a time."""
    was = model.training
    model.eval()
    pred = np.concatenate([keypoints(model, f[None], iters) for f in frames])
    model.train(was)
    hits, counted = pck_counts(pred, joints)
    return hits / max(counted, 1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m export.train_pose",
        description="SUR-train the pose model (MDEQ trunk + keypoint heatmap head) on synthetic walking figures.",
    )
    p.add_argument("--out", required=True, help="checkpoint path (.pt); the log goes to <out>.jsonl")
    p.add_argument("--init", default=DEFAULT_INIT, help="checkpoint the trunk starts from (default %(default)s)")
    p.add_argument("--iters", type=int, default=12, help="N_max: N ~ U{1..N_max} per batch (default %(default)s)")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frame", type=int, nargs=2, metavar=("H", "W"), default=(256, 512), help="rendered frame size")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), default=(128, 256), help="training window")
    p.add_argument("--sigma", type=float, default=2.0, help="Gaussian target sigma in heatmap cells")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--augment", action="store_true", help="camera effects on training crops (export/augment.py)")
    p.add_argument("--time-limit", type=float, default=0.0, help="minutes; stop (and anneal LR by time) at this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave default)")
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--val-frames", type=int, default=8)
    p.add_argument("--save-every", type=float, default=3.0, help="minutes between checkpoints")
    add_contraction_args(p)
    p.add_argument(
        "--distill",
        default=None,
        metavar="CKPT",
        help="also match this frozen pose checkpoint's heatmaps on the clean training frames (mean squared error over "
        "every heatmap cell, weight --distill-weight): a contraction fine-tune (--spec-reg) keeps its starting "
        "model's answers (export.train's option of the same name); default: off",
    )
    p.add_argument(
        "--distill-weight",
        type=float,
        default=1.0,
        metavar="W",
        help="weight of the --distill term (default %(default)s)",
    )
    p.add_argument(
        "--distill-iters",
        type=int,
        default=0,
        metavar="M",
        help="the --distill target is the teacher's heatmaps after M iterations from zero (0, the default: after the "
        "student's own number of this batch; a large M matches its converged heatmaps only)",
    )
    return p.parse_args(argv)


class PoseTrainer:
    """Model, optimizer and bookkeeping of one run (the loop in :meth:`run`)."""

    def __init__(self, a: argparse.Namespace, command: str) -> None:
        self.a, self.command = a, command
        self.frame_hw, self.crop_hw = tuple(a.frame), tuple(a.crop)
        if any(c > f for c, f in zip(self.crop_hw, self.frame_hw)):
            raise ValueError(f"--crop {self.crop_hw} is larger than --frame {self.frame_hw}")
        self.model, init_meta = pose_model(a.init)
        check_resolution(self.model.cfg, *self.crop_hw)
        check_resolution(self.model.cfg, *self.frame_hw)
        kept = {k: init_meta[k] for k in ("mode", "steps", "variant") if k in init_meta}
        self.init_meta = {"path": str(a.init), **kept}
        self.teacher = self.load_teacher(Path(a.distill)) if a.distill else None
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
        self.out = Path(a.out)
        self.log_path = self.out.with_suffix(".jsonl")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.unlink(missing_ok=True)
        self.monitor = monitor_set(a.val_frames, self.frame_hw)
        self.step, self.elapsed = 0, 0.0
        self.parts: dict[str, float] = {}

    def load_teacher(self, path: Path) -> MDEQSegNet:
        """The frozen pose model --distill matches (export.train's :func:`frozen_teacher`)."""
        teacher, _ = load_checkpoint(path)
        if not isinstance(getattr(teacher, "pose_head", None), KeypointHead):
            raise ValueError(f"--distill {path} has no keypoint head")
        if teacher.cfg != self.model.cfg or teacher.pose_head.layout != self.model.pose_head.layout:
            raise ValueError(f"--distill {path} is a model of another shape than --init {self.a.init}")
        return frozen_teacher(teacher)

    def progress(self) -> float:
        p = self.step / self.a.steps
        return max(p, self.elapsed / (self.a.time_limit * 60)) if self.a.time_limit > 0 else p

    def train_step(self) -> float:
        a = self.a
        rng = np.random.default_rng([a.seed, self.step])
        seeds = [TRAIN_SEED + (self.step * a.batch + i) * 7 + a.seed for i in range(a.batch)]
        frames, joints = pose_batch(seeds, self.frame_hw, self.crop_hw, rng)
        if a.augment:
            frames = camera_effects(frames, rng)
        target, weight = targets_of(joints, self.crop_hw, a.sigma)
        for g in self.opt.param_groups:
            g["lr"] = lr_at(a.lr, self.progress())
        n = unroll_length("sur", a.iters, rng)
        state, x0 = self.model.solve(torch.from_numpy(frames), n)
        heat = self.model.pose_head(*state)
        loss = heatmap_loss(heat, target, weight)
        self.parts = {}
        if self.teacher is not None:
            with torch.no_grad():
                taught = self.teacher.pose_head(*self.teacher.solve(torch.from_numpy(frames), a.distill_iters or n)[0])
            distill = heatmap_loss(heat, taught, torch.ones_like(weight))
            loss = loss + a.distill_weight * distill
            self.parts["distill"] = round(float(distill.detach()), 7)
        if a.spec_reg > 0 and applies_on(self.step, a.spec_freq):
            loss = loss + self.contraction(frames, state, x0, rng)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 2.0)
        self.opt.step()
        return float(loss.detach())

    def contraction(self, frames: np.ndarray, state: list[Tensor], x0: Tensor, rng: np.random.Generator) -> Tensor:
        """The weighted spectral term of this step (export/contraction.py's :func:`spectral_term`, where
        ``--penalty-on`` asks); its value and the largest growth go into ``self.parts`` for the log."""
        a = self.a
        spec, growth = spectral_term(
            self.model, frames, state, x0, rng, a.penalty_on, a.iters, a.spec_steps, a.spec_margin
        )
        self.parts |= {"spec": round(float(spec.detach()), 5), "growth": round(float(growth.max()), 4)}
        return a.spec_reg * spec

    def meta(self, val_pck: float) -> dict:
        a = self.a
        return {
            "task": "pose",
            "mode": "sur",
            "iters": a.iters,
            "steps": self.step,
            "batch": a.batch,
            "frame": list(self.frame_hw),
            "crop": list(self.crop_hw),
            "sigma": a.sigma,
            "lr": a.lr,
            "seed": a.seed,
            "augment": a.augment,
            **contraction_meta(a),
            **(
                {"distill": a.distill, "distill_weight": a.distill_weight, "distill_iters": a.distill_iters}
                if a.distill
                else {}
            ),
            "wall_time_s": round(self.elapsed, 1),
            "machine": machine(),
            "command": self.command,
            "val_pck": val_pck,
            "val_iters": a.iters,
            "torch": torch.__version__,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "init": self.init_meta,
            "seg_head": "the init's, not trained with this trunk",
        }

    def save(self, val_pck: float) -> None:
        self.model.eval()
        save_checkpoint(self.model, self.out, self.meta(val_pck))
        self.model.train()

    def log(self, rec: dict) -> None:
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")

    def validate(self) -> float:
        return monitor_pck(self.model, *self.monitor, self.a.iters)

    def run(self) -> float:
        a = self.a
        self.model.train()
        last_save, t_prev, val = time.time(), time.time(), float("nan")
        while self.step < a.steps and self.progress() < 1.0:
            loss = self.train_step()
            self.step += 1
            now = time.time()
            self.elapsed += now - t_prev
            t_prev = now
            rec = {"step": self.step, "loss": round(loss, 6), "elapsed_s": round(self.elapsed, 1), **self.parts}
            if self.step % a.val_every == 0:
                val = self.validate()
                rec["val_pck"] = round(val, 4)
                print(f"step {self.step} loss {loss:.5f} val PCK {100 * val:.1f}", flush=True)
                t_prev = time.time()  # validation time does not count against the budget
            if self.step % 10 == 0 or "val_pck" in rec:
                self.log(rec)
            if time.time() - last_save > a.save_every * 60:
                self.save(val)
                last_save = t_prev = time.time()
        val = self.validate()
        self.log({"step": self.step, "final_val_pck": round(val, 4), "elapsed_s": round(self.elapsed, 1)})
        self.save(val)
        print(f"done: {self.step} steps, {self.elapsed / 60:.1f} min, val PCK {100 * val:.1f} -> {self.out}")
        return val


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    args = argv if argv is not None else sys.argv[1:]
    command = "python -m export.train_pose " + " ".join(shlex.quote(s) for s in args)
    try:
        if a.iters < 1 or a.steps < 1 or a.batch < 1 or a.val_frames < 1 or a.val_every < 1:
            raise ValueError("--iters, --steps, --batch, --val-frames and --val-every must be >= 1")
        if not a.sigma > 0:
            raise ValueError(f"--sigma must be > 0, got {a.sigma}")
        check_contraction_args(a)
        if not (a.distill_weight >= 0 and np.isfinite(a.distill_weight)) or a.distill_iters < 0:
            raise ValueError("--distill-weight must be a finite number >= 0 and --distill-iters >= 0")
        trainer = PoseTrainer(a, command)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(a.seed)
    trainer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
