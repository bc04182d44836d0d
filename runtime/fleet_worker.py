"""The fleet's worker side: a durable per-stream sink, the on-disk ledger, and the worker actor's class.

A stream's ``frames.jsonl`` is the ledger: a record line is appended (and flushed) only after that
frame's class map (and overlay frame) were written, so a worker killed at any moment leaves a
prefix of complete records whose maps exist. A stream moved to another worker resumes at the first
frame without a record (``ledger_count``); nothing is lost and nothing is written twice. Maps are
kept one file per frame while the stream runs (``maps/`` PNGs, or a hidden ``.maps.journal/`` of
``.npy`` files that becomes ``maps.npz`` at the end), so a resumed stream can re-render the overlay of
the frames before the move from the decoded pixels and the saved maps.

Every task of ``runtime.tasks`` is written the way ``runtime.run`` writes it: a task without class maps (pose
keypoints, det boxes) keeps its per-frame output in the hidden journal only while the overlay may need it again,
and a task with a results file (det: ``detections.json``) writes it at the end from the ledger's records, so it
holds every frame exactly once however often the stream moved. This module never imports ray: the driver wraps
``Worker`` with ``ray.remote``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import threading
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from runtime.encode import publish, temp_sibling
from runtime.errors import DeqRuntimeError, OutputError, SourceError
from runtime.tasks import TASKS, Task
from runtime.writers import (
    OverlayWriter,
    QueuedWriter,
    atomic_write_bytes,
    atomic_write_json,
    palette_lut,
    top1_label,
)

JOURNAL = ".maps.journal"
RESTART = "worker-restart"


@dataclass
class StreamTask:
    """One stream as the driver hands it out: where it reads, where it writes, where it resumes."""

    index: int
    source: str
    out: str
    start: int = 0
    first_reset: str = ""
    attempt: int = 0


def ledger_count(folder: Path) -> int:
    """Complete records in ``folder/frames.jsonl`` (frames 0..n-1); a torn last line is cut off."""
    path = folder / "frames.jsonl"
    if not path.is_file():
        return 0
    data = path.read_bytes()
    good, n = 0, 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if rec.get("frame") != n:
            break
        good += len(line)
        n += 1
    if good != len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return n


def clean_stale(folder: Path) -> None:
    """Temp files a killed writer left behind (``.name.XXXX.tmp.ext``)."""
    for p in folder.glob(".*.tmp*"):
        if p.is_file():
            p.unlink(missing_ok=True)


def _ledger_records(path: Path) -> list[dict[str, Any]]:
    """The complete records of a ledger (``ledger_count`` has cut a torn last line before a stream resumes)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ledger_labels(path: Path) -> dict[int, str]:
    """Frame -> overlay caption (its top-1) of the records written before a move (a classification head)."""
    return {rec["frame"]: top1_label(rec) for rec in _ledger_records(path)}


class FleetSink(QueuedWriter):
    """One stream's writer (the loop's Sink interface), durable frame by frame (module docstring).

    ``live``: a live source resumed at ``start`` is read from the present (its frames restart at 0): records
    are numbered on from ``start`` and ``not_seen`` estimates the frames that went by meanwhile.
    ``die_after``: test hook, the process kills itself (SIGKILL) after that many records.
    ``task``: what the stream's output is (``runtime.tasks``): class maps are saved as ``--save-maps`` says, other
    outputs (keypoints, boxes) only in the journal for the overlay; the overlay is drawn by the task.
    """

    def __init__(
        self,
        out: Path,
        fps: float,
        palette: Any,
        save_maps: str,
        video: bool,
        start: int,
        live: bool = False,
        die_after: int = 0,
        task: Task = TASKS["seg"],
        names: Sequence[str] = (),
    ) -> None:
        self.out, self.start, self.die_after, self.task = out, start, die_after, task
        self.save_maps = save_maps if task.has_map else "none"  # keypoints and boxes are not maps
        self.offset, self.fps, self.not_seen = (start if live else 0), fps, 0
        ledger = out / "frames.jsonl"
        self.last_record_t = ledger.stat().st_mtime if live and start and ledger.is_file() else None
        out.mkdir(parents=True, exist_ok=True)
        clean_stale(out)
        self.maps_dir = out / ("maps" if self.save_maps == "png" else JOURNAL)
        # the outputs are kept per frame when they are wanted, or when a resumed overlay may need them again
        self.keep_maps = self.save_maps != "none" or (video and task.sink_output)
        if self.keep_maps:
            self.maps_dir.mkdir(exist_ok=True)
        lut = palette_lut(palette)
        self.video = OverlayWriter(out / "overlay.mp4", fps, lut, task=task, names=names) if video else None
        self.labels = _ledger_labels(ledger) if video and start and not task.sink_output else {}
        if start == 0:
            (out / "frames.jsonl").unlink(missing_ok=True)
        self.log = open(out / "frames.jsonl", "a")
        self.records = start
        self._start_thread(f"fleet-write-{out.name}")

    def _map_path(self, index: int) -> Path:
        return self.maps_dir / (f"{index:06d}.png" if self.save_maps == "png" else f"{index:06d}.npy")

    def _save_map(self, index: int, full: np.ndarray) -> None:
        buf = io.BytesIO()
        if self.save_maps == "png":
            from PIL import Image

            Image.fromarray(full).save(buf, format="PNG")
        else:
            np.save(buf, np.ascontiguousarray(full), allow_pickle=False)
        atomic_write_bytes(self._map_path(index), buf.getvalue())

    def _load_map(self, index: int) -> np.ndarray | None:
        path = self._map_path(index)
        if not path.is_file():
            return None
        if self.save_maps == "png":
            from PIL import Image

            with Image.open(path) as im:
                return np.asarray(im)
        return np.load(path, allow_pickle=False)

    def _rerender(self, rgb: np.ndarray, index: int) -> None:
        """The overlay frame of a record written before the move: from its saved output, or (a classification
        head, no output kept) captioned with the ledger record's top-1."""
        if self.video is None:
            return
        if not self.task.sink_output:
            self.video.write(rgb, None, self.labels.get(index, ""))
            return
        full = self._load_map(index)
        if full is not None:
            self.video.write(rgb, full)

    def skipped(self, frame: Any) -> None:
        """A frame before the resume point: its overlay frame again, from the saved map."""
        if self.video is not None:
            self.q.put((None, frame, None, None))

    def _write(self, record: dict[str, Any] | None, frame: Any, classes: np.ndarray | None, fitter: Any) -> None:
        rgb = frame.original if frame.original is not None else frame.rgb
        if record is None:  # re-render a frame written before the move
            self._rerender(rgb, frame.index)
            return
        t0 = time.perf_counter()
        if self.offset:
            record["frame"] += self.offset
        if self.last_record_t is not None:  # first record after a live stream's move
            self.not_seen = max(0, round((time.time() - self.last_record_t) * self.fps) - 1)
            self.last_record_t = None
        full = self.task.source(classes, fitter) if classes is not None else None  # at the source's resolution
        if self.video is not None:
            self.video.write(rgb, full, top1_label(record))
        if self.keep_maps and full is not None:
            self._save_map(record["frame"], full)
        ms = (time.perf_counter() - t0) * 1e3
        record.setdefault("latency_ms", {})["write"] = round(ms, 3)
        self.write_ms.append(ms)
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()  # the record exists once it is in the file: the ledger
        self.records += 1
        if self.die_after and self.records - self.start >= self.die_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def close(self) -> None:
        """Finish queued frames; overlay renamed into place, the journal turned into maps.npz."""
        self._join()
        self.log.close()
        if self.error is not None:
            if self.video is not None:
                self.video.abort()
            raise OutputError(f"writing {self.out} failed: {self.error}")
        if self.video is not None:
            self.video.close()
        self._finish_maps()
        if self.task.results_name:  # from the ledger: every frame once, across moves
            entries = [e for rec in _ledger_records(self.out / "frames.jsonl") for e in self.task.results(rec)]
            atomic_write_json(self.out / self.task.results_name, entries)

    def abort(self) -> None:
        """The run failed: the records written stay (they are complete); the rest is finished if possible."""
        try:
            self.close()
        except Exception:  # noqa: BLE001 - already failing; keep what is complete
            pass

    def _finish_maps(self) -> None:
        if self.save_maps == "png" or not self.maps_dir.is_dir():
            return
        if self.save_maps == "npz":
            path = self.out / "maps.npz"
            tmp = temp_sibling(path)
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
                for f in sorted(self.maps_dir.glob("*.npy")):
                    z.write(f, f"frame_{f.name}")
            publish(tmp, path)
        shutil.rmtree(self.maps_dir, ignore_errors=True)


class Worker:
    """The body of one Ray actor: one device (or a share), the bundle and Pipeline loaded once
    (``RunConfig.reuse``), runs groups of streams through ``runtime.loop.run``."""

    def __init__(self, cfg: Any, worker_id: int, die_after: int = 0) -> None:
        self.cfg, self.worker_id, self.die_after = cfg, worker_id, die_after
        self.reuse: dict[str, Any] = {}
        self.stopping = threading.Event()
        self.sinks: dict[int, FleetSink] = {}
        self.busy_s = 0.0
        self.born = time.time()
        if cfg.threads > 0:
            import torch

            torch.set_num_threads(cfg.threads)

    def ready(self) -> dict[str, Any]:
        """Load the bundle (once per worker) and say where this worker runs."""
        import torch

        from runtime.bundle import open_bundle

        if "bundle" not in self.reuse:
            self.reuse["bundle"] = open_bundle(self.cfg.engine, check_hash=self.cfg.check_hash)
            self._build_pipeline()

        gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return {"worker": self.worker_id, "host": socket.gethostname(), "pid": os.getpid(), "gpus": gpus,
                "cuda": torch.cuda.is_available()}  # fmt: skip

    def _build_pipeline(self) -> None:
        """One run over empty sources: creates (and caches) the Pipeline, as the first stream would."""
        from runtime.loop import run
        from runtime.sources import ArraySource

        empty = [ArraySource([], name="(warm-up)") for _ in range(self.reuse["bundle"].batch)]
        try:
            run(replace(self.cfg, sources=empty, out=None, progress=False, reuse=self.reuse, log=lambda m: None))
        except SourceError:
            pass  # "zero frames decoded": expected, the Pipeline is built and cached

    def stop(self) -> None:
        """Finish the current frame, close every output, return (the driver got SIGINT/SIGTERM)."""
        self.stopping.set()

    def progress(self) -> dict[int, int]:
        """Records written so far per stream of the current group (ledger counts)."""
        return {i: s.records for i, s in list(self.sinks.items())}

    def stats(self) -> dict[str, Any]:
        return {"worker": self.worker_id, "busy_s": self.busy_s, "alive_s": time.time() - self.born}

    def process(self, tasks: list[StreamTask]) -> list[dict[str, Any]]:
        """Run one group (at most the bundle's batch of streams) to its end; one result per stream."""
        t0 = time.perf_counter()
        try:
            return self._process(tasks)
        finally:
            self.busy_s += time.perf_counter() - t0
            self.sinks = {}

    def _process(self, tasks: list[StreamTask]) -> list[dict[str, Any]]:
        from runtime.loop import _open, run
        from runtime.sources import ArraySource

        results: dict[int, dict[str, Any]] = {}
        live: list[tuple[StreamTask, Any]] = []
        for t in tasks:
            Path(t.out).mkdir(parents=True, exist_ok=True)
            try:
                live.append((t, _open(t.source, self.cfg.mode, None, self.cfg.reencode_mv)))
            except DeqRuntimeError as e:
                results[t.index] = self._failed(t, str(e))
        if not live:
            return [results[t.index] for t in tasks]
        if "bundle" not in self.reuse:
            self.ready()
        batch = self.reuse["bundle"].batch
        pads = [ArraySource([], name="(empty slot)") for _ in range(batch - len(live))]
        sources = [src for _, src in live] + pads
        die = self.die_after

        def make_sink(i: int, fps: float) -> FleetSink | None:
            if i >= len(live):
                return None
            t = live[i][0]
            live_src = bool(getattr(live[i][1], "live", False))
            bundle = self.reuse["bundle"]
            sink = FleetSink(
                Path(t.out),
                fps,
                bundle.palette,
                self.cfg.save_maps,
                self.cfg.video,
                t.start,
                live_src,
                die,
                TASKS[bundle.task],
                bundle.classes,
            )
            self.sinks[t.index] = sink
            return sink

        cfg = replace(
            self.cfg,
            sources=sources,
            out=None,
            progress=False,
            make_sink=make_sink,
            start_frames=[0 if getattr(src, "live", False) else t.start for t, src in live] + [0] * len(pads),
            first_reset=[t.first_reset for t, _ in live] + [""] * len(pads),
            stop=self.stopping.is_set,
            reuse=self.reuse,
            log=lambda msg: None,
        )
        try:
            summary = run(cfg)
        except SourceError as e:  # every stream of the group decoded nothing new
            for t, _ in live:
                done = ledger_count(Path(t.out))
                results[t.index] = self._done(t, None, done) if t.start > 0 and done else self._failed(t, str(e))
            return [results[t.index] for t in tasks]
        for slot, (t, _) in enumerate(live):
            results[t.index] = self._done(t, summary, ledger_count(Path(t.out)), slot)
        return [results[t.index] for t in tasks]

    def _failed(self, t: StreamTask, reason: str) -> dict[str, Any]:
        res = {"index": t.index, "source": t.source, "status": "failed", "reason": reason, "frames": t.start}
        res.update({"new_frames": 0, "worker": self.worker_id, "out": t.out})
        atomic_write_json(Path(t.out) / "summary.json", {**res, "streams": []})
        return res

    def _done(self, t: StreamTask, summary: dict[str, Any] | None, frames: int, slot: int = 0) -> dict[str, Any]:
        """The stream's result for the driver, and its summary.json (the group's timings, its own counts)."""
        entry = dict(summary["streams"][slot]) if summary else {"decode_errors": 0, "resets": []}
        status, reason = "complete", None
        if summary and summary["interrupted"]:
            status, reason = "interrupted", "stopped by SIGINT/SIGTERM"
        elif entry.get("decode_errors"):
            status, reason = "partial", f"{entry['decode_errors']} decode error(s), last: {entry['last_decode_error']}"
        elif entry.get("shortfall"):  # a cut file, as runtime.run warns of it
            short = entry["shortfall"]
            status, reason = "partial", f"frames stop at {short['covered_s']} s of {short['duration_s']} s"
        new = frames - t.start
        res = {"index": t.index, "source": t.source, "status": status, "reason": reason, "frames": frames}
        res.update({"new_frames": new, "worker": self.worker_id, "out": t.out, "start": t.start})
        res["resets"] = entry.get("resets", [])
        sink = self.sinks.get(t.index)
        if sink is not None and sink.offset:
            res["frames_not_seen"] = sink.not_seen  # a live source resumed from the present
        res["wall_s"] = summary["wall_s"] if summary else 0.0
        res["fps"] = new / res["wall_s"] if res["wall_s"] > 0 else None
        if summary is not None:
            doc = {k: v for k, v in summary.items() if k != "streams"}
            entry.update(frames=frames, out=t.out)
            doc.update(
                streams=[entry], fleet={k: res[k] for k in ("status", "reason", "worker", "start", "new_frames")}
            )
            atomic_write_json(Path(t.out) / "summary.json", doc)
        return res
