"""Tables derived from the rows a ``benchmarks.fps`` run measured: speed-ups, backend ratios, roofline, accuracy vs FPS.

Why a module of its own: these are pure functions of the measured rows (plus the device's peaks and the accuracy
results on disk), so they are tested on fake rows without timing anything, and every derived number points back to
the measurements it came from. In particular an accuracy-vs-FPS point exists only where both its mIoU and its FPS
were measured for the same mode and iteration count.
"""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from benchmarks import roofline
from benchmarks.fps_criteria import acceptance

CASE_KEYS = ("config", "height", "width", "batch", "precision", "task")
# An accuracy row's mode -> the fps mode that runs the same loop: stream k = warm-started k iterations, per-frame
# k = k iterations from zero (the fps "frame" mode, measured at its N only). stream+reset has no FPS measurement.
ACCURACY_TO_FPS_MODE = {"stream": "stream", "per-frame": "frame"}


def derive(
    results: dict[str, Any], device: torch.device, *, quick: bool, threads: int, accuracy_dir: Path | None
) -> None:
    """Add speed-ups over per-frame N, backend ratios vs eager, roofline rows, accuracy vs FPS and the checks."""
    rows = results["rows"]
    results["speedups"] = speedups(rows)
    results["head_decode"] = head_decode_rows(rows)
    results["evaluations"] = by_evaluations(rows)
    results["backend_ratios"] = backend_ratios(rows)
    results["roofline"] = roofline_rows(rows, device, quick, threads)
    results["warp_roofline"] = roofline.warp_rows()
    acc = load_accuracy(accuracy_dir) if accuracy_dir is not None else []
    results["accuracy_vs_fps"] = join_accuracy_fps(acc, rows)
    results["accuracy_without_fps"] = unmatched_accuracy(acc, results["accuracy_vs_fps"])
    results["acceptance"] = acceptance(results)


def _find(rows: list[dict[str, Any]], **kw: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in kw.items())), None)


def _case(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r.get(k, "seg") if k == "task" else r[k] for k in CASE_KEYS}


def head_decode_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every measurement whose frame has a decoding step on the device (pose and det bundles: the ``head_decode``
    stage), with the head engines' and the decoding's median ms per frame and the decoding's share of the median
    latency (both are inside the measured frame time)."""
    out = []
    for r in rows:
        stages = r["summary"].get("stages_ms", {})
        dec = stages.get("head_decode", {})
        if not dec.get("count"):
            continue
        lat = r["summary"]["latency_ms"]["median"]
        out.append(
            {
                **_case(r),
                "backend": r["backend"],
                "measure": r["measure"],
                "mode": r["mode"],
                "k": r["iters"],
                "fps": r["fps"],
                "latency_ms": lat,
                "head_ms": stages.get("head", {}).get("median"),
                "head_decode_ms": dec["median"],
                "decode_share": dec["median"] / lat if lat else math.nan,
            }
        )
    return out


def by_evaluations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The device-loop rows of every warm-started rule (plain unrolling ``stream``, StreamDEQ's Broyden
    ``stream-il``) per case and backend, ordered by cell evaluations per frame: the fair comparison of rules whose
    iterations cost differently (IL at K = 2 is 3 evaluations, like unrolling at k = 3)."""
    sel = [r for r in rows if r["measure"] == "device" and r["mode"] in ("stream", "stream-il")]
    key = lambda r: (tuple(_case(r).values()), r["backend"], r.get("evaluations", r["iters"]), r["mode"])  # noqa: E731
    return [
        {
            **_case(r),
            "backend": r["backend"],
            "mode": r["mode"],
            "k": r["iters"],
            "evaluations": r.get("evaluations", r["iters"]),
            "fps": r["fps"],
            "ms_per_evaluation": r.get("cell_ms_per_iter"),
        }
        for r in sorted(sel, key=key)
    ]


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each stream k row over the frame-N row of the same case, backend and measure, against the ideal N/k."""
    out = []
    for r in rows:
        if r["mode"] != "stream":
            continue
        key = _case(r)
        base = _find(rows, **key, backend=r["backend"], measure=r["measure"], mode="frame")
        if base is None or base["fps"] <= 0:
            continue
        ideal = base["iters"] / r["iters"]
        sp = r["fps"] / base["fps"]
        out.append(
            {
                **key,
                "backend": r["backend"],
                "measure": r["measure"],
                "k": r["iters"],
                "n": base["iters"],
                "fps_stream": r["fps"],
                "fps_frame": base["fps"],
                "speedup": sp,
                "ideal": ideal,
                "fraction_of_ideal": sp / ideal,
            }
        )
    return out


def backend_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each non-eager row over eager at the same case, measure, mode and k (same precision, and fp32)."""
    out = []
    for r in rows:
        if r["backend"] == "eager":
            continue
        key = _case(r)
        for ref_prec in dict.fromkeys((r["precision"], "fp32")):
            ref = _find(
                rows,
                **{**key, "precision": ref_prec},
                backend="eager",
                measure=r["measure"],
                mode=r["mode"],
                iters=r["iters"],
            )
            if ref is None or ref["fps"] <= 0:
                continue
            cell_ratio = ref["cell_ms_per_iter"] / r["cell_ms_per_iter"] if r["cell_ms_per_iter"] > 0 else math.nan
            out.append(
                {
                    **key,
                    "backend": r["backend"],
                    "measure": r["measure"],
                    "mode": r["mode"],
                    "k": r["iters"],
                    "vs": f"eager {ref_prec}",
                    "fps": r["fps"],
                    "fps_eager": ref["fps"],
                    "ratio": r["fps"] / ref["fps"],
                    "cell_iter_ratio": cell_ratio,
                }
            )
    return out


@functools.cache
def _cell_cost(config: str, batch: int, height: int, width: int, precision: str) -> roofline.CellCost:
    """FLOPs and bytes of one cell iteration, counted once per case and process (partial results derive again)."""
    from export.config import get_config
    from export.mdeq import build_model

    return roofline.cell_cost(build_model(get_config(config)), batch, height, width, precision)


@functools.cache
def _peaks(device: torch.device, precision: str, quick: bool, threads: int, tf32: bool) -> roofline.Peaks:
    """The device's peaks, looked up or measured once per process and setting, so every table uses the same ones."""
    return roofline.device_peaks(device, precision, quick, threads, tf32)


def roofline_rows(rows: list[dict[str, Any]], device: torch.device, quick: bool, threads: int) -> list[dict[str, Any]]:
    """One roofline row per measured (case, backend): cell ms per iteration from the frame-N device loop, against
    the peak of the precision the backend really runs (TF32 only where it may be used, see roofline.runs_tf32)."""
    from export.config import CONFIGS

    out = []
    for r in rows:
        if r["measure"] != "device" or r["mode"] != "frame" or not math.isfinite(r["cell_ms_per_iter"]):
            continue
        if r["config"] not in CONFIGS:  # a bundle of a config this checkout does not define: no cost to count
            continue
        cost = _cell_cost(r["config"], r["batch"], r["height"], r["width"], r["precision"])
        tf32 = roofline.runs_tf32(r["backend"], r["precision"], device)
        row = roofline.analyse_cell(cost, _peaks(device, r["precision"], quick, threads, tf32), r["cell_ms_per_iter"])
        out.append({"config": r["config"], "backend": r["backend"], "tf32": tf32, "threads": threads, **row})
    return out


# --------------------------------------------------------------------------- accuracy vs FPS
def _config_of(entry: dict[str, Any]) -> str | None:
    """The model config an accuracy entry was measured with (from its checkpoint's metadata), None if unknown."""
    meta = entry.get("checkpoint_meta") or {}
    m = re.search(r"config '([^']+)'", str(meta.get("source", "")))
    return m.group(1) if m else meta.get("config")


def load_accuracy(out_dir: Path) -> list[dict[str, Any]]:
    """Every 'MODE k=K' mIoU of benchmarks/results/accuracy.json (else the accuracy*.json files), with the
    resolution, checkpoint and config it was measured at."""
    full = Path(out_dir) / "accuracy.json"  # the full run wins over the quick one when both exist
    out = []
    for path in [full] if full.exists() else sorted(Path(out_dir).glob("accuracy*.json")):
        try:
            data = json.loads(path.read_text())
            res = data["results"]
            hw = [int(data["stamp"]["height"]), int(data["stamp"]["width"])]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for ckpt, entry in res.items():
            for name, summ in entry.get("rows", {}).items():
                mode, sep, k = name.partition(" k=")
                if not sep or not k.isdigit() or summ.get("miou") is None:
                    continue
                out.append(
                    {
                        "source": path.name,
                        "checkpoint": ckpt,
                        "config": _config_of(entry),
                        "mode": mode,
                        "k": int(k),
                        "miou": summ["miou"],
                        "accuracy_resolution": hw,
                    }
                )
    return out


def join_accuracy_fps(acc: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """(mIoU, FPS) points where both were measured: the same config, the fps mode that runs the accuracy mode's
    loop (ACCURACY_TO_FPS_MODE) and the same iteration count, single stream. Each point carries the resolution of
    each measurement (they may differ: the plot says so)."""
    points = []
    for a in acc:
        fps_mode = ACCURACY_TO_FPS_MODE.get(a["mode"])
        for r in rows:
            if (r["config"], r["mode"], r["iters"], r["batch"]) != (a["config"], fps_mode, a["k"], 1):
                continue
            if r.get("task", "seg") != "seg":  # the accuracy rows are segmentation mIoU
                continue
            points.append(
                {
                    **a,
                    "fps_mode": fps_mode,
                    "backend": r["backend"],
                    "measure": r["measure"],
                    "precision": r["precision"],
                    "fps": r["fps"],
                    "fps_resolution": [r["height"], r["width"]],
                }
            )
    return points


def unmatched_accuracy(acc: list[dict[str, Any]], points: list[dict[str, Any]]) -> list[str]:
    """'checkpoint: mode k=K' for every accuracy row with no FPS measured for it (left out of the plot)."""
    have = {(p["checkpoint"], p["mode"], p["k"]) for p in points}
    return [
        f"{a['checkpoint']}: {a['mode']} k={a['k']}" for a in acc if (a["checkpoint"], a["mode"], a["k"]) not in have
    ]
