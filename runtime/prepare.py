"""Frame preparation on the device: the decoded 8-bit frame goes up as it is, and resize / pad / crop and the colour
conversion run where the engines run (issue #30).

Why: on the host, fitting a frame to the engine size (Pillow's bilinear resize, done in C with Pillow's integers by
``runtime.sources.Fitter.fit``) costs about as much as decoding it, once per frame, on the thread that decodes. Done
by torch on the engines' device it is one small kernel chain per frame, the same code for every backend (ONNX
Runtime, AOTInductor and TensorRT all read the same uint8 frame buffer; normalisation is inside the injection
engine). The geometry is ``Fitter``'s (one ``scaled`` size, one window ``offset``), so class maps and motion fields
still go back through ``Fitter``.

Two inputs:

* RGB (H, W, 3) uint8, the host's decoded frame: the result is within 1 grey level of ``Fitter.fit`` (same
  antialiased bilinear filter as PIL, computed in float and rounded once);
* YUV 4:2:0 planes (:func:`planes`, no colour conversion on the host at all): converted on the device with the
  matrix and range FFmpeg would use for the frame's colour tags (BT.601 for untagged video, BT.709, full range for
  MJPEG and full-range tagged video; :func:`runtime.yuv.conversion`), chroma repeated 2 x 2 as FFmpeg's unscaled
  converter does. FFmpeg's fixed-point converter lands 1-2 grey levels lower than the exact matrix, so this
  path is within a few grey levels of the RGB path, not within one.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from runtime.sources import Fitter
from runtime.yuv import THUMB_STEP, YUV420, Planes, as_planes, planes, thumbnail

__all__ = ["THUMB_STEP", "YUV420", "DevicePreparer", "Planes", "Preparers", "planes", "thumbnail"]


class DevicePreparer:
    """Source-size 8-bit frames -> the engine's (H, W, 3) uint8 frame, on ``device``, with ``Fitter``'s geometry.

    ``prep(frame, out)``: ``frame`` an RGB array (H, W, 3) or :func:`planes`; ``out`` a uint8 (H, W, 3) tensor on
    ``device`` (one batch row of the pipeline's frame buffer) written in place. Host arrays are copied up first
    (pinned and asynchronous on CUDA, on the caller's current stream)."""

    def __init__(self, src_hw: tuple[int, int], dst_hw: tuple[int, int], fit: str, device: torch.device) -> None:
        self.fitter = Fitter(src_hw, dst_hw, fit)
        self.device = device
        self.conversions: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}  # by the planes' matrix and offsets

    def _up(self, a: np.ndarray) -> torch.Tensor:
        a = np.ascontiguousarray(a)
        if not a.flags.writeable:  # a picture read by Pillow: torch warns about (and would share) read-only memory
            a = a.copy()
        t = torch.from_numpy(a)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def rgb(self, frame: np.ndarray | Planes) -> torch.Tensor:
        """The source frame as float RGB (1, 3, H, W) on the device, 0..255 (not rounded)."""
        if isinstance(frame, np.ndarray):
            return self._up(frame).to(self.device).permute(2, 0, 1)[None].float()
        matrix, offset = self._conversion(as_planes(frame))
        y, u, v = (self._up(p).float() for p in frame)
        h, w = y.shape
        u = u.repeat_interleave(2, 0).repeat_interleave(2, 1)[:h, :w]
        v = v.repeat_interleave(2, 0).repeat_interleave(2, 1)[:h, :w]
        yuv = torch.stack([y, u, v]).sub_(offset)  # (3, H, W)
        return torch.einsum("ck,khw->chw", matrix, yuv).clamp_(0.0, 255.0)[None]

    def _conversion(self, frame: Planes) -> tuple[torch.Tensor, torch.Tensor]:
        """The planes' matrix and offsets (3, 1, 1) on the device, copied up once per kind of frame."""
        key = frame.matrix.tobytes() + frame.offset.tobytes()
        if key not in self.conversions:
            self.conversions[key] = (
                torch.from_numpy(frame.matrix.copy()).to(self.device),
                torch.from_numpy(frame.offset.copy()).to(self.device)[:, None, None],
            )
        return self.conversions[key]

    def __call__(self, frame: np.ndarray | Planes, out: torch.Tensor) -> torch.Tensor:
        f = self.fitter
        (ih, iw), (oy, ox), (dh, dw) = f.scaled, f.offset, f.dst_hw
        img = self.rgb(frame)
        if img.shape[-2:] != (ih, iw):
            img = F.interpolate(img, size=(ih, iw), mode="bilinear", align_corners=False, antialias=True)
        window = img[0, :, oy : oy + dh, ox : ox + dw].round_().clamp_(0.0, 255.0).to(torch.uint8)
        if window.shape[-2:] != (dh, dw):
            out.zero_()
        out[: window.shape[1], : window.shape[2]].copy_(window.permute(1, 2, 0))
        return out


class Preparers:
    """One :class:`DevicePreparer` per source size (a stream may change size, a batch mixes sources): what the
    pipeline's upload calls with each stream's source-size frame and its row of the frame buffer."""

    def __init__(self, dst_hw: tuple[int, int], fit: str, device: torch.device) -> None:
        self.dst_hw, self.fit, self.device = dst_hw, fit, device
        self.by_size: dict[tuple[int, int], DevicePreparer] = {}

    def __call__(self, frame: np.ndarray | Planes, out: torch.Tensor) -> torch.Tensor:
        hw = tuple(frame.shape[:2] if isinstance(frame, np.ndarray) else frame[0].shape)
        if hw not in self.by_size:
            self.by_size[hw] = DevicePreparer(hw, self.dst_hw, self.fit, self.device)  # type: ignore[arg-type]
        return self.by_size[hw](frame, out)
