"""Train an MDEQ segmentation model on synthetic single frames: UR, SUR or IL.

Why three modes (notes/mdeq-streamdeq.md §4): UR back-propagates through N unrolled cell
applications from z = 0; SUR draws N uniformly from 1..N_max per batch, which teaches the model
to give usable outputs after any number of iterations (what streaming with small k needs);
IL solves for the fixed point without a graph and back-propagates through one phantom step
from z*, the cheap DEQ-style gradient. ``--jac-reg W`` adds, on top of any mode, W times a Hutchinson
estimate of ||df/dz||_F^2 / numel at the solved state (Bai, Koltun & Kolter 2021); ``--spec-reg W``
penalises the growth of the dominant direction of df/dz above ``--spec-margin`` (export/contraction.py), the
quantity that decides whether streaming's plain iterations converge; ``--augment`` adds camera effects
(export/augment.py) so those terms also see frames like real footage; ``--relax A`` trains the relaxed cell
(1 - A) z + A f(z) (same fixed points, oscillating modes damped); ``--init`` fine-tunes a checkpoint.
The shipped recipe (Makefile ``train``) is a SUR run followed by such a fine-tune.

Resumable: the checkpoint (exact ``deqstream-ckpt/1`` format) is written every few minutes,
next to a ``.resume`` sidecar (optimizer, step, elapsed time) and a ``.jsonl`` log.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from export.augment import camera_effects
from export.checkpoint import atomic_torch_save, load_checkpoint, save_checkpoint
from export.config import MDEQConfig, get_config
from export.contraction import anderson_state, gaussian_like, jacobian_penalty, spectral_penalty
from export.mdeq import MDEQSegNet, VariationalDropout2d, build_model, check_resolution
from export.metrics import confusion, miou
from export.synthetic import VARIANTS, random_batch


def machine() -> str:
    """One line naming the machine, stamped into checkpoints and results."""
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    threads = torch.get_num_threads()
    return f"{platform.node()} {cpu} {os.cpu_count()} cpus, torch {torch.__version__} threads {threads}, {gpu}"


def load_model(path: Path, device: str = "cpu") -> tuple[MDEQSegNet, dict]:
    """Model and meta of one of our checkpoints, on ``device`` (the shared reader; its
    CheckpointError is a ValueError with one line)."""
    model, meta = load_checkpoint(path)
    return model.to(device), meta


# --------------------------------------------------------------------------- losses per mode
def seg_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the stride-4 logits upsampled (as the head engine does) to label size."""
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=True)
    return F.cross_entropy(up, labels)


def unroll_length(mode: str, iters: int, rng: np.random.Generator) -> int:
    """Cell applications of one training batch: SUR draws N ~ U{1..iters}; UR and IL use ``iters``."""
    return int(rng.integers(1, iters + 1)) if mode == "sur" else iters


def forward_train(model: MDEQSegNet, frames: Tensor, mode: str, iters: int, rng: np.random.Generator) -> Tensor:
    """Logits for one training batch under the mode's gradient rule."""
    return forward_train_state(model, frames, mode, unroll_length(mode, iters, rng))[0]


def forward_train_state(model: MDEQSegNet, frames: Tensor, mode: str, n: int) -> tuple[Tensor, list[Tensor], Tensor]:
    """Logits after ``n`` cell applications (``unroll_length``), the solved state (detached: where the Jacobian
    penalty is taken) and the tracked x_0."""
    if mode in ("ur", "sur"):
        state, x = model.solve(frames, n)
        return model.head(*state), [s.detach() for s in state], x
    if mode == "il":
        with torch.no_grad():
            solved, _ = model.solve(frames, n)
        x = model.injection(frames)  # tracked: the phantom step's gradient reaches the injection
        state = list(model.fullstage(*[s.detach() for s in solved], x))
        return model.head(*state), [s.detach() for s in solved], x
    raise ValueError(f"unknown mode {mode!r}")


def distill_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean over pixels of KL(teacher || student) between per-pixel class distributions (logits, N x C x H x W):
    keeps a fine-tuned model's answers on clean frames near its starting model's while other terms reshape it."""
    kl = F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher, 1), reduction="none", log_target=True)
    return kl.sum(1).mean()


def frozen_teacher(teacher: MDEQSegNet) -> MDEQSegNet:
    """A --distill teacher, frozen: BatchNorm in training mode like the student's (batch statistics: matching the
    student's training-mode outputs to eval-mode ones would teach it the train/eval gap), but without dropout, whose
    masks are noise the target need not carry. Every trainer's --distill freezes its teacher this way."""
    teacher.train().requires_grad_(False)
    for m in teacher.modules():
        if isinstance(m, VariationalDropout2d):
            m.eval()
    return teacher


def applies_on(step: int, freq: float) -> bool:
    """Whether a penalty applied on a fraction ``freq`` of steps falls on ``step`` (evenly spread, no rng)."""
    return math.floor((step + 1) * freq) > math.floor(step * freq)


# --------------------------------------------------------------------------- validation
def val_set(seed: int, n: int, height: int, width: int, variant: str = VARIANTS[0]) -> tuple[np.ndarray, np.ndarray]:
    """Held-out full-size frames (their own rng stream, never drawn during training)."""
    return random_batch(np.random.default_rng([seed, 987654321]), n, height, width, variant=variant)


@torch.no_grad()
def evaluate(model: MDEQSegNet, frames: np.ndarray, labels: np.ndarray, iters: int, device: str) -> float:
    """mIoU (0..1) at ``iters`` cell iterations from z = 0."""
    was = model.training
    model.eval()
    conf = 0
    for f, lab in zip(frames, labels):
        logits = model(torch.from_numpy(f[None]).to(device), iters=iters)
        up = F.interpolate(logits, size=lab.shape, mode="bilinear", align_corners=True)
        conf = conf + confusion(up.argmax(1)[0].cpu().numpy(), lab, model.cfg.num_classes)
    model.train(was)
    return miou(conf)


# --------------------------------------------------------------------------- loop
def lr_at(base: float, progress: float, warmup: float = 0.02) -> float:
    """Linear warm-up then cosine decay to 2% of base; progress in [0, 1]."""
    if progress < warmup:
        return base * (0.1 + 0.9 * progress / warmup)
    p = min(1.0, (progress - warmup) / (1 - warmup))
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m export.train",
        description="Train an MDEQ on synthetic frames with UR, SUR or IL (see notes/mdeq-streamdeq.md §4).",
    )
    p.add_argument("--config", default="tiny")
    p.add_argument("--mode", choices=("sur", "ur", "il"), default="sur")
    p.add_argument("--iters", type=int, default=10, help="UR: N; SUR: N_max (N ~ U{1..N_max}); IL: solver iterations")
    p.add_argument("--out", required=True, help="checkpoint path (.pt); log goes to <out>.jsonl")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=6)
    p.add_argument(
        "--crop", type=int, nargs=2, metavar=("H", "W"), default=None, help="training crop (default 128 256)"
    )
    p.add_argument("--height", type=int, default=None, help="training crop height (same as --crop H)")
    p.add_argument("--width", type=int, default=None, help="training crop width (same as --crop W)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--time-limit", type=float, default=0.0, help="minutes; stop (and anneal LR by time) at this budget")
    p.add_argument("--resume", action="store_true", help="continue from --out and its .resume sidecar")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave default)")
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--val-frames", type=int, default=8)
    p.add_argument("--save-every", type=float, default=3.0, help="minutes between checkpoints")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--variant",
        choices=VARIANTS,
        default=VARIANTS[0],
        help="synthetic scene family for training and validation (default: %(default)s, the benchmark's: "
        "building vs vegetation needs long-range context; 'plain': texture gives it away; see export/synthetic.py)",
    )
    p.add_argument(
        "--jac-reg",
        type=float,
        default=0.0,
        metavar="W",
        help="add W x a Hutchinson estimate of ||df/dz||_F^2 / numel at the solved state to the loss (Bai, Koltun "
        "& Kolter 2021: pushes the cell towards a contraction so plain iteration converges); default %(default)s: "
        "off, the shipped recipe",
    )
    p.add_argument(
        "--jac-reg-freq",
        type=float,
        default=1.0,
        metavar="P",
        help="apply the Jacobian terms (--jac-reg, --spec-reg) on this fraction of steps, evenly spread (0 < P <= 1; "
        "default %(default)s)",
    )
    p.add_argument(
        "--spec-reg",
        type=float,
        default=0.0,
        metavar="W",
        help="add W x mean relu(g - margin)^2, g the growth of df/dz's dominant direction at the solved state "
        "(power iteration with vector-Jacobian products: a spectral-radius estimate); default %(default)s: off",
    )
    p.add_argument(
        "--spec-margin", type=float, default=0.7, help="growth below which --spec-reg is zero (default %(default)s)"
    )
    p.add_argument(
        "--spec-steps", type=int, default=3, help="power-iteration steps per --spec-reg term (default %(default)s)"
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="camera effects on training frames (blur, contrast, brightness, colour gain, noise: export/augment.py)",
    )
    p.add_argument(
        "--penalty-on",
        choices=("batch", "camera"),
        default="batch",
        help="where the Jacobian terms are taken: batch (default): the training states; camera: states solved "
        "(--iters plain iterations, no graph) from a camera-effects copy of the batch, so the cell learns to "
        "contract on camera-like frames while the segmentation loss keeps the clean ones",
    )
    p.add_argument(
        "--penalty-solver",
        choices=("plain", "anderson"),
        default="plain",
        help="how the state under the Jacobian terms is solved: plain (default): --iters plain iterations from zero; "
        "anderson: Anderson acceleration to the fixed point (at most 3 x --iters evaluations, relative residual "
        "1e-3; with --penalty-on camera), where the convergence benchmark measures the radius: near radius 1 plain "
        "iterations stop short of it",
    )
    p.add_argument(
        "--init",
        default=None,
        metavar="CKPT",
        help="start from this checkpoint's weights (a fine-tune: fresh optimizer and schedule)",
    )
    p.add_argument(
        "--distill",
        default=None,
        metavar="CKPT",
        help="also match this frozen checkpoint's logits on the clean training frames, after the same number of "
        "iterations (KL per pixel, weight --distill-weight): a fine-tune that reshapes the cell (--spec-reg) keeps "
        "its starting model's answers; default: off",
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
        help="the --distill target is the teacher's logits after M iterations from zero (0, the default: after the "
        "student's own number of this batch, so the trajectory is matched; a large M matches its fixed point only)",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="D",
        help="keep an exponential moving average of the weights (decay D per step, e.g. 0.99; BatchNorm statistics "
        "follow the live model) and save and validate it instead of the last step's weights: a short fine-tune at "
        "batch 2 ends on noisy weights; default %(default)s: off",
    )
    p.add_argument(
        "--relax",
        type=float,
        default=None,
        metavar="A",
        help="train (and ship) the relaxed cell (1 - A) z + A f(z), 0 < A <= 1: the same fixed points, but an "
        "eigenvalue lambda of df/dz becomes 1 - A (1 - lambda), so modes that oscillate under plain iteration "
        "(lambda < -1) contract (MDEQConfig.relax); default: the --init checkpoint's, else the config's (1.0)",
    )
    a = p.parse_args(argv)
    if a.relax is not None and not 0.0 < a.relax <= 1.0:
        p.error(f"--relax must be in (0, 1], got {a.relax}")
    h, w = a.crop or (128, 256)
    a.height, a.width = a.height or h, a.width or w
    return a


def shape_of(cfg: MDEQConfig) -> dict:
    """The config without its relaxation: what weights must share to be loaded into another run's model."""
    return {k: v for k, v in cfg.to_dict().items() if k != "relax"}


def run_config(a: argparse.Namespace, init: MDEQSegNet | None) -> MDEQConfig:
    """The run's config: ``--config`` with ``--relax``, or the ``--init`` model's relaxation when --relax is not
    given (a fine-tune of a relaxed model stays relaxed)."""
    cfg = get_config(a.config)
    relax = a.relax if a.relax is not None or init is None else init.cfg.relax
    return cfg if relax is None else dataclasses.replace(cfg, relax=relax)


class Trainer:
    """Holds the model, optimizer and bookkeeping so the loop stays short."""

    def __init__(self, a: argparse.Namespace, command: str) -> None:
        self.a, self.command = a, command
        self.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
        init = load_checkpoint(a.init) if a.init else None  # read once: its relaxation, then its weights
        self.cfg = run_config(a, init[0] if init else None)
        check_resolution(self.cfg, a.height, a.width)
        self.model = build_model(self.cfg, seed=a.seed).to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
        self.amp = self.device.startswith("cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.out = Path(a.out)
        self.sidecar = self.out.with_name(self.out.name + ".resume")
        self.log_path = self.out.with_suffix(".jsonl")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if not a.resume:  # a fresh run's log is its own; a resumed run appends to it
            self.log_path.unlink(missing_ok=True)
        self.step, self.elapsed, self.best = 0, 0.0, float("nan")
        self.parts: dict[str, float] = {}
        self.val = val_set(a.seed, a.val_frames, 256, 512, a.variant)
        self.init_meta: dict = {}
        if init:
            self.start_from(Path(a.init), init)
        self.teacher = self.load_teacher(Path(a.distill)) if a.distill else None
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False) if a.ema > 0 else None

    def compatible(
        self, path: Path, flag: str, loaded: tuple[MDEQSegNet, dict] | None = None
    ) -> tuple[MDEQSegNet, dict]:
        """Model and meta of a checkpoint that ``flag`` (--init, --distill, --resume) names (``loaded``: already
        read from ``path``), if it has this run's config and scene family; otherwise a one-line ValueError."""
        saved, meta = loaded if loaded is not None else load_checkpoint(path)
        if shape_of(saved.cfg) != shape_of(self.cfg):
            raise ValueError(
                f"{flag} {path} is a {saved.cfg.name!r} model of another shape, not --config {self.cfg.name}"
            )
        if flag == "--resume" and saved.cfg.relax != self.cfg.relax:
            raise ValueError(f"{flag} {path} has relax {saved.cfg.relax}, not --relax {self.cfg.relax}")
        trained_on = meta.get("variant", "plain")  # checkpoints from before variants: plain scenes
        if trained_on != self.a.variant:
            raise ValueError(f"{flag} {path} was trained on {trained_on!r} scenes, not --variant {self.a.variant}")
        return saved, meta

    def load_teacher(self, path: Path) -> MDEQSegNet:
        """The frozen model --distill matches (:func:`frozen_teacher`)."""
        teacher, _ = self.compatible(path, "--distill")
        return frozen_teacher(teacher.to(self.device))

    def start_from(self, path: Path, loaded: tuple[MDEQSegNet, dict]) -> None:
        """Weights of another checkpoint of the same config and scene family (what a fine-tune starts from)."""
        saved, meta = self.compatible(path, "--init", loaded)
        self.model.load_state_dict(saved.state_dict())
        keep = ("mode", "iters", "steps", "wall_time_s", "command", "val_miou", "init")
        self.init_meta = {"path": str(path), **{k: meta[k] for k in keep if k in meta}}

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- d * ema + (1 - d) * weights, d ramped up over the first steps ((1 + t) / (10 + t)) so the start
        does not weigh in for long; buffers (BatchNorm statistics) are the live model's."""
        if self.ema is None:
            return
        d = min(self.a.ema, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p, 1 - d)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    def shipped(self) -> MDEQSegNet:
        """The weights this run saves and validates: the moving average with --ema, else the live ones."""
        return self.ema if self.ema is not None else self.model

    def resume(self) -> None:
        if not self.out.exists():
            return
        saved, _ = self.compatible(self.out, "--resume")
        self.model.load_state_dict(saved.state_dict())
        if self.ema is not None:
            self.ema.load_state_dict(saved.state_dict())
        if self.sidecar.exists():
            side = torch.load(self.sidecar, map_location=self.device, weights_only=False)
            if "live" in side:  # with --ema the checkpoint holds the average; the sidecar the weights trained on
                self.model.load_state_dict(side["live"])
            self.opt.load_state_dict(side["optimizer"])
            self.step, self.elapsed = side["step"], side["elapsed"]
        print(f"resumed from {self.out} at step {self.step} ({self.elapsed / 60:.1f} min)", flush=True)

    def progress(self) -> float:
        p = self.step / self.a.steps
        if self.a.time_limit > 0:
            p = max(p, self.elapsed / (self.a.time_limit * 60))
        return p

    def meta(self, val_miou: float) -> dict:
        return {
            "mode": self.a.mode,
            "iters": self.a.iters,
            "steps": self.step,
            "batch": self.a.batch,
            "crop": [self.a.height, self.a.width],
            "lr": self.a.lr,
            "seed": self.a.seed,
            "wall_time_s": round(self.elapsed, 1),
            "machine": machine(),
            "command": self.command,
            "val_miou": val_miou,
            "val_iters": self.val_iters(),
            "torch": torch.__version__,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "variant": self.a.variant,
            **({"jac_reg": self.a.jac_reg, "jac_reg_freq": self.a.jac_reg_freq} if self.a.jac_reg > 0 else {}),
            **(
                {"spec_reg": self.a.spec_reg, "spec_margin": self.a.spec_margin, "spec_steps": self.a.spec_steps}
                if self.a.spec_reg > 0
                else {}
            ),
            **({"augment": True} if self.a.augment else {}),
            **({"penalty_on": self.a.penalty_on} if self.a.penalty_on != "batch" else {}),
            **({"penalty_solver": self.a.penalty_solver} if self.a.penalty_solver != "plain" else {}),
            **({"init": self.init_meta} if self.init_meta else {}),
            **({"ema": self.a.ema} if self.a.ema > 0 else {}),
            **(
                {
                    "distill": self.a.distill,
                    "distill_weight": self.a.distill_weight,
                    "distill_iters": self.a.distill_iters,
                }
                if self.a.distill
                else {}
            ),
        }

    def val_iters(self) -> int:
        return self.a.iters if self.a.mode != "il" else self.cfg.f_thres

    def save(self, val_miou: float) -> None:
        self.model.eval()  # state_dict is mode-independent; keep the saved model in eval
        save_checkpoint(self.shipped(), self.out, self.meta(val_miou))
        self.model.train()
        resume = {"optimizer": self.opt.state_dict(), "step": self.step, "elapsed": self.elapsed}
        if self.ema is not None:
            resume["live"] = self.model.state_dict()
        atomic_torch_save(resume, self.sidecar)

    def log(self, rec: dict) -> None:
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")

    def batch_loss(self) -> tuple[Tensor, dict[str, float]]:
        """The loss of this step's batch (segmentation, plus the Jacobian term when it applies) and its parts."""
        a = self.a
        rng = np.random.default_rng([a.seed, self.step])
        frames, labels = random_batch(rng, a.batch, a.height, a.width, variant=a.variant)
        if a.augment:
            frames = camera_effects(frames, rng)
        x = torch.from_numpy(frames).to(self.device)
        y = torch.from_numpy(labels.astype(np.int64)).to(self.device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
            n = unroll_length(a.mode, a.iters, rng)
            logits, state, x0 = forward_train_state(self.model, x, a.mode, n)
            loss = seg_loss(logits.float(), y)
            parts = {"seg": float(loss.detach())}
            if self.teacher is not None:
                with torch.no_grad():
                    target = self.teacher(x, iters=a.distill_iters or n)
                distill = distill_loss(logits.float(), target.float())
                loss = loss + a.distill_weight * distill
                parts["distill"] = float(distill.detach())
            if (a.jac_reg > 0 or a.spec_reg > 0) and applies_on(self.step, a.jac_reg_freq):
                loss = loss + self.penalties(frames, state, x0, rng, parts)
        return loss, parts

    def penalties(
        self, frames: np.ndarray, state: list[Tensor], x0: Tensor, rng: np.random.Generator, parts: dict[str, float]
    ) -> Tensor:
        """The weighted Jacobian terms of this step (their values go into ``parts`` for the log)."""
        a, total = self.a, torch.zeros((), device=self.device)
        if a.penalty_on == "camera":
            state, x0 = self.camera_states(frames, rng)
        if a.jac_reg > 0:
            jac = jacobian_penalty(self.model.fullstage, state, x0, gaussian_like(state, rng))
            total = total + a.jac_reg * jac
            parts["jac"] = float(jac.detach())
        if a.spec_reg > 0:
            start = gaussian_like(state, rng)
            spec, growth = spectral_penalty(self.model.fullstage, state, x0, start, a.spec_steps, a.spec_margin)
            total = total + a.spec_reg * spec
            parts["spec"], parts["growth"] = float(spec.detach()), float(growth.max())
        return total

    def camera_states(self, frames: np.ndarray, rng: np.random.Generator) -> tuple[list[Tensor], Tensor]:
        """Solved states (no graph) and tracked x_0 of a camera-effects copy of the batch (--penalty-on camera)."""
        cam = torch.from_numpy(camera_effects(frames, rng, p=1.0)).to(self.device)
        x0 = self.model.injection(cam)
        if self.a.penalty_solver == "anderson":
            shapes = self.model.state_shapes(*cam.shape[:3])
            self.model.fullstage.reset_dropout([x0] * len(shapes))  # it reads only each scale's batch and device
            return anderson_state(self.model.fullstage, x0, shapes, 3 * self.a.iters), x0
        with torch.no_grad():
            state, _ = self.model.solve(cam, self.a.iters)
        return [s.detach() for s in state], x0

    def train_step(self) -> float:
        a = self.a
        for g in self.opt.param_groups:
            g["lr"] = lr_at(a.lr, self.progress())
        loss, self.parts = self.batch_loss()
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 2.0)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.update_ema()
        return float(loss.detach())

    def run(self) -> float:
        from tqdm import tqdm

        a = self.a
        self.model.train()
        last_save, val_miou = time.time(), float("nan")
        bar = tqdm(total=a.steps, initial=self.step, disable=a.no_progress, dynamic_ncols=True, mininterval=5)
        t_prev = time.time()
        while self.step < a.steps and self.progress() < 1.0:
            loss = self.train_step()
            self.step += 1
            now = time.time()
            self.elapsed += now - t_prev
            t_prev = now
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.opt.param_groups[0]['lr']:.1e}")
            rec = {"step": self.step, "loss": round(loss, 4), "elapsed_s": round(self.elapsed, 1)}
            rec.update({k: round(v, 5) for k, v in self.parts.items() if k != "seg"})
            if self.step % a.val_every == 0:
                val_miou = evaluate(self.shipped(), *self.val, self.val_iters(), self.device)
                rec["val_miou"] = round(val_miou, 4)
                print(f"\nstep {self.step} loss {loss:.3f} val mIoU {100 * val_miou:.1f}", flush=True)
                t_prev = time.time()  # validation time does not count against the training budget
            if self.step % 10 == 0 or "val_miou" in rec:
                self.log(rec)
            if time.time() - last_save > a.save_every * 60:
                self.save(val_miou)
                last_save = t_prev = time.time()
        bar.close()
        val_miou = evaluate(self.shipped(), *self.val, self.val_iters(), self.device)
        self.log({"step": self.step, "final_val_miou": round(val_miou, 4), "elapsed_s": round(self.elapsed, 1)})
        self.save(val_miou)
        print(f"done: {self.step} steps, {self.elapsed / 60:.1f} min, val mIoU {100 * val_miou:.1f} -> {self.out}")
        return val_miou


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    command = "python -m export.train " + " ".join(shlex.quote(s) for s in (argv if argv is not None else sys.argv[1:]))
    try:
        if a.iters < 1 or a.steps < 1 or a.batch < 1:
            raise ValueError("--iters, --steps and --batch must be >= 1")
        if not (a.jac_reg >= 0 and math.isfinite(a.jac_reg)) or not 0 < a.jac_reg_freq <= 1:
            raise ValueError("--jac-reg must be a finite number >= 0 and --jac-reg-freq in (0, 1]")
        if not (a.spec_reg >= 0 and math.isfinite(a.spec_reg)) or not a.spec_margin >= 0 or a.spec_steps < 1:
            raise ValueError("--spec-reg and --spec-margin must be finite numbers >= 0 and --spec-steps >= 1")
        if not 0 <= a.ema < 1:
            raise ValueError("--ema must be in [0, 1)")
        if not (a.distill_weight >= 0 and math.isfinite(a.distill_weight)) or a.distill_iters < 0:
            raise ValueError("--distill-weight must be a finite number >= 0 and --distill-iters >= 0")
        if a.penalty_solver != "plain" and a.penalty_on != "camera":
            raise ValueError("--penalty-solver anderson needs --penalty-on camera (the batch's state is the SUR solve)")
        trainer = Trainer(a, command)
        if a.resume:
            trainer.resume()
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(a.seed + trainer.step)
    trainer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
