"""The fleet's driver: starts or joins a Ray cluster, places streams on worker actors, survives their deaths.

Work is handed out one group at a time (a group = the streams one batched engine call serves) to
whichever worker is idle, largest first, so files balance by their pixel work (width x height x
frames) and live sources (which never end) are placed first. A worker that dies is replaced by a
fresh actor; its streams go back to the front of the queue and resume at their first frame without
a record (``fleet_worker.ledger_count``), from a zero state, the record saying ``worker-restart``.
This module imports ray; ``runtime.fleet`` imports it only after checking that ray is installed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from runtime.errors import DeqRuntimeError, EngineError
from runtime.fleet_worker import RESTART, StreamTask, Worker, ledger_count
from runtime.sources import IMAGE_SUFFIXES, LIVE_PREFIXES

READY_TIMEOUT_S = 180.0
POLL_S = 0.25


@dataclass
class Slot:
    """One worker position: its current actor, what it runs now, how often it was replaced."""

    id: int
    handle: Any
    incarnation: int = 0
    job: Any = None
    tasks: list[StreamTask] = field(default_factory=list)
    started: float = 0.0
    busy_s: float = 0.0
    alive: bool = True
    progress_ref: Any = None
    info: dict[str, Any] = field(default_factory=dict)


def probe(spec: str) -> tuple[tuple[int, int] | None, float, bool]:
    """(source size, pixel work, live) read from the header only; unknown sizes weigh one frame."""
    if spec.startswith(LIVE_PREFIXES) or spec.startswith(("webcam:", "/dev/video")):
        return None, float("inf"), True  # never opened here: a camera may take one client only
    p = Path(spec)
    try:
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            from PIL import Image

            with Image.open(files[0]) as im:
                w, h = im.size
            return (h, w), float(h * w * len(files)), False
        import av

        with av.open(str(p)) as c:
            s = c.streams.video[0]
            frames = s.frames or int((float(s.duration * s.time_base) if s.duration else 1.0) * float(s.average_rate))
            return (s.height, s.width), float(s.height * s.width * max(frames, 1)), False
    except Exception:  # noqa: BLE001 - a bad source is reported by the worker that opens it
        return None, 0.0, False


def plan_groups(tasks: list[StreamTask], batch: int) -> list[list[StreamTask]]:
    """Streams of one source size share a batch; groups ordered live first, then by pixel work."""
    info = {t.index: probe(t.source) for t in tasks}
    by_size: dict[Any, list[StreamTask]] = {}
    for t in sorted(tasks, key=lambda t: -info[t.index][1]):
        by_size.setdefault(info[t.index][0], []).append(t)
    groups = [ts[i : i + batch] for ts in by_size.values() for i in range(0, len(ts), batch)]
    return sorted(groups, key=lambda g: -sum(info[t.index][1] for t in g))


def frame_total(tasks: list[StreamTask], max_frames: int | None) -> int | None:
    """Frames the progress bar expects (None when a source does not say)."""
    total = 0
    for t in tasks:
        n = _frames_of(t.source)
        if n is None:
            return max_frames * len(tasks) if max_frames else None
        total += min(n, max_frames) if max_frames else n
    return total


def _frames_of(spec: str) -> int | None:
    try:
        p = Path(spec)
        if p.is_dir():
            return sum(1 for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        import av

        with av.open(spec) as c:
            return c.streams.video[0].frames or None
    except Exception:  # noqa: BLE001 - unknown: the bar shows a count only
        return None


class Fleet:
    """One fleet run; ``run()`` returns the per-stream results and the per-worker facts."""

    def __init__(
        self,
        cfg: Any,
        tasks: list[StreamTask],
        workers: int | None,
        gpus_per_worker: float | None,
        cpus_per_worker: float,
        address: str | None,
        max_restarts: int,
        batch: int = 1,
        progress: bool = True,
        kill_hook: tuple[int, int] | None = None,
    ) -> None:
        self.cfg, self.tasks, self.n_workers = cfg, tasks, workers
        self.gpus_per_worker, self.cpus_per_worker = gpus_per_worker, cpus_per_worker
        self.address, self.max_restarts, self.progress = address, max_restarts, progress
        self.kill_hook, self.batch = kill_hook, batch
        self.results: dict[int, dict[str, Any]] = {}
        self.slots: list[Slot] = []
        self.stopping = False
        self.warnings: list[str] = []
        self.counts: dict[int, int] = {}

    def warn(self, msg: str) -> None:
        """Problems the fleet survived: one line each on stderr, and in the summary."""
        self.warnings.append(msg)
        print(f"warning: {msg}", file=sys.stderr, flush=True)

    def start(self) -> None:
        """Join ``--address`` or start an embedded cluster sized for the workers."""
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        if self.address:
            _reachable(self.address)
            try:
                ray.init(address=self.address, **kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise DeqRuntimeError(f"cannot join the Ray cluster at {self.address}: {_first_line(e)}") from None
        else:
            # Ray starts workers at niceness 15 (its raylet stays responsive); the workers are the work here,
            # and on a shared machine niceness 15 starves them behind everything else
            os.environ.setdefault("RAY_worker_niceness", "0")
            cpus = max(os.cpu_count() or 1, int((self.n_workers or 1) * self.cpus_per_worker + 0.999))
            ray.init(num_cpus=cpus, **kw)
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if self.gpus_per_worker is None:
            self.gpus_per_worker = 1.0 if gpus >= 1 else 0.0
        if self.n_workers is None:
            self.n_workers = max(1, int(gpus / self.gpus_per_worker)) if self.gpus_per_worker else 1
        if self.gpus_per_worker and self.n_workers * self.gpus_per_worker > gpus + 1e-9:
            need = self.n_workers * self.gpus_per_worker
            raise EngineError(f"{self.n_workers} worker(s) need {need:g} GPU(s); the cluster has {gpus:g}")

    def _actor(self, slot_id: int, incarnation: int) -> Any:
        die = self.kill_hook[1] if self.kill_hook and self.kill_hook[0] == slot_id and incarnation == 0 else 0
        cls = ray.remote(Worker).options(
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker or 0, max_concurrency=4, max_restarts=0
        )
        return cls.remote(self.cfg, slot_id, die)

    def launch(self) -> None:
        """Start the workers; each loads the bundle and builds its Pipeline once before any stream."""
        self.slots = [Slot(i, self._actor(i, 0)) for i in range(self.n_workers or 1)]
        refs = [s.handle.ready.remote() for s in self.slots]
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=READY_TIMEOUT_S)
        if pending:
            raise EngineError(
                f"{len(pending)} of {len(refs)} worker(s) did not start within {READY_TIMEOUT_S:.0f} s "
                f"(each asks {self.cpus_per_worker:g} CPU, {self.gpus_per_worker or 0:g} GPU; "
                f"cluster: {ray.cluster_resources()})"
            )
        for s, ref in zip(self.slots, refs):
            try:
                s.info = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if isinstance(getattr(e, "cause", None), DeqRuntimeError) else None
                if cause is not None:
                    raise cause from None
                raise

    def run(self) -> float:
        """Hand out the groups until every stream has a result; returns the processing wall time."""
        from tqdm import tqdm

        queue: deque[list[StreamTask]] = deque(plan_groups(self.tasks, self.batch))
        live_groups = sum(1 for g in queue if any(probe(t.source)[2] for t in g))
        if live_groups > len(self.slots):
            self.warn(f"{live_groups} groups of live sources but {len(self.slots)} worker(s): some wait forever")
        total = frame_total(self.tasks, self.cfg.max_frames)
        bar = tqdm(total=total, disable=not self.progress, unit="frame", file=sys.stderr, dynamic_ncols=True)
        t0 = time.perf_counter()
        with _Signals(self._on_signal):
            while queue or any(s.job is not None for s in self.slots):
                self._dispatch(queue)
                jobs = {s.job: s for s in self.slots if s.job is not None}
                if not jobs:
                    if not any(s.alive for s in self.slots):
                        self._fail_rest(queue, "no live worker left")
                    break
                ready, _ = ray.wait(list(jobs), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    self._collect(jobs[ref], ref, queue)
                self._poll_progress(bar)
        wall = time.perf_counter() - t0
        for g in queue:  # stopped before these were handed out
            for t in g:
                self.results[t.index] = _not_started(t)
        bar.n = sum(self.counts.values())
        bar.close()
        return wall

    def _dispatch(self, queue: deque[list[StreamTask]]) -> None:
        for s in self.slots:
            if self.stopping or not queue:
                return
            if s.alive and s.job is None:
                s.tasks = queue.popleft()
                s.started = time.perf_counter()
                s.job = s.handle.process.remote(s.tasks)

    def _collect(self, s: Slot, ref: Any, queue: deque[list[StreamTask]]) -> None:
        tasks, s.job = s.tasks, None
        s.busy_s += time.perf_counter() - s.started
        try:
            for res in ray.get(ref):
                self.results[res["index"]] = res
                self.counts[res["index"]] = res["frames"]
        except ray.exceptions.RayActorError as e:
            self._replace(s, tasks, queue, e)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            reason = str(cause) if isinstance(cause, DeqRuntimeError) else f"internal error: {_first_line(e)}"
            for t in tasks:
                self.results[t.index] = _failed(t, reason, s.id)

    def _replace(self, s: Slot, tasks: list[StreamTask], queue: deque[list[StreamTask]], err: Exception) -> None:
        """A dead worker: its streams go back to the front, resuming where their ledgers end."""
        moved = []
        for t in tasks:
            start = ledger_count(Path(t.out))
            moved.append(StreamTask(t.index, t.source, t.out, start, RESTART, t.attempt + 1))
        where = f"pid {s.info.get('pid')} on {s.info.get('host')}" if s.info else "not started"
        s.alive = False
        if s.incarnation < self.max_restarts and not self.stopping:
            s.incarnation += 1
            s.handle, s.alive, s.info = self._actor(s.id, s.incarnation), True, {}
            fate = "a restarted worker"
        else:
            fate = "the live workers" if any(x.alive for x in self.slots) else "nowhere (no live worker left)"
        if self.stopping:
            for t in moved:
                self.results[t.index] = _not_started(t, "worker died while stopping")
        elif any(x.alive for x in self.slots):
            queue.appendleft(moved)
        else:
            for t in moved:
                self.results[t.index] = _failed(t, f"worker {s.id} died and no live worker is left", s.id)
        at = ", ".join(f"stream{t.index}@{t.start}" for t in moved)
        self.warn(f"worker {s.id} ({where}) died ({_first_line(err)}); its streams move to {fate}: resume at {at}")

    def _fail_rest(self, queue: deque[list[StreamTask]], reason: str) -> None:
        while queue:
            for t in queue.popleft():
                self.results[t.index] = _failed(t, reason, None)

    def _poll_progress(self, bar: Any) -> None:
        for s in self.slots:
            if s.job is None or not s.alive:
                continue
            if s.progress_ref is None:
                s.progress_ref = s.handle.progress.remote()
                continue
            ready, _ = ray.wait([s.progress_ref], timeout=0)
            if ready:
                try:
                    for i, n in ray.get(s.progress_ref).items():
                        self.counts[i] = max(self.counts.get(i, 0), n)
                except ray.exceptions.RayError:
                    pass  # the job's own result reports the death
                s.progress_ref = None
        bar.n = sum(self.counts.values())
        bar.refresh()

    def _on_signal(self) -> None:
        """First SIGINT/SIGTERM: no new streams; every worker finishes its frame and closes its outputs."""
        self.stopping = True
        for s in self.slots:
            if s.alive:
                s.handle.stop.remote()

    def shutdown(self) -> None:
        if ray.is_initialized():
            ray.shutdown()


def _reachable(address: str) -> None:
    """A head that does not answer fails now, in one line (ray.init retries for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" or a form ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as e:
        raise DeqRuntimeError(f"cannot join the Ray cluster at {address}: {e.strerror or e}") from None


class _Signals:
    """SIGINT and SIGTERM call ``first`` once; a second signal aborts (KeyboardInterrupt)."""

    def __init__(self, first: Any) -> None:
        self.first, self.seen, self.old = first, False, {}

    def _handle(self, *_: object) -> None:
        if self.seen:
            raise KeyboardInterrupt
        self.seen = True
        print("warning: stopping: workers finish their current frame and close their outputs", file=sys.stderr)
        self.first()

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old)


def _first_line(e: BaseException) -> str:
    text = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return (text[0] if text else type(e).__name__)[:200]


def _failed(t: StreamTask, reason: str, worker: int | None) -> dict[str, Any]:
    frames = ledger_count(Path(t.out))
    return {"index": t.index, "source": t.source, "status": "failed", "reason": reason, "frames": frames,
            "new_frames": 0, "worker": worker, "out": t.out}  # fmt: skip


def _not_started(t: StreamTask, reason: str = "stopped by SIGINT/SIGTERM before it started") -> dict[str, Any]:
    res = _failed(t, reason, None)
    res["status"] = "interrupted"
    return res
