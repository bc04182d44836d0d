"""Paired comparison of two ``benchmarks.accuracy`` results on the same held-out clips.

Per row (converged, per-frame / stream / stream+reset at each k): both mIoUs, their difference, and a bootstrap
interval of that difference over clips. Why: with 6 clips x 30 frames the clips alone move a difference between two
checkpoints by about half a point (the contractive fine-tune against its base: +0.1 converged on the validation
clips, -0.8 on the test clips). Resampling clips, the same clips for both results so the pairing stays, says how far
a measured difference is from what the choice of clips alone gives. Needs result files written with per-clip
confusion matrices (``benchmarks.accuracy`` since 2026-12-01).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.plots import write_json, write_text
from export.metrics import iou_per_class, miou

SAME_CLIPS = ("split", "heldout_seed", "clips", "frames", "height", "width", "f_thres", "reset_iters", "scenes")


def pooled_miou(conf: np.ndarray) -> np.ndarray:
    """mIoU of each stacked confusion matrix (..., C, C), NaN classes (absent in both) left out, as ``miou``."""
    return np.nanmean(iou_per_class(conf), axis=-1)


def bootstrap_difference(new: np.ndarray, base: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """mIoU(new) - mIoU(base) on ``resamples`` resamplings (with replacement) of the clips, the same for both.

    ``new`` and ``base`` are per-clip confusion matrices (clips, C, C); each resample pools its clips' matrices."""
    n = new.shape[0]
    rng = np.random.default_rng(seed)
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)])
    pool = lambda c: (weights @ c.reshape(n, -1).astype(np.float64)).reshape(resamples, *c.shape[1:])  # noqa: E731
    return pooled_miou(pool(new)) - pooled_miou(pool(base))


def _load(path: Path, name: str | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(result name, stamp, rows) of one accuracy JSON; the first result unless ``name`` picks one."""
    try:
        data = json.loads(Path(path).read_text())
        results, stamp = data["results"], data["stamp"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a benchmarks.accuracy result file ({e})") from None
    if name is None:
        name = next(iter(results))
    if name not in results:
        raise ValueError(f"{path}: no result named {name!r} (there: {', '.join(results)})")
    rows = results[name]["rows"]
    if any("per_clip_confusion" not in r or not r["per_clip_confusion"] for r in rows.values()):
        raise ValueError(f"{path}: no per-clip confusion matrices (re-run benchmarks.accuracy to write them)")
    return name, stamp, rows


def compare(
    new: tuple[str, dict, dict], base: tuple[str, dict, dict], tolerance: float, resamples: int, seed: int
) -> dict[str, Any]:
    """Per common row: both mIoUs, the difference, its 95 % bootstrap interval and the share of resamples within
    ``tolerance`` (points) below the base."""
    (_, s_new, r_new), (_, s_base, r_base) = new, base
    differ = [k for k in SAME_CLIPS if s_new.get(k) != s_base.get(k)]
    if differ:
        raise ValueError(f"the two results are not on the same clips: {', '.join(differ)} differ")
    out = {}
    for row in (r for r in r_new if r in r_base):
        a = np.asarray(r_new[row]["per_clip_confusion"])
        b = np.asarray(r_base[row]["per_clip_confusion"])
        diff = 100 * (miou(a.sum(0)) - miou(b.sum(0)))
        boot = 100 * bootstrap_difference(a, b, resamples, seed)
        out[row] = {
            "new": 100 * miou(a.sum(0)),
            "base": 100 * miou(b.sum(0)),
            "difference": diff,
            "interval_95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "share_within_tolerance": float(np.mean(boot >= -tolerance)),
            "per_clip_difference": [100 * (miou(x) - miou(y)) for x, y in zip(a, b)],
        }
    return out


def markdown(res: dict[str, Any]) -> str:
    rows, tol = res["rows"], res["tolerance"]
    below = [name for name, r in rows.items() if r["difference"] < -tol - 1e-9]
    within = len(rows) - len(below)
    lines = [
        f"# `{res['new']['name']}` against `{res['base']['name']}` (paired over the same clips)",
        "",
        f"- new: `{res['new']['file']}`; base: `{res['base']['file']}`",
        f"- clips: {res['clips']} x {res['frames']} frames, {res['split']} split; bootstrap: {res['resamples']} "
        f"resamples of the clips (seed {res['seed']}), the same clips for both results",
        f"- command: `{res['command']}`",
        f"- rows within {tol:g} points of the base: {within} of {len(rows)}"
        + (f" (further below: {', '.join(below)})" if below else ""),
        "",
        f"| row | new mIoU % | base mIoU % | difference | 95 % interval (clips) | resamples within {tol:g} | "
        "per clip |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lo, hi = r["interval_95"]
        per = " ".join(f"{d:+.1f}" for d in r["per_clip_difference"])
        lines.append(
            f"| {name} | {r['new']:.1f} | {r['base']:.1f} | {r['difference']:+.2f} | [{lo:+.1f}, {hi:+.1f}] | "
            f"{100 * r['share_within_tolerance']:.0f} % | {per} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compare_accuracy",
        description="Compare two benchmarks.accuracy result files row by row: mIoU difference and a bootstrap "
        "interval over the clips (both results resampled together).",
        epilog="example: python -m benchmarks.compare_accuracy benchmarks/results/accuracy.json "
        "benchmarks/results/base/accuracy.json",
    )
    p.add_argument("new", type=Path, help="accuracy JSON of the checkpoint under test")
    p.add_argument("base", type=Path, help="accuracy JSON of the reference checkpoint (same clips)")
    p.add_argument("--new-name", default=None, help="which result in NEW (default: its first, e.g. the SUR model)")
    p.add_argument("--base-name", default=None, help="which result in BASE (default: its first)")
    p.add_argument("--tolerance", type=float, default=0.5, help="points the new may lie below (default %(default)s)")
    p.add_argument("--resamples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--stem", default="accuracy_vs_base", help="output file names (default %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    args = argv if argv is not None else sys.argv[1:]
    try:
        if a.resamples < 1 or not a.tolerance >= 0:
            raise ValueError("--resamples must be >= 1 and --tolerance >= 0")
        new, base = _load(a.new, a.new_name), _load(a.base, a.base_name)
        rows = compare(new, base, a.tolerance, a.resamples, a.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stamp = new[1]
    res = {
        "command": "python -m benchmarks.compare_accuracy " + " ".join(shlex.quote(s) for s in args),
        "new": {"file": str(a.new), "name": new[0]},
        "base": {"file": str(a.base), "name": base[0]},
        **{k: stamp.get(k) for k in ("split", "clips", "frames")},
        "tolerance": a.tolerance,
        "resamples": a.resamples,
        "seed": a.seed,
        "rows": rows,
    }
    text = markdown(res)
    paths = [write_text(a.out / f"{a.stem}.md", text), write_json(a.out / f"{a.stem}.json", res)]
    print(text)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
