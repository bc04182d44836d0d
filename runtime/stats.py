"""Timing statistics in trtexec's vocabulary, as pure functions over lists of timings.

Shared by the runtime's end-of-run summary and the benchmark scripts: throughput, latency
min/max/mean/median/percentiles, GPU compute time, and trtexec's warning when the coefficient
of variation exceeds 2.5 % (unstable clocks or a noisy machine make the numbers unreliable).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

CV_WARN = 0.025
PERCENTILES = (90, 95, 99)


class Samples:
    """Timings of a run that may last weeks, in bounded memory.

    Count, sum, min, max and the variance are exact (Welford); percentiles and the median come
    from a uniform reservoir of ``capacity`` values (Algorithm R, fixed seed), so they are exact
    for runs up to ``capacity`` frames and an unbiased sample beyond. ``append`` allocates
    nothing once the reservoir is full."""

    def __init__(self, capacity: int = 4096, seed: int = 0) -> None:
        self.capacity = capacity
        self.count = 0
        self.total = 0.0
        self.lo, self.hi = math.inf, -math.inf
        self._mean = 0.0
        self._m2 = 0.0
        self._kept: list[float] = []
        self._seed, self._rng = seed, None  # made when the reservoir first fills (a Random costs ~4 us to seed)

    def append(self, v: float | None) -> None:
        if v is None or not math.isfinite(v):
            return
        v = float(v)
        self.count += 1
        self.total += v
        self.lo, self.hi = min(self.lo, v), max(self.hi, v)
        d = v - self._mean
        self._mean += d / self.count
        self._m2 += d * (v - self._mean)
        if len(self._kept) < self.capacity:
            self._kept.append(v)
        else:
            if self._rng is None:
                self._rng = random.Random(self._seed)
            j = self._rng.randrange(self.count)
            if j < self.capacity:
                self._kept[j] = v

    def extend(self, values) -> None:
        for v in values:
            self.append(v)

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return iter(self._kept)

    def mean(self) -> float:
        return self._mean if self.count else math.nan

    def describe(self, percentiles: Sequence[float] = PERCENTILES) -> dict[str, float]:
        """What :func:`describe` gives for the full list (percentiles from the reservoir)."""
        if not self.count:
            return {"count": 0}
        std = math.sqrt(max(self._m2, 0.0) / self.count)
        s = sorted(self._kept)
        n = len(s)
        median = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
        out = {"count": self.count, "min": self.lo, "max": self.hi, "mean": self._mean, "median": median,
               "std": std, "cv": std / self._mean if self._mean > 0 else 0.0}  # fmt: skip
        for p in percentiles:
            out[f"p{p:g}"] = percentile(s, p)
        return out


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (what trtexec reports); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(s)))
    return float(s[min(rank, len(s)) - 1])


def describe(values: Sequence[float], percentiles: Sequence[float] = PERCENTILES) -> dict[str, float]:
    """min, max, mean, median, p<N>, std and coefficient of variation of ``values``."""
    if isinstance(values, Samples):
        return values.describe(percentiles)
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"count": 0}
    n = len(vals)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / n)
    s = sorted(vals)
    median = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    out = {
        "count": n,
        "min": s[0],
        "max": s[-1],
        "mean": mean,
        "median": median,
        "std": std,
        "cv": std / mean if mean > 0 else 0.0,
    }
    for p in percentiles:
        out[f"p{p:g}"] = percentile(s, p)
    return out


def summarize(
    latency_ms: Sequence[float],
    wall_s: float,
    gpu_ms: Sequence[float] | None = None,
    frames: int | None = None,
    extra: dict[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """The summary of one run: throughput over the wall time, latency, GPU compute, stages."""
    n = len(latency_ms) if frames is None else frames
    out: dict[str, Any] = {
        "frames": n,
        "wall_s": wall_s,
        "throughput_fps": n / wall_s if wall_s > 0 else math.nan,
        "latency_ms": describe(latency_ms),
    }
    if gpu_ms:
        out["gpu_compute_ms"] = describe(gpu_ms)
        out["total_gpu_compute_s"] = (gpu_ms.total if isinstance(gpu_ms, Samples) else sum(gpu_ms)) / 1e3
    for name, vals in (extra or {}).items():
        out.setdefault("stages_ms", {})[name] = describe(vals)
    out["warnings"] = warnings_for(out)
    return out


def warnings_for(summary: dict[str, Any]) -> list[str]:
    """trtexec's stability warning, on GPU compute time when present, else on latency."""
    key = "gpu_compute_ms" if "gpu_compute_ms" in summary else "latency_ms"
    d = summary.get(key, {})
    if d.get("count", 0) >= 2 and d.get("cv", 0.0) > CV_WARN:
        return [
            f"the coefficient of variation of {key.replace('_ms', '')} is {100 * d['cv']:.1f}% (> {100 * CV_WARN:g}%):"
            " timings are unstable (locking GPU clocks or an idle machine may improve stability)"
        ]
    return []


def _line(name: str, d: dict[str, float], unit: str = "ms") -> str:
    if not d.get("count"):
        return f"{name}: n/a"
    pct = ", ".join(f"percentile({k[1:]}%) = {d[k]:.3f} {unit}" for k in d if k.startswith("p") and k[1:].isdigit())
    return (
        f"{name}: min = {d['min']:.3f} {unit}, max = {d['max']:.3f} {unit}, mean = {d['mean']:.3f} {unit}, "
        f"median = {d['median']:.3f} {unit}, {pct}"
    )


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable block, laid out like trtexec's ``=== Performance summary ===``."""
    lines = ["=== Performance summary ===", f"Throughput: {summary['throughput_fps']:.3f} fps"]
    lines.append(_line("Latency", summary["latency_ms"]))
    if "gpu_compute_ms" in summary:
        lines.append(_line("GPU Compute Time", summary["gpu_compute_ms"]))
    for name, d in summary.get("stages_ms", {}).items():
        if d.get("count"):
            lines.append(
                f"  {name:<10} mean = {d['mean']:.3f} ms, median = {d['median']:.3f} ms, p99 = {d['p99']:.3f} ms"
            )
    lines.append(f"Total Host Walltime: {summary['wall_s']:.3f} s ({summary['frames']} frames)")
    bound = summary.get("bound_by")
    if bound:  # runtime.bounds: the slowest of the overlapping threads sets the frame rate
        fps = f", at most {bound['bound_fps']:.1f} fps" if bound.get("bound_fps") else ""
        lines.append(f"Bound by: the {bound['stage']} thread ({bound['mean_ms']:.3f} ms per frame{fps})")
    if "total_gpu_compute_s" in summary:
        lines.append(f"Total GPU Compute Time: {summary['total_gpu_compute_s']:.3f} s")
    lines += [f"[W] {w}" for w in summary.get("warnings", [])]
    return "\n".join(lines)
