"""PyTorch reference for the warp kernels, built on ``grid_sample`` (runs on any device, any float dtype).

Why it exists: it is the CPU path of :mod:`kernels.warp` and the oracle the CUDA kernels are tested against.
Semantics are DFF's (MXNet BilinearSampler): ``out(p) = in(p + d(p))`` with align-corners pixel coordinates and
every out-of-bounds bilinear tap counted as zero, i.e. ``grid_sample(mode="bilinear", padding_mode="zeros",
align_corners=True)`` with ``grid_x = 2 (x + d_x) / (W - 1) - 1``. ``d`` is (N, 2, H, W), channel 0 = x, 1 = y, in
feature pixels. Pass float64 tensors for a reference free of fp32 normalisation round-off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("weighted", "max", "avg")


def sampling_grid(disp: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Normalised (N, H, W, 2) grid for grid_sample(align_corners=True) sampling at p + disp(p)."""
    n, two, h, w = disp.shape
    if two != 2:
        raise ValueError(f"displacement must have 2 channels (x, y), got shape {tuple(disp.shape)}")
    if h < 2 or w < 2:
        raise ValueError(f"feature maps must be at least 2x2 for align-corners warping, got {h}x{w}")
    dtype = dtype or disp.dtype
    d = disp.to(dtype)
    ys = torch.arange(h, dtype=dtype, device=disp.device).view(1, h, 1)
    xs = torch.arange(w, dtype=dtype, device=disp.device).view(1, 1, w)
    gx = 2.0 * (xs + d[:, 0]) / (w - 1) - 1.0
    gy = 2.0 * (ys + d[:, 1]) / (h - 1) - 1.0
    return torch.stack((gx, gy), dim=-1)


def warp(feat: torch.Tensor, disp: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Backward bilinear warp ``feat`` (N, C, H, W) by ``disp`` (N, 2, H, W); optionally times ``scale``."""
    if feat.dim() != 4 or disp.dim() != 4 or disp.shape[0] != feat.shape[0] or disp.shape[2:] != feat.shape[2:]:
        raise ValueError(f"shape mismatch: feat {tuple(feat.shape)}, disp {tuple(disp.shape)} (need N,2,H,W)")
    low = feat.dtype in (torch.float16, torch.bfloat16)  # compute like the kernels: fp32 math, one final rounding
    src = feat.float() if low else feat
    grid = sampling_grid(disp, src.dtype)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    if scale is not None:
        out = out * scale.to(out.dtype)
    return out.to(feat.dtype) if low else out


def fuse(a: torch.Tensor, b: torch.Tensor, w_prev: float, w_next: float, mode: str = "weighted") -> torch.Tensor:
    """Combine two propagated feature maps: ``w_prev*a + w_next*b``, ``max(a, b)`` or ``(a + b)/2``."""
    if mode == "weighted":
        return w_prev * a + w_next * b
    if mode == "max":
        return torch.maximum(a, b)
    if mode == "avg":
        return 0.5 * a + 0.5 * b
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def warp_interp(
    prev: torch.Tensor,
    d_prev: torch.Tensor,
    nxt: torch.Tensor,
    d_next: torch.Tensor,
    w_prev: float = 0.5,
    w_next: float = 0.5,
    mode: str = "weighted",
) -> torch.Tensor:
    """Interpolate a frame between two key frames: warp each key's features and fuse them (Jain & Gonzalez)."""
    low = prev.dtype in (torch.float16, torch.bfloat16)
    a, b = (prev.float(), nxt.float()) if low else (prev, nxt)
    out = fuse(warp(a, d_prev), warp(b, d_next), w_prev, w_next, mode)
    return out.to(prev.dtype) if low else out
