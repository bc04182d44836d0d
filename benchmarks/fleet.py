"""Fleet scaling: aggregate FPS of ``runtime.fleet`` vs workers and vs streams per worker, and its overhead
over plain ``runtime.run`` for one stream. ``python -m benchmarks.fleet`` -> benchmarks/results/fleet.{json,md}.

Why these numbers: the fleet's point is that adding workers adds throughput (scaling efficiency =
speedup / workers), and that a stream pays little for going through it. Every configuration runs the
real CLIs in subprocesses, each fleet on its own embedded Ray cluster, over the same cached clips and
engines, in one invocation (the ratios are only meaningful within one run on a shared machine).
Throughput is frames over the processing wall time the driver measures (first stream handed out to
last result), so cluster and worker start-up (reported separately) is not in it; runtime.run's is its
loop's wall time, which likewise excludes loading the engines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# (workers, streams per worker, streams): 1 stream (overhead), 4 streams over 1 and 2 workers, batch 1 and 2
CONFIGS = ((1, 1, 1), (1, 1, 4), (2, 1, 4), (1, 2, 4), (2, 2, 4))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.fleet",
        description="Aggregate FPS of runtime.fleet vs workers (1, 2) and streams per worker (1, 2), scaling "
        "efficiency, and the fleet's overhead over runtime.run for one stream (CPU ONNX backend).",
    )
    p.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "tiny_sur.pt")
    p.add_argument("--config", default="tiny", help="model config of the checkpoint (default tiny)")
    p.add_argument("--height", type=int, default=128, help="engine height (default 128)")
    p.add_argument("--width", type=int, default=256, help="engine width (default 256)")
    p.add_argument("--frames", type=int, default=160, help="frames per clip (default 160)")
    p.add_argument("--iters", type=int, default=2, help="--mode stream iterations (default 2)")
    p.add_argument(
        "--repeats", type=int, default=1, help="rounds over all configurations; each keeps its best (default 1)"
    )
    p.add_argument("--work", type=Path, default=ROOT / "data" / "fleet_bench", help="cache of engines and clips")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fleet", help="results stem")
    a = p.parse_args(argv)
    if a.height % 32 or a.width % 32 or a.frames < 10:
        p.error("--height/--width must be multiples of 32 and --frames >= 10")
    return a


def engines(a: argparse.Namespace, batch: int) -> Path:
    """The checkpoint exported once per (resolution, batch) into the cache."""
    out = a.work / f"engines_{a.height}x{a.width}_b{batch}"
    if not (out / "manifest.json").is_file():
        cmd = [sys.executable, "-m", "export", "--config", a.config, "--checkpoint", str(a.checkpoint)]
        cmd += ["--height", str(a.height), "--width", str(a.width), "--batch", str(batch), "--out", str(out)]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return out / "deq_cell.onnx"


def clips(a: argparse.Namespace, n: int = 4) -> list[Path]:
    """Street-like synthetic clips (textured panorama panning at different speeds), H.264 as cameras send."""
    import av

    paths = []
    for i in range(n):
        path = a.work / f"clip{i}_{a.height}x{a.width}_{a.frames}.mp4"
        paths.append(path)
        if path.is_file():
            continue
        rng = np.random.default_rng(100 + i)
        h, w = a.height, a.width
        pano = np.kron(rng.integers(0, 256, (h // 8, (w + 3 * a.frames) // 8 + 1, 3)), np.ones((8, 8, 1)))
        tmp = path.with_suffix(".tmp.mp4")
        with av.open(str(tmp), "w") as c:
            s = c.add_stream("libx264", rate=25)
            s.height, s.width, s.pix_fmt = h, w, "yuv420p"
            s.options = {"preset": "ultrafast", "crf": "20", "g": "25"}
            for f in range(a.frames):
                img = pano[:, (1 + i) * f // 2 : (1 + i) * f // 2 + w].astype(np.uint8)
                for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)
        tmp.replace(path)
    return paths


COMMON = ["--mode", "stream", "--no-video", "--save-maps", "none", "--no-progress", "--threads", "1", "--no-reset"]


def run_alone(engine: Path, clip: Path, out: Path, iters: int) -> dict[str, Any]:
    """Plain runtime.run on one clip: its summary (throughput over the loop's wall time)."""
    cmd = [sys.executable, "-m", "runtime.run", "--engine", str(engine), str(clip), "--out", str(out)]
    subprocess.run([*cmd, *COMMON, "--iters", str(iters)], cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads((out / "summary.json").read_text())


def run_fleet(engine: Path, srcs: list[Path], out: Path, workers: int, iters: int) -> dict[str, Any]:
    """runtime.fleet on an embedded cluster: its summary.json (plus the subprocess wall time)."""
    cmd = [sys.executable, "-m", "runtime.fleet", "--engine", str(engine), *map(str, srcs), "--out", str(out)]
    cmd += [*COMMON, "--iters", str(iters), "--workers", str(workers)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"error: fleet run failed ({r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary["process_wall_s"] = time.perf_counter() - t0
    return summary


def measure(a: argparse.Namespace) -> dict[str, Any]:
    """Every configuration ``--repeats`` times, in rounds, back to back; the best of each is kept."""
    a.work.mkdir(parents=True, exist_ok=True)
    eng = {1: engines(a, 1), 2: engines(a, 2)}
    srcs = clips(a)
    tmp = a.work / "runs"
    shutil.rmtree(tmp, ignore_errors=True)
    alone: list[float] = []
    alone_frames = 0
    rows: dict[tuple[int, int, int], dict[str, Any]] = {}
    for rnd in range(a.repeats):  # rounds, so that a burst of load on a shared machine hits every configuration
        ref = run_alone(eng[1], srcs[0], tmp / f"alone{rnd}", a.iters)
        alone.append(ref["throughput_fps"])
        alone_frames = ref["frames"]
        for workers, spw, n in CONFIGS:
            s = run_fleet(eng[spw], srcs[:n], tmp / f"r{rnd}_w{workers}_b{spw}_s{n}", workers, a.iters)
            print(f"round {rnd}: workers {workers} x batch {spw}, {n} stream(s): {s['throughput_fps']:.1f} fps",
                  file=sys.stderr)  # fmt: skip
            row = rows.get((workers, spw, n))
            if row is None or s["throughput_fps"] > row["throughput_fps"]:
                rows[(workers, spw, n)] = _row(workers, spw, n, s, row)
            rows[(workers, spw, n)]["all_fps"].append(s["throughput_fps"])
    shutil.rmtree(tmp, ignore_errors=True)
    best = {"throughput_fps": max(alone), "all_fps": alone, "frames": alone_frames}
    return {"alone": best, "rows": list(rows.values())}


def _row(workers: int, spw: int, n: int, s: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
    """One configuration's best round (all rounds' FPS kept in ``all_fps``)."""
    return {
        "workers": workers,
        "streams_per_worker": spw,
        "streams": n,
        "frames": s["frames_processed"],
        "throughput_fps": s["throughput_fps"],
        "all_fps": prev["all_fps"] if prev else [],
        "processing_s": s["wall_s"],
        "startup_s": s["startup_s"],
        "busy_fraction": [w["busy_fraction"] for w in s["workers"]],
        "per_stream_fps": [st["fps"] for st in s["streams"]],
    }


def derive(m: dict[str, Any]) -> dict[str, Any]:
    """Speedups, scaling efficiency and overhead from the measured rows."""

    def fps(w: int, b: int, n: int) -> float:
        return next(
            r["throughput_fps"] for r in m["rows"] if (r["workers"], r["streams_per_worker"], r["streams"]) == (w, b, n)
        )

    d: dict[str, Any] = {}
    for b in (1, 2):
        sp = fps(2, b, 4) / fps(1, b, 4)
        d[f"speedup_2w_vs_1w_b{b}"] = sp
        d[f"efficiency_2w_b{b}"] = sp / 2
    d["batch2_vs_batch1_1w"] = fps(1, 2, 4) / fps(1, 1, 4)
    d["overhead_1_stream"] = 1 - fps(1, 1, 1) / m["alone"]["throughput_fps"]
    # the same stream's loop FPS inside the worker (what runtime.run measures for that loop) vs the driver's
    # processing FPS, in one run: what the fleet adds (dispatch, source open, result), free of load between runs
    one = next(r for r in m["rows"] if (r["workers"], r["streams_per_worker"], r["streams"]) == (1, 1, 1))
    d["overhead_1_stream_same_run"] = 1 - one["throughput_fps"] / one["per_stream_fps"][0]
    d["acceptance"] = {
        "2 workers >= 1.6x 1 worker on 4 streams": d["speedup_2w_vs_1w_b1"] >= 1.6,
        "fleet overhead for one stream < 10 %": d["overhead_1_stream"] < 0.10,
    }
    return d


def markdown(res: dict[str, Any]) -> str:
    st, m, d = res["stamp"], res["measured"], res["derived"]
    lines = [
        "# Fleet scaling (runtime.fleet on an embedded Ray cluster, CPU ONNX backend)",
        "",
        f"`{st['command']}`, {st['date']}, {st['machine']}; load average after: {res['load_after']}.",
        f"Engines: {res['settings']}. Throughput = frames / processing wall (driver: first stream handed out to "
        "last result); start-up (cluster + workers loading the bundle) listed apart. Each configuration ran "
        f"{res['repeats']} round(s), interleaved; the best is used (other helpers share this machine's CPUs).",
        "",
        "| workers | streams per worker (batch) | streams | frames | aggregate FPS (best; all rounds) "
        "| per-stream FPS | busy | start-up s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in m["rows"]:
        per = ", ".join(f"{v:.1f}" for v in r["per_stream_fps"] if v)
        busy = ", ".join(f"{100 * v:.0f} %" for v in r["busy_fraction"] if v is not None)
        lines.append(
            f"| {r['workers']} | {r['streams_per_worker']} | {r['streams']} | {r['frames']} | "
            f"{r['throughput_fps']:.1f} ({', '.join(f'{v:.1f}' for v in r['all_fps'])}) | {per} | {busy} | "
            f"{r['startup_s']:.1f} |"
        )
    lines += [
        f"| runtime.run alone | – | 1 | {m['alone']['frames']} | {m['alone']['throughput_fps']:.1f} "
        f"({', '.join(f'{v:.1f}' for v in m['alone']['all_fps'])}) | | | |",
        "",
        f"- 2 workers vs 1 on 4 streams: **{d['speedup_2w_vs_1w_b1']:.2f}x** (efficiency "
        f"{100 * d['efficiency_2w_b1']:.0f} %); with 2 streams per worker: {d['speedup_2w_vs_1w_b2']:.2f}x "
        f"({100 * d['efficiency_2w_b2']:.0f} %).",
        f"- 2 streams per engine call vs 1, one worker: {d['batch2_vs_batch1_1w']:.2f}x.",
        f"- Fleet overhead for one stream vs runtime.run: **{100 * d['overhead_1_stream']:.1f} %** (separate "
        f"processes, best rounds); within the fleet run, driver-measured vs the worker loop's FPS: "
        f"**{100 * d['overhead_1_stream_same_run']:.1f} %**.",
        "",
        "Acceptance: " + "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in d["acceptance"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from benchmarks.env import stamp

    st = stamp("benchmarks.fleet", argv)
    t0 = time.perf_counter()
    measured = measure(a)
    res = {
        "stamp": st,
        "settings": f"{a.config} {a.checkpoint.name}, {a.height}x{a.width}, stream k={a.iters}, --no-reset, "
        f"{a.frames} frames per clip, --threads 1 per worker, no overlay or maps written",
        "measured": measured,
        "derived": derive(measured),
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "repeats": a.repeats,
        "benchmark_s": time.perf_counter() - t0,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    text = markdown(res)
    a.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
