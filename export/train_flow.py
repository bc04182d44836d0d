"""Train the FlowNetS of ``export/flownet.py`` on synthetic ground-truth flow.

DFF trains FlowNet end to end on the task loss only. We have dense ground truth, so the flow
is supervised directly (end-point error on the stride-4 grid of z_0, for current -> key pairs
up to ``--max-offset`` frames apart, composed from the generator's per-frame flows). With
``--deq-checkpoint`` the scale fields are trained too, DFF-style: the frozen MDEQ's key-frame
state, warped by the predicted flows and multiplied by the scale fields, should match the
current frame's state.

``python -m export.train_flow --out checkpoints/flownet_tiny.pt --minutes 10``
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from export.checkpoint import atomic_torch_save, load_checkpoint
from export.config import MDEQConfig, get_config
from export.flownet import FlowNetS, backward_warp
from export.synthetic import render_clip

FORMAT = "deqstream-flownet/1"


def compose_flows(flows: np.ndarray, t: int, d: int) -> np.ndarray:
    """Flow from frame t to frame t-d (pixels), chaining the per-frame t -> t-1 flows:
    F_{t->t-d}(p) = F_{t->t-1}(p) + F_{t-1->t-d}(p + F_{t->t-1}(p))."""
    total = torch.from_numpy(flows[t]).permute(2, 0, 1)[None].clone()
    for s in range(1, d):
        step = torch.from_numpy(flows[t - s]).permute(2, 0, 1)[None]
        total = total + backward_warp(step, total)
    return total[0].permute(1, 2, 0).numpy()


def make_pairs(
    rng: np.random.Generator, clips: int, frames: int, height: int, width: int, max_offset: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(current frame, key frame, current->key flow in pixels) from clips without shot changes."""
    pairs = []
    for _ in range(clips):
        f, _, fl = render_clip(int(rng.integers(1 << 30)), frames, height, width, shot_change=False)
        for t in range(1, frames):
            d = int(rng.integers(1, min(max_offset, t) + 1))
            pairs.append((f[t], f[t - d], compose_flows(fl, t, d)))
    return pairs


def flow_target(flow_px: Tensor, stride: int) -> Tensor:
    """Pixel flow (N,2,H,W) -> flow on a stride-s grid, in that grid's pixels."""
    return F.avg_pool2d(flow_px, stride, stride) / stride


def batch_tensors(pairs: list, idx: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
    cur = torch.from_numpy(np.stack([pairs[i][0] for i in idx]))
    key = torch.from_numpy(np.stack([pairs[i][1] for i in idx]))
    flow = torch.from_numpy(np.stack([pairs[i][2] for i in idx])).permute(0, 3, 1, 2)
    return cur, key, flow


def feature_loss(deq: Any, net_out: tuple[Tensor, ...], cur: Tensor, key: Tensor, iters: int) -> Tensor:
    """DFF's objective on the state: scale_i * warp(z_key_i, flow_i) ~ z_cur_i."""
    n = len(deq.cfg.channels)
    with torch.no_grad():
        z_key, _ = deq.solve(key, iters)
        z_cur, _ = deq.solve(cur, iters)
    loss = cur.new_zeros((), dtype=torch.float32)
    for i in range(n):
        pred = backward_warp(z_key[i], net_out[i]) * net_out[n + i]
        loss = loss + F.mse_loss(pred, z_cur[i])
    return loss / n


def epe(pred: Tensor, target: Tensor) -> Tensor:
    return (pred - target).norm(dim=1).mean()


def save_flownet(net: FlowNetS, cfg: MDEQConfig, path: Path, meta: dict[str, Any]) -> None:
    """Atomic write of the FlowNet checkpoint (its own format: it is not an MDEQ)."""
    obj = {"format": FORMAT, "config": cfg.name, "width": net.width, "levels": net.levels}
    atomic_torch_save({**obj, "state_dict": net.state_dict(), "meta": meta}, path)


def load_flownet(path: str | os.PathLike[str]) -> tuple[FlowNetS, dict[str, Any]]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint")
    net = FlowNetS(get_config(obj["config"]), width=obj["width"], levels=obj["levels"])
    net.load_state_dict(obj["state_dict"])
    return net.eval(), dict(obj.get("meta", {}))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m export.train_flow", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="tiny", help="MDEQ config whose state pyramid the flows are made for")
    p.add_argument("--out", type=Path, default=Path("checkpoints/flownet_tiny.pt"))
    p.add_argument("--width", type=float, default=0.125, help="channel factor vs DFF's FlowNet (1 = full, 0.5 = Half)")
    p.add_argument("--levels", type=int, default=5, help="encoder levels (3..6)")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width-px", type=int, default=256, help="training frame width in pixels")
    p.add_argument("--clips", type=int, default=40, help="synthetic clips rendered for training pairs")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--max-offset", type=int, default=5, help="largest key-frame distance of a pair (DFF's interval)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--minutes", type=float, default=None, help="stop after this wall time")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--deq-checkpoint", type=Path, default=None, help="train the scale fields against this MDEQ")
    p.add_argument("--deq-iters", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def train(a: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    cfg = get_config(a.config)
    net = FlowNetS(cfg, width=a.width, levels=a.levels)
    deq = load_checkpoint(a.deq_checkpoint)[0].eval() if a.deq_checkpoint else None
    pairs = make_pairs(rng, a.clips, a.frames, a.height, a.width_px, a.max_offset)
    val = make_pairs(np.random.default_rng(a.seed + 10_000), 4, a.frames, a.height, a.width_px, a.max_offset)
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, a.lr, total_steps=a.steps, pct_start=0.05)
    start, stride = time.time(), cfg.strides[0]
    bar = tqdm(range(a.steps), desc="flownet", disable=not sys.stderr.isatty())
    steps = 0
    for _ in bar:
        cur, key, flow = batch_tensors(pairs, rng.integers(0, len(pairs), a.batch))
        out = net(cur, key)
        loss = epe(out[0], flow_target(flow, stride))
        if deq is not None:
            loss = loss + feature_loss(deq, out, cur, key, a.deq_iters)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        steps += 1
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if a.minutes is not None and time.time() - start > 60 * a.minutes:
            break
    stats = evaluate(net, val, stride)
    meta = {"steps": steps, "wall_s": round(time.time() - start, 1), "command": shlex.join(sys.argv), **stats}
    save_flownet(net, cfg, a.out, meta)
    return meta


@torch.no_grad()
def evaluate(net: FlowNetS, pairs: list, stride: int) -> dict[str, float]:
    """Mean EPE on the stride grid (feature px) of the network and of a zero-flow guess."""
    net.eval()
    cur, key, flow = batch_tensors(pairs, np.arange(len(pairs)))
    target = flow_target(flow, stride)
    pred = torch.cat([net(cur[i : i + 8], key[i : i + 8])[0] for i in range(0, len(pairs), 8)])
    net.train()
    return {"val_epe": float(epe(pred, target)), "val_epe_zero_flow": float(epe(torch.zeros_like(target), target))}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    meta = train(a)
    print(f"saved {a.out}: val EPE {meta['val_epe']:.3f} feature px (zero flow {meta['val_epe_zero_flow']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
