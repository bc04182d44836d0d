"""Train the one-stage detector: an MDEQ trunk plus a CenterNet-style head (export/centernet.py), SUR.

Why SUR: a streamed detector runs k = 1..4 cell iterations per frame, so its head must read usable boxes off the
state after any number of iterations; SUR draws the unroll length N ~ U{1..N_max} per batch and back-propagates
through all N (export.train's ``unroll_length``). The trunk starts from a trained segmentation checkpoint
(``--init``, by default the shipped ``checkpoints/tiny_sur.pt``: its cell already contracts, which streaming
needs) and learns at ``--trunk-lr-scale`` times the head's rate, so the fixed point moves little while the head
learns to read boxes off it. Frames and boxes come from export.synthetic (``random_det_batch``), never from the
integer clip seeds the benchmarks hold out.

The checkpoint is our ``deqstream-ckpt/1`` format with the head under ``center_head.*`` and its config as
``center_head`` (export.checkpoint reads it back); the log is ``<out>.jsonl``.

Contraction fine-tune (the recipe's second stage, ``make train-det``): the first stage's cell converged on synthetic
frames but not on real footage (plain iteration stalled at a relative residual of 0.05-0.07 after 300 iterations on
bikes), so no real frame had a certified reference. ``--spec-reg`` adds export/contraction.py's spectral penalty,
taken on camera-effects copies of the batch (``--penalty-on camera``), as ``export.train``'s segmentation
fine-tune does. An ``--init`` that already carries a CenterNet head keeps it (a fine-tune); a trunk-only one gets
a fresh head.
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

from export.centernet import CenterNetConfig, CenterNetHead, detection_loss, make_targets
from export.checkpoint import load_checkpoint, save_checkpoint
from export.contraction import add_contraction_args, check_contraction_args, contraction_meta, spectral_term
from export.mdeq import MDEQSegNet, check_resolution
from export.synthetic import VARIANTS, random_det_batch
from export.train import applies_on, lr_at, machine, unroll_length

DEFAULT_INIT = "checkpoints/tiny_sur.pt"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m export.train_det",
        description="Train an MDEQ trunk + CenterNet-style head on synthetic boxes with SUR (N ~ U{1..N_max}).",
    )
    p.add_argument("--init", default=DEFAULT_INIT, help="trunk checkpoint to start from (default: %(default)s)")
    p.add_argument("--out", required=True, help="checkpoint path (.pt); the log goes to <out>.jsonl")
    p.add_argument("--iters", type=int, default=8, help="N_max of SUR (default: %(default)s)")
    p.add_argument("--steps", type=int, default=100000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), default=(128, 256))
    p.add_argument("--lr", type=float, default=2e-3, help="the head's learning rate (default: %(default)s)")
    p.add_argument("--trunk-lr-scale", type=float, default=0.25, help="the trunk's rate / the head's")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--time-limit", type=float, default=0.0, help="minutes; stop (and anneal LR by time) at this budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave default)")
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--val-frames", type=int, default=8)
    p.add_argument("--save-every", type=float, default=3.0, help="minutes between checkpoints")
    p.add_argument("--score-thr", type=float, default=0.3, help="decode threshold stored with the head")
    add_contraction_args(p)
    return p.parse_args(argv)


def build(init: str, seed: int, score_thr: float) -> tuple[MDEQSegNet, dict]:
    """The model of ``init``: its CenterNet head kept (a fine-tune) or a fresh one (seeded) as ``model.center_head``."""
    model, meta = load_checkpoint(init)
    if not isinstance(getattr(model, "center_head", None), CenterNetHead):
        torch.manual_seed(seed)
        model.center_head = CenterNetHead(model.cfg, CenterNetConfig(score_thr=score_thr))
    return model, meta


def batch_loss(
    model: MDEQSegNet, frames: np.ndarray, boxes: list[np.ndarray], n: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """The detection loss after ``n`` cell iterations from zero (differentiable through all of them)."""
    return detection_loss_at(model, model.solve(torch.from_numpy(frames), n)[0], boxes)


def detection_loss_at(
    model: MDEQSegNet, state: list[torch.Tensor], boxes: list[np.ndarray]
) -> tuple[torch.Tensor, dict[str, float]]:
    """The detection loss of the head read off ``state``."""
    out = model.center_head(*state)
    cfg = model.center_head.det_cfg
    h, w = out[0].shape[-2:]
    return detection_loss(out, make_targets(boxes, cfg.num_classes, h, w, cfg.stride))


def train_loss(
    model: MDEQSegNet, a: argparse.Namespace, step: int, rng: np.random.Generator
) -> tuple[torch.Tensor, dict[str, float]]:
    """One batch's detection loss, plus the weighted spectral term on the steps ``--spec-freq`` picks."""
    frames, boxes = random_det_batch(rng, a.batch, *a.crop)
    state, x0 = model.solve(torch.from_numpy(frames), unroll_length("sur", a.iters, rng))
    loss, parts = detection_loss_at(model, state, boxes)
    if a.spec_reg > 0 and applies_on(step, a.spec_freq):
        spec, growth = spectral_term(model, frames, state, x0, rng, a.penalty_on, a.iters, a.spec_steps, a.spec_margin)
        loss = loss + a.spec_reg * spec
        parts = {**parts, "spec": float(spec.detach()), "growth": float(growth.max())}
    return loss, parts


@torch.no_grad()
def val_loss(model: MDEQSegNet, frames: np.ndarray, boxes: list[np.ndarray], iters: int) -> float:
    was = model.training
    model.eval()
    loss = float(np.mean([float(batch_loss(model, f[None], [b], iters)[0]) for f, b in zip(frames, boxes)]))
    model.train(was)
    return loss


def train(a: argparse.Namespace, command: str) -> int:
    model, init_meta = build(a.init, a.seed, a.score_thr)
    check_resolution(model.cfg, *a.crop)
    head_params = list(model.center_head.parameters())
    ids = {id(p) for p in head_params}
    trunk = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": head_params, "scale": 1.0}, {"params": trunk, "scale": a.trunk_lr_scale}],
        lr=a.lr,
        weight_decay=a.weight_decay,
    )
    out, log_path = Path(a.out), Path(a.out).with_suffix(".jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    val = random_det_batch(np.random.default_rng([a.seed, 987654321]), a.val_frames, 256, 512, VARIANTS[0])
    keep = ("mode", "iters", "steps", "wall_time_s", "command", "val_miou")
    meta = {
        "mode": "sur",
        "task": "det",
        "iters": a.iters,
        "batch": a.batch,
        "crop": list(a.crop),
        "lr": a.lr,
        "trunk_lr_scale": a.trunk_lr_scale,
        "seed": a.seed,
        "command": command,
        "machine": machine(),
        "torch": torch.__version__,
        "variant": VARIANTS[0],
        "init": {"path": a.init, **{k: init_meta[k] for k in keep if k in init_meta}},
        **contraction_meta(a),
    }
    step, elapsed, last_save = 0, 0.0, time.time()
    model.train()

    def save(v: float) -> None:
        model.eval()
        save_checkpoint(model, out, {**meta, "steps": step, "wall_time_s": round(elapsed, 1), "val_loss": v})
        model.train()

    v = float("nan")
    t_prev = time.time()
    while step < a.steps:
        progress = max(step / a.steps, elapsed / (a.time_limit * 60) if a.time_limit > 0 else 0.0)
        if progress >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(a.lr, progress) * g["scale"]
        loss, parts = train_loss(model, a, step, np.random.default_rng([a.seed, step]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        step += 1
        now = time.time()
        elapsed += now - t_prev
        t_prev = now
        rec = {"step": step, "loss": round(float(loss.detach()), 4), "elapsed_s": round(elapsed, 1)}
        rec.update({k: round(x, 4) for k, x in parts.items()})
        if step % a.val_every == 0:
            v = val_loss(model, *val, a.iters)
            rec["val_loss"] = round(v, 4)
            print(f"step {step} loss {float(loss.detach()):.3f} val loss {v:.3f} ({elapsed / 60:.1f} min)", flush=True)
            t_prev = time.time()  # validation does not count against the budget
        if step % 10 == 0 or "val_loss" in rec:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
        if time.time() - last_save > a.save_every * 60:
            save(v)
            last_save = t_prev = time.time()
    v = val_loss(model, *val, a.iters)
    with open(log_path, "a") as fh:
        fh.write(json.dumps({"step": step, "final_val_loss": round(v, 4), "elapsed_s": round(elapsed, 1)}) + "\n")
    save(v)
    print(f"done: {step} steps, {elapsed / 60:.1f} min, val loss {v:.3f} -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    command = "python -m export.train_det " + shlex.join(argv if argv is not None else sys.argv[1:])
    try:
        if a.iters < 1 or a.steps < 1 or a.batch < 1:
            raise ValueError("--iters, --steps and --batch must be >= 1")
        if not 0 < a.trunk_lr_scale <= 1 or not 0 <= a.score_thr < 1:
            raise ValueError("--trunk-lr-scale must be in (0, 1] and --score-thr in [0, 1)")
        check_contraction_args(a)
        return train(a, command)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
