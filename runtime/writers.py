"""Outputs: per-frame class maps (one NPZ, by default at the engine size with the fit geometry recorded, or a PNG
folder), per-frame JSON-lines log, summary.json, and on request an overlay MP4. Every file is written to a temporary
name in the same folder and renamed when complete, so a reader (or a crash) never sees half a file. A writer thread
with a bounded queue does the writing (the overlay on a thread of its own) so it overlaps the decode and the GPU work.

Why these defaults (``python -m benchmarks.host``, ``benchmarks/results/host.md``): writing must cost at most the
codec's own decode per frame and take at most a tenth off the frame rate. Class maps at the engine size in one NPZ,
run-length coded in C (:class:`NpzMapWriter`), cost a small fraction of that at every source size (bringing them to
the source size is per-pixel work that grows with the source: :func:`read_maps` does it when they are read). Every
overlay measured (x264 or MPEG-4 Part 2, at the engine size or half of it) takes the writers above the codec's
decode of a standard-definition clip, so the overlay is opt-in.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from kernels.mvhost import rle8
from runtime.encode import VideoWriter, publish, temp_sibling
from runtime.errors import OutputError
from runtime.handoff import HandOff
from runtime.stats import Samples


def prepare_out_dir(out: Path) -> Path:
    """Create ``out`` and prove it is writable now, not after an hour of processing."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output directory {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"output directory {out} is not writable ({e.strerror or e})") from None
    return out


RUN_OUTPUTS = ("overlay.mp4", "maps", "maps.npz", "frames.jsonl", "summary.json", "detections.json")
ASIDE_PREFIX = ".previous-run-"


def _stream_dirs(out: Path) -> list[Path]:
    """The ``stream<i>/`` folders of a batched run in ``out``."""
    return [d for d in sorted(out.glob("stream*")) if d.is_dir() and d.name[len("stream") :].isdigit()]


def previous_outputs(out: Path) -> list[Path]:
    """What a run wrote in ``out`` (our file names only, and those in the ``stream<i>/`` folders of a batched run), as
    paths relative to ``out``."""
    found = [Path(n) for n in RUN_OUTPUTS if (out / n).exists() or (out / n).is_symlink()]
    for d in _stream_dirs(out):
        found += [d.name / p for p in previous_outputs(d)]
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class PreviousRun:
    """A run owns its output folder: what an earlier run wrote there is moved aside when this run starts (a rename
    each, into a hidden folder beside it), so a shorter run or one with other options never leaves files that could
    be taken for its own. When this run fails, :meth:`restore` removes what it wrote and puts the earlier run's
    outputs back: a typo in an input's name must not cost the user their last results. :meth:`drop` deletes them
    once this run has written its own. Outputs a killed run had set aside come back at the next run's start where
    nothing took their place."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.names: list[Path] = []  # set aside, relative to out
        self.asides: dict[Path, Path] | None = {}  # a folder holding outputs -> its hidden folder; None once closed
        self._recover()
        try:
            for rel in previous_outputs(out):
                os.replace(out / rel, self._aside(rel.parent) / rel.name)
                self.names.append(rel)
        except BaseException:
            self._put_back()  # half set aside: all back as it was
            raise

    def _aside(self, parent: Path) -> Path:
        assert self.asides is not None
        if parent not in self.asides:  # inside the folder itself: the same file system, even through a link
            self.asides[parent] = Path(tempfile.mkdtemp(prefix=ASIDE_PREFIX, dir=self.out / parent))
        return self.asides[parent]

    def _recover(self) -> None:
        """Outputs a killed run set aside: back in place where their names are free, else deleted."""
        for folder in [self.out, *_stream_dirs(self.out)]:
            for stale in folder.glob(ASIDE_PREFIX + "*"):
                for p in stale.iterdir():
                    if not (folder / p.name).exists() and p.name in RUN_OUTPUTS:
                        os.replace(p, folder / p.name)
                shutil.rmtree(stale, ignore_errors=True)

    def restore(self) -> None:
        """Remove what this run wrote (our names only) and put the earlier run's outputs back."""
        if self.asides is None:
            return
        for rel in previous_outputs(self.out):
            _remove(self.out / rel)
        self._put_back()

    def _put_back(self) -> None:
        assert self.asides is not None
        for rel in self.names:
            os.replace(self.asides[rel.parent] / rel.name, self.out / rel)
        self._close()

    def drop(self) -> None:
        """Delete the earlier run's outputs (this run has written its own)."""
        if self.asides is not None:
            self._close()

    def _close(self) -> None:
        """The hidden folders go, and so do ``stream<i>/`` folders left empty (a batched run followed by one stream)."""
        for aside in (self.asides or {}).values():
            shutil.rmtree(aside, ignore_errors=True)
        self.asides = None
        for d in _stream_dirs(self.out):
            if not any(d.iterdir()):
                d.rmdir()

    def describe(self) -> str:
        """The names set aside, for the one-line note."""
        names = [str(n) for n in self.names]
        return ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = temp_sibling(path)
    try:
        tmp.write_bytes(data)
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def palette_lut(palette: Sequence[Sequence[int]], n: int = 256) -> np.ndarray:
    """(256, 3) uint8 colour table; classes beyond the palette get a fixed pseudo-colour."""
    lut = np.zeros((n, 3), np.uint8)
    for i in range(n):
        lut[i] = palette[i] if i < len(palette) else ((i * 67) % 256, (i * 131) % 256, (i * 29) % 256)
    return lut


def overlay(rgb: np.ndarray, classes: np.ndarray, lut: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the colour-coded class map over the frame (both at the same resolution):
    ``(rgb * (256 - a) + colour * a) >> 8`` with ``a = round(256 * alpha)``.

    At the default alpha (a = 128) that is ``(rgb + colour) >> 1``, computed without leaving uint8
    (``(x >> 1) + (y >> 1) + (x & y & 1)``, the same numbers): a quarter of the 16-bit blend's cost,
    which was most of the overlay's (issue #30)."""
    color = np.take(lut, classes, axis=0)
    a = int(round(alpha * 256))
    if a != 128:
        return ((rgb.astype(np.uint16) * (256 - a) + color.astype(np.uint16) * a) >> 8).astype(np.uint8)
    out = np.right_shift(rgb, 1)
    out += np.right_shift(color, 1)
    color &= rgb
    color &= 1
    out += color
    return out


def caption(rgb: np.ndarray, text: str) -> np.ndarray:
    """The frame with ``text`` in its top-left corner, white on a black box (PIL's default font)."""
    if not text:
        return rgb
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(img)
    box = draw.textbbox((4, 4), text)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.text((4, 4), text, fill=(255, 255, 255))
    return np.asarray(img)


def draw_boxes(rgb: np.ndarray, boxes: np.ndarray, lut: np.ndarray, names: Sequence[str] = ()) -> np.ndarray:
    """Detections ``[x1, y1, x2, y2, score, class]`` (rows with class < 0 skipped) as rectangles in their class's
    palette colour, each labelled ``class score`` above its top-left corner (PIL's default font); the class is its
    name from ``names`` (the manifest's classes) when there is one, else its index."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(img)
    for x1, y1, x2, y2, score, cls in boxes[boxes[:, 5] >= 0]:
        color = tuple(int(v) for v in lut[int(cls) % len(lut)])
        draw.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=color, width=2)
        text = f"{names[int(cls)] if int(cls) < len(names) else int(cls)} {score:.2f}"
        box = draw.textbbox((x1, max(0.0, y1 - 12)), text)
        draw.rectangle(box, fill=color)
        draw.text((x1, max(0.0, y1 - 12)), text, fill=(0, 0, 0) if sum(color) > 380 else (255, 255, 255))
    return np.asarray(img)


def top1_label(record: dict[str, Any]) -> str:
    top = record.get("top1")
    return f"top-1: class {top['class']} ({top['score']:.2f})" if top else ""


class OverlayWriter:
    """H.264 MP4 of frame + colour-coded prediction (odd sizes cropped to even for yuv420p).

    ``preset`` / ``crf``: libx264's (a preview to look at, not a clip to measure on); x264 picks its own thread
    count. ``ultrafast``: ``python -m benchmarks.host`` measured it at half of ``veryfast``'s CPU time per frame
    (blend included) at 1280x720, for larger files (``benchmarks/results/host.md``)."""

    OPTIONS = {"preset": "ultrafast", "crf": "23"}

    def __init__(
        self,
        path: Path,
        fps: float,
        lut: np.ndarray,
        options: dict[str, str] | None = None,
        task: Any = None,
        names: Sequence[str] = (),
    ) -> None:
        self.lut, self.task = lut, task  # runtime.tasks' task draws its output; None: a class map, blended
        self.names = tuple(names)  # the manifest's class names (det labels its boxes with them)
        opts = dict(self.OPTIONS if options is None else options)
        self.video = VideoWriter(path, Fraction(fps).limit_denominator(1001), opts)

    def write(self, rgb: np.ndarray, classes: np.ndarray | None, label: str = "") -> None:
        """``classes``: the task's output in ``rgb``'s pixels (a class map, keypoints), drawn by the task; None (a
        classification head): the frame with ``label`` (its top-1) written on it."""
        if classes is None:
            self.video.write(caption(rgb, label))
        else:
            self.video.write(
                overlay(rgb, classes, self.lut)
                if self.task is None
                else self.task.draw(rgb, classes, self.lut, self.names)
            )

    def close(self) -> None:
        self.video.close()

    def abort(self) -> None:
        self.video.abort()


class Lane:
    """One output on its own thread behind a bounded queue: ``put(*args)`` hands ``write(*args)`` to the thread
    (blocking when ``maxsize`` items wait: back-pressure, not memory), ``close`` finishes what is queued. Why: the
    overlay's blend and encode cost more than the class maps and the log together, and on their own thread they run
    beside them (and beside the decode thread) instead of after them. The first error stops the writing and is
    raised by the next ``put`` and by ``close``; ``ms`` holds the time per item."""

    def __init__(self, name: str, write: Any, maxsize: int = 8) -> None:
        self.write, self.error = write, None
        self.ms = Samples()
        self.q: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self.thread = threading.Thread(target=self._work, name=name, daemon=True)
        self.thread.start()

    def put(self, *args: Any) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(args)

    def _work(self) -> None:
        while (item := self.q.get()) is not None:
            if self.error is not None:
                continue  # drain; the caller reports the error
            try:
                t0 = time.perf_counter()
                self.write(*item)
                self.ms.append((time.perf_counter() - t0) * 1e3)
            except BaseException as e:  # noqa: BLE001 - surfaced to the caller by put/close
                self.error = e

    def close(self, timeout: float | None = None) -> None:
        """Write what is queued and stop the thread; raises the lane's error, if any."""
        self.q.put(None)
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error


class PngMapWriter:
    """One lossless PNG per frame (class ids as 8-bit grey), each renamed into place."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, index: int, classes: np.ndarray) -> None:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(classes).save(buf, format="PNG")
        atomic_write_bytes(self.folder / f"{index:06d}.png", buf.getvalue())

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _RenamedAtClose:
    """A file written under a temporary name (``self.file`` open on ``self.tmp``) and renamed to
    ``self.path`` at close, so a reader never sees a partial file; abort removes it."""

    path: Path
    tmp: Path
    file: Any

    def close(self) -> None:
        self.file.close()
        publish(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class NpzMapWriter(_RenamedAtClose):
    """All class maps in one NPZ, run-length coded (:data:`ENCODING`), streamed into a temp zip in chunks of
    :data:`CHUNK` frames: ``runs_<first frame>`` the chunk's maps as (value, run length - 1) byte pairs one after the
    other (``kernels.mvhost.rle8``), ``index_<first frame>`` one row per map ``[frame, height, width, end]`` (``end``:
    where its pairs stop in ``runs``). :func:`read_maps` decodes them.

    Why coded and chunked (``python -m benchmarks.host``, ``benchmarks/results/host.md``): a map deflated into an
    entry of its own cost the writer thread 0.41 to 0.45 ms per frame at 512x256 on standard-definition clips, and
    with it the vector modes kept as little as 0.83 of their frame rate on two cores; run-length coding in C (ctypes
    releases the GIL) costs about a fifth of that, and one entry per 64 frames pays the zip's per-entry Python once
    per chunk. A model's class maps are regions: on the real engines' maps of bikes and carphone the coded file is
    smaller than the deflated one (7666 and 4329 bytes per frame against 8645 and 5334).

    Maps written with their ``fitter`` are engine-size maps: the geometry that brings them to the source size is
    recorded in the same file (``geometry``: rows ``[first frame, source height, source width]``, one per source size
    the stream had; ``fit``: the fit mode) for :func:`read_maps`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = temp_sibling(path)
        self.file = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED)
        self.count = 0
        self.geometry: list[tuple[int, int, int]] = []
        self.fit = ""
        self.runs: list[np.ndarray] = []  # the open chunk's coded maps
        self.rows: list[tuple[int, int, int, int]] = []

    def write(self, index: int, classes: np.ndarray, fitter: Any = None) -> None:
        if classes.ndim == 2 and _as_bytes(classes):
            runs = rle8(classes.astype(np.uint8, copy=False))
            self.runs.append(runs)
            self.rows.append((index, *classes.shape, (self.rows[-1][3] if self.rows else 0) + len(runs)))
            if len(self.rows) == CHUNK:
                self._flush()
        else:  # labels beyond a byte (or not a 2-D map): an array entry of its own, read back alike
            npy_entry(self.file, f"frame_{index:06d}", classes)
        if fitter is not None and (not self.geometry or tuple(self.geometry[-1][1:]) != tuple(fitter.src_hw)):
            self.geometry.append((index, *fitter.src_hw))
            self.fit = fitter.mode
        self.count += 1

    def _flush(self) -> None:
        """The open chunk as its two entries."""
        if self.rows:
            first = self.rows[0][0]
            npy_entry(self.file, f"{RUNS}{first:06d}", np.concatenate(self.runs))
            npy_entry(self.file, f"{INDEX}{first:06d}", np.array(self.rows, np.int64))
            self.runs, self.rows = [], []

    def close(self) -> None:
        """No maps (a classification bundle has no class map): no empty archive either."""
        if not self.count:
            self.abort()
            return
        self._flush()
        npy_entry(self.file, ENCODING_KEY, np.array([ENCODING]))
        if self.geometry:
            npy_entry(self.file, GEOMETRY, np.array(self.geometry, np.int64))
            npy_entry(self.file, FIT, np.array([self.fit]))
        super().close()


GEOMETRY, FIT = "geometry", "fit"
ENCODING_KEY, ENCODING, RUNS, INDEX = "encoding", "rle8", "runs_", "index_"
CHUNK = 64  # maps per pair of entries
MAPS_SIZES = ("engine", "source")


def npy_entry(file: zipfile.ZipFile, name: str, a: np.ndarray) -> None:
    """``a`` as the member ``<name>.npy`` of a zip being written, streamed in (``np.load`` reads it as ``name``)."""
    with file.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.ascontiguousarray(a), allow_pickle=False)


def _as_bytes(classes: np.ndarray) -> bool:
    """The map's labels are bytes (uint8, or another integer type holding only 0..255: coded as bytes, read back as
    uint8)."""
    if classes.dtype == np.uint8:
        return True
    return classes.dtype.kind in "iu" and (not classes.size or (classes.min() >= 0 and classes.max() <= 255))


def rle8_decode(runs: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(value, run length - 1) byte pairs (``kernels.mvhost.rle8``) back to the uint8 array of ``shape``."""
    return np.repeat(runs[0::2], runs[1::2].astype(np.int64) + 1).reshape(shape)


def _stored_maps(z: Any) -> dict[int, np.ndarray]:
    """The maps of an open NPZ as stored, by frame: run-length coded chunks (:class:`NpzMapWriter`) and
    ``frame_<index>`` arrays (maps of labels beyond a byte, the fleet's journal, files written before the coding)."""
    if ENCODING_KEY in z.files and str(z[ENCODING_KEY].reshape(-1)[0]) != ENCODING:
        raise ValueError(f"unknown class-map encoding {z[ENCODING_KEY].reshape(-1)[0]!r} (this reader: {ENCODING})")
    maps = {int(k[len("frame_") :]): z[k] for k in z.files if k.startswith("frame_")}
    for key in (k for k in z.files if k.startswith(INDEX)):
        runs, start = z[RUNS + key[len(INDEX) :]], 0
        for frame, h, w, end in z[key].tolist():
            maps[frame] = rle8_decode(runs[start:end], (h, w))
            start = end
    return dict(sorted(maps.items()))


def read_maps(path: Path, size: str = "source") -> dict[int, np.ndarray]:
    """The class maps of a run's ``maps.npz`` by frame index, in frame order; ``size="source"`` brings engine-size
    maps to the source size with the geometry the file records (nearest neighbour, as the runtime's own
    ``Fitter.unfit``: the same arrays ``--maps-size source`` writes), ``"engine"`` gives them as stored."""
    from runtime.sources import Fitter

    if size not in MAPS_SIZES:
        raise ValueError(f"size must be one of {', '.join(MAPS_SIZES)}, got {size!r}")
    with np.load(path, allow_pickle=False) as z:
        maps = _stored_maps(z)
        geometry = z[GEOMETRY] if GEOMETRY in z.files and size == "source" else None
        fit = str(z[FIT].reshape(-1)[0]) if geometry is not None else ""
    if geometry is None:
        return maps
    out, fitters = {}, {}
    for i, m in maps.items():
        row = geometry[np.searchsorted(geometry[:, 0], i, side="right") - 1]
        key = (int(row[1]), int(row[2]), m.shape)
        if key not in fitters:
            fitters[key] = Fitter(key[:2], m.shape, fit)
        out[i] = fitters[key].unfit(m)
    return out


class JsonlWriter(_RenamedAtClose):
    """Per-frame records as JSON lines; renamed into place at close (complete records only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = temp_sibling(path)
        self.file = open(self.tmp, "w")
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record, default=_json_default) + "\n")
        self.count += 1


class QueuedWriter:
    """The writer thread both sinks share (``Sink`` here, the fleet's durable ``FleetSink``): ``put`` hands one
    frame's outputs to the subclass's ``_write`` on a daemon thread through a bounded queue, so encoding overlaps
    the engines and a slow disk blocks the loop (back-pressure) instead of filling memory. The first error stops
    the writing (later items are drained unwritten) and is raised by the next ``put`` and by the sink's close."""

    out: Path

    def _start_thread(self, name: str, maxsize: int = 8, batch: int = 1) -> None:
        """Call last in ``__init__``: ``_write`` may run as soon as the thread does. ``batch``: frames handed over
        per wake-up of the thread (:class:`runtime.handoff.HandOff`)."""
        self.error: BaseException | None = None
        self.write_ms = Samples()  # bounded: a live camera runs for weeks
        self.q = HandOff(maxsize, batch)
        self.thread = threading.Thread(target=self._work, name=name, daemon=True)
        self.thread.start()

    def put(self, record: dict[str, Any], frame: Any, classes: np.ndarray | None, fitter: Any) -> None:
        if self.error is not None:
            raise OutputError(f"writing {self.out} failed: {self.error}")
        self.q.put((record, frame, classes, fitter))

    def _join(self, timeout: float | None = None) -> None:
        """Let the thread write what is queued, then stop it."""
        self.q.close(None)
        self.thread.join(timeout)

    def _work(self) -> None:
        while True:
            for item in self.q.take():
                if item is None:
                    return
                if self.error is not None:
                    continue  # drain; the main thread reports the error
                try:
                    self._write(*item)
                except BaseException as e:  # noqa: BLE001 - surfaced to the main thread by put/close
                    self.error = e

    def _write(self, record: dict[str, Any] | None, frame: Any, classes: np.ndarray | None, fitter: Any) -> None:
        raise NotImplementedError


OVERLAY_SIZES = ("source", "engine")
WRITE_BATCH = 16  # frames per wake-up of a sink's thread when it draws no overlay


class Sink(QueuedWriter):
    """Writer thread for one stream: writes maps and log, and hands the overlay to its own thread (:class:`Lane`).
    ``write_ms``: this thread's time per frame; ``overlay_ms``: the overlay's.

    ``maps_size``: ``engine`` writes NPZ class maps as the engines made them, with the fit geometry recorded
    (:func:`read_maps` brings them to the source size); ``source`` brings each map to the source size first (PNG
    maps are images at the source size either way). ``overlay_size``: ``source`` blends the prediction over the
    decoded frame at its own size; ``engine`` over the frame the engines saw (fitted to their size, so its cost does
    not grow with the source: at 1920x1080 a source-size overlay encodes 16 times the pixels of a 512x256 engine's)."""

    def __init__(
        self,
        out: Path,
        fps: float,
        palette: Sequence[Sequence[int]],
        save_maps: str = "png",
        video: bool = True,
        maxsize: int = 8,
        overlay_options: dict[str, str] | None = None,
        overlay_size: str = "source",
        task: Any = None,
        names: Sequence[str] = (),
        maps_size: str = "engine",
    ) -> None:
        if overlay_size not in OVERLAY_SIZES:
            raise ValueError(f"overlay size must be one of {', '.join(OVERLAY_SIZES)}, got {overlay_size!r}")
        if maps_size not in MAPS_SIZES:
            raise ValueError(f"maps size must be one of {', '.join(MAPS_SIZES)}, got {maps_size!r}")
        self.maps_size = maps_size
        # task: runtime.tasks' (what the output is at the source, whether it is a map, how it is drawn); None: class
        # maps, as a seg task (runtime.writers does not import runtime.tasks, which draws with its functions)
        self.out, self.overlay_size, self.task = out, overlay_size, task
        # det: the run's boxes, COCO-style, written atomically as the task's results file on close
        self.results: list[dict[str, Any]] | None = [] if getattr(task, "results_name", None) else None
        self.log = JsonlWriter(out / "frames.jsonl")
        lut = palette_lut(palette)
        self.video = OverlayWriter(out / "overlay.mp4", fps, lut, overlay_options, self.task, names) if video else None
        self.video_lane = Lane(f"overlay-{out.name}", self.video.write, maxsize) if self.video is not None else None
        self.maps: PngMapWriter | NpzMapWriter | None = None
        if save_maps == "png":
            self.maps = PngMapWriter(out / "maps")
        elif save_maps == "npz":
            self.maps = NpzMapWriter(out / "maps.npz")
        # no overlay: the maps and the log are cheap and their frames hold no decoded picture, so the thread takes
        # them a batch at a time (host.md: one wake-up per frame cost more than the writing)
        batch = 1 if self.video_lane is not None else WRITE_BATCH
        self._start_thread(f"write-{out.name}", max(maxsize, 3 * batch), batch)

    def put(self, record: dict[str, Any], frame: Any, classes: np.ndarray | None, fitter: Any) -> None:
        """Queue one frame's outputs; the decoded frame itself only where an overlay draws on it (a queued frame holds
        its decoder buffer and pixels: up to ``maxsize`` of them for nothing). A timing of mv n=5 with and without it
        could not tell them apart on this 2-core machine (the rounds' spread was larger)."""
        super().put(record, frame if self.video_lane is not None else None, classes, fitter)

    def _write(self, record: dict[str, Any], frame: Any, classes: np.ndarray | None, fitter: Any) -> None:
        t0 = time.perf_counter()
        maps = self.maps is not None and classes is not None and (self.task is None or self.task.has_map)  # not pose
        at_engine = maps and isinstance(self.maps, NpzMapWriter) and self.maps_size == "engine"
        full = None  # the output at the source size: computed only when something is written at that size
        if (maps and not at_engine) or (self.video_lane is not None and self.overlay_size == "source"):
            full = self._at_source(classes, fitter)
        if self.video_lane is not None and self.overlay_size == "engine":  # the picture the engines saw
            self.video_lane.put(frame.rgb, classes, top1_label(record))
        elif self.video_lane is not None:  # blended and encoded on the overlay's own thread
            rgb = frame.original if frame.original is not None else frame.rgb
            self.video_lane.put(rgb, full, top1_label(record))
        if at_engine:
            self.maps.write(record["frame"], classes, fitter)  # type: ignore[union-attr]
        elif maps:
            self.maps.write(record["frame"], full)  # type: ignore[union-attr]
        if self.results is not None:
            self.results.extend(self.task.results(record))
        ms = (time.perf_counter() - t0) * 1e3
        record.setdefault("latency_ms", {})["write"] = round(ms, 3)
        self.write_ms.append(ms)
        self.log.write(record)

    def _at_source(self, classes: np.ndarray | None, fitter: Any) -> np.ndarray | None:
        """The output at the source's size: the task's mapping, else a class map unfitted (nearest)."""
        if classes is None:
            return None
        if self.task is not None:
            return self.task.source(classes, fitter)
        return fitter.unfit(classes) if fitter is not None else classes

    @property
    def overlay_ms(self) -> Samples:
        return self.video_lane.ms if self.video_lane is not None else Samples()

    def close(self) -> None:
        """Finish queued frames and rename every file into place (or remove them on failure)."""
        self._join()
        if self.video_lane is not None:
            try:
                self.video_lane.close()
            except BaseException as e:  # noqa: BLE001 - reported below like the sink thread's own errors
                self.error = self.error or e
        parts = [p for p in (self.log, self.video, self.maps) if p is not None]
        if self.error is not None:
            for p in parts:
                p.abort()
            raise OutputError(f"writing {self.out} failed: {self.error}")
        for p in parts:
            p.close()
        if self.results is not None:
            atomic_write_json(self.out / self.task.results_name, self.results)

    def abort(self) -> None:
        """Drop everything not yet renamed (used when the run itself failed)."""
        self._join(timeout=10)
        if self.video_lane is not None:
            with contextlib.suppress(BaseException):
                self.video_lane.close(timeout=10)
        for p in (self.log, self.video, self.maps):
            if p is not None:
                p.abort()
