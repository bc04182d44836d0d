"""Decoded YUV 4:2:0 frames on the host: their planes as views, BT.601's matrix, and the reset monitor's thumbnail.

Why a module of its own: both the decode side (``runtime.sources``: frames handed on as planes, thumbnails read
from them) and the device side (``runtime.prepare``: the colour conversion in torch) need these, and neither may
import the other's heavy half; numpy only. ``fitter`` is a ``runtime.sources.Fitter`` (its geometry is read).
"""

from __future__ import annotations

from typing import Any

import numpy as np

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]
YUV420 = ("yuv420p", "yuvj420p")


def planes(frame: Any) -> Planes | None:
    """A decoded PyAV frame's Y, U, V planes as (H, W), (ceil(H/2), ceil(W/2)) x 2 uint8 views (no copy, no colour
    conversion); None for other pixel formats (the caller converts to RGB on the host instead)."""
    if getattr(getattr(frame, "format", None), "name", "") not in YUV420:
        return None
    h, w = frame.height, frame.width
    out = []
    for p, (ph, pw) in zip(frame.planes, ((h, w), ((h + 1) // 2, (w + 1) // 2), ((h + 1) // 2, (w + 1) // 2))):
        out.append(np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:ph, :pw])
    return out[0], out[1], out[2]


# BT.601, limited range: R = 1.164 (Y - 16) + 1.596 (V - 128), G = ... (rows: R, G, B; columns: Y, U, V)
_KR, _KB = 0.299, 0.114
_Y, _C = 255 / 219, 255 / 224  # limited range: Y spans 16..235, chroma 16..240
BT601 = np.array(
    [
        [_Y, 0.0, _C * 2 * (1 - _KR)],
        [_Y, -_C * 2 * (1 - _KB) * _KB / (1 - _KR - _KB), -_C * 2 * (1 - _KR) * _KR / (1 - _KR - _KB)],
        [_Y, _C * 2 * (1 - _KB), 0.0],
    ],
    dtype=np.float32,
)


THUMB_STEP = 8  # the shot-change evidence reads every 8th engine pixel (runtime.modes.frame_change)


_OFFSET = np.array([16.0, 128.0, 128.0], np.float32)


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
        y, u, v = frame
        yuv = np.empty((rows.shape[0], cols.shape[1], 3), np.float32)
        yuv[..., 0], yuv[..., 1], yuv[..., 2] = y[rows, cols], u[crows, ccols], v[crows, ccols]
        yuv -= _OFFSET
        out = np.clip(np.rint(yuv @ BT601.T), 0, 255).astype(np.uint8)
    return out if inside is None else np.where(inside, out, 0).astype(np.uint8)
