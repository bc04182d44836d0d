"""Choose the runtime's settings on validation clips only, by rules fixed before looking.

Two choices are made here, each on held-out clips whose seeds are disjoint from the test clips
that every reported number comes from (``benchmarks.accuracy.SPLIT_SEEDS``):

- the pixel shot-change rule of ``runtime.modes.ResetMonitor`` (``change_jump`` x the running
  mean, and ``change_floor``): swept over a grid on H.264-decoded clips of both scene families
  whose cuts are known. Rule: fewest errors (missed cuts + false alarms); among the settings tied
  at that count, the median one in (multiplier, floor) order: the middle of the working region,
  with margin on both sides (toward missed cuts and toward false alarms).
- the ``--reset-iters`` advice for streaming at k = 1: stream+reset k = 1 mIoU for each candidate.
  Rule: the smallest value within 0.5 points of the best (each iteration costs time on every cut).

The results file says what was chosen; a test holds the runtime's defaults to it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.accuracy import SPLIT_SEEDS, TorchStepper, prepare_clips, run_accuracy
from benchmarks.plots import write_text
from export.synthetic import VARIANTS
from runtime.modes import FrameInfo, ResetMonitor, frame_change

JUMPS = (2.0, 2.5, 3.0, 3.5, 4.0, 5.0)
FLOORS = (10.0, 15.0, 20.0, 30.0)
RESET_ITERS = (1, 2, 4, 8)
PIXEL_SEED = SPLIT_SEEDS["validation"] + 10_000  # 910000+: the clips the pixel rule was first tuned on
TOLERANCE = 0.005  # reset-iters: within 0.5 mIoU points of the best


def pixel_clips(root: Path, n: int, frames: int, height: int, width: int) -> list[tuple[np.ndarray, list[int]]]:
    """Validation clips of both scene families through H.264 (cached): decoded frames and true cuts."""
    out = []
    for i in range(n):
        variant = VARIANTS[i % len(VARIANTS)]
        ((decoded, _, meta),) = prepare_clips(Path(root), 1, frames, height, width, PIXEL_SEED + i, variant)
        out.append((decoded, list(meta["cuts"])))
    return out


def changes_of(frames: np.ndarray) -> list[float | None]:
    return [frame_change(frames[t - 1] if t else None, frames[t]) for t in range(len(frames))]


def pixel_errors(changes: list[list[float | None]], cuts: list[list[int]], jump: float, floor: float) -> dict:
    """Cuts found, missed and false alarms of the pixel rule alone (no key-frame or residual rule)."""
    found = missed = false = 0
    for ch, cs in zip(changes, cuts):
        mon = ResetMonitor(change_jump=jump, change_floor=floor)
        fired = {t for t, c in enumerate(ch) if mon.before(FrameInfo(t, key_frame=False), c)}
        found += len(fired & set(cs))
        missed += len(set(cs) - fired)
        false += len(fired - set(cs))
    return {"jump": jump, "floor": floor, "found": found, "missed": missed, "false_alarms": false}


def choose_pixel_rule(rows: list[dict]) -> dict:
    fewest = min(r["missed"] + r["false_alarms"] for r in rows)
    tied = sorted((r for r in rows if r["missed"] + r["false_alarms"] == fewest), key=lambda r: (r["jump"], r["floor"]))
    return tied[len(tied) // 2]


def choose_reset_iters(miou: dict[int, float]) -> int:
    best = max(miou.values())
    return min(r for r, v in miou.items() if v >= best - TOLERANCE)


def tune_reset_iters(checkpoint: Path, clips: list, candidates=RESET_ITERS) -> dict[int, float]:
    """stream+reset k=1 mIoU per --reset-iters (the converged row is not needed: f_thres 1)."""
    from export.train import load_model

    model, _ = load_model(checkpoint, "cpu")
    stepper = TorchStepper(model, "cpu")
    return {r: run_accuracy(stepper, clips, ks=(1,), f_thres=1, reset_iters=r)["stream+reset k=1"]["miou"]
            for r in candidates}  # fmt: skip


def markdown(res: dict) -> str:
    p, r = res["pixel"], res["reset_iters"]
    lines = [
        "# Settings tuned on validation clips",
        "",
        f"`{res['stamp']['command']}` ({res['stamp']['date']}, {res['stamp']['wall_s']} s)",
        "",
        f"## Pixel shot-change rule ({p['clips']} clips, seeds {p['seeds']}, {p['frames']} frames, "
        f"{p['cuts']} cuts, {p['total_frames']} frames)",
        "",
        "| jump x mean | floor | found | missed | false alarms |",
        "|---|---|---|---|---|",
    ]
    row = "| {jump:g} | {floor:g} | {found} | {missed} | {false_alarms} |"
    lines += [row.format(**g) for g in p["grid"]]
    c = p["chosen"]
    lines += ["", "Chosen: jump {jump:g}, floor {floor:g} ({missed} missed, {false_alarms} false alarms).".format(**c)]
    if r:
        lines += ["", f"## --reset-iters at stream k=1 ({r['clips']} clips, seeds {r['seeds']}, {r['checkpoint']})", ""]
        lines += ["| reset iters | stream+reset k=1 mIoU % |", "|---|---|"]
        lines += [f"| {k} | {100 * v:.1f} |" for k, v in r["miou"].items()]
        lines += ["", f"Chosen: --reset-iters {r['chosen']} (smallest within 0.5 points of the best)."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.tune",
        description="Choose the pixel shot-change rule and the --reset-iters advice on validation clips.",
    )
    p.add_argument("--clips", type=int, default=40, help="pixel-rule clips, both scene families (default 40)")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--checkpoint", default="checkpoints/tiny_sur.pt", help="model for the --reset-iters study")
    p.add_argument("--reset-clips", type=int, default=6, help="validation clips for --reset-iters (0: skip)")
    p.add_argument("--data", default="data/tune_clips", help="cache of the pixel-rule clips")
    p.add_argument("--accuracy-data", default="data/accuracy_clips", help="cache of the accuracy benchmark's clips")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def run(a: argparse.Namespace, command: str) -> dict[str, Any]:
    t0 = time.time()
    clips = pixel_clips(Path(a.data), a.clips, a.frames, a.height, a.width)
    changes, cuts = [changes_of(f) for f, _ in clips], [c for _, c in clips]
    grid = [pixel_errors(changes, cuts, j, f) for j in JUMPS for f in FLOORS]
    pixel = {
        "clips": a.clips,
        "seeds": f"{PIXEL_SEED}-{PIXEL_SEED + a.clips - 1}",
        "frames": a.frames,
        "cuts": sum(len(c) for c in cuts),
        "total_frames": sum(len(f) for f, _ in clips),
        "grid": grid,
        "chosen": choose_pixel_rule(grid),
    }
    reset = None
    if a.reset_clips:
        seed = SPLIT_SEEDS["validation"]
        val = prepare_clips(Path(a.accuracy_data), a.reset_clips, a.frames, a.height, a.width, seed)
        miou = tune_reset_iters(Path(a.checkpoint), val)
        reset = {"clips": a.reset_clips, "seeds": f"{seed}-{seed + a.reset_clips - 1}", "checkpoint": a.checkpoint,
                 "miou": miou, "chosen": choose_reset_iters(miou)}  # fmt: skip
    stamp = {"command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "wall_s": round(time.time() - t0, 1), "split": "validation"}  # fmt: skip
    return {"stamp": stamp, "pixel": pixel, "reset_iters": reset}


def main(argv: list[str] | None = None) -> int:
    import torch

    a = parse_args(argv)
    if min(a.clips, a.frames) < 1 or a.reset_clips < 0:
        print("error: --clips and --frames must be >= 1, --reset-clips >= 0", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, a.threads))
    args = argv if argv is not None else sys.argv[1:]
    try:
        res = run(a, "python -m benchmarks.tune " + " ".join(shlex.quote(s) for s in args))
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "tuning.json", json.dumps(res, indent=1))
    write_text(out / "tuning.md", markdown(res))
    print(markdown(res))
    print(f"wrote {out / 'tuning.md'}, {out / 'tuning.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
