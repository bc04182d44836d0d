"""Roofline of one DEQ cell iteration (and of the warp kernel): how far is a measured time from the hardware bound?

Why: iterations per frame is the knob StreamDEQ turns, so the cost of one cell iteration decides the frame rate.
A time is only "fast" relative to what the GPU could do: the bound is max(FLOPs / peak FLOP/s, bytes / peak GB/s).

* FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls; GroupNorm, ReLU and the
  additions are not counted, they are memory-bound and show up in the bytes instead).
* Bytes are counted two ways, both on the ``meta`` device (shapes only, so 1024x2048 costs nothing to analyse):
  ``bytes_min`` = weights + the cell's inputs (z_0..z_3, x) read once + its outputs (f_0..f_3) written once. This is
  the compulsory traffic of a perfectly fused iteration: a LOWER bound on what any implementation moves.
  ``bytes_unfused`` = every aten op reading all its tensor inputs and writing all its outputs to memory (views move
  nothing): what an unfused eager execution moves, an upper estimate for a compiled one.
  The roofline bound uses ``bytes_min`` (so measured/bound >= 1 always; the acceptance "<= 2x" is against it).
* Peaks: a table of published dense (no sparsity) figures for H100/H200/A100 matched by device name; for any other
  device (and the CPU) they are measured here: a large matmul for FLOP/s, a large copy for bandwidth. For fp32 on
  Ampere and later, convolutions run on TF32 tensor cores by default (cuDNN, ORT, TensorRT), so the fp32 compute
  peak is the TF32 one when cuDNN's fp32 convolutions may use TF32 (``export.tf32``).

``python -m benchmarks.roofline --config small-seg --resolution 1024x2048 --precision fp16 [--cell-ms 0.2]``
prints the analysis; ``benchmarks.fps`` calls :func:`analyse_cell` with its measured times.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from export.tf32 import tf32_enabled

try:
    from torch.utils._python_dispatch import TorchDispatchMode
except ImportError:  # pragma: no cover - both torch versions we target have it
    TorchDispatchMode = object  # type: ignore[assignment,misc]

WARP_JSON = Path(__file__).resolve().parent / "results" / "warp_bandwidth.json"

# Published dense peaks: (name substring, fp32 SIMT TFLOP/s, TF32 TFLOP/s, FP16 tensor TFLOP/s, HBM GB/s).
# Order matters: the first substring contained in the device name wins (NVL/PCIe before the generic name).
KNOWN_PEAKS: tuple[tuple[str, float, float, float, float], ...] = (
    ("H200 NVL", 60.0, 417.5, 835.5, 4800.0),
    ("H200", 67.0, 494.7, 989.4, 4800.0),
    ("H100 NVL", 60.0, 417.5, 835.5, 3900.0),
    ("H100 PCIe", 51.2, 378.0, 756.0, 2000.0),
    ("H100", 67.0, 494.7, 989.4, 3350.0),  # SXM5 (reports as "NVIDIA H100 80GB HBM3")
    ("A100-SXM4-40GB", 19.5, 156.0, 312.0, 1555.0),
    ("A100-PCIE-40GB", 19.5, 156.0, 312.0, 1555.0),
    ("A100 80GB PCIe", 19.5, 156.0, 312.0, 1935.0),
    ("A100", 19.5, 156.0, 312.0, 2039.0),  # SXM4 80GB
)


# --------------------------------------------------------------------------- counting
def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class TrafficCounter(TorchDispatchMode):
    """Bytes every aten op reads (tensor inputs) and writes (outputs); ops whose output aliases an input (views,
    reshapes) move nothing. Works on the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.read = 0
        self.written = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        ins = [a for a in tree_flatten((args, kwargs or {}))[0] if isinstance(a, torch.Tensor)]
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        if _is_view(func) or _aliases(ins, outs):
            return out
        self.read += sum(_nbytes(t) for t in ins)
        self.written += sum(_nbytes(t) for t in outs)
        return out


def _is_view(func: Any) -> bool:
    schema = getattr(func, "_schema", None)
    if schema is None:
        return False
    return any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)


def _aliases(ins: list[torch.Tensor], outs: list[torch.Tensor]) -> bool:
    if not outs or not ins:
        return False
    try:
        keys = {(t.untyped_storage().data_ptr(), t.device.type) for t in ins if t.device.type != "meta"}
        return any((o.untyped_storage().data_ptr(), o.device.type) in keys for o in outs if o.device.type != "meta")
    except (RuntimeError, NotImplementedError):
        return False


@dataclass
class CellCost:
    """Work of one cell iteration at one shape and precision (per frame batch)."""

    flops: int
    weight_bytes: int
    state_in_bytes: int
    state_out_bytes: int
    bytes_min: int
    bytes_unfused: int
    batch: int
    height: int
    width: int
    dtype: str

    @property
    def intensity_min(self) -> float:
        """FLOPs per compulsory byte (the x coordinate on the roofline plot)."""
        return self.flops / self.bytes_min if self.bytes_min else math.nan


def cell_inputs(cfg: Any, batch: int, height: int, width: int, dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    """z_0..z_{S-1} and x of the cell for an input frame of height x width."""
    shapes = [(batch, c, height // s, width // s) for c, s in zip(cfg.channels, cfg.strides)]
    zs = [torch.zeros(s, dtype=dtype, device=device) for s in shapes]
    return [*zs, torch.zeros(shapes[0], dtype=dtype, device=device)]


def count_flops(module: nn.Module, inputs: list[torch.Tensor]) -> int:
    """FLOPs of ``module(*inputs)`` as FlopCounterMode counts them (2 per multiply-add)."""
    mode = FlopCounterMode(display=False)
    with torch.no_grad(), mode:
        module(*inputs)
    return int(mode.get_total_flops())


def count_traffic(module: nn.Module, inputs: list[torch.Tensor]) -> tuple[int, int]:
    """(bytes read, bytes written) summed over the aten ops of ``module(*inputs)`` (unfused execution)."""
    counter = TrafficCounter()
    with torch.no_grad(), counter:
        module(*inputs)
    return counter.read, counter.written


def cell_cost(model: Any, batch: int, height: int, width: int, precision: str = "fp32") -> CellCost:
    """Analyse the model's cell on the meta device (no memory, no compute, any resolution)."""
    from export.precision import to_half

    cell = model.fullstage if hasattr(model, "fullstage") else model
    cell = to_half(cell) if precision == "fp16" else copy.deepcopy(cell).eval()
    cell = cell.to("meta").eval()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    inputs = cell_inputs(model.cfg, batch, height, width, dtype, "meta")
    flops = count_flops(cell, inputs)
    read, written = count_traffic(cell, inputs)
    weights = sum(_nbytes(p) for p in cell.parameters()) + sum(_nbytes(b) for b in cell.buffers())
    state_in = sum(_nbytes(t) for t in inputs)
    state_out = sum(_nbytes(t) for t in inputs[:-1])
    return CellCost(
        flops=flops,
        weight_bytes=weights,
        state_in_bytes=state_in,
        state_out_bytes=state_out,
        bytes_min=weights + state_in + state_out,
        bytes_unfused=read + written,
        batch=batch,
        height=height,
        width=width,
        dtype=precision,
    )


# --------------------------------------------------------------------------- peaks
@dataclass
class Peaks:
    """Peak compute (TFLOP/s) for the precision in use and memory bandwidth (GB/s), with where they came from."""

    device: str
    tflops: float
    gbps: float
    source: str  # "table: <entry>" or "measured: ..."
    precision: str


def known_peaks(name: str, precision: str, tf32: bool = True) -> Peaks | None:
    """Published dense peaks for a device name (None when the name is not in the table)."""
    for key, fp32, tf32_peak, fp16, bw in KNOWN_PEAKS:
        if key.lower() in name.lower():
            if precision == "fp16":
                tf, what = fp16, "FP16 tensor core"
            elif tf32:
                tf, what = tf32_peak, "TF32 tensor core (fp32 convs use TF32 by default)"
            else:
                tf, what = fp32, "FP32 SIMT"
            return Peaks(name, tf, bw, f"table: {key} dense {what}, HBM", precision)
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn: Any, device: torch.device, reps: int) -> float:
    fn()
    _sync(device)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def measure_peaks(device: torch.device, precision: str, quick: bool = False) -> Peaks:
    """Achievable peaks by experiment: a square matmul (FLOP/s) and a large copy (read + write bytes)."""
    dtype = torch.float16 if precision == "fp16" and device.type == "cuda" else torch.float32
    n = (8192 if not quick else 4096) if device.type == "cuda" else (768 if quick else 1536)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t_mm = _best_time(lambda: torch.mm(a, b), device, 3 if quick else 5)
    mb = (1024 if not quick else 256) if device.type == "cuda" else (32 if quick else 128)
    src = torch.empty(mb << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t_cp = _best_time(lambda: dst.copy_(src), device, 3 if quick else 5)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return Peaks(
        name,
        2 * n**3 / t_mm / 1e12,
        2 * (mb << 20) / t_cp / 1e9,
        f"measured: {n}x{n} {str(dtype).replace('torch.', '')} matmul, {mb} MiB copy (best of runs)",
        precision,
    )


def device_peaks(device: torch.device, precision: str, quick: bool = False) -> Peaks:
    """Table entry when the GPU is known, else measured (always measured on the CPU)."""
    if device.type == "cuda":
        tf32 = tf32_enabled()["conv"]
        found = known_peaks(torch.cuda.get_device_name(device), precision, tf32)
        if found is not None:
            return found
    return measure_peaks(device, precision, quick)


# --------------------------------------------------------------------------- analysis
def bound_ms(flops: float, nbytes: float, peaks: Peaks) -> float:
    """Roofline time: the slower of compute at peak and memory traffic at peak bandwidth (ms)."""
    return max(flops / (peaks.tflops * 1e12), nbytes / (peaks.gbps * 1e9)) * 1e3


def analyse_cell(cost: CellCost, peaks: Peaks, measured_ms: float | None = None) -> dict[str, Any]:
    """One roofline row: work, bound, and (when measured) achieved rates and measured/bound."""
    b_min = bound_ms(cost.flops, cost.bytes_min, peaks)
    row: dict[str, Any] = {
        **asdict(cost),
        "intensity_flop_per_byte": cost.intensity_min,
        "peak_tflops": peaks.tflops,
        "peak_gbps": peaks.gbps,
        "peaks_source": peaks.source,
        "bound_ms": b_min,
        "bound_unfused_ms": bound_ms(cost.flops, cost.bytes_unfused, peaks),
        "bound_by": "compute"
        if cost.flops / (peaks.tflops * 1e12) >= cost.bytes_min / (peaks.gbps * 1e9)
        else "memory",
    }
    if measured_ms is not None and measured_ms > 0:
        s = measured_ms / 1e3
        row.update(
            {
                "measured_ms": measured_ms,
                "achieved_tflops": cost.flops / s / 1e12,
                "achieved_gbps_min": cost.bytes_min / s / 1e9,
                "achieved_gbps_unfused": cost.bytes_unfused / s / 1e9,
                "measured_over_bound": measured_ms / b_min,
            }
        )
    return row


def warp_rows(path: Path = WARP_JSON) -> list[dict[str, Any]]:
    """Roofline of the warp kernel from benchmarks/warp_bandwidth.py's results (memory-bound: bound = bytes / peak
    bandwidth, the table's peak when the GPU is known, else the measured copy bandwidth of that run)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    env = data.get("env", data.get("environment", {})) if isinstance(data, dict) else {}
    rows = data.get("results", data.get("rows", [])) if isinstance(data, dict) else data
    gpu = str(env.get("gpu", "")) if isinstance(env, dict) else ""
    out = []
    for r in rows if isinstance(rows, list) else []:
        if not isinstance(r, dict) or "bytes" not in r or "median_ms" not in r:
            continue
        table = known_peaks(gpu, "fp32") if gpu else None
        bw = table.gbps if table else float(r.get("copy_gbps") or math.nan)
        b = r["bytes"] / (bw * 1e9) * 1e3
        out.append(
            {
                "op": r.get("op"),
                "dtype": r.get("dtype"),
                "layout": r.get("layout"),
                "cpt": r.get("cpt"),
                "bytes": r["bytes"],
                "measured_ms": r["median_ms"],
                "achieved_gbps": r.get("gbps"),
                "peak_gbps": bw,
                "peak_source": table.source if table else "measured copy bandwidth",
                "bound_ms": b,
                "measured_over_bound": r["median_ms"] / b if b > 0 else math.nan,
            }
        )
    return out


def markdown(rows: list[dict[str, Any]], warp: list[dict[str, Any]]) -> str:
    """Tables: one row per (config, resolution, precision, backend) cell measurement, then the warp kernel."""
    lines = [
        "| config | resolution | prec | backend | GFLOP/iter | MB min / unfused | bound ms | by | measured ms "
        "| TFLOP/s | GB/s (min) | measured/bound | peaks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        meas = r.get("measured_ms")
        lines.append(
            f"| {r.get('config', '')} | {r['height']}x{r['width']}"
            + (f" B{r['batch']}" if r["batch"] != 1 else "")
            + f" | {r['dtype']} | {r.get('backend', '-')} | {r['flops'] / 1e9:.2f} "
            f"| {r['bytes_min'] / 1e6:.1f} / {r['bytes_unfused'] / 1e6:.1f} | {r['bound_ms']:.4f} | {r['bound_by']} "
            + (
                f"| {meas:.3f} | {r['achieved_tflops']:.3g} | {r['achieved_gbps_min']:.3g} "
                f"| {r['measured_over_bound']:.1f}x "
                if meas
                else "| - | - | - | - "
            )
            + f"| {r['peak_tflops']:.3g} TFLOP/s, {r['peak_gbps']:.3g} GB/s ({r['peaks_source']}) |"
        )
    if warp:
        lines += [
            "",
            "Warp kernel (from benchmarks/results/warp_bandwidth.json):",
            "",
            "| op | dtype | layout | cpt | MB | measured ms | GB/s | bound ms | measured/bound |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for w in warp:
            lines.append(
                f"| {w['op']} | {w['dtype']} | {w['layout']} | {w['cpt']} | {w['bytes'] / 1e6:.1f} "
                f"| {w['measured_ms']:.4f} | {w['achieved_gbps']} | {w['bound_ms']:.4f} "
                f"| {w['measured_over_bound']:.2f}x |"
            )
    else:
        lines += [
            "",
            "Warp kernel: no benchmarks/results/warp_bandwidth.json (run `python -m benchmarks.warp_bandwidth`"
            " on a GPU).",
        ]
    return "\n".join(lines) + "\n"


def _parse_res(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        return h, w
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must look like 512x1024, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.roofline",
        description="FLOPs and bytes of one DEQ cell iteration, the device's peaks and the roofline bound time; "
        "with --cell-ms also the achieved rates and measured/bound. benchmarks.fps runs this with measured times.",
    )
    p.add_argument("--config", default="small-seg", help="model config (tiny, small-seg, xl-seg)")
    p.add_argument("--resolution", type=_parse_res, default=(1024, 2048), help="HxW (default 1024x2048)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    p.add_argument("--device", default=None, help="peaks of this device (default: cuda if present, else cpu)")
    p.add_argument("--cell-ms", type=float, default=None, help="a measured time per cell iteration (ms)")
    a = p.parse_args(argv)
    from export.config import get_config
    from export.mdeq import build_model, check_resolution

    try:
        cfg = get_config(a.config)
        check_resolution(cfg, *a.resolution)
        if a.batch < 1:
            raise ValueError("--batch must be >= 1")
        device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda but no GPU is available")
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cost = cell_cost(build_model(cfg), a.batch, *a.resolution, a.precision)
    row = {"config": a.config, "backend": "-", **analyse_cell(cost, device_peaks(device, a.precision), a.cell_ms)}
    print(markdown([row], warp_rows()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
