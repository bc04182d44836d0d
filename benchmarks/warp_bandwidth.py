"""Effective bandwidth of the CUDA warp kernels vs a device-to-device copy (``python -m benchmarks.warp_bandwidth``).

Why: warping is memory-bound (4 taps, mostly cache hits, per output element), so the honest yardstick is the copy
bandwidth of the same GPU: bytes = features read once + output written + displacement (+ scale) read. Also reports
torch grid_sample (the reference) for the speed-up. Displacements are smooth (like real flow or motion vectors:
bilinearly upsampled coarse noise) with a configurable magnitude. On a machine without a GPU it prints one line and
exits 0. Results go to benchmarks/results/warp_bandwidth.json (written atomically).
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


def time_ms(fn: Callable[[], object], iters: int, warmup: int, reps: int = 20) -> list[float]:
    """GPU time per call (ms), ``iters`` samples, each the mean of ``reps`` back-to-back calls
    between one pair of CUDA events: a ~50 us kernel is about as long as a Python launch, so an
    event pair around every single call would time the launch gaps, not the kernel."""
    for _ in range(warmup):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        for _ in range(reps):
            fn()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / reps for s, e in events]


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
    kern = summarize(time_ms(fn, args.iters, args.warmup), nbytes)
    torch_ref = summarize(time_ms(ref, max(5, args.iters // 5), 2), nbytes)
    copy = copy_gbps(nbytes, args.iters, args.warmup)
    row = {"op": op, "dtype": dtype_name, "layout": layout, "cpt": cpt, "bytes": nbytes, **kern}
    row.update({"copy_gbps": copy, "fraction_of_copy": round(kern["gbps"] / copy, 3)})
    speedup = round(torch_ref["median_ms"] / kern["median_ms"], 2)
    row.update({"grid_sample_ms": torch_ref["median_ms"], "speedup_vs_grid_sample": speedup})
    return row


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
                        print(
                            f"{op:10s} {dtype} {layout} cpt={cpt!s:4s} {row['median_ms']:.3f} ms "
                            f"{row['gbps']:7.1f} GB/s = {100 * row['fraction_of_copy']:.0f}% of copy "
                            f"({row['copy_gbps']:.0f} GB/s); grid_sample x{row['speedup_vs_grid_sample']}"
                        )
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
