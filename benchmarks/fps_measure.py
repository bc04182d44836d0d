"""What one frame costs, per backend: the device loop and the end-to-end loop that ``benchmarks.fps`` times.

Why a module of its own: the loops (PyTorch eager, and an exported bundle through the runtime's Pipeline), their
timers and the trtexec-style summaries are the measurement; the command line (benchmarks/fps.py), the derived tables
(benchmarks/fps_tables.py) and the acceptance checks (benchmarks/fps_criteria.py) only call them.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.stats import describe, summarize

BACKENDS = ("eager", "aoti", "onnx", "tensorrt")
FORMAT = {"aoti": "pt2", "onnx": "onnx", "tensorrt": "plan"}
SUFFIX = {"pt2": ".pt2", "onnx": ".onnx", "plan": ".plan"}
CHECKPOINTS = {"tiny": Path("checkpoints/tiny_sur.pt")}


@dataclass(frozen=True)
class Case:
    """One model configuration to measure: config, resolution, batch of streams, precision."""

    config: str
    height: int
    width: int
    precision: str = "fp32"
    batch: int = 1
    task: str = "seg"  # the bundle's task (runtime.tasks): its head, and for pose and det its device decoding

    @property
    def label(self) -> str:
        b = f" B{self.batch}" if self.batch != 1 else ""
        t = f" {self.task}" if self.task != "seg" else ""
        return f"{self.config}{t} {self.height}x{self.width}{b} {self.precision}"


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
        """Stage times (ms; a name marked twice sums its parts: a detector's head engines run before and after
        part of its decoding) and, on GPU, the device time from the first to the last mark."""
        out: dict[str, float] = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:]):
            out[name] = out.get(name, 0.0) + (a.elapsed_time(b) if self.cuda else (b - a) * 1e3)
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
    """An exported bundle through the runtime's Pipeline (persistent buffers, CUDA graphs where capturable). The
    head is the task's: its engines and, for pose and det bundles, the decoding on the device (``head_decode``)."""

    def __init__(self, engine: Path, device: torch.device, threads: int = 0, spec: Any = None) -> None:
        """``spec``: the ``runtime.solve.Solve`` every frame runs (default plain iteration, f of the last)."""
        from runtime.bundle import open_bundle
        from runtime.modes import FrameInfo, Plan
        from runtime.pipeline import Pipeline

        self.bundle = open_bundle(engine)
        self.device = device
        log = lambda m: print(f"note: {m}", file=sys.stderr)  # noqa: E731
        self.pipe = Pipeline(self.bundle, device, spec, graphs=True, threads=threads, max_iters=64, log=log)
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
            pipe.run_head(timer.mark)
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


def entry(
    case: Case, backend: str, measure: str, mode: str, k: int, summary: dict[str, Any], evals: int | None = None
) -> dict[str, Any]:
    """One result row: the case, what was measured, FPS and the cell stage per evaluation (for the roofline).
    ``evals``: cell evaluations per frame (default k: plain iteration; StreamDEQ's Broyden rule costs k + 1)."""
    evals = k if evals is None else evals
    cell = summary.get("stages_ms", {}).get("cell", {})
    per_iter = cell.get("median", math.nan) / evals if cell.get("count") else math.nan
    return {
        **asdict(case),
        "backend": backend,
        "measure": measure,
        "mode": mode,
        "iters": k,
        "evaluations": evals,
        "fps": summary["throughput_fps"],
        "cell_ms_per_iter": per_iter,
        "summary": summary,
    }


def open_loop(
    backend: str,
    model: Any,
    case: Case,
    device: torch.device,
    cache: BundleCache,
    threads: int = 0,
    engine: Path | None = None,
) -> DeviceLoop:
    """The device loop of ``backend`` for ``case`` (engines exported once per run through ``cache``, or the given
    bundle's ``engine``)."""
    if backend == "eager":
        return EagerLoop(model, case, device)
    return EngineLoop(engine or cache.get(model, case, FORMAT[backend]), device, threads)


def bundle_case(engine: Path) -> tuple[Case, str]:
    """An exported bundle as a case (its config's name, size, precision, batch and task) and its backend (from the
    engine's suffix); a file that is no bundle raises ValueError in one line."""
    from runtime.bundle import open_bundle
    from runtime.errors import DeqRuntimeError

    try:
        b = open_bundle(engine, check_hash=False)
    except DeqRuntimeError as e:
        raise ValueError(f"--engine {engine}: {e}") from None
    backend = {v: k for k, v in FORMAT.items()}[b.kind]
    name = str(b.manifest.get("config", {}).get("name") or Path(engine).parent.name)
    return Case(name, b.height, b.width, str(b.manifest.get("precision", "fp32")), b.batch, b.task), backend


def release(loop: DeviceLoop) -> None:
    """Free the loop's engines and buffers before the next case (GPU memory is the limit on large cases)."""
    import gc

    loop.close()
    del loop
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
