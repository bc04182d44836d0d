"""The project's acceptance checks, evaluated on whatever a ``benchmarks.fps`` run measured.

Why a module of its own: the criteria are the project's (defined for small-seg 1024x2048 fp16 on an H100), not the
benchmark's; they read only the derived tables (benchmarks/fps_tables.py), so they are tested on a fake run. A
roofline ratio below 1 is a wrong peak (benchmarks/roofline.py), never a pass.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks.roofline import WRONG_PEAK

ACCEPT_ROOFLINE = 2.0  # compiled cell iteration within 2x of the roofline bound
ACCEPT_VS_EAGER = 3.0  # compiled cell iteration >= 3x faster than eager fp32
ACCEPT_STREAM = 0.75  # end-to-end stream k=1 speed-up >= 75 % of the ideal N/k


def acceptance(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The GPU acceptance checks on this run's roofline rows, backend ratios and speed-ups (elsewhere informational)."""
    checks = [roofline_check(r) for r in results.get("roofline", []) if r["backend"] != "eager"]
    for r in results.get("backend_ratios", []):
        if r["measure"] == "device" and r["mode"] == "frame" and r["vs"] == "eager fp32":
            what = "cell iteration speed-up vs eager fp32"
            checks.append(check(r, r["backend"], what, r["cell_iter_ratio"], ">=", ACCEPT_VS_EAGER))
    for r in results.get("speedups", []):
        if r["measure"] == "e2e" and r["k"] == 1:
            what = f"e2e stream k=1 speed-up / ideal N/k={r['ideal']:g}"
            checks.append(check(r, r["backend"], what, r["fraction_of_ideal"], ">=", ACCEPT_STREAM))
    return checks


def roofline_check(r: dict[str, Any]) -> dict[str, Any]:
    """measured/bound <= 2; below 1 the peak is wrong (faster than the hardware allows), so it fails as such."""
    value = r.get("measured_over_bound", math.nan)
    c = check(r, r["backend"], "cell iteration / roofline bound", value, "<=", ACCEPT_ROOFLINE)
    if r.get("peak_check") == WRONG_PEAK:
        c["pass"], c["verdict"] = False, WRONG_PEAK
    return c


def check(r: dict[str, Any], backend: str, what: str, value: float, op: str, limit: float) -> dict[str, Any]:
    """One check row: ``value op limit``; ``pass`` is None (and the verdict "-") when the value is not finite."""
    finite = value is not None and math.isfinite(value)
    ok = (value <= limit if op == "<=" else value >= limit) if finite else None
    case = f"{r.get('config')} {r['height']}x{r['width']} {r.get('precision', r.get('dtype'))}"
    return {
        "case": case,
        "backend": backend,
        "check": what,
        "value": value,
        "limit": f"{op} {limit:g}",
        "pass": ok,
        "verdict": {True: "pass", False: "FAIL", None: "-"}[ok],
    }
