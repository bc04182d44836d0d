"""Effective bandwidth of the CUDA warp kernels vs a device-to-device copy (``python -m benchmarks.warp_bandwidth``).

Why: warping is memory-bound (4 taps, mostly cache hits, per output element), so the honest yardstick is the copy
bandwidth of the same GPU: bytes = features read once + output written + displacement (+ scale) read. Also reports
torch grid_sample (the reference) for the speed-up. Displacements are smooth (like real flow or motion vectors:
bilinearly upsampled coarse noise) with a configurable magnitude. On a machine without a GPU it prints one line and
exits 0. Results go to benchmarks/results/warp_bandwidth.json (written atomically).

Kernel time, not launch time: an fp16 warp of 256 ch x 256x512 moves ~135 MB, ~31 us on an H200, about what the
Python side of one launch costs. Timing back-to-back Python calls would measure the host. So the kernel is timed
alone: ``reps`` launches captured in one CUDA graph, CUDA events around its replays (fallback when capture fails:
the launches are queued behind a GPU sleep, so they run back to back). The host side is reported separately, as
microseconds per call with the launch plan cached (the runtime's case) and uncached (validation + packing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.plots import write_json

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "warp_bandwidth.json"


def smooth_disp(n: int, h: int, w: int, magnitude: float, device: str = "cuda") -> torch.Tensor:
    """Smooth random displacement field in feature pixels, |d| <= magnitude (coarse noise, bilinear upsampling)."""
    coarse = (torch.rand(n, 2, max(2, h // 16), max(2, w // 16), device=device) * 2 - 1) * magnitude
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True).contiguous()


def _event_pairs(n: int) -> list[tuple[torch.cuda.Event, torch.cuda.Event]]:
    return [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]


def graph_ms(fn: Callable[[], object], iters: int, warmup: int, reps: int) -> list[float]:
    """Kernel time per call (ms): ``reps`` calls captured in one CUDA graph, ``iters`` replays between events."""
    for _ in range(warmup):
        fn()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # first use on the capture's stream outside capture
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    events = _event_pairs(iters)
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / reps for s, e in events]


def queued_ms(fn: Callable[[], object], iters: int, warmup: int, reps: int, host_us: float) -> list[float]:
    """Kernel time per call (ms) without a graph: each sample's ``reps`` launches are enqueued while the GPU sleeps
    (twice their host time), so they run back to back and the events see the kernels, not the launch gaps."""
    for _ in range(warmup):
        fn()
    cycles = int(2 * host_us * reps * 2000) + 100_000  # ~2 GHz: 2000 cycles per us
    events = _event_pairs(iters)
    for start, end in events:
        torch.cuda._sleep(cycles)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / reps for s, e in events]


def host_us(fn: Callable[[], object], calls: int = 200, before: Callable[[], object] | None = None) -> float:
    """Median host time of one call (us): what the CPU spends to issue it (``before`` runs untimed first, e.g. to
    drop the launch cache). Synchronised every 50 calls so the launch queue never fills and blocks the host."""
    samples = []
    for i in range(calls):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
        if i % 50 == 49 and torch.cuda.is_available():
            torch.cuda.synchronize()
    return round(statistics.median(samples), 2)


def kernel_ms(fn: Callable[[], object], iters: int, warmup: int, reps: int = 20) -> tuple[list[float], str]:
    """Kernel-only time per call and how it was taken (``cuda-graph``, else ``queued-after-sleep``)."""
    try:
        return graph_ms(fn, iters, warmup, reps), "cuda-graph"
    except Exception as exc:  # noqa: BLE001 - capture unsupported by this loader backend/driver: queue instead
        print(f"warp_bandwidth: CUDA graph capture failed ({exc}); timing launches queued behind a GPU sleep")
        torch.cuda.synchronize()
        return queued_ms(fn, iters, warmup, reps, host_us(fn, 50)), "queued-after-sleep"


def time_ms(fn: Callable[[], object], iters: int, warmup: int, reps: int = 20) -> list[float]:
    """Kernel-only GPU time per call (ms), ``iters`` samples (see :func:`kernel_ms`)."""
    return kernel_ms(fn, iters, warmup, reps)[0]


def summarize(times: list[float], nbytes: int) -> dict:
    med = statistics.median(times)
    return {
        "median_ms": round(med, 4),
        "min_ms": round(min(times), 4),
        "cv_percent": round(100 * statistics.pstdev(times) / statistics.mean(times), 2),
        "gbps": round(nbytes / med / 1e6, 1),
    }


def copy_gbps(nbytes: int, iters: int, warmup: int) -> float:
    """Device-to-device copy bandwidth for a copy that reads nbytes/2 and writes nbytes/2."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return summarize(time_ms(lambda: dst.copy_(src), iters, warmup), nbytes)["gbps"]


def bench_case(args: argparse.Namespace, dtype_name: str, layout: str, op: str, cpt: int | None) -> dict:
    from kernels import reference, warp

    n, c, h, w = args.batch, args.channels, args.height, args.width
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    dtype = DTYPES[dtype_name]
    feat = torch.rand(n, c, h, w, device="cuda").to(dtype).contiguous(memory_format=fmt)
    disp = smooth_disp(n, h, w, args.max_disp)
    out = torch.empty_like(feat)
    elem = feat.numel() * feat.element_size()
    if op == "warp":
        nbytes = 2 * elem + disp.numel() * 4
        fn = lambda: warp.warp(feat, disp, out=out, cpt=cpt)  # noqa: E731
        ref = lambda: reference.warp(feat, disp)  # noqa: E731
    elif op == "warp_scale":
        scale = torch.rand_like(feat)
        nbytes = 3 * elem + disp.numel() * 4
        fn = lambda: warp.warp(feat, disp, scale, out=out, cpt=cpt)  # noqa: E731
        ref = lambda: reference.warp(feat, disp, scale)  # noqa: E731
    else:
        nxt = torch.rand_like(feat)
        d2 = smooth_disp(n, h, w, args.max_disp)
        nbytes = 3 * elem + 2 * disp.numel() * 4
        fn = lambda: warp.warp_interp(feat, disp, nxt, d2, 0.6, 0.4, out=out, cpt=cpt)  # noqa: E731
        ref = lambda: reference.warp_interp(feat, disp, nxt, d2, 0.6, 0.4)  # noqa: E731
    times, method = kernel_ms(fn, args.iters, args.warmup)
    kern = summarize(times, nbytes)
    torch_ref = summarize(time_ms(ref, max(5, args.iters // 5), 2), nbytes)
    copy = copy_gbps(nbytes, args.iters, args.warmup)
    row = {"op": op, "dtype": dtype_name, "layout": layout, "cpt": cpt, "bytes": nbytes, **kern, "timing": method}
    row.update({"copy_gbps": copy, "fraction_of_copy": round(kern["gbps"] / copy, 3)})
    # host side, separately: per call with the launch plan cached (every frame of the runtime) and uncached
    row["host_us_per_call"] = host_us(fn)
    row["host_us_uncached"] = host_us(fn, 100, before=warp.clear_plans)
    torch.cuda.synchronize()
    speedup = round(torch_ref["median_ms"] / kern["median_ms"], 2)
    row.update({"grid_sample_ms": torch_ref["median_ms"], "speedup_vs_grid_sample": speedup})
    return row


def format_row(row: dict) -> str:
    """One printed line: kernel time and GB/s (kernel alone) and, separately, the host microseconds per call."""
    return (
        f"{row['op']:10s} {row['dtype']} {row['layout']} cpt={row['cpt']!s:4s} kernel {row['median_ms']:.3f} ms "
        f"{row['gbps']:7.1f} GB/s = {100 * row['fraction_of_copy']:.0f}% of copy ({row['copy_gbps']:.0f} GB/s, "
        f"{row['timing']}); host {row['host_us_per_call']:.1f} us/call cached, {row['host_us_uncached']:.1f} uncached; "
        f"grid_sample x{row['speedup_vs_grid_sample']}"
    )


def environment() -> dict:
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "kernel_backend": os.environ.get("DEQSTREAM_KERNEL_BACKEND", "core"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.warp_bandwidth",
        description="GB/s of the CUDA feature-warp kernels (warp, warp+scale, two-key interpolation) vs a "
        "device-to-device copy of the same byte count and vs torch grid_sample. Needs an NVIDIA GPU.",
    )
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--height", type=int, default=256, help="feature-map height")
    p.add_argument("--width", type=int, default=512, help="feature-map width")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtypes", default="fp32,fp16", help="comma list of fp32, fp16")
    p.add_argument("--layouts", default="nhwc,nchw", help="comma list of nhwc, nchw")
    p.add_argument("--ops", default="warp,warp_scale,interp", help="comma list of warp, warp_scale, interp")
    p.add_argument("--cpts", default="1,4,8,16", help="NCHW channels-per-thread values to sweep")
    p.add_argument("--max-disp", type=float, default=4.0, help="displacement magnitude in feature pixels")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    allowed = {"dtypes": set(DTYPES), "layouts": {"nhwc", "nchw"}, "ops": {"warp", "warp_scale", "interp"}}
    for key, ok in allowed.items():
        bad = set(getattr(args, key).split(",")) - ok
        if bad:
            p.error(f"--{key}: unknown {sorted(bad)}; choose from {sorted(ok)}")
    try:
        if min(int(c) for c in args.cpts.split(",")) < 1:
            raise ValueError
    except ValueError:
        p.error("--cpts must be a comma list of positive integers")
    if min(args.channels, args.height, args.width, args.batch) < 1 or min(args.height, args.width) < 2:
        p.error("sizes must be positive and the feature map at least 2x2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("warp_bandwidth: no CUDA GPU here; skipping (the warp kernels need an NVIDIA GPU)", file=sys.stderr)
        return 0
    from kernels.loader import KernelUnavailable

    rows = []
    t0 = time.time()
    try:
        for op in args.ops.split(","):
            for dtype in args.dtypes.split(","):
                for layout in args.layouts.split(","):
                    cpts = [int(c) for c in args.cpts.split(",")] if layout == "nchw" else [None]
                    for cpt in cpts:
                        row = bench_case(args, dtype, layout, op, cpt)
                        rows.append(row)
                        print(format_row(row))
    except KernelUnavailable as exc:
        print(f"warp_bandwidth: {exc}", file=sys.stderr)
        return 1
    shape = {"batch": args.batch, "channels": args.channels, "height": args.height, "width": args.width}
    payload = {"benchmark": "warp_bandwidth", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **shape}
    payload.update({"max_disp": args.max_disp, "environment": environment(), "results": rows})
    payload["seconds"] = round(time.time() - t0, 1)
    write_json(args.out, payload)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
