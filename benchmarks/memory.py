"""Resident memory of a long streaming run: is it flat after warm-up?

A live camera runs for weeks, so nothing the loop keeps per frame may grow without bound. This
runs the shipped-model architecture (random weights: memory does not depend on them) at a small
resolution over an in-memory source of ``--frames`` frames, samples the process's RSS every
``--every`` frames, and reports the growth after ``--warm`` frames (per-frame statistics fill
their bounded reservoirs within the first 4096 frames).

    python -m benchmarks.memory                    # 100 000 frames at 32x64 -> benchmarks/results/memory.{json,md}
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.plots import write_text


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(frames: int, every: int, height: int, width: int, work: Path) -> dict:
    from export.bundle import export_bundle
    from export.config import get_config
    from export.mdeq import build_model
    from runtime.demo import pattern_clip
    from runtime.loop import RunConfig, run
    from runtime.sources import ArraySource

    export_bundle(build_model(get_config("tiny")), work / "engines", height, width)
    clip = pattern_clip(16, height, width)
    samples: list[tuple[int, float]] = []

    def source():
        for i in range(frames):
            if i % every == 0 or i == frames - 1:
                samples.append((i, rss_mb()))
            yield clip[i % len(clip)]

    t0 = time.time()
    summary = run(RunConfig(engine=work / "engines" / "deq_cell.onnx", sources=[ArraySource(source())],
                            out=work / "out", mode="stream", iters=2, save_maps="none", video=False,
                            progress=False, threads=1))  # fmt: skip
    return {"frames": summary["frames"], "wall_s": round(time.time() - t0, 1), "samples": samples}


def markdown(res: dict) -> str:
    s = res["stamp"]
    lines = [
        "# Memory of a long streaming run",
        "",
        f"- command: `{s['command']}` ({res['wall_s']} s)",
        f"- {res['frames']} frames at {s['height']}x{s['width']}, stream k=2, ONNX Runtime CPU, 1 thread; "
        f"machine: {s['machine']}; date {s['date']}",
        "",
        f"RSS after warm-up (frame {res['warm']}): {res['rss_warm_mb']:.1f} MB; "
        f"at the end: {res['rss_end_mb']:.1f} MB; "
        f"growth {res['growth_mb']:.2f} MB ({res['growth_kb_per_frame']:.4f} KB/frame); "
        f"flat (< 5 MB): {'yes' if res['flat'] else 'NO'}",
        "",
        "| frame | RSS MB |",
        "|---|---|",
    ]
    lines += [f"| {i} | {mb:.1f} |" for i, mb in res["samples"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from export.train import machine

    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100_000)
    p.add_argument("--every", type=int, default=10_000, help="RSS sample interval in frames")
    p.add_argument("--warm", type=int, default=10_000, help="frames before growth is counted")
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/memory"), help="writes OUT.json, OUT.md")
    a = p.parse_args(argv)
    if a.frames <= a.warm or a.every < 1 or a.height % 32 or a.width % 32:
        print("error: need --frames > --warm, --every >= 1, sizes multiples of 32", file=sys.stderr)
        return 2
    args = argv if argv is not None else sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="deqstream-memory-") as tmp:
        res = measure(a.frames, a.every, a.height, a.width, Path(tmp))
    warm = min((i for i, _ in res["samples"] if i >= a.warm), default=res["samples"][-1][0])
    rss = dict(res["samples"])
    end = res["samples"][-1][0]
    res.update(warm=warm, rss_warm_mb=rss[warm], rss_end_mb=rss[end], growth_mb=rss[end] - rss[warm])
    res["growth_kb_per_frame"] = res["growth_mb"] * 1024 / max(end - warm, 1)
    res["flat"] = res["growth_mb"] < 5.0
    res["stamp"] = {"command": "python -m benchmarks.memory " + " ".join(shlex.quote(s) for s in args),
                    "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "height": a.height, "width": a.width}  # fmt: skip
    write_text(a.out.with_suffix(".json"), json.dumps(res, indent=1) + "\n")
    write_text(a.out.with_suffix(".md"), markdown(res))
    print(markdown(res))
    return 0 if res["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
