"""Pose accuracy vs iterations per frame: per-frame (z = 0 every frame) vs streaming (warm start), as PCK.

The pose counterpart of :mod:`benchmarks.accuracy` (StreamDEQ's MPII table: PCKh@0.5 per-frame vs streaming at
k iterations per frame): held-out synthetic pose clips (:func:`export.synthetic_pose.render_pose_clip`, one walking
figure with MPII's 16 joints) written through H.264 and decoded back, run per frame, streamed and streamed with the
runtime's shot-change resets at k = 1, 2, 4, 8, next to the converged baseline (``--f-thres`` iterations from
zero). The mode loop, the reset rules and the split's seeds are :mod:`benchmarks.accuracy`'s own
(``evaluate_clip``, ``SPLIT_SEEDS``); only the score differs: PCK, the share of the joints inside the frame (visible
or hidden behind the post) whose keypoint lies within ``--thr`` times the figure's head length (upper neck to head
top) of the truth, counted over all frames of all clips (and from frame 10 on).

Keypoints come from the exported bundle through the runtime's runners (``--engine``: its ``head_pose`` engine and
the runtime's own decode, runtime.pose_decode) or from eager PyTorch on a checkpoint with a pose head
(``--checkpoint``).
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

from benchmarks.accuracy import (
    FROM_FRAME,
    KS,
    MODES,
    SPLIT_SEEDS,
    Acc,
    EngineStepper,
    TorchStepper,
    add_clip_args,
    evaluate_clip,
    metric_table,
    parse_clip_args,
    split_suffix,
    stamp_lines,
)
from benchmarks.plots import write_text

THRESHOLD = 0.5  # head lengths (PCKh@0.5)


class PoseEngineStepper(EngineStepper):
    """A pose bundle's engines: the head engine's heatmaps decoded by the runtime's own decode."""

    def __init__(self, engine: str | Path, device: str = "cpu", threads: int = 0) -> None:
        super().__init__(engine, device, threads)
        if self.bundle.task != "pose":
            raise ValueError(f"{engine}: a {self.bundle.task!r} bundle, not a pose bundle (export --heads pose)")

    def keypoints(self, z: list, height: int, width: int) -> np.ndarray:
        """(J, 3) keypoints [x, y, score] in frame pixels."""
        from runtime.pose_decode import decode_heatmaps

        heat = torch.from_numpy(self.classes(z, height, width))[None]
        return decode_heatmaps(heat, self.pipe.task.stride(self.bundle))[0].numpy()


class PoseTorchStepper(TorchStepper):
    """Eager PyTorch on a checkpoint with a pose head."""

    def __init__(self, model: torch.nn.Module, device: str = "cpu") -> None:
        if not isinstance(getattr(model, "pose_head", None), torch.nn.Module):
            raise ValueError("the checkpoint has no pose head (train one with python -m export.train_pose)")
        super().__init__(model, device)

    @torch.no_grad()
    def keypoints(self, z: list, height: int, width: int) -> np.ndarray:
        from runtime.pose_decode import decode_heatmaps

        heat = self.model.pose_head(*z)
        return decode_heatmaps(heat, (height / heat.shape[2], width / heat.shape[3]))[0].cpu().numpy()


# --------------------------------------------------------------------------- clips
def pose_clip_dir(root: Path, seed: int, frames: int, height: int, width: int) -> Path:
    return Path(root) / f"pose_seed{seed}_{frames}f_{height}x{width}"


def prepare_pose_clips(
    root: Path, n: int, frames: int, height: int, width: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(decoded frames, (T, J, 3) joints) of n held-out pose clips through H.264, cached under root."""
    from export.synthetic import decode_mp4
    from export.synthetic_pose import render_pose_clip
    from runtime.encode import EncodeOptions, encode_mp4, publish, temp_sibling

    clips = []
    for i in range(n):
        d = pose_clip_dir(root, seed + i, frames, height, width)
        if not (d / "joints.npy").exists() or not (d / "clip.mp4").exists():
            clip = render_pose_clip(seed + i, frames, height, width)
            d.mkdir(parents=True, exist_ok=True)
            encode_mp4(d / "clip.mp4", clip.frames, EncodeOptions())
            tmp = temp_sibling(d / "joints.npy")  # unique: runs side by side fill the same cache
            with open(tmp, "wb") as fh:
                np.save(fh, clip.joints)
            publish(tmp, d / "joints.npy")
        decoded, joints = decode_mp4(d / "clip.mp4"), np.load(d / "joints.npy")
        if decoded.shape[0] != joints.shape[0]:
            raise RuntimeError(f"{d}: decoded {decoded.shape[0]} frames but {joints.shape[0]} joint sets")
        clips.append((decoded, joints))
    return clips


# --------------------------------------------------------------------------- evaluation
def summary(acc: Acc, from_frame: int = FROM_FRAME) -> dict:
    """PCK over every frame and from ``from_frame`` on (pooled counts), mean residual and distance to z*."""
    offsets = sorted(acc.conf)

    def pooled(ts: list[int]) -> float | None:
        hits, counted = np.sum([acc.conf[t] for t in ts], axis=0) if ts else (0, 0)
        return float(hits / counted) if counted else None

    def mean(d: dict, ts: list[int]) -> float | None:
        v = [x for t in ts for x in d.get(t, [])]
        return float(np.mean(v)) if v else None

    late = [t for t in offsets if t >= from_frame]
    return {
        "pck": pooled(offsets),
        "pck_from10": pooled(late),
        "residual": mean(acc.residual, offsets),
        "distance": mean(acc.distance, offsets),
        "per_frame_pck": [pooled([t]) for t in offsets],
        "per_clip_counts": [np.asarray(c).astype(int).tolist() for c in acc.clips],
    }


def run_pose_accuracy(
    stepper, clips, ks=KS, f_thres: int = 30, reset_iters: int | None = None, thr: float = THRESHOLD
) -> dict:
    """Rows ('converged', 'per-frame k=K', 'stream k=K', 'stream+reset k=K') -> :func:`summary`."""
    from export.synthetic_pose import pck_counts

    accs: dict = {"converged": Acc(), **{(mode, k): Acc() for k in ks for mode in MODES}}
    for frames, joints in clips:
        h, w = frames.shape[1:3]

        def measure(z: list, truth: np.ndarray, h: int = h, w: int = w) -> np.ndarray:
            return np.array(pck_counts(stepper.keypoints(z, h, w), truth, thr))

        for acc in accs.values():
            acc.new_clip()
        evaluate_clip(stepper, frames, joints, ks, f_thres, accs, reset_iters, measure)
    return {(key if isinstance(key, str) else f"{key[0]} k={key[1]}"): summary(acc) for key, acc in accs.items()}


# --------------------------------------------------------------------------- outputs
def markdown(results: dict, stamp: dict) -> str:
    """One table per model, rows mode x k (benchmarks.accuracy's layout)."""
    lines = stamp_lines(
        "Pose accuracy vs iterations per frame (synthetic held-out pose clips, through H.264)",
        stamp,
        f"{stamp['split']} split, seeds from {stamp['heldout_seed']}; {stamp['clips']} x {stamp['frames']} frames at "
        f"{stamp['height']}x{stamp['width']}",
        stamp["backend"],
        f"PCK@{stamp['thr']}: joints inside the frame within {stamp['thr']} head lengths; converged = "
        f"{stamp['f_thres']} iterations from z = 0; 'from 10' = frame offsets >= {FROM_FRAME}",
    )
    for name, res in results.items():
        meta = res["checkpoint_meta"]
        lines += [f"## {name} (mode {meta.get('mode')}, N={meta.get('iters')}, {meta.get('steps')} steps)", ""]
        lines += metric_table(res["rows"], "pck", "PCK") + [""]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.pose_accuracy",
        description="PCK vs iterations per frame, per-frame vs streaming, on held-out synthetic pose clips.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--engine", help="an exported pose bundle (its deq_cell.onnx/.pt2/.plan), through the runtime")
    src.add_argument("--checkpoint", help="a deqstream-ckpt/1 file with a pose head, in eager PyTorch")
    add_clip_args(p)
    p.add_argument("--thr", type=float, default=THRESHOLD, help="PCK radius in head lengths (default %(default)s)")
    p.add_argument(
        "--reset-iters",
        type=int,
        default=None,
        help="stream+reset: iterations from zero on a stream's first frame and after a reset (default k); results "
        "go to pose_accuracy_reset<N>.*",
    )
    return parse_clip_args(p, argv, "data/pose_clips")


def _stepper(a: argparse.Namespace, device: str) -> tuple[str, object, dict, str]:
    """(name, stepper, meta of its weights, backend line)."""
    if a.engine:
        st = PoseEngineStepper(a.engine, device, a.threads)
        meta = dict(st.bundle.manifest.get("weights", {}))
        name = Path(meta["checkpoint"]).stem if "checkpoint" in meta else Path(a.engine).parent.name
        return f"{name} ({st.bundle.kind})", st, meta, f"exported engines ({st.bundle.kind}) through runtime runners"
    from export.train import load_model

    model, meta = load_model(Path(a.checkpoint), device)
    return Path(a.checkpoint).stem, PoseTorchStepper(model, device), meta, "pytorch-eager"


def main(argv: list[str] | None = None) -> int:
    from export.train import machine
    from runtime.errors import DeqRuntimeError

    a = parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args = argv if argv is not None else sys.argv[1:]
    stamp = {
        "command": "python -m benchmarks.pose_accuracy " + " ".join(shlex.quote(s) for s in args),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **{k: getattr(a, k) for k in ("clips", "frames", "height", "width", "f_thres", "reset_iters", "ks", "thr")},
        "split": a.split,
        "heldout_seed": SPLIT_SEEDS[a.split],
    }
    t0 = time.time()
    try:
        if min(a.ks) < 1 or a.clips < 1 or a.frames < 1 or (a.reset_iters is not None and a.reset_iters < 1):
            raise ValueError("--ks, --clips, --frames and --reset-iters must be >= 1")
        if not a.thr > 0:
            raise ValueError(f"--thr must be > 0, got {a.thr}")
        name, stepper, meta, backend = _stepper(a, device)
        stamp["backend"] = f"{backend}, {device}"
        clips = prepare_pose_clips(Path(a.data), a.clips, a.frames, a.height, a.width, SPLIT_SEEDS[a.split])
        rows = run_pose_accuracy(stepper, clips, a.ks, a.f_thres, a.reset_iters, a.thr)
    except (ValueError, OSError, RuntimeError, DeqRuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stamp["wall_s"] = round(time.time() - t0, 1)
    results = {name: {"checkpoint_meta": meta, "rows": rows}}
    stem = ("pose_accuracy_quick" if a.quick else "pose_accuracy") + (f"_reset{a.reset_iters}" if a.reset_iters else "")
    stem += split_suffix(a.split)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{stem}.md", markdown(results, stamp))
    write_text(out / f"{stem}.json", json.dumps({"stamp": stamp, "results": results}, indent=1, default=float))
    print(markdown(results, stamp))
    print(f"wrote {out / stem}.md, {out / stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
