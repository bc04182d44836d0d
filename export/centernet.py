"""A one-stage, anchor-free detection head (CenterNet-style) on the MDEQ state, its targets and its losses.

Why this head: it is a few convolutions on the stride-4 grid that we can train here on synthetic boxes, and its
decoding (3x3 max-pool peaks, top-K, no NMS) is a handful of tensor operations the runtime runs on the device
(runtime/center_decode.py). The head reads every branch resized to the stride-4 grid and concatenated (as the
segmentation head does: a car spans more than the stride-4 branch's own reach), then a 3x3 conv + ReLU and three
1x1 outputs per cell:

* ``heatmap`` (B, C, H/4, W/4): per-class centre probability (sigmoid inside the engine);
* ``size`` (B, 2, H/4, W/4): box width and height in stride-4 cells;
* ``offset`` (B, 2, H/4, W/4): the centre's sub-cell position, x and y in [0, 1).

A box with centre (cx, cy) in input pixels (edges: x2 one past the last pixel) sits at cell
(floor(cx / 4), floor(cy / 4)) with offset (cx / 4 - floor, cy / 4 - floor); its heatmap target is a Gaussian
there with per-axis sigma ``GAUSS_ALPHA * side / 6`` cells (TTFNet's elliptical targets), the loss the penalty-
reduced focal loss (CenterNet: alpha 2, beta 4) normalised by the object count, plus L1 on size and offset at the
centre cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.config import SYNTH_CLASSES, SYNTH_PALETTE, MDEQConfig

KIND = "centernet"
GAUSS_ALPHA = 0.54
FOCAL_ALPHA, FOCAL_BETA = 2.0, 4.0
SIZE_WEIGHT, OFFSET_WEIGHT = 0.1, 1.0
HEAT_PRIOR = 0.1  # initial sigmoid of the heatmap logits (CenterNet's bias init -2.19), so early losses are sane


@dataclass(frozen=True)
class CenterNetConfig:
    """The head's shape and its decode settings (what the manifest's ``detector`` entry carries)."""

    num_classes: int = 3
    class_names: tuple[str, ...] = ("car", "person", "sign")
    head_channels: int = 64
    stride: int = 4
    score_thr: float = 0.3
    max_per_img: int = 100
    kind: str = KIND
    # overlay colours per class (the manifest's palette): the synthetic scenes' car, person and sign colours
    palette: tuple[tuple[int, int, int], ...] = tuple(SYNTH_PALETTE[SYNTH_CLASSES.index(n)] for n in class_names)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        d["palette"] = [list(c) for c in self.palette]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CenterNetConfig:
        kw = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "class_names" in kw:
            kw["class_names"] = tuple(kw["class_names"])
        if "palette" in kw:
            kw["palette"] = tuple(tuple(int(v) for v in c) for c in kw["palette"])
        return cls(**kw)


class CenterNetHead(nn.Module):
    """z0..z3 -> (heatmap logits, size, offset) on the stride-4 grid (logits: the engine graph adds the sigmoid)."""

    def __init__(self, trunk: MDEQConfig, cfg: CenterNetConfig) -> None:
        super().__init__()
        self.trunk_cfg, self.det_cfg = trunk, cfg
        total, hc = sum(trunk.channels), cfg.head_channels
        self.align_corners = trunk.upsample_align_corners
        self.fuse = nn.Sequential(nn.Conv2d(total, hc, 3, padding=1), nn.ReLU(inplace=True))
        self.heatmap = nn.Conv2d(hc, cfg.num_classes, 1)
        self.size = nn.Conv2d(hc, 2, 1)
        self.offset = nn.Conv2d(hc, 2, 1)
        nn.init.constant_(self.heatmap.bias, float(np.log(HEAT_PRIOR / (1 - HEAT_PRIOR))))

    def forward(self, *z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        size = z[0].shape[-2:]
        ups = [F.interpolate(t, size=size, mode="bilinear", align_corners=self.align_corners) for t in z[1:]]
        y = self.fuse(torch.cat([z[0], *ups], 1))
        return self.heatmap(y), self.size(y), self.offset(y)


class CenterGraph(nn.Module):
    """The ``head_det_ctr`` engine: z0..z3 -> heatmap (sigmoid), size, offset."""

    def __init__(self, head: CenterNetHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, *z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        heat, size, offset = self.head(*z)
        return torch.sigmoid(heat), size, offset


OUTPUT_NAMES = ("heatmap", "size", "offset")


# ------------------------------------------------------------------------------------------------ targets


@dataclass
class Targets:
    heat: Tensor  # (B, C, h, w) Gaussian peaks, 1 at each centre cell
    index: Tensor  # (B, M) flat centre cell per object (0 past count)
    size: Tensor  # (B, M, 2) width, height in cells
    offset: Tensor  # (B, M, 2)
    mask: Tensor  # (B, M) bool: a real object


def _gaussian(h: int, w: int, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys = np.arange(h, dtype=np.float32)[:, None]
    return np.exp(-((xs - cx) ** 2) / (2 * sx * sx) - ((ys - cy) ** 2) / (2 * sy * sy))


def make_targets(boxes: Sequence[np.ndarray], num_classes: int, h: int, w: int, stride: int) -> Targets:
    """Targets on an (h, w) grid of ``stride`` for per-frame (n, 5) boxes ``[x1, y1, x2, y2, class]`` in pixels."""
    b = len(boxes)
    m = max(1, max((len(x) for x in boxes), default=1))
    heat = np.zeros((b, num_classes, h, w), np.float32)
    index = np.zeros((b, m), np.int64)
    size = np.zeros((b, m, 2), np.float32)
    offset = np.zeros((b, m, 2), np.float32)
    mask = np.zeros((b, m), bool)
    for i, rows in enumerate(boxes):
        for j, (x1, y1, x2, y2, c) in enumerate(rows):
            cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
            ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
            bw, bh = (x2 - x1) / stride, (y2 - y1) / stride
            g = _gaussian(h, w, ix, iy, max(GAUSS_ALPHA * bw / 6, 0.3), max(GAUSS_ALPHA * bh / 6, 0.3))
            heat[i, int(c)] = np.maximum(heat[i, int(c)], g)
            index[i, j], size[i, j], offset[i, j], mask[i, j] = iy * w + ix, (bw, bh), (cx - ix, cy - iy), True
    return Targets(*(torch.from_numpy(a) for a in (heat, index, size, offset, mask)))


# ------------------------------------------------------------------------------------------------- losses


def focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss, summed and divided by the number of centres (>= 1)."""
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = torch.log(p) * (1 - p).pow(FOCAL_ALPHA) * pos
    neg_loss = torch.log(1 - p) * p.pow(FOCAL_ALPHA) * (1 - target).pow(FOCAL_BETA) * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def _gather(feat: Tensor, index: Tensor) -> Tensor:
    """(B, K, h, w) at flat cells ``index`` (B, M) -> (B, M, K)."""
    b, k = feat.shape[:2]
    return feat.reshape(b, k, -1).gather(2, index.unsqueeze(1).expand(-1, k, -1)).transpose(1, 2)


def detection_loss(out: tuple[Tensor, Tensor, Tensor], t: Targets) -> tuple[Tensor, dict[str, float]]:
    """Focal loss on the heatmap + L1 on size and offset at the centres; the total and its parts."""
    heat, size, offset = out
    heat_loss = focal_loss(heat, t.heat)
    n = t.mask.sum().clamp(min=1)
    m = t.mask.unsqueeze(-1).float()
    size_loss = (F.l1_loss(_gather(size.float(), t.index), t.size, reduction="none") * m).sum() / n
    off_loss = (F.l1_loss(_gather(offset.float(), t.index), t.offset, reduction="none") * m).sum() / n
    total = heat_loss + SIZE_WEIGHT * size_loss + OFFSET_WEIGHT * off_loss
    parts = {"heat": float(heat_loss.detach()), "size": float(size_loss.detach()), "off": float(off_loss.detach())}
    return total, parts


__all__ = [
    "KIND",
    "OUTPUT_NAMES",
    "CenterGraph",
    "CenterNetConfig",
    "CenterNetHead",
    "Targets",
    "detection_loss",
    "focal_loss",
    "make_targets",
]
