"""The streaming loop: sources -> Pipeline (one batched call for N streams) -> writers.

One loop runs every mode: each stream's policy plans the frame, the pipeline executes the
plans, a reset monitor drops states after a shot change or divergence, and each decoded frame
gets exactly one record. Ctrl-C stops after the current frame and still writes everything
processed so far. ``run`` is what the CLI, the demo and the benchmarks call.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.bounds import bounding_stage
from runtime.bundle import Bundle, open_bundle
from runtime.cycles import CycleCollector, reads_side_data
from runtime.errors import DeqRuntimeError, EngineError, Interrupted, SourceError
from runtime.interp import Emission, InterpPolicy
from runtime.manifest import AUTO
from runtime.modes import FrameInfo, Outcome, Plan, Policy, ResetMonitor, frame_change, make_policy, reset_counts
from runtime.mv_source import VECTOR_MODES
from runtime.pipeline import PREPARE, STAGES, Pipeline
from runtime.propagation import pyramid_step
from runtime.solve import Solve
from runtime.sources import Frame, Prefetcher, Source, VideoSource
from runtime.stats import Samples, format_summary, summarize
from runtime.tasks import TASKS, Task
from runtime.writers import PreviousRun, Sink, atomic_write_json, prepare_out_dir


@dataclass
class RunConfig:
    """Everything one run needs (the CLI's arguments, usable from Python)."""

    engine: str | Path
    sources: list[Any]  # paths/URLs or Source objects, one per stream
    out: Path | None = Path("out")
    mode: str = "stream"
    iters: int = 2  # iterations per frame in the solve's unit (Solve.evaluations gives the cell runs)
    # How every frame is solved: solver, stop rule and tolerance, returned (= carried) iterate, check interval.
    # runtime.run fills it from the manifest (config.test_solve for --mode frame, config.stream_solve for the
    # warm-started modes) and the flags.
    solve: Solve = field(default_factory=Solve)
    # mv's default key frames (runtime.run sets it when neither --iters nor --tol is given): iterate until the
    # relative residual is below a tolerance, at most ``iters``; replaces ``solve`` in that mode, and a fallback to
    # stream mode drops it.
    key_solve: Solve | None = None
    budget_ms: float | None = None
    max_iters: int = 20
    reset_iters: int | None = None
    key_interval: int = 5  # propagation modes (mv, dff, mv-interp): a key frame every this many frames
    key_start: str = "previous"  # propagation key frames: warm start from the warped state, or "zero"
    reencode_mv: bool = False  # vector modes: re-encode on the fly an input whose vectors span several frames
    reset: bool = True
    fit: str = "resize"
    # where frames are fitted to the engine size: "host" (Fitter.fit on the decode thread), "device" (the decoded
    # frame goes up as it is, runtime.prepare), "auto" (device on CUDA: on a CPU torch's antialiased resize costs
    # more than the host fit's, benchmarks/results/host.md)
    prepare: str = "auto"
    save_maps: str = "npz"
    maps_size: str = "engine"  # NPZ maps as the engines made them (fit geometry recorded), or "source"
    overlay_size: str = "engine"  # the overlay drawn on the engine-size frame, or "source"
    video: bool = False  # the overlay MP4 (opt-in: with it the writers cost more than the codec, runtime.writers)
    device: str = "auto"
    graphs: bool = True
    max_frames: int | None = None
    threads: int = 0
    progress: bool = True
    check_hash: bool = True
    log: Any = None  # callable(str) for warnings; default stderr
    policy: Callable[[], Policy] | None = None  # one fresh policy per stream; overrides mode/iters
    # Embedding: called once per decoded frame, in frame order, with its record (as in frames.jsonl) and its
    # output at the source's resolution (runtime.tasks: a class map, the logits, (J, 3) keypoints [x, y, score], or
    # (n, 6) boxes [x1, y1, x2, y2, score, class]);
    # ``out=None`` with this writes nothing to disk.
    on_frame: Callable[[dict[str, Any], np.ndarray], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Hooks for a runner of many runs in one process (runtime.fleet); unset, run() behaves as before.
    # make_sink(i, fps): stream i's writer (Sink's put/close/abort/out/write_ms), or None; used instead of --out's.
    make_sink: Callable[[int, float], Any] | None = None
    # Per stream: resume at this frame index (earlier frames are decoded and dropped; their records exist).
    start_frames: list[int] | None = None
    # Per stream: the reset reason of its first processed frame (e.g. "worker-restart": the state starts from zero).
    first_reset: list[str] | None = None
    stop: Callable[[], bool] | None = None  # polled like Ctrl-C: true -> finish the current frame, write, return
    # A dict kept across runs in one process: the bundle and Pipeline are loaded once and reused (states zeroed).
    reuse: dict[str, Any] | None = None

    @property
    def spec(self) -> Solve:
        """The solve the pipeline runs: mv's key-frame solve where set, else ``solve``."""
        return self.key_solve or self.solve


def pick_device(requested: str, bundle: Bundle) -> torch.device:
    """``auto``: the GPU when torch sees one and the engine kind can use it, else the CPU."""
    if requested == "cpu":
        if bundle.kind == "plan":
            raise EngineError(
                f"{bundle.engines['deq_cell'].path.name}: a .plan engine needs an NVIDIA GPU, not --device cpu"
            )
        return torch.device("cpu")
    cuda = torch.cuda.is_available()
    if requested.startswith("cuda"):
        if not cuda:
            raise EngineError("--device cuda was asked for but no NVIDIA GPU is available")
        return torch.device(requested)
    if bundle.kind == "pt2":
        built = bundle.engines["deq_cell"].device or "cpu"
        return torch.device("cuda" if built.startswith("cuda") and cuda else "cpu")
    if bundle.kind == "onnx" and cuda:
        import onnxruntime as ort

        return torch.device("cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu")
    return torch.device("cuda" if cuda else "cpu")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _StopFlag:
    """First Ctrl-C or SIGTERM (a service manager, a container stop): finish the current frame and write
    everything; a second signal: abort hard."""

    def __init__(self, extra: Callable[[], bool] | None = None) -> None:
        self.stopped, self.extra = False, extra
        self._old: dict[int, Any] = {}

    @property
    def stop(self) -> bool:
        return self.stopped or (self.extra is not None and self.extra())

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def _handle(self, *_: object) -> None:
        if self.stopped:
            raise Interrupted
        self.stopped = True

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class StreamState:
    """Per-stream bookkeeping of the loop: its source, policy, monitor, writer, counters."""

    def __init__(
        self,
        idx: int,
        source: Source,
        policy: Policy,
        sink: Sink | None,
        prefetch: Prefetcher,
        task: Task = TASKS["seg"],
    ) -> None:
        self.idx, self.source, self.policy, self.sink, self.prefetch = idx, source, policy, sink, prefetch
        self.task = task  # what the downloaded head output means (record fields, map, overlay)
        self.monitor = ResetMonitor()
        self.done = False
        self.frames = 0
        self.prev: np.ndarray | None = None
        self.resets: list[dict[str, Any]] = []
        self.iters = Samples()  # bounded: a live camera runs for weeks
        self.evals = Samples()  # cell evaluations (Broyden: iterations + 1 per frame that runs the cell)
        self.residuals = Samples()
        self.solved_by: dict[str, int] = {}  # --solver auto: frames per solver that ran
        self.first_reset = ""  # reason logged on the first processed frame (a resumed stream)


class _Resume:
    """A stream resumed at frame ``start``: earlier frames are decoded (no seeking is exact) and dropped,
    each handed to ``skipped`` (a sink re-rendering its overlay from saved maps)."""

    def __init__(self, pre: Prefetcher, start: int, skipped: Callable[[Frame], None] | None) -> None:
        self.pre, self.start, self.skipped = pre, start, skipped

    def get(self, stop: Callable[[], bool] = lambda: False) -> Frame | None:
        while True:
            f = self.pre.get(stop)
            if f is None or f.index >= self.start:
                return f
            if self.skipped is not None:
                self.skipped(f)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pre, name)


def _cached(cfg: RunConfig, key: str, make: Callable[[], Any]) -> Any:
    """``make()``, or the object an earlier run with the same ``cfg.reuse`` dict made."""
    if cfg.reuse is None:
        return make()
    if key not in cfg.reuse:
        cfg.reuse[key] = make()
    return cfg.reuse[key]


def run(cfg: RunConfig) -> dict[str, Any]:
    """Process the sources; returns the summary (also written as ``summary.json``)."""
    log = cfg.log or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    bundle = _cached(cfg, "bundle", lambda: open_bundle(cfg.engine, check_hash=cfg.check_hash))
    n = len(cfg.sources)
    if n == 0:
        raise SourceError("no input given")
    if cfg.mode == "mv-interp" and n > 1:
        raise SourceError(
            f"--mode mv-interp takes one input stream (it holds frames back until the next key frame), got {n}"
        )
    if bundle.batch != n:
        raise EngineError(
            f"the engines take batch {bundle.batch} but {n} input stream(s) were given "
            f"(export with --batch {n}, or pass {bundle.batch} input(s))"
        )
    device = pick_device(cfg.device, bundle)
    sources: list[Source] = []
    opened: list[Source] = []  # ours to close if the run fails (a caller's Source objects stay the caller's)
    try:  # every input is opened (and checked) before the output folder is touched
        for spec in cfg.sources:
            if not isinstance(spec, Source):
                spec = _open(spec, cfg.mode, log, cfg.reencode_mv)
                opened.append(spec)
            sources.append(spec)
        cfg = _fallback(cfg, sources, bundle, log)  # a vector mode on a stream without vectors (HEVC, VP9, AV1)
        if cfg.out is None:
            return _run(cfg, bundle, device, sources, [None] * n, log)
        return _run_into(cfg, bundle, device, sources, Path(cfg.out), log)
    except BaseException:
        for src in opened:
            src.close()
        raise


def _run_into(cfg: RunConfig, bundle: Bundle, device: torch.device, sources: list[Source], out: Path, log: Any) -> dict:
    """:func:`_run` writing into ``out``: an earlier run's outputs there are set aside, and come back in place of what
    this run wrote if it fails (:class:`runtime.writers.PreviousRun`)."""
    root = prepare_out_dir(out)
    previous = PreviousRun(root)
    n = len(sources)
    try:
        outs: list[Path | None] = [root] if n == 1 else [prepare_out_dir(root / f"stream{i}") for i in range(n)]
        summary = _run(cfg, bundle, device, sources, outs, log)
    except BaseException:
        previous.restore()  # quietly: the error is the one line the user needs
        raise
    previous.drop()
    if previous.names:
        log(f"replaced an earlier run's outputs in {root}: {previous.describe()}")
    return summary


def _run(
    cfg: RunConfig, bundle: Bundle, device: torch.device, sources: list[Source], outs: list[Path | None], log: Any
) -> dict[str, Any]:
    """The run proper, on opened sources: engines, streams, the loop."""
    n = len(sources)
    task = TASKS[bundle.task]
    if cfg.policy is not None:  # a custom mode (e.g. a propagation mode) plugs in here
        policies = [cfg.policy() for _ in range(n)]
    elif cfg.mode == "mv-interp":  # key frames from zero with cfg.iters; delayed output (runtime.interp)
        policies = [InterpPolicy(cfg.key_interval, cfg.iters)]
    else:
        policies = [
            make_policy(
                cfg.mode, cfg.iters, cfg.reset_iters, cfg.budget_ms, cfg.max_iters, cfg.key_interval, cfg.key_start
            )
            for _ in range(n)
        ]
    max_iters = max(p.max_iters for p in policies)
    prep = _prepare_where(cfg, device, log)
    pipeline = _cached(
        cfg,
        f"pipeline/{max_iters}/{prep}/{cfg.fit}",
        lambda: Pipeline(
            bundle, device, cfg.spec, cfg.graphs, cfg.threads, max_iters=max_iters, log=log, prepare=prep, fit=cfg.fit
        ),
    )
    for i, p in enumerate(policies):  # policies that need engines (dff: the flownet) get the pipeline
        attach = getattr(getattr(p, "inner", p), "attach", None)
        if attach is not None:
            attach(pipeline, i)
    pipeline.warmup()
    hw = (bundle.height, bundle.width)
    streams = []
    for i, src in enumerate(sources):
        sink = None
        fps = float(getattr(getattr(src, "stream", None), "average_rate", None) or getattr(src, "fps", 30) or 30)
        if cfg.make_sink is not None:
            sink = cfg.make_sink(i, fps)
        elif outs[i] is not None:
            sink = Sink(
                outs[i],
                fps,
                bundle.palette,
                cfg.save_maps,
                cfg.video,
                overlay_size=cfg.overlay_size,
                task=task,
                names=bundle.classes,
                maps_size=cfg.maps_size,
            )
        warped = cfg.mode in VECTOR_MODES and cfg.policy is None  # they warp the state by each field's pyramid
        pre: Any = _prefetcher(
            cfg, src, sink, hw, prep == "device", [z.shape[-2:] for z in bundle.state] if warped else None
        )
        if cfg.start_frames and cfg.start_frames[i] > 0:
            pre = _Resume(pre, cfg.start_frames[i], getattr(sink, "skipped", None))
        streams.append(StreamState(i, src, policies[i], sink, pre, task))
        streams[-1].first_reset = cfg.first_reset[i] if cfg.first_reset else ""
    try:
        with CycleCollector(any(reads_side_data(s.source) for s in streams)) as cycles:
            summary = _loop(cfg, bundle, pipeline, streams, log, cycles)
        for s in streams:
            if s.source.rotation % 90:
                log(rotation_note(s.source.name, s.source.rotation))
            for note in sorted(getattr(s.source, "notes", ())):
                log(f"{s.source.name}: {note}")
    except BaseException:
        for s in streams:
            s.prefetch.close()
            if s.sink is not None:
                s.sink.abort()
        raise
    return summary


def _prepare_where(cfg: RunConfig, device: torch.device, log: Any) -> str:
    """``host`` or ``device`` for ``cfg.prepare`` on ``device``. mv-interp with an overlay at the engine size
    prepares on the host: its interpolated frames never go up, so the device never has their picture."""
    if cfg.prepare not in ("auto", *PREPARE):
        raise ValueError(f"prepare must be one of auto, {', '.join(PREPARE)}, got {cfg.prepare!r}")
    where = ("device" if device.type == "cuda" else "host") if cfg.prepare == "auto" else cfg.prepare
    if where == "device" and cfg.mode == "mv-interp" and cfg.video and cfg.overlay_size == "engine":
        if cfg.prepare == "device":
            log(
                "--mode mv-interp with an engine-size overlay prepares frames on the host (interpolated frames "
                "are never uploaded)"
            )
        return "host"
    return where


def _draws_on(sink: Any) -> str | None:
    """What a stream's writer draws its overlay on: ``source`` (the decoded RGB frame), ``engine`` (the frame the
    engines saw), or None (no overlay). Writers without ``overlay_size`` (the fleet's) draw at the source size."""
    if sink is None or getattr(sink, "video", None) is None:
        return None
    return getattr(sink, "overlay_size", "source")


LAZY_MODES = ("mv", "mv-interp")  # modes whose propagated frames never reach the engines' pixel input


def _prefetcher(
    cfg: RunConfig, src: Source, sink: Any, hw: tuple[int, int], on_device: bool, shapes: Any = None
) -> Prefetcher:
    """The stream's decode thread. Prepared on the device, a video comes as its YUV planes (no colour conversion on
    the host) unless the overlay is drawn on the source-size RGB frame. ``shapes``: the state's (h, w) per scale,
    for which the field thread makes each motion field's pyramid."""
    draws = _draws_on(sink)
    if on_device and draws != "source" and isinstance(src, VideoSource):
        src.yuv = True
    elif cfg.mode in LAZY_MODES and draws is None and isinstance(src, VideoSource):
        src.lazy = True  # most frames propagate by codec motion: RGB and fitting only for those uploaded
    keep = draws == "source"  # an engine-size overlay draws on Frame.rgb (fitted here, or prepared and copied down)
    step = pyramid_step(shapes) if shapes else None
    return Prefetcher(
        src, hw, cfg.fit, keep_original=keep, max_frames=cfg.max_frames, fit_on_device=on_device, field_step=step
    )


def _open(spec: Any, mode: str, log: Any = None, reencode: bool = False) -> Source:
    """Motion-vector modes read the codec's vectors with the frames (dff too: they hint at shot changes)."""
    from runtime.mv_source import open_for_mode

    return open_for_mode(spec, mode, log, reencode)


def _fallback(cfg: RunConfig, sources: list[Source], bundle: Bundle, log: Any) -> RunConfig:
    from runtime.mv_source import fallback_without_vectors

    return fallback_without_vectors(cfg, sources, bundle, log)


def _loop(
    cfg: RunConfig, bundle: Bundle, pipe: Pipeline, streams: list[StreamState], log: Any, cycles: CycleCollector
) -> dict[str, Any]:
    from tqdm import tqdm

    latency, gpu, stages = Samples(), Samples(), {k: Samples() for k in ("decode", *STAGES)}
    total = streams[0].source.total if len(streams) == 1 else None
    if cfg.max_frames is not None:
        total = min(total, cfg.max_frames) if total else cfg.max_frames
    bar = tqdm(total=total, disable=not cfg.progress, unit="frame", file=sys.stderr, dynamic_ncols=True)
    blank = np.zeros((bundle.height, bundle.width, 3), np.uint8)
    interp = streams[0].policy if isinstance(streams[0].policy, InterpPolicy) else None
    interrupted = False
    t_start = time.perf_counter()
    with _StopFlag(cfg.stop) as flag:
        while True:
            got = [None if s.done else s.prefetch.get(lambda: flag.stop) for s in streams]
            if flag.stop and any(f is None and not s.done for s, f in zip(streams, got)):
                interrupted = True  # stopped while waiting for a frame (e.g. a stalled live source)
                log("interrupted: finishing with the frames processed so far")
                break
            for s, f in zip(streams, got):
                if f is None:
                    s.done = True
                else:  # det clips boxes to the fitted frame's content
                    pipe.set_fitter(s.idx, s.prefetch.fitters.get(f.source_hw))
            if all(s.done for s in streams):
                break
            if interp is not None:
                _emit(cfg, streams[0], interp.push(got[0], _shot_change(cfg, streams[0], got[0])), stages, latency, gpu)
                streams[0].prev = got[0].thumb  # the frame before the next one (records go out later)
            else:
                latency_ms, gpu_ms = _one_frame(cfg, pipe, streams, got, blank, stages, log)
                latency.append(latency_ms)
                if gpu_ms is not None:
                    gpu.append(gpu_ms)
            bar.update(1)
            cycles.tick(sum(3 * f.source_hw[0] * f.source_hw[1] for f in got if f is not None))
            if flag.stop:
                interrupted = True
                log("interrupted: finishing with the frames processed so far")
                break
        if interp is not None:  # frames still held back: forward from the last key frame
            _emit(cfg, streams[0], interp.flush(), stages, latency, gpu)
    wall = time.perf_counter() - t_start
    bar.close()
    for s in streams:
        s.prefetch.close()
    decoded = sum(s.frames for s in streams)
    if decoded == 0:
        for s in streams:
            if s.sink is not None:
                s.sink.abort()
        detail = "; ".join(f"{s.source.last_error}" for s in streams if s.source.last_error)
        raise SourceError(
            f"{', '.join(s.source.name for s in streams)}: zero frames decoded" + (f" ({detail})" if detail else "")
        )
    for s in streams:
        if s.sink is not None:
            s.sink.close()
            stages.setdefault("write", Samples()).extend(s.sink.write_ms)
            if len(getattr(s.sink, "overlay_ms", ())):
                stages.setdefault("overlay", Samples()).extend(s.sink.overlay_ms)
    summary = summarize(latency, wall, gpu or None, frames=len(latency), extra=stages)
    summary["bound_by"] = bounding_stage(summary)
    summary.update(_run_facts(cfg, bundle, pipe, streams, interrupted))
    if cfg.out is not None:
        atomic_write_json(Path(cfg.out) / "summary.json", summary)
    return summary


def _one_frame(
    cfg: RunConfig,
    pipe: Pipeline,
    streams: list[StreamState],
    got: list[Frame | None],
    blank: np.ndarray,
    stages: dict[str, Samples],
    log: Any,
) -> tuple[float, float | None]:
    """Plan, run and record one batched frame (streams that ended get a blank, unrecorded)."""
    infos, plans, frames, pre_reset = [], [], [], []
    for s, f in zip(streams, got):
        info = FrameInfo(f.index, f.time, f.key_frame, f.side) if f is not None else FrameInfo(-1)
        reason = ""
        if f is not None and cfg.reset and cfg.mode != "frame":
            reason = s.monitor.before(info, frame_change(s.prev, f.thumb, step=1))
        if f is not None and s.first_reset:  # consumed by the stream's first processed frame
            reason, s.first_reset = s.first_reset, ""
        if reason:
            pipe.reset(s.idx)
        plan = s.policy.plan(info, pipe.has_state[s.idx]) if f is not None else Plan(iters=0, run_cell=False)
        if reason:
            plan.reason = reason
        if f is not None and (reason or plan.start == "zero"):
            s.monitor.clear()  # a fresh state's residuals start a new mean (else its next frame "jumps" at k = 1)
        infos.append(info)
        plans.append(plan)
        frames.append(f.rgb if f is not None else blank)
        pre_reset.append(reason)
    # prepared on the device, an engine-size overlay draws on the prepared frame: copied down with the output
    keep = [
        f is not None and pipe.preparers is not None and _draws_on(s.sink) == "engine" for s, f in zip(streams, got)
    ]
    t0 = time.perf_counter()
    res = pipe.run(frames, plans, infos, keep_frames=any(keep))
    if res.frames is not None:
        for b, f in enumerate(got):
            if keep[b]:
                f.rgb = res.frames[b]
    post = [""] * len(streams)
    if cfg.reset and cfg.mode != "frame":
        warm = [p.start == "previous" and pipe.has_state[i] and not pre_reset[i] for i, p in enumerate(plans)]
        for s, f, r, w, p in zip(streams, got, res.residuals, warm, plans):
            if f is not None and p.run_cell:  # propagated frames ran no cell: no residual to judge
                post[s.idx] = s.monitor.after(r, w and s.frames > 0)
        if any(post):
            res = _after_reset(pipe, streams, got, plans, infos, post, res)
    latency_ms = (time.perf_counter() - t0) * 1e3
    for name, ms in res.stage_ms.items():
        stages.setdefault(name, Samples()).append(ms)
    for s, f, plan in zip(streams, got, plans):
        if f is None:
            continue
        stages["decode"].append(f.decode_ms)
        _field_ms(stages, f)
        _record(cfg, s, f, plan, res, pre_reset[s.idx] or post[s.idx] or plan.reason, latency_ms)
    return latency_ms, res.gpu_ms


def _field_ms(stages: dict[str, Samples], f: Frame) -> None:
    """The motion field's time on its own thread (``field``: built and fitted; runtime.mv_source.FieldThread)."""
    m = f.side.get("motion") if f.side else None
    if m is not None and getattr(m, "build_ms", 0.0):
        stages.setdefault("field", Samples()).append(m.build_ms)


def _shot_change(cfg: RunConfig, s: StreamState, f: Frame) -> str:
    """The reset monitor's verdict before a frame runs (mv-interp: it makes the frame a key frame)."""
    if s.first_reset:
        reason, s.first_reset = s.first_reset, ""
        return reason
    if not cfg.reset:
        return ""
    return s.monitor.before(FrameInfo(f.index, f.time, f.key_frame, f.side), frame_change(s.prev, f.thumb, step=1))


def _emit(
    cfg: RunConfig,
    s: StreamState,
    emissions: list[Emission],
    stages: dict[str, Samples],
    latency: Samples,
    gpu: Samples,
) -> None:
    """Record the frames mv-interp lets go (in frame order); each counts once in the summary."""
    for e in emissions:
        for name, ms in e.result.stage_ms.items():
            stages.setdefault(name, Samples()).append(ms)
        stages["decode"].append(e.frame.decode_ms)
        _field_ms(stages, e.frame)
        latency.append(e.latency_ms)
        if e.result.gpu_ms is not None:
            gpu.append(e.result.gpu_ms)
        _record(cfg, s, e.frame, e.plan, e.result, e.reset, e.latency_ms, e.extra)


def _after_reset(
    pipe: Pipeline,
    streams: list[StreamState],
    got: list[Frame | None],
    plans: list[Plan],
    infos: list[FrameInfo],
    post: list[str],
    res: Any,
) -> Any:
    """Drop the states that the monitor rejected. With one stream the frame is solved again
    from zero (same x, no re-upload); in a batch the others' start states are gone, so the
    rejected streams restart from zero on their next frame instead."""
    for s in streams:
        if post[s.idx]:
            pipe.reset(s.idx)
            s.monitor.clear()
    if len(streams) == 1 and got[0] is not None:
        s = streams[0]
        plan = s.policy.plan(infos[0], False)
        plan.start, plan.reason = "zero", post[0]
        if plans[0].run_cell and plans[0].pixels:
            again = pipe.resolve([plan], infos)  # the frame's injection is still in place
        else:  # a propagated frame: its pixels were never uploaded (nor injected)
            again = pipe.run([got[0].rgb], [plan], infos)
        merged = dict(res.stage_ms)
        for k, v in again.stage_ms.items():
            merged[k] = merged.get(k, 0.0) + v
        again.stage_ms = merged
        again.gpu_ms = res.gpu_ms
        plans[0] = plan
        return again
    return res


def _record(
    cfg: RunConfig,
    s: StreamState,
    f: Frame,
    plan: Plan,
    res: Any,
    reset: str,
    latency_ms: float,
    extra: dict[str, Any] | None = None,
) -> None:
    """One frame's JSON record, class map and overlay (``extra``: mode-specific record fields)."""
    b = s.idx
    residual = float(res.residuals[b]) if res.nstep else None
    warm = plan.start == "previous" and not reset
    if residual is not None:
        s.monitor.accept(residual, warm)
    evals = res.nstep if plan.run_cell else 0
    iters = cfg.spec.iterations(evals)
    s.iters.append(iters)
    s.evals.append(evals)
    if residual is not None:
        s.residuals.append(residual)
    if reset:  # logged in the frame record and the summary (stderr stays for problems)
        s.resets.append({"frame": f.index, "reason": reset})
    stage = {k: round(v, 3) for k, v in res.stage_ms.items()}
    out, task = res.classes[b], s.task
    fitter = s.prefetch.fitters.get(f.source_hw)
    record = {
        "frame": f.index,
        "stream": b,
        "timestamp": f.time,
        "key_frame": f.key_frame,
        "mode": s.policy.name,
        "iterations": iters,
        "evaluations": evals,
        "residual": None if residual is None or residual != residual else round(residual, 6),
        "start": "zero" if (plan.start == "zero" or reset) else "previous",
        "reset": reset or None,
        "cuda_graph": res.graph,
        "latency_ms": {"decode": round(f.decode_ms, 3), **stage, "total": round(latency_ms, 3)},
        **task.fields(out, fitter),
        **_solved_by(cfg, s, res if plan.run_cell else None),
        **(extra or {}),
        **cfg.extra.get("record", {}),
    }
    s.policy.observe(
        FrameInfo(f.index, f.time, f.key_frame),
        Outcome(
            iters, residual if residual is not None else float("nan"), res.stage_ms.get("cell", 0.0), latency_ms, reset
        ),
    )
    s.frames += 1
    s.prev = f.thumb
    if cfg.on_frame is not None:
        cfg.on_frame(dict(record), np.array(task.source(out, fitter), copy=True))
    if s.sink is not None:  # cls: the record only (its top-1 is the overlay's caption)
        s.sink.put(record, f, out if task.sink_output else None, fitter)


def _solved_by(cfg: RunConfig, s: StreamState, res: Any) -> dict[str, str]:
    """--solver auto: which solver ran this frame's cell (counted per stream for the summary)."""
    info = getattr(res, "info", None)
    if cfg.spec.solver != AUTO or info is None or not info.nstep:
        return {}
    s.solved_by[info.solver] = s.solved_by.get(info.solver, 0) + 1
    return {"solver": info.solver}


def rotation_note(name: str, degrees: int) -> str:
    """The one-line warning for a video whose display matrix turns it by other than quarter turns (the source turns
    quarter turns upright itself): its outputs are as stored, not as shown."""
    return (
        f"{name}: a player shows this video turned {degrees} degrees counter-clockwise (display matrix); only "
        "quarter turns are applied, so its frames were processed and written as stored"
    )


def _run_facts(cfg: RunConfig, bundle: Bundle, pipe: Pipeline, streams: list[StreamState], interrupted: bool) -> dict:
    """What the summary says besides timings: config, device, per-stream counts and problems."""
    per_stream = []
    for s in streams:
        per_stream.append(
            {
                "source": s.source.name,
                "frames": s.frames,
                "decode_errors": s.source.errors,
                "display_rotation": s.source.rotation,
                "last_decode_error": s.source.last_error or None,
                "shortfall": s.source.shortfall,  # the file's frames stopped short of its duration (truncated?)
                "resets": s.resets,
                "reset_causes": reset_counts(s.resets),
                "mean_iterations": s.iters.mean() if s.iters else 0.0,
                "mean_evaluations": s.evals.mean() if s.evals else 0.0,
                "mean_residual": s.residuals.mean() if s.residuals else None,
                **({"solved_by": dict(s.solved_by)} if cfg.spec.solver == AUTO else {}),
                "out": str(s.sink.out) if s.sink is not None else None,
            }
        )
    return {
        "engine": str(cfg.engine),
        "kind": bundle.kind,
        "device": str(pipe.device),
        "mode": cfg.mode,
        "iters": cfg.iters,
        "key_interval": cfg.key_interval if cfg.mode in ("mv", "dff", "mv-interp") else None,
        "solver": cfg.spec.solver,
        "solve": cfg.spec.describe(),
        "budget_ms": cfg.budget_ms,
        "streams": per_stream,
        "cuda_graphs": bool(pipe.graphs),
        "interrupted": interrupted,
        "resolution": [bundle.height, bundle.width],
        **cfg.extra.get("summary", {}),
    }


__all__ = ["DeqRuntimeError", "RunConfig", "format_summary", "pick_device", "run"]
