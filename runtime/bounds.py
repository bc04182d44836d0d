"""Which thread bounds a run's throughput (issue #30): the summary names it.

The loop runs on four kinds of thread that overlap: the decode thread (``decode``: codec, frame fitting), the
motion vectors' field thread (``field``: the vector modes' field, built and fitted), the loop thread (the engines
and everything between them: ``upload`` ... ``download``, the latency of ``Pipeline.run``), and the writer threads
(``write``: class maps and log; ``overlay``: its blend and encode). With bounded queues between them, frames come
out at the rate of the slowest one, not of their sum. From a summary's stage means this says which one that is and
the frame rate it allows.
"""

from __future__ import annotations

from typing import Any

THREADS = {
    "decode": ("decode",),
    "field": ("field",),
    "loop": ("latency",),
    "write": ("write",),
    "overlay": ("overlay",),
}


def bounding_stage(summary: dict[str, Any]) -> dict[str, Any] | None:
    """``{"stage", "mean_ms", "bound_fps", "threads_ms"}`` for a summary with ``stages_ms`` and ``latency_ms``
    (``runtime.stats.summarize``), or None when it has no timings."""
    means = {k: v.get("mean") for k, v in summary.get("stages_ms", {}).items() if v.get("count")}
    lat = summary.get("latency_ms", {})
    if lat.get("count"):
        means["latency"] = lat.get("mean")
    threads = {t: sum(means[k] for k in keys if means.get(k) is not None) for t, keys in THREADS.items()}
    threads = {t: ms for t, ms in threads.items() if any(means.get(k) is not None for k in THREADS[t])}
    if not threads:
        return None
    stage, ms = max(threads.items(), key=lambda kv: kv[1])
    return {
        "stage": stage,
        "mean_ms": round(ms, 3),
        "bound_fps": round(1e3 / ms, 2) if ms > 0 else None,
        "threads_ms": {t: round(v, 3) for t, v in threads.items()},
    }
