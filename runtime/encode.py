"""Frames in, an H.264 MP4 out: the one encoder the toolkit uses (PyAV's libx264).

Why one: the overlay video, the demo's sample clip, the motion-vector re-encode and the
synthetic benchmark clips all need the same steps (open the stream on the first frame, crop
odd sizes to even for yuv420p, flush the encoder, write to a temporary name and rename into
place so a reader or a crash never sees half a file). Only the settings differ, and those are
the caller's. Torch-free, so the runtime and the exporter (``export.synthetic``) can share it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np


@dataclass
class EncodeOptions:
    """libx264 settings; defaults suit a low-latency stream (no B-frames, one reference).

    With ``bframes=0, refs=1`` every motion vector points one frame back, which the
    motion-vector modes need (``runtime.motion_vectors``); ``scenecut=0`` keeps I-frames
    at the fixed ``gop`` interval."""

    fps: int = 30
    crf: int = 18
    bframes: int = 0
    refs: int = 1
    gop: int = 30
    preset: str = "medium"

    def av_options(self) -> dict[str, str]:
        """The codec options PyAV passes to libx264."""
        params = f"bframes={self.bframes}:ref={self.refs}:keyint={self.gop}:min-keyint={self.gop}:scenecut=0"
        return {"crf": str(self.crf), "preset": self.preset, "x264-params": params}


def temp_sibling(path: Path) -> Path:
    """A new hidden temporary file next to ``path`` (same filesystem, so a rename is atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def publish(tmp: Path, path: Path) -> None:
    """Rename a finished temporary file into place, readable like an ordinary file (mkstemp made it 0600)."""
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


class VideoWriter:
    """Encode RGB frames one at a time into ``path`` (an MP4), renamed into place by :meth:`close`.

    The stream opens on the first frame and takes its size, cropped to even (yuv420p needs it);
    later frames are cropped to that size. ``rate`` is frames per second (int or Fraction),
    ``options`` the codec's options (e.g. :meth:`EncodeOptions.av_options`). As a context manager
    it closes on success and removes the temporary file on an exception.
    """

    def __init__(
        self, path: str | os.PathLike[str], rate: int | Fraction, options: dict[str, str], codec: str = "libx264"
    ) -> None:
        self.path, self.rate, self.options, self.codec = Path(path), rate, dict(options), codec
        self.tmp: Path | None = None
        self.container: Any = None
        self.stream: Any = None
        self.frames = 0

    def _open(self, height: int, width: int) -> None:
        import av

        self.tmp = temp_sibling(self.path)
        self.container = av.open(str(self.tmp), "w", format="mp4")
        self.stream = self.container.add_stream(self.codec, rate=self.rate)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        if self.options:
            self.stream.options = self.options

    def write(self, rgb: np.ndarray) -> None:
        """Encode one (H, W, 3) uint8 RGB frame."""
        import av

        if self.container is None:
            self._open(*rgb.shape[:2])
        img = np.ascontiguousarray(rgb[: self.stream.height, : self.stream.width])
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> Path | None:
        """Flush the encoder and rename the file into place; None (and no file) when no frame came."""
        if self.container is None:
            return None
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self.container = None
        assert self.tmp is not None
        publish(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file (used when writing or the run itself failed)."""
        if self.container is not None:
            try:
                self.container.close()
            except Exception:  # noqa: BLE001 - already failing; only clean up
                pass
            self.container = None
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def encode_mp4(path: str | os.PathLike[str], frames: np.ndarray, opts: EncodeOptions) -> Path:
    """Write frames (T, H, W, 3) uint8 RGB to an H.264 MP4 atomically; returns ``path``."""
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even height and width, got {h}x{w}")
    with VideoWriter(path, opts.fps, opts.av_options()) as out:
        for f in frames:
            out.write(f)
    return Path(path)
