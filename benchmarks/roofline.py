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
  The roofline bound uses ``bytes_min`` (measured/bound >= 1 with a right peak; the acceptance "<= 2x" is against it).
* Peaks: a table of published dense (no sparsity) figures for H100/H200/A100 matched by device name; for any other
  GPU they are measured (a large matmul, a large copy). On the CPU they are measured the way the backends run: at the
  run's thread count, fp32, the best of torch's matmul and convolution and ONNX Runtime's convolution. fp32 engines
  are built without TF32 (export.bundle exports inside ``export.tf32.exact_fp32``; TensorRT without its TF32 flag),
  so on a GPU they are held against the FP32 peak; eager fp32 against TF32's when cuDNN may use it.
* A measured/bound below 1 is physically impossible: it is flagged "wrong peak" (table and JSON ``peak_check``),
  never passed.

``python -m benchmarks.roofline --config small-seg --resolution 1024x2048 --precision fp16 [--cell-ms 0.2]``
prints the analysis; ``benchmarks.fps`` calls :func:`analyse_cell` with its measured times.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from export.tf32 import exact_fp32, set_tf32, tf32_enabled

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
    """Published dense peaks for a device name (None when the name is not in the table). ``tf32`` picks the TF32
    tensor-core peak for fp32; without it fp32 is held against the FP32 SIMT peak (engines built without TF32)."""
    for key, fp32, tf32_peak, fp16, bw in KNOWN_PEAKS:
        if key.lower() in name.lower():
            if precision == "fp16":
                tf, what = fp16, "FP16 tensor core"
            elif tf32:
                tf, what = tf32_peak, "TF32 tensor core"
            else:
                tf, what = fp32, "FP32 SIMT (no TF32)"
            return Peaks(name, tf, bw, f"table: {key} dense {what}, HBM", precision)
    return None


def runs_tf32(backend: str, precision: str, device: torch.device) -> bool:
    """Whether ``backend``'s fp32 convolutions may run on TF32 tensor cores, i.e. which fp32 peak bounds them.

    Engines (AOTInductor, ONNX, TensorRT) are built by export.bundle inside ``export.tf32.exact_fp32`` (TensorRT
    also without its TF32 builder flag) so that they pass the fp32 parity gate: they are held against the FP32
    peak. An engine that nevertheless runs TF32 then shows measured/bound < 1, flagged as a wrong peak. Eager
    runs with this process's cuDNN setting."""
    if device.type != "cuda" or precision != "fp32":
        return False
    return backend == "eager" and tf32_enabled()["conv"]


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


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` inside the block (0: leave the library default)."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def tf32_mode(enabled: bool) -> Iterator[None]:
    """TF32 on or off for CUDA matmuls and convolutions inside the block; the caller's setting comes back after."""
    with exact_fp32():
        if enabled:
            set_tf32(True)
        yield


# Probe shapes: a 3x3 convolution like the cell's (the cell is convolutions), large enough to run at full speed.
CONV_PROBE = (128, 64, 128)  # channels in = out, height, width (2.4 GFLOP)


def _conv_flops(c: int, h: int, w: int) -> float:
    return 2.0 * c * c * 9 * h * w


def torch_probes(threads: int, quick: bool) -> dict[str, float]:
    """FLOP/s of torch's CPU kernels at the run's thread count: a square fp32 matmul and a 3x3 convolution."""
    cpu = torch.device("cpu")
    reps = 5 if quick else 8
    n = 1536 if quick else 2048
    c, h, w = CONV_PROBE
    with torch_threads(threads), torch.inference_mode():
        a, b = torch.randn(n, n), torch.randn(n, n)
        mm = 2.0 * n**3 / _best_time(lambda: torch.mm(a, b), cpu, reps)
        x, k = torch.randn(1, c, h, w), torch.randn(c, c, 3, 3)
        conv = _conv_flops(c, h, w) / _best_time(lambda: torch.nn.functional.conv2d(x, k, padding=1), cpu, reps)
    return {f"torch {n}x{n} matmul": mm, f"torch conv3x3 {c}ch {h}x{w}": conv}


def ort_probe(threads: int, quick: bool) -> dict[str, float]:
    """FLOP/s of ONNX Runtime's CPU convolution (MLAS, what the .onnx engines run) with the runtime's session
    options: ``threads`` intra-op threads, no spinning. Empty when onnxruntime or onnx does not import."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return {}
    c, h, w = CONV_PROBE
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((c, c, 3, 3), dtype=np.float32), "k")
    node = helper.make_node("Conv", ["x", "k"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "conv_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, h, w])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)  # loadable by older onnxruntime releases too
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads > 0:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, c, h, w), dtype=np.float32)
    t = _best_time(lambda: sess.run(None, {"x": x}), torch.device("cpu"), 5 if quick else 8)
    return {f"onnxruntime conv3x3 {c}ch {h}x{w}": _conv_flops(c, h, w) / t}


def copy_gbps(device: torch.device, quick: bool) -> tuple[float, int]:
    """Bandwidth of a large copy (read + write bytes per second, GB/s) and its size in MiB."""
    mb = (1024 if not quick else 256) if device.type == "cuda" else (128 if quick else 256)
    src = torch.empty(mb << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = _best_time(lambda: dst.copy_(src), device, 3 if quick else 5)
    return 2 * (mb << 20) / t / 1e9, mb


def cpu_peaks(precision: str, quick: bool = False, threads: int = 0) -> Peaks:
    """The CPU's achievable fp32 peak the way the backends run: at the run's thread count, the best of torch's
    matmul and convolution and ONNX Runtime's convolution (a bound must hold for every backend, so the fastest
    kernel sets it), and a large copy for bandwidth (torch at the same thread count)."""
    probes = {**torch_probes(threads, quick), **ort_probe(threads, quick)}
    with torch_threads(threads):
        gbps, mb = copy_gbps(torch.device("cpu"), quick)
    best = max(probes, key=probes.__getitem__)
    listed = ", ".join(f"{name} {v / 1e9:.0f}" for name, v in probes.items())
    source = (
        f"measured at {threads or torch.get_num_threads()} thread(s), fp32: best of [{listed}] GFLOP/s = {best}; "
        f"{mb} MiB copy"
    )
    return Peaks("cpu", probes[best] / 1e12, gbps, source, precision)


def gpu_peaks(device: torch.device, precision: str, quick: bool = False, tf32: bool = False) -> Peaks:
    """Achievable GPU peaks by experiment (a device not in the table): a square matmul in the run's precision,
    with TF32 as the engines run it, and a large copy."""
    dtype = torch.float16 if precision == "fp16" else torch.float32
    n = 4096 if quick else 8192
    with tf32_mode(tf32):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        t_mm = _best_time(lambda: torch.mm(a, b), device, 3 if quick else 5)
    gbps, mb = copy_gbps(device, quick)
    what = "fp16" if precision == "fp16" else ("fp32 TF32" if tf32 else "fp32 (no TF32)")
    source = f"measured: {n}x{n} {what} matmul, {mb} MiB copy (best of runs)"
    return Peaks(torch.cuda.get_device_name(device), 2 * n**3 / t_mm / 1e12, gbps, source, precision)


def device_peaks(
    device: torch.device, precision: str, quick: bool = False, threads: int = 0, tf32: bool = False
) -> Peaks:
    """Table entry when the GPU is known, else measured; on the CPU always measured at ``threads`` threads."""
    if device.type != "cuda":
        return cpu_peaks(precision, quick, threads)
    found = known_peaks(torch.cuda.get_device_name(device), precision, tf32)
    return found if found is not None else gpu_peaks(device, precision, quick, tf32)


# --------------------------------------------------------------------------- analysis
WRONG_PEAK = "wrong peak"


def peak_check(measured_over_bound: float) -> str:
    """ "ok", or "wrong peak" when a time beats its roofline bound (measured/bound < 1): that is physically
    impossible, so the peak it was held against is too low (a single-thread peak for a multi-threaded run, the FP32
    peak for a kernel on TF32 tensor cores, a noisy measurement), never a pass."""
    if not math.isfinite(measured_over_bound):
        return "-"
    return WRONG_PEAK if measured_over_bound < 1.0 else "ok"


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
                "peak_check": peak_check(measured_ms / b_min),
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
        ratio = r["median_ms"] / b if b > 0 else math.nan
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
                "measured_over_bound": ratio,
                "peak_check": peak_check(ratio),
            }
        )
    return out


def _ratio(r: dict[str, Any], fmt: str = ".2f") -> str:
    """measured/bound, with the wrong-peak flag where it is below 1."""
    v = r.get("measured_over_bound")
    if v is None or not math.isfinite(v):
        return "-"
    flag = f" **{WRONG_PEAK}**" if peak_check(v) == WRONG_PEAK else ""
    return f"{v:{fmt}}x{flag}"


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
                f"| {meas:.3f} | {r['achieved_tflops']:.3g} | {r['achieved_gbps_min']:.3g} | {_ratio(r)} "
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
                f"| {_ratio(w, '.2f')} |"
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
    p.add_argument("--threads", type=int, default=1, help="CPU threads of the peak measurement (default 1; 0 = all)")
    p.add_argument(
        "--tf32", action="store_true", help="GPU fp32: hold against the TF32 peak (eager with TF32 convolutions)"
    )
    a = p.parse_args(argv)
    from export.config import get_config
    from export.mdeq import build_model, check_resolution

    try:
        cfg = get_config(a.config)
        check_resolution(cfg, *a.resolution)
        if a.batch < 1:
            raise ValueError("--batch must be >= 1")
        if a.threads < 0:
            raise ValueError("--threads must be >= 0")
        device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda but no GPU is available")
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cost = cell_cost(build_model(cfg), a.batch, *a.resolution, a.precision)
    peaks = device_peaks(device, a.precision, False, a.threads, a.tf32)
    row = {"config": a.config, "backend": "-", **analyse_cell(cost, peaks, a.cell_ms)}
    print(markdown([row], warp_rows()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
