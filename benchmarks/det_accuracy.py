"""Detection accuracy vs iterations per frame: mAP@50 of a det bundle on held-out synthetic clips with boxes.

The detection counterpart of benchmarks/accuracy.py, with its protocol: the same split seeds (validation for
choices, test for reported numbers), the same modes (``per-frame``: k iterations from zero; ``stream``: k warm-started
iterations, StreamDEQ; ``stream+reset``: plus the runtime's shot-change resets; ``converged``: ``--f-thres``
iterations from zero) produced by the same :func:`benchmarks.accuracy.clip_states`, through the exported engines and
the runtime's own pipeline (its device decode: the manifest's detector kind). Clips are rendered with their objects'
boxes (export.synthetic ``boxes=True``: the visible extent of every car, person and sign), written to H.264 and
decoded back.

mAP@50: per class, detections of all frames ranked by score, each matched greedily to the best-overlapping
unmatched ground-truth box of its frame at IoU >= 0.5; AP is the area under the precision envelope (all points,
as PASCAL VOC since 2010); the mean runs over classes with ground truth. Detections are decoded with a low score
threshold (``--eval-thr``) so the ranking is complete; the threshold the bundle applies to its records is a
separate choice, made on validation clips from the F1 at IoU 0.5 this benchmark reports per threshold.
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
    EngineStepper,
    _pct,
    add_clip_args,
    clip_dir,
    clip_states,
    metric_table,
    parse_clip_args,
    split_suffix,
    stamp_lines,
)
from benchmarks.plots import write_text
from export.synthetic import VARIANTS, EncodeOptions, read_clip, render_clip_with_meta, write_clip

EVAL_THR = 0.01  # decode threshold for the ranking (mAP); the bundle's own threshold is for its records
THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6)  # F1 candidates for the records' threshold
IOU = 0.5


# --------------------------------------------------------------------------- metric
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of boxes ``[x1, y1, x2, y2]`` (pixel edges: area (x2 - x1) (y2 - y1))."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return inter / np.maximum(union, 1e-9)


def match_frame(det: np.ndarray, gt: np.ndarray, iou: float = IOU) -> np.ndarray:
    """Per detection (rows ``[x1, y1, x2, y2, score, class]``, best first) whether it is a true positive: greedy,
    in score order, to the unmatched ground-truth box (``[x1, y1, x2, y2, class]``) of its class it overlaps most."""
    tp = np.zeros(len(det), bool)
    used = np.zeros(len(gt), bool)
    if len(det) == 0 or len(gt) == 0:
        return tp
    ious = box_iou(det[:, :4], gt[:, :4])
    ious[det[:, 5][:, None] != gt[:, 4][None, :]] = -1
    for i in np.argsort(-det[:, 4], kind="stable"):
        cand = np.where(used, -1, ious[i])
        j = int(np.argmax(cand))
        if cand[j] >= iou:
            tp[i], used[j] = True, True
    return tp


def average_precision(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    """Area under the precision envelope of detections ranked by score (VOC all-point interpolation)."""
    order = np.argsort(-scores, kind="stable")
    hits = tp[order].astype(np.float64)
    ctp, cfp = np.cumsum(hits), np.cumsum(1 - hits)
    recall = np.concatenate([[0.0], ctp / max(n_gt, 1), [1.0]])
    precision = np.concatenate([[1.0], ctp / np.maximum(ctp + cfp, 1e-9), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def mean_ap(dets: list[np.ndarray], gts: list[np.ndarray], num_classes: int, iou: float = IOU) -> float | None:
    """mAP over classes with ground truth, of per-frame detections and ground truths (paired lists)."""
    tps = [match_frame(d, g, iou) for d, g in zip(dets, gts)]
    aps = []
    for c in range(num_classes):
        n_gt = sum(int((g[:, 4] == c).sum()) for g in gts)
        if n_gt == 0:
            continue
        scores = np.concatenate([d[d[:, 5] == c, 4] for d in dets] or [np.zeros(0)])
        tp = np.concatenate([t[d[:, 5] == c] for d, t in zip(dets, tps)] or [np.zeros(0, bool)])
        aps.append(average_precision(scores, tp, n_gt))
    return float(np.mean(aps)) if aps else None


def f1_at(dets: list[np.ndarray], gts: list[np.ndarray], thr: float, iou: float = IOU) -> float:
    """F1 of the detections scoring above ``thr`` (class-aware matching at ``iou``)."""
    tp = fp = 0
    for d, g in zip(dets, gts):
        kept = d[d[:, 4] > thr]
        hits = int(match_frame(kept, g, iou).sum())
        tp, fp = tp + hits, fp + len(kept) - hits
    n_gt = sum(len(g) for g in gts)
    return 2 * tp / max(2 * tp + fp + (n_gt - tp), 1)


# --------------------------------------------------------------------------- engines and clips
class DetStepper(EngineStepper):
    """A det bundle through the runtime's pipeline: the cell as benchmarks.accuracy's, and ``detections`` running
    the head engine and the bundle's device decode (its stage) on a state, with every peak above ``eval_thr``."""

    def __init__(self, engine: str | Path, device: str = "cpu", threads: int = 0, eval_thr: float = EVAL_THR) -> None:
        super().__init__(engine, device, threads)
        if self.bundle.task != "det":
            raise ValueError(f"{engine}: a {self.bundle.task} bundle, not a detector (export one with make export-det)")
        if hasattr(self.pipe.stage, "score_thr"):
            self.pipe.stage.score_thr = eval_thr

    def detections(self, z: list[torch.Tensor]) -> np.ndarray:
        """(n, 6) ``[x1, y1, x2, y2, score, class]`` in engine pixels for state ``z`` (batch 1)."""
        with self.pipe.stream_context():
            for dst, src in zip(self.zin, z):
                dst.copy_(src)
            self.pipe.head.run(self.pipe.stream, 0)
            self.pipe.stage.run(self.pipe.stream, self.pipe.result)
            out = self.pipe.result[0].clone()
        self._sync()
        rows = out.cpu().numpy()
        return rows[rows[:, 5] >= 0]


def prepare_det_clips(
    root: Path, n: int, frames: int, height: int, width: int, seed: int
) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Held-out clips with boxes, through H.264 and decoded back (cached under ``root`` like the accuracy clips)."""
    clips = []
    for i in range(n):
        d = clip_dir(root, i, frames, height, width, seed, VARIANTS[0])
        if not (d / "labels.npz").exists() or not (d / "clip.mp4").exists():
            f, lab, flow, meta = render_clip_with_meta(seed + i, frames, height, width, boxes=True)
            write_clip(d, f, lab, flow, meta, EncodeOptions())
        decoded, _, _, meta = read_clip(d)
        if "boxes" not in meta or decoded.shape[0] != len(meta["boxes"]):
            raise RuntimeError(f"{d}: no boxes for every frame (a clip cached without boxes? delete it)")
        clips.append((decoded, [np.array(b, np.float32).reshape(-1, 5) for b in meta["boxes"]]))
    return clips


def run_det_accuracy(stepper: DetStepper, clips, ks=KS, f_thres: int = 30, reset_iters: int | None = None) -> dict:
    """Per row ('converged', '<mode> k=K'): mAP@50 over all frames and from frame 10, the mean residual and
    distance to z*, and (converged only) F1 per candidate threshold."""
    keys = ["converged"] + [(m, k) for k in ks for m in MODES]
    found: dict = {key: {"det": [], "gt": [], "t": [], "res": [], "dist": []} for key in keys}
    num_classes = len(stepper.bundle.classes)
    for frames, boxes in clips:
        for t, key, z, res, dist in clip_states(stepper, frames, ks, f_thres, reset_iters):
            acc = found[key]
            acc["det"].append(stepper.detections(z))
            acc["gt"].append(boxes[t])
            acc["t"].append(t)
            acc["res"].append(res)
            acc["dist"].append(dist)
    rows = {}
    for key, acc in found.items():
        late = [i for i, t in enumerate(acc["t"]) if t >= FROM_FRAME]
        name = key if isinstance(key, str) else f"{key[0]} k={key[1]}"
        rows[name] = {
            "map50": mean_ap(acc["det"], acc["gt"], num_classes),
            "map50_from10": mean_ap([acc["det"][i] for i in late], [acc["gt"][i] for i in late], num_classes),
            "residual": float(np.mean(acc["res"])),
            "distance": float(np.mean(acc["dist"])),
        }
        if key == "converged":
            rows[name]["f1"] = {str(thr): f1_at(acc["det"], acc["gt"], thr) for thr in THRESHOLDS}
    return rows


# --------------------------------------------------------------------------- outputs
def markdown(results: dict, stamp: dict) -> str:
    """The mode x k table (benchmarks.accuracy's layout), then the converged detections' F1 per threshold."""
    lines = stamp_lines(
        "Detection accuracy vs iterations per frame (synthetic held-out clips with boxes, through H.264)",
        stamp,
        f"{stamp['split']} split, seeds from {stamp['heldout_seed']}; {stamp['clips']} x {stamp['frames']} frames at "
        f"{stamp['height']}x{stamp['width']}; {stamp['objects']} ground-truth boxes",
        f"{stamp['backend']}; detector: {stamp['detector']}",
        f"converged = {stamp['f_thres']} iterations from z = 0; 'from 10' = frame offsets >= {FROM_FRAME}; mAP@50 of "
        f"detections above score {stamp['eval_thr']}",
    )
    lines += metric_table(results["rows"], "map50", "mAP@50")
    f1 = results["rows"]["converged"]["f1"]
    best = max(f1, key=lambda t: f1[t])
    lines += [
        "",
        "F1 at IoU 0.5 of the converged detections above each score threshold (the records' threshold is chosen "
        f"on the validation split): best {best} (F1 {_pct(f1[best])} %)",
        "",
        "| threshold | " + " | ".join(f1) + " |",
        "|---|" + "---|" * len(f1),
        "| F1 % | " + " | ".join(_pct(v) for v in f1.values()) + " |",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.det_accuracy",
        description="mAP@50 vs iterations per frame (per-frame, stream, stream+reset, converged) of a detection "
        "bundle on held-out synthetic clips with boxes, through the runtime.",
    )
    p.add_argument("--engine", required=True, help="the det bundle's deq_cell.onnx (.pt2, .plan)")
    add_clip_args(p)
    p.add_argument("--reset-iters", type=int, default=None, help="stream+reset's iterations from zero (default k)")
    p.add_argument("--eval-thr", type=float, default=EVAL_THR, help="decode threshold for the ranking")
    return parse_clip_args(p, argv, "data/det_clips")


def main(argv: list[str] | None = None) -> int:
    from export.train import machine
    from runtime.errors import DeqRuntimeError

    a = parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args = argv if argv is not None else sys.argv[1:]
    t0 = time.time()
    try:
        if min(a.ks) < 1 or a.clips < 1 or a.frames < 1 or (a.reset_iters is not None and a.reset_iters < 1):
            raise ValueError("--ks, --clips, --frames and --reset-iters must be >= 1")
        stepper = DetStepper(a.engine, device, a.threads, a.eval_thr)
        clips = prepare_det_clips(Path(a.data), a.clips, a.frames, a.height, a.width, SPLIT_SEEDS[a.split])
        rows = run_det_accuracy(stepper, clips, a.ks, a.f_thres, a.reset_iters)
    except (ValueError, OSError, RuntimeError, DeqRuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    det = stepper.bundle.manifest.get("detector", {})
    stamp = {
        "command": "python -m benchmarks.det_accuracy " + shlex.join(args),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "backend": f"exported engines ({stepper.bundle.kind}) through the runtime's pipeline, {device}",
        "detector": f"{det.get('kind', 'faster_rcnn')}, classes {', '.join(stepper.bundle.classes)}",
        "weights": stepper.bundle.manifest.get("weights", {}),
        "clips": a.clips,
        "frames": a.frames,
        "height": a.height,
        "width": a.width,
        "objects": sum(len(b) for _, boxes in clips for b in boxes),
        "f_thres": a.f_thres,
        "reset_iters": a.reset_iters,
        "ks": a.ks,
        "eval_thr": a.eval_thr,
        "split": a.split,
        "heldout_seed": SPLIT_SEEDS[a.split],
        "scenes": VARIANTS[0],
        "wall_s": round(time.time() - t0, 1),
    }
    results = {"stamp": stamp, "rows": rows}
    stem = ("det_accuracy_quick" if a.quick else "det_accuracy") + split_suffix(a.split)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(results, stamp)
    write_text(out / f"{stem}.md", text)
    write_text(out / f"{stem}.json", json.dumps(results, indent=1))
    print(text)
    print(f"wrote {out / stem}.md, {out / stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
