"""Decoded YUV 4:2:0 frames on the host: their planes as views, the matrix that converts them, and the reset monitor's
thumbnail.

Why a module of its own: both the decode side (``runtime.sources``: frames handed on as planes, thumbnails read
from them) and the device side (``runtime.prepare``: the colour conversion in torch) need these, and neither may
import the other's heavy half; numpy only. ``fitter`` is a ``runtime.sources.Fitter`` (its geometry is read).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

YUV420 = ("yuv420p", "yuvj420p")
FULL_RANGE = 2  # AVColorRange: AVCOL_RANGE_JPEG, 0..255 luma and chroma
# Kr, Kb by the frame's colour-space tag (AVColorSpace), as FFmpeg's converter applies them when PyAV makes RGB:
# BT.709 (1); untagged (2), RGB (0) and the BT.601 tags (5, 6) as BT.601; FCC (4), SMPTE 240M (7), BT.2020
# non-constant-luminance (9). Other tags (YCgCo, constant-luminance BT.2020, ICtCp, ...): no planes, the host
# converts (PyAV 18 refuses most of them; runtime.sources.frame_rgb then reads them as the nearest tag it converts).
_KR_KB = {
    0: (0.299, 0.114),
    1: (0.2126, 0.0722),
    2: (0.299, 0.114),
    4: (0.30, 0.11),
    5: (0.299, 0.114),
    6: (0.299, 0.114),
    7: (0.212, 0.087),
    9: (0.2627, 0.0593),
}


@functools.cache
def conversion(colorspace: int, full: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """(matrix (3, 3) float32, offsets (3,) float32): RGB = matrix @ (YUV - offsets) for a frame with this colour-space
    tag and range (rows R, G, B; columns Y, U, V), or None for a tag FFmpeg converts some other way."""
    if colorspace not in _KR_KB:
        return None
    kr, kb = _KR_KB[colorspace]
    kg = 1.0 - kr - kb
    ys, cs = (1.0, 1.0) if full else (255 / 219, 255 / 224)  # limited range: Y spans 16..235, chroma 16..240
    matrix = np.array(
        [
            [ys, 0.0, cs * 2 * (1 - kr)],
            [ys, -cs * 2 * (1 - kb) * kb / kg, -cs * 2 * (1 - kr) * kr / kg],
            [ys, cs * 2 * (1 - kb), 0.0],
        ],
        np.float32,
    )
    offset = np.array([0.0 if full else 16.0, 128.0, 128.0], np.float32)
    matrix.flags.writeable = offset.flags.writeable = False  # shared by every frame with these tags
    return matrix, offset


class Planes(tuple):
    """A frame's Y, U, V planes (views) with the conversion FFmpeg would give them (:func:`conversion`: its colour
    space and range tags): BT.709 and full-range video (phones, cameras, MJPEG) convert otherwise than BT.601."""

    matrix: np.ndarray
    offset: np.ndarray

    def __new__(cls, y: np.ndarray, u: np.ndarray, v: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> Planes:
        out = super().__new__(cls, (y, u, v))
        out.matrix, out.offset = matrix, offset
        return out

    def __getnewargs__(self) -> tuple[Any, ...]:  # copy and pickle build it again with its conversion
        return (*self, self.matrix, self.offset)

    def map(self, fn: Any) -> Planes:
        """``fn`` applied to each plane (turning them upright), the conversion kept."""
        return Planes(*(fn(p) for p in self), self.matrix, self.offset)


def as_planes(frame: Any) -> Planes:
    """Planes handed in as a plain (Y, U, V) tuple (a caller's own source) convert as untagged video does."""
    return frame if isinstance(frame, Planes) else Planes(*frame, *conversion(2, False))  # type: ignore[misc]


def planes(frame: Any) -> Planes | None:
    """A decoded PyAV frame's Y, U, V planes as (H, W), (ceil(H/2), ceil(W/2)) x 2 uint8 views (no copy, no colour
    conversion); None for other pixel formats and colour spaces (the caller converts to RGB on the host instead)."""
    name = getattr(getattr(frame, "format", None), "name", "")
    if name not in YUV420:
        return None
    full = name == "yuvj420p" or getattr(frame, "color_range", 0) == FULL_RANGE
    how = conversion(int(getattr(frame, "colorspace", 2)), full)
    if how is None:
        return None
    h, w = frame.height, frame.width
    out = []
    for p, (ph, pw) in zip(frame.planes, ((h, w), ((h + 1) // 2, (w + 1) // 2), ((h + 1) // 2, (w + 1) // 2))):
        out.append(np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:ph, :pw])
    return Planes(*out, *how)


THUMB_STEP = 8  # the shot-change evidence reads every 8th engine pixel (runtime.modes.frame_change)


def _taps(fitter: Any, step: int) -> tuple[Any, ...]:
    """Rows and columns a thumbnail reads (luma, then chroma), and the inside mask (None: all inside), made once per
    step and kept on the fitter, as its field taps are (one geometry per fitter)."""
    cache = fitter.__dict__.setdefault("_thumb_taps", {})
    if step not in cache:
        (ih, iw), (oy, ox), (dh, dw) = fitter.scaled, fitter.offset, fitter.dst_hw
        (sh, sw) = fitter.src_hw
        ey, ex = np.arange(0, dh, step) + oy, np.arange(0, dw, step) + ox  # scaled-picture pixels
        inside = (ey < ih)[:, None] & (ex < iw)[None, :]
        rows = np.minimum(((ey + 0.5) * sh / ih).astype(np.intp), sh - 1)[:, None]
        cols = np.minimum(((ex + 0.5) * sw / iw).astype(np.intp), sw - 1)[None, :]
        cache[step] = (rows, cols, rows // 2, cols // 2, None if inside.all() else inside[..., None])
    return cache[step]


def thumbnail(frame: np.ndarray | Planes, fitter: Any, step: int = THUMB_STEP) -> np.ndarray:
    """The engine frame's every ``step``-th pixel, (ceil(H/step), ceil(W/step), 3) uint8, read on the host from the
    source-size frame (RGB or :func:`planes`) by nearest neighbour with ``fitter``'s geometry (padding black).

    Why: the reset monitor's shot-change evidence (``frame_change``) is a mean pixel difference on that subsample,
    read before the frame runs; with the frame prepared on the device the host has no engine-size picture, and
    fitting one only for this would cost what moving the preparation saved. About 2000 pixels: its gathers are
    made once per geometry (the decode thread reads one every frame: 82 -> 49 us, issue #30)."""
    rows, cols, crows, ccols, inside = _taps(fitter, step)
    if isinstance(frame, np.ndarray):
        out = frame[rows, cols]
    else:
        frame = as_planes(frame)
        y, u, v = frame
        yuv = np.empty((rows.shape[0], cols.shape[1], 3), np.float32)
        yuv[..., 0], yuv[..., 1], yuv[..., 2] = y[rows, cols], u[crows, ccols], v[crows, ccols]
        yuv -= frame.offset
        out = np.clip(np.rint(yuv @ frame.matrix.T), 0, 255).astype(np.uint8)
    return out if inside is None else np.where(inside, out, 0).astype(np.uint8)
