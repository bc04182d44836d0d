"""runtime.bounds: the summary names the thread that bounds throughput."""

from __future__ import annotations

from runtime.bounds import bounding_stage


def _d(mean: float) -> dict:
    return {"count": 10, "mean": mean}


def test_the_slowest_thread_bounds_not_the_sum() -> None:
    s = {
        "latency_ms": _d(4.0),
        "stages_ms": {"decode": _d(6.0), "upload": _d(0.5), "cell": _d(3.0), "write": _d(2.0), "overlay": _d(9.0)},
    }
    got = bounding_stage(s)
    assert got is not None
    assert got["stage"] == "overlay" and got["mean_ms"] == 9.0 and abs(got["bound_fps"] - 1000 / 9) < 0.01
    assert got["threads_ms"] == {"decode": 6.0, "loop": 4.0, "write": 2.0, "overlay": 9.0}


def test_outputs_off_and_no_timings() -> None:
    got = bounding_stage({"latency_ms": _d(8.0), "stages_ms": {"decode": _d(3.0)}})
    assert got is not None and got["stage"] == "loop" and set(got["threads_ms"]) == {"decode", "loop"}
    assert bounding_stage({"latency_ms": {"count": 0}, "stages_ms": {}}) is None
