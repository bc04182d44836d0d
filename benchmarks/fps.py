"""Frames per second vs iterations per frame, per backend, on the device and end to end (``python -m benchmarks.fps``).

Why: StreamDEQ's claim is that k warm-started iterations per frame (stream) buy most of the accuracy of N=20 cold
iterations (frame) at ~N/k times the frame rate. This measures that speed-up where it is paid: on the device (the
loop the engines run: injection + k cell iterations + head on persistent buffers, the frame already on the device)
and end to end (decode -> upload -> engines -> class map on the host, through the runtime's Pipeline and decode
thread), so the cost around the cell is visible. Backends: PyTorch eager (the reference, as the papers ran it),
AOTInductor (.pt2), ONNX Runtime (.onnx) and TensorRT (.plan); one that cannot run here is skipped with the reason.

Statistics follow trtexec (runtime/stats.py): warm-up, then throughput, latency mean/median/p90/p95/p99, GPU compute
time from CUDA events, host overhead (latency - GPU compute) and a warning when the coefficient of variation is above
2.5 %. Also: the roofline of one cell iteration (benchmarks/roofline.py), time per frame vs resolution, throughput vs
batched streams, and accuracy vs FPS when benchmarks/results/accuracy*.json exists. Outputs (atomic):
``<out>/fps_<machine>[_quick].{md,json,png}`` and ``<out>/roofline_<machine>[_quick].{md,json}``.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import roofline
from benchmarks.env import stamp as make_stamp
from runtime.stats import CV_WARN, describe, summarize

BACKENDS = ("eager", "aoti", "onnx", "tensorrt")
FORMAT = {"aoti": "pt2", "onnx": "onnx", "tensorrt": "plan"}
SUFFIX = {"pt2": ".pt2", "onnx": ".onnx", "plan": ".plan"}
CHECKPOINTS = {"tiny": Path("checkpoints/tiny_sur.pt")}
DEFAULT_OUT = Path("benchmarks/results")
QUICK_NO_AOTI = (
    "not in --quick: compiling the 3 AOTInductor graphs takes ~2.5 min on the shared 2-core CPU "
    "(pass --backends eager,onnx,aoti to include it)"
)


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Case:
    """One model configuration to measure: config, resolution, batch of streams, precision."""

    config: str
    height: int
    width: int
    precision: str = "fp32"
    batch: int = 1

    @property
    def label(self) -> str:
        b = f" B{self.batch}" if self.batch != 1 else ""
        return f"{self.config} {self.height}x{self.width}{b} {self.precision}"


@dataclass
class Settings:
    configs: list[str]
    resolutions: list[tuple[int, int]]
    backends: list[str]
    iters: list[int]
    e2e_iters: list[int]
    precisions: list[str]
    frame_n: int
    warmup: int
    frames: int
    e2e_frames: int
    scale_resolutions: list[tuple[int, int]]
    scale_batches: list[int]
    scale_backend: str | None
    scale_k: int
    device: str
    quick: bool
    out: Path
    checkpoint: bool
    threads: int = 0
    pairs: list[tuple[str, str]] | None = None  # only these (backend, precision) pairs, when given

    def measures(self, backend: str, precision: str) -> bool:
        return self.pairs is None or (backend, precision) in self.pairs


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            vals = [kind(v.strip()) for v in text.split(",") if v.strip()]
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise argparse.ArgumentTypeError(f"bad list {text!r}: {e}") from None
        if not vals:
            raise argparse.ArgumentTypeError("empty list")
        return vals

    return parse


def _res(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"resolution must look like 512x1024, got {text!r}")
    return int(parts[0]), int(parts[1])


def _pair(text: str) -> tuple[str, str]:
    backend, sep, precision = text.partition(":")
    if not sep or not backend or not precision:
        raise argparse.ArgumentTypeError(f"a pair looks like aoti:fp16, got {text!r}")
    return backend, precision


def _pos_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.fps",
        description="FPS vs iterations per frame (stream k vs per-frame N) for PyTorch eager, AOTInductor, ONNX "
        "Runtime and TensorRT; device-only loop and end to end; trtexec-style statistics; cell roofline; "
        "resolution and batch scaling. Writes fps_<machine>.{md,json,png} and roofline_<machine>.{md,json}.",
        epilog="examples:\n  python -m benchmarks.fps --quick                      # CPU smoke run, ~2-3 min\n"
        "  python -m benchmarks.fps --configs small-seg --resolutions 1024x2048 --precision fp16 "
        "--backends eager,aoti,tensorrt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small CPU run: tiny at 128x256, onnx+eager, few frames")
    p.add_argument("--configs", type=_csv(str), default=None, help="comma list (default tiny,small-seg; quick tiny)")
    p.add_argument(
        "--resolutions",
        type=_csv(_res),
        default=None,
        help="comma list HxW (default 512x1024,1024x2048; quick 128x256)",
    )
    p.add_argument(
        "--backends", type=_csv(str), default=None, help="comma list of eager,aoti,onnx,tensorrt (quick: eager,onnx)"
    )
    p.add_argument("--iters", type=_csv(_pos_int), default=[1, 2, 4, 8, 16, 20], help="stream k values")
    p.add_argument("--e2e-iters", type=_csv(_pos_int), default=None, help="stream k end to end (default --iters)")
    p.add_argument("--frame-n", type=_pos_int, default=20, help="per-frame baseline iterations N (default 20)")
    p.add_argument("--precision", type=_csv(str), default=None, help="fp32,fp16 (fp16 only on GPU; default both)")
    p.add_argument(
        "--pairs",
        type=_csv(_pair),
        default=None,
        help="measure only these backend:precision pairs, e.g. eager:fp32,aoti:fp16 (the acceptance comparison "
        "without compiling an fp32 AOTI graph); replaces --backends and --precision",
    )
    p.add_argument("--warmup", type=int, default=None, help="warm-up frames per measurement (default 10, quick 2)")
    p.add_argument("--frames", type=_pos_int, default=None, help="timed frames per measurement (default 50, quick 8)")
    p.add_argument("--e2e-frames", type=_pos_int, default=None, help="timed end-to-end frames (default 40, quick 8)")
    p.add_argument("--scale-resolutions", type=_csv(_res), default=None, help="resolutions for the scaling table")
    p.add_argument("--scale-batches", type=_csv(_pos_int), default=None, help="batched streams B (default 1,2,4)")
    p.add_argument("--scale-backend", default=None, help="backend for scaling (default: aoti on GPU, onnx on CPU)")
    p.add_argument("--scale-k", type=_pos_int, default=2, help="stream k used in the scaling measurements")
    p.add_argument("--no-scaling", action="store_true", help="skip the resolution and batch scaling measurements")
    p.add_argument("--no-checkpoint", action="store_true", help="random weights even where a checkpoint exists")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch and ONNX Runtime (default 1 on CPU: on a shared, oversubscribed CPU the "
        "multi-threaded kernels' spin barriers make them orders of magnitude slower; 0 = library default)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    return p


def settings_from_args(a: argparse.Namespace) -> Settings:
    """Defaults depend on --quick; everything is validated here so a bad value is one line."""
    from export.config import CONFIGS
    from export.mdeq import check_resolution

    q = a.quick
    configs = a.configs or (["tiny"] if q else ["tiny", "small-seg"])
    res = a.resolutions or ([(128, 256)] if q else [(512, 1024), (1024, 2048)])
    backends = a.backends or (["eager", "onnx"] if q else list(BACKENDS))
    precisions = a.precision or ["fp32", "fp16"]
    if a.pairs:
        backends = list(dict.fromkeys(b for b, _ in a.pairs))
        precisions = list(dict.fromkeys(pr for _, pr in a.pairs))
    for name in configs:
        if name not in CONFIGS:
            raise ValueError(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    for pr in precisions:
        if pr not in ("fp32", "fp16"):
            raise ValueError(f"unknown precision {pr!r}; choose fp32 or fp16")
    scale_res = a.scale_resolutions or ([(64, 128), res[0]] if q else [(256, 512), *res])
    for name in configs:
        for h, w in {*res, *scale_res}:
            check_resolution(CONFIGS[name], h, w)
    if a.device not in ("auto", "cpu") and not a.device.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {a.device!r}")
    if a.scale_backend is not None and a.scale_backend not in BACKENDS:
        raise ValueError(f"unknown --scale-backend {a.scale_backend!r}")
    warmup = a.warmup if a.warmup is not None else (3 if q else 10)
    if warmup < 0:
        raise ValueError("--warmup must be >= 0")
    return Settings(
        configs=configs,
        resolutions=res,
        backends=backends,
        iters=sorted(set(a.iters)),
        e2e_iters=sorted(set(a.e2e_iters or ([1, 2] if q else a.iters))),
        precisions=precisions,
        frame_n=a.frame_n,
        warmup=warmup,
        frames=a.frames or (30 if q else 50),
        e2e_frames=a.e2e_frames or (24 if q else 40),
        scale_resolutions=[] if a.no_scaling else sorted(set(scale_res)),
        scale_batches=[] if a.no_scaling else sorted(set(a.scale_batches or ([1, 2] if q else [1, 2, 4]))),
        scale_backend=a.scale_backend,
        scale_k=a.scale_k,
        device=a.device,
        quick=q,
        out=a.out,
        checkpoint=not a.no_checkpoint,
        threads=a.threads if a.threads is not None else (1 if pick_device(a.device).type == "cpu" else 0),
        pairs=list(dict.fromkeys(a.pairs)) if a.pairs else None,
    )


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no GPU")
    return torch.device(requested)


def unavailable(backend: str, precision: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot be measured here (None when it can)."""
    if precision == "fp16" and device.type != "cuda":
        return "fp16 is measured on GPU only (CPU kernels have no fast fp16 path)"
    if backend == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except Exception as e:  # noqa: BLE001 - stub wheels raise all sorts at import
            return f"tensorrt does not import ({type(e).__name__}: {str(e).strip()[:80]})"
        if device.type != "cuda":
            return "TensorRT needs an NVIDIA GPU"
    if backend == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as e:
            return f"onnxruntime does not import ({e})"
        if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
    return None


# --------------------------------------------------------------------------- models and bundles
def load_model(config: str, use_checkpoint: bool) -> tuple[Any, str]:
    """The model (shipped checkpoint when there is one, else random init: speed does not depend on weights)."""
    from export.config import get_config
    from export.mdeq import build_model

    ckpt = CHECKPOINTS.get(config)
    if use_checkpoint and ckpt is not None and ckpt.is_file():
        try:
            from export.train import load_model as load_ckpt

            model, _ = load_ckpt(ckpt, "cpu")
            return model.eval(), str(ckpt)
        except Exception as e:  # noqa: BLE001 - a broken checkpoint only changes the weights, not the speed
            print(f"warning: {ckpt}: {e}; using random weights", file=sys.stderr)
    return build_model(get_config(config)).eval(), "random init"


class BundleCache:
    """One exported bundle per (case, engine format), exported once per run into a temporary folder."""

    def __init__(self, root: Path, device: torch.device, command: str) -> None:
        self.root, self.device, self.command = root, device, command
        self.paths: dict[tuple[Case, str], Path] = {}
        self.export_s: dict[str, float] = {}

    def get(self, model: Any, case: Case, fmt: str) -> Path:
        from export.bundle import export_bundle

        key = (case, fmt)
        if key not in self.paths:
            out = self.root / f"{case.config}_{case.height}x{case.width}_b{case.batch}_{case.precision}_{fmt}"
            formats = ("onnx", "plan") if fmt == "plan" else (fmt,)
            dev = "cuda" if self.device.type == "cuda" else "cpu"
            t0 = time.perf_counter()
            export_bundle(
                model, out, case.height, case.width, case.batch, formats, case.precision, dev, command=self.command
            )
            self.export_s[f"{case.label} {fmt}"] = round(time.perf_counter() - t0, 1)
            self.paths[key] = out / f"deq_cell{SUFFIX[fmt]}"
        return self.paths[key]


# --------------------------------------------------------------------------- timing
class StageTimer:
    """Per-stage times of one frame: CUDA events on ``stream`` on GPU (GPU compute time), perf_counter on CPU."""

    def __init__(self, device: torch.device, stream: Any = None) -> None:
        self.cuda = device.type == "cuda"
        self.stream = stream
        self.marks: list[tuple[str, Any]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(self.stream) if self.stream is not None else ev.record()
            self.marks.append((name, ev))
        else:
            self.marks.append((name, time.perf_counter()))

    def read(self) -> tuple[dict[str, float], float | None]:
        """Stage times (ms) and, on GPU, the device time from the first to the last mark."""
        out = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:]):
            out[name] = a.elapsed_time(b) if self.cuda else (b - a) * 1e3
        gpu = self.marks[0][1].elapsed_time(self.marks[-1][1]) if self.cuda and len(self.marks) > 1 else None
        self.marks = []
        return out, gpu


class DeviceLoop:
    """What one frame costs on the device: injection, start state, k iterations, head. ``step`` runs one frame."""

    device: torch.device
    stream: Any = None
    batch: int = 1

    def step(self, k: int, zero: bool, timer: StageTimer) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        if self.device.type == "cuda":
            (self.stream or torch.cuda.current_stream(self.device)).synchronize()

    def close(self) -> None:
        """Release what the loop holds."""


class EagerLoop(DeviceLoop):
    """PyTorch eager (the reference implementation): new tensors each call, as the papers ran it."""

    def __init__(self, model: Any, case: Case, device: torch.device) -> None:
        from export.mdeq import ClassMapHead
        from export.precision import to_half, to_half_injection

        self.device, self.batch = device, case.batch
        head = ClassMapHead(model.head, (case.height, case.width))
        half = case.precision == "fp16"
        self.injection = (to_half_injection(model.injection) if half else model.injection).to(device).eval()
        self.cell = (to_half(model.fullstage) if half else model.fullstage).to(device).eval()
        self.head = (to_half(head) if half else head).to(device).eval()
        self.dtype = torch.float16 if half else torch.float32
        self.shapes = model.state_shapes(case.batch, case.height, case.width)
        gen = torch.Generator().manual_seed(0)
        frame = torch.randint(0, 256, (case.batch, case.height, case.width, 3), dtype=torch.uint8, generator=gen)
        self.frame = frame.to(device)
        self.z: list[torch.Tensor] | None = None
        self.classes: torch.Tensor | None = None

    @torch.inference_mode()
    def run_frame(self, frame: torch.Tensor, k: int, zero: bool, timer: StageTimer | None) -> torch.Tensor:
        x = self.injection(frame)
        _mark(timer, "injection")
        if zero or self.z is None:
            self.z = [torch.zeros(s, dtype=self.dtype, device=self.device) for s in self.shapes]
        z = self.z
        for _ in range(k):
            z = list(self.cell(*z, x))
        self.z = z
        _mark(timer, "cell")
        out = self.head(*z)
        _mark(timer, "head")
        return out

    def step(self, k: int, zero: bool, timer: StageTimer) -> None:
        timer.mark("start")
        self.classes = self.run_frame(self.frame, k, zero, timer)


def _mark(timer: StageTimer | None, name: str) -> None:
    if timer is not None:
        timer.mark(name)


class EngineLoop(DeviceLoop):
    """An exported bundle through the runtime's Pipeline (persistent buffers, CUDA graphs where capturable)."""

    def __init__(self, engine: Path, device: torch.device, threads: int = 0) -> None:
        from runtime.bundle import open_bundle
        from runtime.modes import FrameInfo, Plan
        from runtime.pipeline import Pipeline

        self.bundle = open_bundle(engine)
        self.device = device
        log = lambda m: print(f"note: {m}", file=sys.stderr)  # noqa: E731
        self.pipe = Pipeline(self.bundle, device, graphs=True, threads=threads, max_iters=64, log=log)
        self.stream = self.pipe.stream
        self.batch = self.pipe.batch
        self.Plan, self.FrameInfo = Plan, FrameInfo
        gen = np.random.default_rng(0)
        frame = gen.integers(0, 256, (self.batch, self.bundle.height, self.bundle.width, 3), dtype=np.uint8)
        with self.pipe.stream_context():  # the upload is ordered with the engines' stream
            self.pipe.upload(list(frame))
        self.n = 0

    def plans(self, k: int, zero: bool) -> tuple[list[Any], list[Any]]:
        plan = self.Plan(iters=k, start="zero" if zero else "previous")
        return [plan] * self.batch, [self.FrameInfo(self.n) for _ in range(self.batch)]

    def step(self, k: int, zero: bool, timer: StageTimer) -> None:
        pipe = self.pipe
        plans, infos = self.plans(k, zero)
        ctx = torch.cuda.stream(self.stream) if self.stream is not None else _Null()
        with ctx:
            timer.mark("start")
            pipe.injection.run(self.stream)
            timer.mark("injection")
            pipe.prepare_state(plans, infos)
            pipe.solve(k)
            timer.mark("cell")
            pipe.head.run(self.stream, pipe.buf.current)
            timer.mark("head")
        pipe.has_state = [True] * self.batch
        self.n += 1

    def graphs_used(self) -> bool:
        return bool(self.pipe.graphs)


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def measure_device(loop: DeviceLoop, k: int, zero: bool, warmup: int, frames: int) -> dict[str, Any]:
    """trtexec-style summary of ``frames`` timed frames after ``warmup`` untimed ones (frame on the device)."""
    timer = StageTimer(loop.device, loop.stream)
    for _ in range(warmup):
        loop.step(k, zero, timer)
        loop.sync()
        timer.read()
    latency, gpu, stages = [], [], {"injection": [], "cell": [], "head": []}
    t_start = time.perf_counter()
    for _ in range(frames):
        t0 = time.perf_counter()
        loop.step(k, zero, timer)
        loop.sync()
        latency.append((time.perf_counter() - t0) * 1e3)
        st, g = timer.read()
        for name, ms in st.items():
            stages.setdefault(name, []).append(ms)
        if g is not None:
            gpu.append(g)
    wall = time.perf_counter() - t_start
    summary = summarize(latency, wall, gpu or None, frames=frames * loop.batch, extra=stages)
    return add_host_overhead(summary, latency, gpu)


def add_host_overhead(summary: dict[str, Any], latency: Sequence[float], gpu: Sequence[float]) -> dict[str, Any]:
    """Host overhead per frame = wall latency - GPU compute (trtexec's enqueue/sync cost); CPU: none to separate."""
    if gpu:
        summary["host_overhead_ms"] = describe([a - b for a, b in zip(latency, gpu)])
    summary["cv"] = summary.get("gpu_compute_ms", summary["latency_ms"]).get("cv")
    return summary


# --------------------------------------------------------------------------- end to end
def make_clip(root: Path, height: int, width: int, frames: int = 12) -> Path:
    """A synthetic street clip through H.264 at the engine resolution (decoding is part of end to end)."""
    from export.synthetic import EncodeOptions, encode_mp4, render_clip

    path = root / f"clip_{height}x{width}.mp4"
    if not path.exists():
        rgb, _, _ = render_clip(7, frames, height, width, shot_change=False)
        encode_mp4(path, rgb, EncodeOptions(preset="veryfast"))
    return path


class ClipFrames:
    """Frames of the clip through the runtime's decode thread (Prefetcher), looping at the end."""

    def __init__(self, clip: Path, hw: tuple[int, int]) -> None:
        self.clip, self.hw = clip, hw
        self.pre: Any = None
        self.index = 0

    def _open(self) -> None:
        from runtime.sources import Prefetcher, open_source

        self.pre = Prefetcher(open_source(self.clip), self.hw, keep_original=False)

    def next(self) -> Any:
        if self.pre is None:
            self._open()
        f = self.pre.get()
        if f is None:
            self.pre.close()
            self._open()
            f = self.pre.get()
        self.index += 1
        return f

    def close(self) -> None:
        if self.pre is not None:
            self.pre.close()


def e2e_frame_engine(loop: EngineLoop, frames: ClipFrames, k: int, zero: bool) -> tuple[dict[str, float], float]:
    """One frame through Pipeline.run (upload, injection, solve, head, download, one sync); returns stages, GPU ms."""
    got = [frames.next() for _ in range(loop.batch)]
    plans, infos = loop.plans(k, zero)
    res = loop.pipe.run([f.rgb for f in got], plans, infos)
    stages = dict(res.stage_ms)
    stages["decode"] = sum(f.decode_ms for f in got)
    loop.n += 1
    return stages, res.gpu_ms


def e2e_frame_eager(loop: EagerLoop, frames: ClipFrames, k: int, zero: bool) -> tuple[dict[str, float], float]:
    """One frame in eager PyTorch: upload, injection, k iterations, head, class map back to the host."""
    got = [frames.next() for _ in range(loop.batch)]
    timer = StageTimer(loop.device)
    t0 = time.perf_counter()
    frame = torch.from_numpy(np.stack([f.rgb for f in got])).to(loop.device)
    upload = (time.perf_counter() - t0) * 1e3
    timer.mark("start")
    out = loop.run_frame(frame, k, zero, timer)
    classes = out.cpu().numpy()
    timer.mark("download")
    stages, gpu = timer.read()
    stages["upload"] = upload
    stages["decode"] = sum(f.decode_ms for f in got)
    del classes
    return stages, gpu


def measure_e2e(loop: DeviceLoop, clip: Path, k: int, zero: bool, warmup: int, frames: int) -> dict[str, Any]:
    """Decode -> class map on the host, per frame; throughput over the wall time (decoding overlaps in its thread)."""
    hw = (loop.bundle.height, loop.bundle.width) if isinstance(loop, EngineLoop) else loop.frame.shape[1:3]
    src = ClipFrames(clip, tuple(hw))
    one = e2e_frame_engine if isinstance(loop, EngineLoop) else e2e_frame_eager
    try:
        for _ in range(warmup):
            one(loop, src, k, zero)
        latency, gpu, stages = [], [], {}
        t_start = time.perf_counter()
        for _ in range(frames):
            t0 = time.perf_counter()
            st, g = one(loop, src, k, zero)
            latency.append((time.perf_counter() - t0) * 1e3)
            for name, ms in st.items():
                stages.setdefault(name, []).append(ms)
            if g is not None:
                gpu.append(g)
        wall = time.perf_counter() - t_start
    finally:
        src.close()
    summary = summarize(latency, wall, gpu or None, frames=frames * loop.batch, extra=stages)
    return add_host_overhead(summary, latency, gpu)


# --------------------------------------------------------------------------- the run
class Progress:
    """Per-case progress lines on stderr (elapsed time, case, result)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.perf_counter()

    def line(self, msg: str, count: bool = True) -> None:
        if count:
            self.done += 1
        pos = f"[{self.done}/{self.total}]" if count else "[..]"
        print(f"{pos} {time.perf_counter() - self.t0:6.1f}s {msg}", file=sys.stderr, flush=True)


def _entry(case: Case, backend: str, measure: str, mode: str, k: int, summary: dict[str, Any]) -> dict[str, Any]:
    cell = summary.get("stages_ms", {}).get("cell", {})
    per_iter = cell.get("median", math.nan) / k if cell.get("count") else math.nan
    return {
        **asdict(case),
        "backend": backend,
        "measure": measure,
        "mode": mode,
        "iters": k,
        "fps": summary["throughput_fps"],
        "cell_ms_per_iter": per_iter,
        "summary": summary,
    }


def open_loop(
    backend: str, model: Any, case: Case, device: torch.device, cache: BundleCache, threads: int = 0
) -> DeviceLoop:
    if backend == "eager":
        return EagerLoop(model, case, device)
    return EngineLoop(cache.get(model, case, FORMAT[backend]), device, threads)


def measure_backend(
    s: Settings,
    backend: str,
    model: Any,
    case: Case,
    device: torch.device,
    cache: BundleCache,
    clip: Path | None,
    prog: Progress,
) -> list[dict[str, Any]]:
    """Device loop for stream k in s.iters and frame N, then end to end for s.e2e_iters and frame N."""
    loop = open_loop(backend, model, case, device, cache, s.threads)
    rows = []
    plan = [("stream", k) for k in s.iters] + [("frame", s.frame_n)]
    for mode, k in plan:
        summ = measure_device(loop, k, mode == "frame", s.warmup, s.frames)
        rows.append(_entry(case, backend, "device", mode, k, summ))
        prog.line(f"{backend:<8} {case.label} device {_mk(mode, k)}: {summ['throughput_fps']:.2f} fps{_cvnote(summ)}")
    if clip is not None:
        for mode, k in [("stream", k) for k in s.e2e_iters] + [("frame", s.frame_n)]:
            summ = measure_e2e(loop, clip, k, mode == "frame", max(1, s.warmup), s.e2e_frames)
            rows.append(_entry(case, backend, "e2e", mode, k, summ))
            prog.line(
                f"{backend:<8} {case.label} e2e    {_mk(mode, k)}: {summ['throughput_fps']:.2f} fps{_cvnote(summ)}"
            )
    if isinstance(loop, EngineLoop):
        for r in rows:
            r["cuda_graphs"] = loop.graphs_used()
    release(loop)
    return rows


def release(loop: DeviceLoop) -> None:
    """Free the loop's engines and buffers before the next case (GPU memory is the limit on large cases)."""
    import gc

    loop.close()
    del loop
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _mk(mode: str, k: int) -> str:
    return f"stream k={k}" if mode == "stream" else f"frame N={k}"


def _cvnote(summary: dict[str, Any]) -> str:
    cv = summary.get("cv") or 0.0
    return f" (CV {100 * cv:.1f}% > {100 * CV_WARN:g}%)" if cv > CV_WARN else ""


def count_steps(s: Settings, cases: list[Case], backends: list[str]) -> int:
    per = len(s.iters) + 1 + len(s.e2e_iters) + 1
    scale = len(s.scale_resolutions) + len(s.scale_batches)
    return len(cases) * len(backends) * per + scale


def run_benchmark(
    s: Settings, argv: list[str] | None, on_partial: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Every measurement; returns the results dict that the writers turn into md/json/png.

    ``on_partial`` gets the results so far (derived, marked ``partial``) after each backend and case, so a run cut
    off at a time limit (a long AOTInductor compile on a lent GPU machine) still leaves what it measured."""
    device = pick_device(s.device)
    if s.threads > 0:
        torch.set_num_threads(s.threads)
    stamp = make_stamp("benchmarks.fps", argv)
    stamp["threads"] = s.threads
    stamp["quick"] = s.quick
    stamp["device"] = str(device)
    if device.type == "cpu":
        stamp["note"] = "CPU run on a shared machine: absolute numbers are noisy, compare ratios within this run only"
    skipped: list[dict[str, str]] = []
    cases = [Case(c, h, w, p) for c in s.configs for (h, w) in s.resolutions for p in s.precisions]
    work: list[tuple[Case, str]] = []
    if s.quick and "aoti" not in s.backends:
        skipped.append({"backend": "aoti", "case": "all", "reason": QUICK_NO_AOTI})
    for case in cases:
        for b in s.backends:
            if not s.measures(b, case.precision):
                continue
            why = unavailable(b, case.precision, device)
            if why:
                skipped.append({"backend": b, "case": case.label, "reason": why})
            else:
                work.append((case, b))
    prog = Progress(len(work) * (len(s.iters) + len(s.e2e_iters) + 2) + len(s.scale_resolutions) + len(s.scale_batches))
    for sk in skipped:
        prog.line(f"skip {sk['backend']} {sk['case']}: {sk['reason']}", count=False)
    results: dict[str, Any] = {"stamp": stamp, "settings": _settings_dict(s), "skipped": skipped, "rows": []}
    models: dict[str, tuple[Any, str]] = {}
    with tempfile.TemporaryDirectory(prefix="deqstream-bench-") as tmp:
        cache = BundleCache(Path(tmp), device, stamp["command"])
        clips: dict[tuple[int, int], Path] = {}
        for case, backend in work:
            if case.config not in models:
                models[case.config] = load_model(case.config, s.checkpoint)
            model = models[case.config][0]
            hw = (case.height, case.width)
            if hw not in clips:
                clips[hw] = make_clip(Path(tmp), *hw)
            try:
                results["rows"] += measure_backend(s, backend, model, case, device, cache, clips[hw], prog)
            except Exception as e:  # noqa: BLE001 - one backend failing must not lose the others' numbers
                msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                skipped.append({"backend": backend, "case": case.label, "reason": f"failed: {type(e).__name__}: {msg}"})
                prog.line(f"{backend} {case.label} FAILED: {msg}", count=False)
            if on_partial is not None:
                snap = {**results, "rows": list(results["rows"]), "skipped": list(skipped), "partial": True}
                snap["weights"] = {name: src for name, (_, src) in models.items()}
                derive(snap, s, device)
                on_partial(snap)
        results["scaling"] = run_scaling(s, models, device, cache, skipped, prog)
        results["export_s"] = cache.export_s
    results["weights"] = {name: src for name, (_, src) in models.items()}
    derive(results, s, device)
    results["wall_s"] = round(time.perf_counter() - prog.t0, 1)
    return results


def _settings_dict(s: Settings) -> dict[str, Any]:
    d = asdict(s)
    d["out"] = str(s.out)
    return d


def run_scaling(
    s: Settings,
    models: dict[str, tuple[Any, str]],
    device: torch.device,
    cache: BundleCache,
    skipped: list[dict[str, str]],
    prog: Progress,
) -> dict[str, list[dict[str, Any]]]:
    """Time per frame vs resolution (B=1) and throughput vs batched streams B (at the first main resolution)."""
    out: dict[str, list[dict[str, Any]]] = {"resolution": [], "batch": []}
    if not s.scale_resolutions and not s.scale_batches:
        return out
    precision = ("fp16" if "fp16" in s.precisions else s.precisions[0]) if device.type == "cuda" else "fp32"
    backend = s.scale_backend or ("aoti" if device.type == "cuda" else "onnx")
    why = unavailable(backend, precision, device)
    if why:
        skipped.append({"backend": backend, "case": "scaling", "reason": why})
        return out
    config = s.configs[0]
    if config not in models:
        models[config] = load_model(config, s.checkpoint)
    model = models[config][0]
    h0, w0 = s.resolutions[0]
    todo = [("resolution", Case(config, h, w, precision)) for h, w in s.scale_resolutions]
    todo += [("batch", Case(config, h0, w0, precision, b)) for b in s.scale_batches]
    done: dict[Case, dict[str, Any]] = {}
    for kind, case in todo:
        if case in done:  # B=1 at the main resolution is also a resolution point: measure it once
            out[kind].append(done[case])
            prog.line(f"scaling {backend} {case.label}: same as above")
            continue
        try:
            loop = open_loop(backend, model, case, device, cache, s.threads)
            summ = measure_device(loop, s.scale_k, False, s.warmup, s.frames)
            release(loop)
        except Exception as e:  # noqa: BLE001 - keep the rest of the table
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            skipped.append({"backend": backend, "case": f"scaling {case.label}", "reason": f"failed: {msg}"})
            prog.line(f"scaling {case.label} FAILED: {msg}")
            continue
        row = _entry(case, backend, "device", "stream", s.scale_k, summ)
        row["ms_per_frame"] = summ["latency_ms"]["median"]
        row["pixels"] = case.height * case.width
        out[kind].append(row)
        done[case] = row
        prog.line(f"scaling {backend} {case.label} stream k={s.scale_k}: {summ['throughput_fps']:.2f} images/s")
    return out


# --------------------------------------------------------------------------- derived tables
def _find(rows: list[dict[str, Any]], **kw: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in kw.items())), None)


def _case_key(r: dict[str, Any]) -> tuple:
    return (r["config"], r["height"], r["width"], r["batch"], r["precision"])


def derive(results: dict[str, Any], s: Settings, device: torch.device) -> None:
    """Speed-ups over per-frame N, backend ratios vs eager, roofline rows, accuracy vs FPS."""
    rows = results["rows"]
    speedups, ratios = [], []
    for r in rows:
        if r["mode"] != "stream":
            continue
        key = dict(zip(("config", "height", "width", "batch", "precision"), _case_key(r)))
        base = _find(rows, **key, backend=r["backend"], measure=r["measure"], mode="frame")
        if base is not None and base["fps"] > 0:
            ideal = base["iters"] / r["iters"]
            sp = r["fps"] / base["fps"]
            speedups.append(
                {
                    **key,
                    "backend": r["backend"],
                    "measure": r["measure"],
                    "k": r["iters"],
                    "n": base["iters"],
                    "fps_stream": r["fps"],
                    "fps_frame": base["fps"],
                    "speedup": sp,
                    "ideal": ideal,
                    "fraction_of_ideal": sp / ideal,
                }
            )
    for r in rows:
        if r["backend"] == "eager":
            continue
        key = dict(zip(("config", "height", "width", "batch", "precision"), _case_key(r)))
        for ref_prec in dict.fromkeys((r["precision"], "fp32")):
            ref = _find(
                rows,
                **{**key, "precision": ref_prec},
                backend="eager",
                measure=r["measure"],
                mode=r["mode"],
                iters=r["iters"],
            )
            if ref is not None and ref["fps"] > 0:
                cell_ratio = ref["cell_ms_per_iter"] / r["cell_ms_per_iter"] if r["cell_ms_per_iter"] > 0 else math.nan
                ratios.append(
                    {
                        **key,
                        "backend": r["backend"],
                        "measure": r["measure"],
                        "mode": r["mode"],
                        "k": r["iters"],
                        "vs": f"eager {ref_prec}",
                        "fps": r["fps"],
                        "fps_eager": ref["fps"],
                        "ratio": r["fps"] / ref["fps"],
                        "cell_iter_ratio": cell_ratio,
                    }
                )
    results["speedups"] = speedups
    results["backend_ratios"] = ratios
    results["roofline"] = roofline_rows(rows, device, s.quick)
    results["warp_roofline"] = roofline.warp_rows()
    results["accuracy_vs_fps"] = accuracy_vs_fps(rows, s.out)
    results["acceptance"] = acceptance(results)


ACCEPT_ROOFLINE = 2.0  # compiled cell iteration within 2x of the roofline bound
ACCEPT_VS_EAGER = 3.0  # compiled cell iteration >= 3x faster than eager fp32
ACCEPT_STREAM = 0.75  # end-to-end stream k=1 speed-up >= 75 % of the ideal N/k


def acceptance(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The project's GPU acceptance checks, evaluated on whatever this run measured (they are defined for
    small-seg 1024x2048 fp16 on an H100; elsewhere they are informational)."""
    checks = []
    for r in results.get("roofline", []):
        if r["backend"] != "eager":
            checks.append(
                _check(
                    r, r["backend"], "cell iteration / roofline bound", r["measured_over_bound"], "<=", ACCEPT_ROOFLINE
                )
            )
    for r in results.get("backend_ratios", []):
        if r["measure"] == "device" and r["mode"] == "frame" and r["vs"] == "eager fp32":
            checks.append(
                _check(
                    r,
                    r["backend"],
                    "cell iteration speed-up vs eager fp32",
                    r["cell_iter_ratio"],
                    ">=",
                    ACCEPT_VS_EAGER,
                )
            )
    for r in results.get("speedups", []):
        if r["measure"] == "e2e" and r["k"] == 1:
            checks.append(
                _check(
                    r,
                    r["backend"],
                    f"e2e stream k=1 speed-up / ideal N/k={r['ideal']:g}",
                    r["fraction_of_ideal"],
                    ">=",
                    ACCEPT_STREAM,
                )
            )
    return checks


def _check(r: dict[str, Any], backend: str, what: str, value: float, op: str, limit: float) -> dict[str, Any]:
    ok = value <= limit if op == "<=" else value >= limit
    case = f"{r.get('config')} {r['height']}x{r['width']} {r.get('precision', r.get('dtype'))}"
    return {
        "case": case,
        "backend": backend,
        "check": what,
        "value": value,
        "limit": f"{op} {limit:g}",
        "pass": bool(ok) if math.isfinite(value) else None,
    }


@functools.cache
def _cell_cost(config: str, batch: int, height: int, width: int, precision: str) -> roofline.CellCost:
    """FLOPs and bytes of one cell iteration, counted once per case and process (partial results derive again)."""
    from export.config import get_config
    from export.mdeq import build_model

    return roofline.cell_cost(build_model(get_config(config)), batch, height, width, precision)


@functools.cache
def _peaks(device: torch.device, precision: str, quick: bool) -> roofline.Peaks:
    """The device's peaks, looked up or measured once per process, so every derived table uses the same ones."""
    return roofline.device_peaks(device, precision, quick)


def roofline_rows(rows: list[dict[str, Any]], device: torch.device, quick: bool) -> list[dict[str, Any]]:
    """One roofline row per measured (case, backend): cell ms per iteration from the frame-N device loop."""
    out = []
    for r in rows:
        if r["measure"] != "device" or r["mode"] != "frame" or not math.isfinite(r["cell_ms_per_iter"]):
            continue
        cost = _cell_cost(r["config"], r["batch"], r["height"], r["width"], r["precision"])
        row = roofline.analyse_cell(cost, _peaks(device, r["precision"], quick), r["cell_ms_per_iter"])
        out.append({"config": r["config"], "backend": r["backend"], **row})
    return out


def accuracy_vs_fps(rows: list[dict[str, Any]], out_dir: Path) -> list[dict[str, Any]]:
    """Join benchmarks/results/accuracy*.json (mIoU per 'per-frame k=K' / 'stream k=K' row) with our FPS at k.

    FPS at k iterations is the same for both modes (same work); the accuracy run's resolution may differ from ours,
    so each point carries both resolutions."""
    import json

    points = []
    full = Path(out_dir) / "accuracy.json"  # the full run wins over the quick one when both exist
    for path in [full] if full.exists() else sorted(Path(out_dir).glob("accuracy*.json")):
        try:
            data = json.loads(path.read_text())
            res = data["results"]
            acc_hw = (data["stamp"].get("height"), data["stamp"].get("width"))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for ckpt, entry in res.items():
            for name, summ in entry.get("rows", {}).items():
                if " k=" not in name or summ.get("miou") is None:
                    continue
                mode, k = name.split(" k=")
                for r in rows:
                    if r["config"] == "tiny" and r["mode"] == "stream" and r["iters"] == int(k) and r["batch"] == 1:
                        points.append(
                            {
                                "source": path.name,
                                "checkpoint": ckpt,
                                "mode": mode,
                                "k": int(k),
                                "miou": summ["miou"],
                                "backend": r["backend"],
                                "measure": r["measure"],
                                "precision": r["precision"],
                                "fps": r["fps"],
                                "fps_resolution": [r["height"], r["width"]],
                                "accuracy_resolution": list(acc_hw),
                            }
                        )
    return points


# --------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        s = settings_from_args(args)
        pick_device(s.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from benchmarks.plots import write_outputs

    try:
        results = run_benchmark(s, argv, on_partial=lambda r: write_outputs(r, s.out))
        paths = write_outputs(results, s.out)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"error: cannot write results: {e}", file=sys.stderr)
        return 2
    print(paths["md_text"])
    print("wrote " + ", ".join(str(p) for k, p in paths.items() if k != "md_text"))
    return 0 if results["rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
