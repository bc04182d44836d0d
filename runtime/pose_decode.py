"""Keypoints from heatmaps: decoded on the device, mapped to the input video's pixels on the host.

A pose bundle's ``head_pose`` engine gives ``heatmaps`` (B, J, h, w) at stride 4 of the engine input. Per joint the
decode takes the peak cell, moves it a quarter cell toward the higher of its two neighbours along each axis (the
HRNet / MMPose "default" post-processing: the sign of the neighbours' difference, since a sampled Gaussian's true
peak lies on the side of its higher neighbour), scales by the stride and keeps the peak value as the score.

One difference from HRNet's ``get_final_preds``: it refines only where ``1 < px < w - 1`` and ``1 < py < h - 1``
(both axes at once, and not next to the border either); here each axis is refined wherever both of its neighbours
exist (``0 < p < n - 1``), so a joint on the first row still gets its horizontal refinement.

Coordinates are pixel indices (pixel i spans [i - 0.5, i + 0.5]); heatmap cell u sits on engine pixel ``stride * u``,
the centre of its receptive field through the stem's stride-2 3x3 convolutions (padding 1), which is also where
MMPose's MSRA targets put a joint (cell ``round(x / stride)``). Training targets must use the same convention.

The device part is pure tensor code with fixed output shapes: no ``.item()``, no data-dependent branch, so it runs
inside a CUDA graph next to the head and only (B, J, 3) floats are downloaded.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from runtime.sources import Fitter

REFINE = 0.25  # cells: the quarter-pixel shift toward the higher neighbour


def heatmap_stride(engine_hw: tuple[int, int], heat_hw: tuple[int, int]) -> tuple[float, float]:
    """(stride_y, stride_x): engine pixels per heatmap cell (4 for the stride-4 branch)."""
    (eh, ew), (hh, hw) = engine_hw, heat_hw
    if hh <= 0 or hw <= 0 or eh % hh or ew % hw:
        raise ValueError(f"heatmaps {hh}x{hw} do not divide the engine input {eh}x{ew}")
    return eh / hh, ew / hw


def _refine(center: Tensor, before: Tensor, after: Tensor, pos: Tensor, n: int) -> Tensor:
    """The quarter-cell shift along one axis: sign(after - before), zero where a neighbour is missing."""
    inside = (pos > 0) & (pos < n - 1)
    return torch.sign(after - before) * inside.to(center.dtype) * REFINE


def decode_heatmaps(heat: Tensor, stride: tuple[float, float], out: Tensor | None = None) -> Tensor:
    """(B, J, h, w) heatmaps -> (B, J, 3) keypoints ``[x, y, score]`` in engine pixels, on the heatmaps' device.

    ``stride`` is (stride_y, stride_x) from :func:`heatmap_stride`. ``out`` (optional, float32 (B, J, 3)) receives
    the result, so a caller can keep one persistent download buffer. Ties pick the first peak in raster order
    (torch's ``max``); a joint's coordinates are given even when its score is low, the score says how sure it is.
    """
    b, j, h, w = heat.shape
    flat = heat.reshape(b, j, h * w).float()
    score, idx = flat.max(dim=2)
    py = torch.div(idx, w, rounding_mode="floor")
    px = idx - py * w

    def at(dy: int, dx: int) -> Tensor:
        """The heatmap value next to each peak (clamped at the border, where the refinement is off anyway)."""
        yy, xx = (py + dy).clamp(0, h - 1), (px + dx).clamp(0, w - 1)
        return flat.gather(2, (yy * w + xx).unsqueeze(2)).squeeze(2)

    dx = _refine(score, at(0, -1), at(0, 1), px, w)
    dy = _refine(score, at(-1, 0), at(1, 0), py, h)
    sy, sx = stride
    result = torch.stack([(px.float() + dx) * sx, (py.float() + dy) * sy, score], dim=2)
    if out is None:
        return result
    return out.copy_(result)


def keypoints_to_source(keypoints: np.ndarray, fitter: Fitter) -> np.ndarray:
    """Downloaded (..., J, 3) engine-pixel keypoints -> the same in the input video's pixels (scores unchanged).

    ``fitter`` is the stream's :class:`runtime.sources.Fitter`, so ``--fit`` resize, pad and crop are undone the
    way the frame was fitted. A joint predicted in the padding maps outside the picture; it is kept (its score
    tells) rather than clipped, so a consumer sees what the model said."""
    out = np.array(keypoints, dtype=np.float32, copy=True)
    out[..., :2] = fitter.unfit_points(out[..., :2])
    return out


__all__ = ["REFINE", "decode_heatmaps", "heatmap_stride", "keypoints_to_source"]
