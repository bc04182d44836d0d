"""Outputs: overlay MP4, per-frame class maps (PNG folder or one NPZ), per-frame JSON-lines log
and summary.json. Every file is written to a temporary name in the same folder and renamed
when complete, so a reader (or a crash) never sees half a file. A writer thread with a
bounded queue does the encoding so it overlaps the GPU work.
"""

from __future__ import annotations

import io
import json
import os
import queue
import tempfile
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import OutputError


def prepare_out_dir(out: Path) -> Path:
    """Create ``out`` and prove it is writable now, not after an hour of processing."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"output directory {out} is not writable ({e.strerror or e})") from None
    return out


def _tmp_for(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = _tmp_for(path)
    try:
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
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
    """Blend the colour-coded class map over the frame (both at the same resolution)."""
    color = lut[classes]
    a = int(round(alpha * 256))
    return ((rgb.astype(np.uint16) * (256 - a) + color.astype(np.uint16) * a) >> 8).astype(np.uint8)


class OverlayWriter:
    """H.264 MP4 of frame + colour-coded prediction (odd sizes cropped to even for yuv420p)."""

    def __init__(self, path: Path, fps: float, lut: np.ndarray) -> None:
        self.path, self.fps, self.lut = path, fps, lut
        self.tmp: Path | None = None
        self.container: Any = None
        self.stream: Any = None

    def _open(self, h: int, w: int) -> None:
        import av

        self.tmp = _tmp_for(self.path)
        self.container = av.open(str(self.tmp), mode="w", format="mp4")
        from fractions import Fraction

        self.stream = self.container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
        self.stream.width, self.stream.height = w - w % 2, h - h % 2
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"preset": "veryfast", "crf": "23"}

    def write(self, rgb: np.ndarray, classes: np.ndarray) -> None:
        import av

        if self.container is None:
            self._open(*rgb.shape[:2])
        img = overlay(rgb, classes, self.lut)
        img = np.ascontiguousarray(img[: self.stream.height, : self.stream.width])
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        if self.container is None:
            return
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self.container = None
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.container is not None:
            try:
                self.container.close()
            except Exception:  # noqa: BLE001 - already failing; only clean up
                pass
            self.container = None
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


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


class NpzMapWriter:
    """All class maps in one NPZ (arrays ``frame_000000`` ...), streamed into a temp zip."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = _tmp_for(path)
        self.zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1)

    def write(self, index: int, classes: np.ndarray) -> None:
        with self.zip.open(f"frame_{index:06d}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.ascontiguousarray(classes), allow_pickle=False)

    def close(self) -> None:
        self.zip.close()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.zip.close()
        self.tmp.unlink(missing_ok=True)


class JsonlWriter:
    """Per-frame records as JSON lines; renamed into place at close (complete records only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = _tmp_for(path)
        self.f = open(self.tmp, "w")
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        self.f.write(json.dumps(record, default=_json_default) + "\n")
        self.count += 1

    def close(self) -> None:
        self.f.close()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


class Sink:
    """Writer thread for one stream: maps back to the source size, writes overlay, maps and log.

    ``put`` blocks when the queue is full (back-pressure instead of unbounded memory).
    """

    def __init__(
        self,
        out: Path,
        fps: float,
        palette: Sequence[Sequence[int]],
        save_maps: str = "png",
        video: bool = True,
        maxsize: int = 8,
    ) -> None:
        self.out = out
        self.log = JsonlWriter(out / "frames.jsonl")
        self.video = OverlayWriter(out / "overlay.mp4", fps, palette_lut(palette)) if video else None
        self.maps: PngMapWriter | NpzMapWriter | None = None
        if save_maps == "png":
            self.maps = PngMapWriter(out / "maps")
        elif save_maps == "npz":
            self.maps = NpzMapWriter(out / "maps.npz")
        self.q: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self.write_ms: list[float] = []
        self.thread = threading.Thread(target=self._work, name=f"write-{out.name}", daemon=True)
        self.thread.start()

    def put(self, record: dict[str, Any], frame: Any, classes: np.ndarray, fitter: Any) -> None:
        if self.error is not None:
            raise OutputError(f"writing {self.out} failed: {self.error}")
        self.q.put((record, frame, classes, fitter))

    def _work(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain; the main thread reports the error
            record, frame, classes, fitter = item
            try:
                t0 = time.perf_counter()
                full = fitter.unfit(classes) if fitter is not None else classes
                if self.video is not None:
                    self.video.write(frame.original if frame.original is not None else frame.rgb, full)
                if self.maps is not None:
                    self.maps.write(record["frame"], full)
                ms = (time.perf_counter() - t0) * 1e3
                record.setdefault("latency_ms", {})["write"] = round(ms, 3)
                self.write_ms.append(ms)
                self.log.write(record)
            except BaseException as e:  # noqa: BLE001 - surfaced to the main thread
                self.error = e

    def close(self) -> None:
        """Finish queued frames and rename every file into place (or remove them on failure)."""
        self.q.put(None)
        self.thread.join()
        parts = [p for p in (self.log, self.video, self.maps) if p is not None]
        if self.error is not None:
            for p in parts:
                p.abort()
            raise OutputError(f"writing {self.out} failed: {self.error}")
        for p in parts:
            p.close()

    def abort(self) -> None:
        """Drop everything not yet renamed (used when the run itself failed)."""
        self.q.put(None)
        self.thread.join(timeout=10)
        for p in (self.log, self.video, self.maps):
            if p is not None:
                p.abort()
