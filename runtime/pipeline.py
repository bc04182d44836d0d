"""The streaming loop's GPU side: upload -> injection -> policy-driven solve -> head -> download.

One ``Pipeline`` owns the engines and the persistent buffers of one stream group (a batch of
B streams sharing one batched engine call). Per frame it uploads the decoded bytes, runs the
injection, prepares each stream's start state as its policy asks (zero / previous / warped),
runs the solver between the two state sets, runs the head on the set holding the result and
downloads its output (the task's: a class map, logits, keypoints decoded from heatmaps on the
device, or boxes with the box engine and NMS in between, ``runtime.tasks``, ``runtime.det_stage``):
one host sync per frame. On CUDA the k plain iterations of a frame are captured once per (k, start
set) into a CUDA graph and replayed; if capture fails the pipeline falls back to plain launches and
says so once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from runtime.backends import Runner, load_runner
from runtime.buffers import StreamBuffers
from runtime.bundle import Bundle
from runtime.manifest import AUTO
from runtime.modes import Plan
from runtime.prepare import Preparers
from runtime.solve import Solve
from runtime.solvers import SOLVERS, SolverInfo, Workspace, anderson, fixed_point
from runtime.sources import pixels_of
from runtime.tasks import TASKS

STAGES = ("upload", "injection", "cell", "head", "download")
PREPARE = ("host", "device")  # where frames are fitted to the engine size (runtime.prepare)
# The task's device step after the head engine (pose: heatmap peaks; det: proposals, RoIAlign and NMS, its box
# engine counted in "head"): timed as a stage of its own, in records and summaries only for tasks that have one.
HEAD_DECODE = "head_decode"


@dataclass
class BatchResult:
    """Outputs of one batched frame: the task's outputs (host copies), residual and steps per stream."""

    classes: (
        np.ndarray
    )  # (B, ...) owned by the caller: class maps (B, H, W), logits (B, N), keypoints (B, J, 3), boxes (B, M, 6)
    residuals: list[float]
    nstep: int
    stage_ms: dict[str, float]
    gpu_ms: float | None = None
    graph: bool = False
    info: SolverInfo | None = None
    resets: list[str] = field(default_factory=list)
    frames: np.ndarray | None = None  # (B, H, W, 3) the prepared engine frames, when ``run`` was asked for them


class _Timer:
    """Stage times: CUDA events on the pipeline stream on GPU (read after the frame's one
    sync), perf_counter on CPU (where every call is synchronous)."""

    def __init__(self, stream: torch.cuda.Stream | None) -> None:
        self.stream = stream
        self.marks: list[tuple[str, Any]] = []
        if stream is not None:  # a det frame marks head and head_decode twice (its box engine sits in between)
            self.events = [torch.cuda.Event(enable_timing=True) for _ in range(len(STAGES) + 6)]

    def start(self) -> None:
        self.marks = []
        self.mark("start")

    def mark(self, name: str) -> None:
        if self.stream is None:
            self.marks.append((name, time.perf_counter()))
        else:
            ev = self.events[len(self.marks)]
            ev.record(self.stream)
            self.marks.append((name, ev))

    def stage_ms(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:]):
            ms = (b - a) * 1e3 if self.stream is None else a.elapsed_time(b)
            out[name] = out.get(name, 0.0) + ms
        return out


class Pipeline:
    """Engines + buffers + solver for one stream group; ``run`` processes one batched frame."""

    def __init__(
        self,
        bundle: Bundle,
        device: torch.device,
        spec: Solve | None = None,
        graphs: bool = True,
        threads: int = 0,
        max_iters: int = 64,
        log: Any = None,
        prepare: str = "host",
        fit: str = "resize",
    ) -> None:
        """``spec``: how every frame is solved (``runtime.solve``); ``max_iters``: the most iterations a frame
        plan asks for (the workspace's traces hold that many evaluations, grown before any capture).
        ``prepare``: ``host``, frames come fitted to the engine size (``Fitter.fit`` on the decode thread);
        ``device``, they come as decoded (source-size RGB or YUV 4:2:0 planes) and ``upload`` fits them into the
        frame buffer with ``fit``'s geometry on the engines' device (``runtime.prepare``), for every backend."""
        if prepare not in PREPARE:
            raise ValueError(f"prepare must be one of {', '.join(PREPARE)}, got {prepare!r}")
        self.bundle, self.device = bundle, device
        self.preparers = Preparers((bundle.height, bundle.width), fit, device) if prepare == "device" else None
        self.spec = spec = spec or Solve()
        # AUTO: plain iterations until a stream's residual grows within a frame, then Anderson for that stream
        self.auto = spec.solver == AUTO
        self.solver = SOLVERS["fixed_point" if self.auto else spec.solver]
        self.log = log or (lambda msg: None)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        kw: dict[str, Any] = {"threads": threads, "stream": self.stream}
        self.injection = load_runner(bundle.engines["injection"], device, **kw)
        self.cell = load_runner(bundle.engines["deq_cell"], device, **kw)
        self.head = load_runner(bundle.engines[bundle.head_name], device, **kw)
        self.buf = StreamBuffers(bundle, device)
        self.task = TASKS[bundle.task]
        self._result_buffers(kw)
        evals = max(spec.evaluations(max(max_iters, 1)), 1)
        self.ws = Workspace(self.buf.layout, device, max_iter=evals, step_scale=1.0 / bundle.relax)
        if spec.solver in ("anderson", AUTO):
            self.ws.anderson()
        elif spec.solver == "broyden":
            self.ws.broyden()
        if spec.returns in ("lowest", "lowest_new"):
            self.ws.keep_buffers()
        self._bind()
        self.use_graphs = graphs and device.type == "cuda" and self.cell.capturable
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, int, SolverInfo]] = {}
        self.graph_failed = False
        self.pool: Any = None
        self.warm: set[int] = set()
        self._capturing = False
        self.timer = _Timer(self.stream)
        self.has_state = [False] * self.batch
        self.calls = 0
        pinned = device.type == "cuda"
        self.res_host = torch.zeros(self.batch, dtype=self.ws.trace.dtype, pin_memory=pinned)  # final residuals
        self.tail_host = torch.zeros(2, self.batch, dtype=self.ws.trace.dtype, pin_memory=pinned)  # AUTO's last two
        self.accelerate = [False] * self.batch  # AUTO: streams whose plain iterations stopped converging
        if self.stream is not None:  # buffers were zero-filled on the default stream
            self.stream.wait_stream(torch.cuda.current_stream(device))

    def _result_buffers(self, kw: dict[str, Any]) -> None:
        """What the frame's download copies: the head's output, or the persistent buffer the task decodes into on
        the device (pose: (B, J, 3) keypoints; det: (B, M, 6) boxes, through its stage's box engine), with a
        pinned host copy on CUDA."""
        self.stage = self.task.stage(self.bundle, self.device, self.head, self.buf.out, **kw)
        shape = self.task.result_shape(self.bundle)
        if shape is None:
            self.result, self.result_host = self.buf.out, self.buf.out_host
            return
        self.result = torch.zeros(shape, dtype=torch.float32, device=self.device)
        cuda = self.device.type == "cuda"
        self.result_host = torch.zeros(shape, dtype=torch.float32).pin_memory() if cuda else self.result

    @property
    def batch(self) -> int:
        return self.buf.layout.batch

    def _bind(self) -> None:
        b = self.bundle
        inj, cell, head = b.engines["injection"], b.engines["deq_cell"], b.engines[b.head_name]
        self.injection.bind(inj.inputs[0].name, self.buf.frame)
        self.injection.bind(inj.outputs[0].name, self.buf.x)
        n = len(b.state)
        for slot in (0, 1):
            src, dst = self.buf.zviews[slot], self.buf.zviews[1 - slot]
            for spec, t in zip(cell.inputs[:n], src):
                self.cell.bind(spec.name, t, slot)
            self.cell.bind(cell.inputs[n].name, self.buf.x, slot)
            for spec, t in zip(cell.outputs, dst):
                self.cell.bind(spec.name, t, slot)
            for spec, t in zip(head.inputs, self.buf.zviews[slot]):
                self.head.bind(spec.name, t, slot)
            self.head.bind(head.outputs[0].name, self.buf.out, slot)

    def step(self, z_in: torch.Tensor, z_out: torch.Tensor) -> None:
        """f(z_in) -> z_out for the two bound state sets (the solvers' ``step``)."""
        slot = self.buf.set_index(z_in)
        assert z_out.data_ptr() == self.buf.z[1 - slot].data_ptr(), "step must map one state set to the other"
        self.cell.run(self.stream, slot)
        if not self._capturing:
            self.warm.add(slot)

    # -- per-frame work -------------------------------------------------------------------
    def upload(self, frames: list[Any]) -> None:
        """Each stream's frame into its row of the frame buffer: prepared on the device (``prepare="device"``, on
        the pipeline's stream), or copied as it is (already at the engine size) through the pinned host buffer."""
        if self.preparers is not None:
            for b, f in enumerate(frames):
                self.preparers(f, self.buf.frame[b])
            return
        host = self.buf.frame_host.numpy()  # a view of the (pinned) host buffer: numpy copies read-only frames too
        for b, f in enumerate(frames):
            np.copyto(host[b], pixels_of(f), casting="unsafe")
        if self.buf.frame_host is not self.buf.frame:
            self.buf.frame.copy_(self.buf.frame_host, non_blocking=True)

    def prepare_state(self, plans: list[Plan], infos: list[Any]) -> None:
        """Zero or warp each stream's start state in the current set, as its plan says."""
        for b, plan in enumerate(plans):
            views = self.buf.row_views(b)
            if plan.start == "zero" or not self.has_state[b]:
                self.ws.forget()  # a carried solver history (Solve.carry) belongs to the state being dropped
                for v in views:
                    v.zero_()
            if plan.warp is not None:
                plan.warp(views, infos[b])

    def solve(self, iters: int) -> tuple[SolverInfo, bool]:
        """Run ``iters`` iterations (the spec's unit: ``Solve.evaluations`` cell runs) from the current set; the
        result set becomes current."""
        cur = self.buf.current
        z0, work = self.buf.z[cur], self.buf.z[1 - cur]
        evals = self.spec.evaluations(iters)
        solver = anderson if self.auto and any(self.accelerate) else self.solver
        if solver is fixed_point and self._graphable(evals, cur):
            entry = self.graphs.get((evals, cur)) or self._capture(evals, cur)
            if entry is not None:
                g, result, info = entry
                g.replay()
                self.buf.current = result
                return info, True
        kw = self.spec.kwargs()
        if solver is not self.solver:  # AUTO's Anderson: f of the last iterate, like the plain steps it replaces
            kw["returns"] = "f_last"
        z, info = solver(self.step, z0, evals, work=work, ws=self.ws, **kw)
        self.buf.current = self.buf.set_index(z)
        return info, False

    def _graphable(self, iters: int, cur: int) -> bool:
        return (
            self.use_graphs
            and not self.graph_failed
            and self.spec.tol is None
            and ({cur} if iters == 1 else {0, 1}) <= self.warm  # slots ran once outside capture (trtexec)
        )

    def _capture(self, evals: int, cur: int) -> tuple[torch.cuda.CUDAGraph, int, SolverInfo] | None:
        """Record ``evals`` plain iterations (+ residuals, + the return rule) from set ``cur`` into one graph."""
        assert self.stream is not None
        self.ws.ensure_trace(evals)  # grown outside the capture: never allocated from the graph pool
        try:
            self.stream.synchronize()
            g = torch.cuda.CUDAGraph()
            self._capturing = True
            if self.pool is None:  # one pool for all (k, set) graphs: each frees its temporaries
                self.pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(g, pool=self.pool, stream=self.stream):
                kw = {**self.spec.kwargs(), "tol": None}
                z, info = fixed_point(self.step, self.buf.z[cur], evals, work=self.buf.z[1 - cur], ws=self.ws, **kw)
            self._capturing = False
            entry = (g, self.buf.set_index(z), info)
            self.graphs[(evals, cur)] = entry
            return entry
        except Exception as e:  # noqa: BLE001 - any capture failure means "run plain launches"
            self._capturing = False
            self.graph_failed = True
            self.log(f"CUDA graph capture failed ({type(e).__name__}: {e}); using plain launches")
            torch.cuda.synchronize(self.device)
            return None

    def run(self, frames: list[Any], plans: list[Plan], infos: list[Any], keep_frames: bool = False) -> BatchResult:
        """Process one batched frame (``frames[b]``: at the engine resolution, or as decoded with
        ``prepare="device"``). ``keep_frames``: the result also holds the prepared engine frames (an overlay drawn
        at the engine size needs them when the host never had them), copied down with the frame's output."""
        with self.stream_context():
            t = self.timer
            t.start()
            if keep_frames or any(p.pixels for p in plans):  # frames propagated by codec motion need no pixels
                self.upload(frames)
            t.mark("upload")
            if any(p.run_cell for p in plans):  # propagated frames (mv, dff) use no injection
                self.injection.run(self.stream)
            t.mark("injection")
            self.prepare_state(plans, infos)
            iters = max((p.iters for p in plans if p.run_cell), default=0)
            info, graph = self.solve(iters) if iters > 0 else (None, False)
            t.mark("cell")
            residuals = self._head_and_download(t, info, keep_frames)
        stage = t.stage_ms()
        engines = ("injection", "cell", "head", HEAD_DECODE)
        gpu = None if self.stream is None else sum(stage.get(k, 0.0) for k in engines)
        self.has_state = [True] * self.batch
        self.calls += 1
        kept = self.buf.frame_host.numpy().copy() if keep_frames else None
        return BatchResult(
            self.result_host.numpy().copy(), residuals, info.nstep if info else 0, stage, gpu, graph, info, frames=kept
        )

    def warmup(self) -> None:
        """Run every engine once on the (zero) buffers before the first timed frame, as trtexec
        does: first runs pay for lazy allocation and kernel selection (ORT's arenas, cuDNN's
        algorithm search), which would otherwise land in frame 0's latency. Streams start from
        zero afterwards (``has_state`` stays False). On CUDA it also orders everything the
        policies allocated on the default stream (``attach``) before the pipeline's stream."""
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with self.stream_context():
            self.injection.run(self.stream)
            for slot in (0, 1):
                self.cell.run(self.stream, slot)
                self.head.run(self.stream, slot)
            if self.stage is not None:
                self.stage.warmup(self.stream)
            if self.stream is not None:
                self.stream.synchronize()
        self.has_state = [False] * self.batch
        self.warm.update((0, 1))

    def stream_context(self) -> Any:
        """The pipeline's CUDA stream as the current stream (nothing on CPU): work on its
        buffers done outside ``run`` (mv-interp's copies and warps) must be ordered with it."""
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def head_only(self, states: Sequence[torch.Tensor]) -> BatchResult:
        """Class maps of states computed outside the solver (mv-interp's interpolated frames):
        ``states`` (per scale, (B, C, h, w)) are copied into the current set, the one the head
        is bound to, then head and download as in ``run``; no upload, injection or cell."""
        with self.stream_context():
            t = self.timer
            t.start()
            for dst, src in zip(self.buf.zviews[self.buf.current], states):
                dst.copy_(src)
            t.mark("interp")
            self._head_and_download(t)
        stage = t.stage_ms()
        gpu = None if self.stream is None else stage["interp"] + stage["head"] + stage.get(HEAD_DECODE, 0.0)
        nan = [float("nan")] * self.batch
        return BatchResult(self.result_host.numpy().copy(), nan, 0, stage, gpu)

    def _head_and_download(self, t: _Timer, info: SolverInfo | None = None, frames: bool = False) -> list[float]:
        """Head (and the task's decode) on the current state set; its result and final residuals (and with
        ``frames`` the frame buffer) to the host (pinned, asynchronous) before the frame's one sync. Returns the
        residual per stream (NaN: no cell)."""
        self.run_head(t.mark)
        if self.result_host is not self.result:
            self.result_host.copy_(self.result, non_blocking=True)
        if frames and self.buf.frame_host is not self.buf.frame:
            self.buf.frame_host.copy_(self.buf.frame, non_blocking=True)
        ran = info is not None and info.nstep > 0
        watch = ran and self.auto and info.solver == "fixed_point" and info.nstep >= 2
        if ran:
            final = info.final if info.final is not None else info.trace[info.nstep - 1]
            self.res_host.copy_(final, non_blocking=True)
        if watch:
            self.tail_host.copy_(info.trace[info.nstep - 2 : info.nstep], non_blocking=True)
        t.mark("download")
        if self.stream is not None:
            self.stream.synchronize()
        if watch:
            self._watch_growth()
        return self.res_host.tolist() if ran else [float("nan")] * self.batch

    def _watch_growth(self) -> None:
        """AUTO: a stream whose residual grew over its frame's last plain iteration solves with Anderson from
        its next frame on (until its state is reset): the cell is not a contraction there, and more plain
        iterations would move away from the fixed point that Anderson still finds."""
        prev, last = self.tail_host.tolist()
        for b in range(self.batch):
            if last[b] > prev[b]:
                self.accelerate[b] = True

    def run_head(self, mark: Callable[[str], None]) -> None:
        """The head engine on the current state set, then the task's device step into ``self.result``, with
        ``mark(name)`` after each part (``head``, ``head_decode``) so that a timer summing the marks by name gives
        the head's engines and the decoding apart (benchmarks.fps times the same call)."""
        self.head.run(self.stream, self.buf.current)
        mark("head")
        if self.stage is not None:  # det: proposals, RoIAlign, the box engine, NMS -> boxes, on the pipeline's stream
            self.stage.run(self.stream, self.result, mark)
            mark(HEAD_DECODE)
        elif self.result is not self.buf.out:  # pose: heatmaps -> keypoints, on the pipeline's stream
            self.task.decode(self.bundle, self.buf.out, self.result)
            mark(HEAD_DECODE)

    def set_fitter(self, b: int, fitter: Any) -> None:
        """Stream ``b``'s frames are fitted by ``fitter`` (det clips its boxes to the fitted frame's content)."""
        if self.stage is not None and fitter is not None:
            with self.stream_context():  # ordered before the frame's decode on the pipeline's stream
                self.stage.set_fitter(b, fitter)

    def reset(self, b: int) -> None:
        """Forget stream ``b``'s state (its next plan starts from zero; AUTO tries plain iterations again)."""
        self.has_state[b] = False
        self.accelerate[b] = False

    def resolve(self, plans: list[Plan], infos: list[Any]) -> BatchResult:
        """Re-run the last frame's solve (same x) after a reset: no upload or injection."""
        with self.stream_context():
            t = self.timer
            t.start()
            self.prepare_state(plans, infos)
            info, graph = self.solve(max(p.iters for p in plans))
            t.mark("cell")
            residuals = self._head_and_download(t, info)
        self.has_state = [True] * self.batch
        stage = t.stage_ms()
        return BatchResult(self.result_host.numpy().copy(), residuals, info.nstep, stage, None, graph, info)


__all__ = ["HEAD_DECODE", "PREPARE", "STAGES", "BatchResult", "Pipeline", "Runner"]
