"""The fleet's summary: ``summary.json`` and a trtexec-style text block (aggregate and per-stream FPS,
per-worker busy fraction), and the exit status it implies."""

from __future__ import annotations

import math
from typing import Any

EXIT_OK, EXIT_STREAMS_FAILED, EXIT_INTERRUPTED = 0, 3, 130


def build_summary(
    results: dict[int, dict[str, Any]],
    n_streams: int,
    slots: list[Any],
    wall_s: float,
    startup_s: float,
    warnings: list[str],
    facts: dict[str, Any],
) -> dict[str, Any]:
    """Everything the fleet measured; streams in input order."""
    streams = [results[i] for i in range(n_streams)]
    new = sum(s.get("new_frames", 0) for s in streams)
    workers = [
        {
            "worker": s.id,
            "restarts": s.incarnation,
            "alive": s.alive,
            "host": s.info.get("host"),
            "busy_s": round(s.busy_s, 3),
            "busy_fraction": round(s.busy_s / wall_s, 4) if wall_s > 0 else None,
        }
        for s in slots
    ]
    counts: dict[str, int] = {}
    for s in streams:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    return {
        **facts,
        "streams_total": n_streams,
        "status_counts": counts,
        "frames": sum(s.get("frames", 0) for s in streams),
        "frames_processed": new,
        "wall_s": wall_s,
        "startup_s": startup_s,
        "throughput_fps": new / wall_s if wall_s > 0 else math.nan,
        "workers": workers,
        "streams": streams,
        "warnings": warnings,
        "exit_code": exit_code(streams),
    }


def exit_code(streams: list[dict[str, Any]]) -> int:
    """0: every stream complete; 3: some failed or decoded only partly; 130: stopped by a signal."""
    statuses = {s["status"] for s in streams}
    if "interrupted" in statuses:
        return EXIT_INTERRUPTED
    if statuses - {"complete"}:
        return EXIT_STREAMS_FAILED
    return EXIT_OK


def format_fleet(summary: dict[str, Any]) -> str:
    """The text block printed at the end (and saved as summary.txt)."""
    lines = [
        "=== Fleet performance summary ===",
        f"Throughput: {summary['throughput_fps']:.3f} fps (aggregate, {summary['frames_processed']} frames "
        f"over {summary['wall_s']:.3f} s of processing; cluster and worker start {summary['startup_s']:.3f} s)",
        f"Streams: {summary['streams_total']} ("
        + ", ".join(f"{n} {k}" for k, n in sorted(summary["status_counts"].items()))
        + ")",
    ]
    for w in summary["workers"]:
        frac = w["busy_fraction"]
        lines.append(
            f"  worker {w['worker']}: busy {100 * frac:.1f} % ({w['busy_s']:.3f} s), restarts {w['restarts']}"
            + (f", host {w['host']}" if w.get("host") else "")
            if frac is not None
            else f"  worker {w['worker']}: idle"
        )
    for s in summary["streams"]:
        fps = s.get("fps")
        rate = f"{fps:.3f} fps" if fps else "n/a"
        extra = f", resumed at frame {s['start']}" if s.get("start") else ""
        if s.get("frames_not_seen") is not None:
            extra += f" (live: about {s['frames_not_seen']} frames not seen)"
        why = f": {s['reason']}" if s.get("reason") else ""
        lines.append(
            f"  stream{s['index']} {s['source']}: {s['status']}, {s['frames']} frames, {rate}, "
            f"worker {s.get('worker')}{extra}{why}"
        )
    lines.append(f"Total Host Walltime: {summary['wall_s'] + summary['startup_s']:.3f} s")
    return "\n".join(lines)
