"""Test helper: an independent reference of StreamDEQ's detector heads and MMDetection 2.x's test-time decoding.

Written from MMDetection 2.10's and mmcv 1.x's semantics (as StreamDEQ vendors them), not from export/detection.py
or runtime/det_decode.py, and computed differently: the heads straight from the checkpoint's tensors with
``F.conv2d`` / ``F.linear`` in float64; anchors by explicit loops; deltas, NMS and the final ranking in NumPy float64;
NMS as the textbook loop (each candidate, best first, against the boxes kept so far, IoU as a division); RoIAlign
in its separable matrix form (per RoI, the bins' summed bilinear weights as a (7, H) and a (7, W) matrix, so the
pooled map is Wy F Wx^T / count) instead of per-sample gathers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class RefSettings:
    """The detector's settings as the reference reads them (MMDetection's config names in comments)."""

    strides: tuple[int, ...]  # anchor_generator.strides
    roi_levels: int = 4  # len(bbox_roi_extractor.featmap_strides)
    num_classes: int = 30
    scales: tuple[float, ...] = (8.0,)
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_stds: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    bbox_stds: tuple[float, ...] = (0.1, 0.1, 0.2, 0.2)
    nms_pre: int = 1000  # test_cfg.rpn.nms_pre
    rpn_iou: float = 0.7
    max_proposals: int = 1000  # test_cfg.rpn.max_per_img
    score_thr: float = 0.05
    iou: float = 0.5
    max_per_img: int = 100
    roi_size: int = 7
    finest_scale: float = 56.0


# ------------------------------------------------------------------------------------------------- heads


def ref_heads_rpn(sd: Mapping[str, Tensor], z: Sequence[Tensor], num_outs: int) -> tuple[list[Tensor], list[Tensor]]:
    """FPN (+ max-pooled extra levels) and the RPN convolutions from the checkpoint's tensors, float64:
    (features per level (C, H, W), [(logits (A, H, W), deltas (4A, H, W)) per level])."""

    def w(name: str) -> Tensor:
        return sd[name].double()

    zs = [t[0:1].double() for t in z]
    lat = [
        F.conv2d(x, w(f"neck.lateral_convs.{i}.conv.weight"), w(f"neck.lateral_convs.{i}.conv.bias"))
        for i, x in enumerate(zs)
    ]
    for i in reversed(range(1, len(lat))):
        lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
    feats = [
        F.conv2d(x, w(f"neck.fpn_convs.{i}.conv.weight"), w(f"neck.fpn_convs.{i}.conv.bias"), padding=1)
        for i, x in enumerate(lat)
    ]
    while len(feats) < num_outs:
        feats.append(feats[-1][:, :, ::2, ::2])  # max_pool2d(kernel 1, stride 2) picks every other cell
    rpn = []
    for f in feats:
        h = F.relu(F.conv2d(f, w("rpn_head.rpn_conv.weight"), w("rpn_head.rpn_conv.bias"), padding=1))
        rpn.append(
            (
                F.conv2d(h, w("rpn_head.rpn_cls.weight"), w("rpn_head.rpn_cls.bias"))[0],
                F.conv2d(h, w("rpn_head.rpn_reg.weight"), w("rpn_head.rpn_reg.bias"))[0],
            )
        )
    return [f[0] for f in feats], rpn


def ref_box_head(sd: Mapping[str, Tensor], roi_feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shared2FCBBoxHead from the checkpoint's tensors: (softmax scores (R, classes + 1), deltas (R, 4 classes))."""

    def w(name: str) -> Tensor:
        return sd[f"roi_head.bbox_head.{name}"].double()

    x = torch.from_numpy(roi_feats).reshape(roi_feats.shape[0], -1)
    for i in range(2):
        x = F.relu(F.linear(x, w(f"shared_fcs.{i}.weight"), w(f"shared_fcs.{i}.bias")))
    scores = F.linear(x, w("fc_cls.weight"), w("fc_cls.bias")).softmax(dim=1)
    return scores.numpy(), F.linear(x, w("fc_reg.weight"), w("fc_reg.bias")).numpy()


# --------------------------------------------------------------------------------------------- decoding


def ref_anchors(h: int, w: int, stride: int, scales: Sequence[float], ratios: Sequence[float]) -> np.ndarray:
    """(h * w * A, 4), row by row, then column, then ratio, then scale."""
    out = []
    for y in range(h):
        for x in range(w):
            for r in ratios:
                for s in scales:
                    aw, ah = stride * s / math.sqrt(r), stride * s * math.sqrt(r)
                    cx, cy = x * stride, y * stride
                    out.append((cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2))
    return np.array(out, dtype=np.float64)


def ref_decode(
    refs: np.ndarray, deltas: np.ndarray, stds: Sequence[float], image_hw: tuple[float, float]
) -> np.ndarray:
    """Boxes from (N, 4) refs and (N, 4) deltas: scaled by stds, sizes clamped to 1000/16, clipped to the image."""
    d = deltas * np.asarray(stds)
    limit = abs(math.log(16 / 1000))
    dw, dh = np.clip(d[:, 2], -limit, limit), np.clip(d[:, 3], -limit, limit)
    pw, ph = refs[:, 2] - refs[:, 0], refs[:, 3] - refs[:, 1]
    cx, cy = refs[:, 0] + pw / 2 + pw * d[:, 0], refs[:, 1] + ph / 2 + ph * d[:, 1]
    gw, gh = pw * np.exp(dw), ph * np.exp(dh)
    h, w = image_hw
    return np.stack(
        [
            np.clip(cx - gw / 2, 0, w),
            np.clip(cy - gh / 2, 0, h),
            np.clip(cx + gw / 2, 0, w),
            np.clip(cy + gh / 2, 0, h),
        ],
        axis=1,
    )


def iou_one(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box with each row of ``others`` (NaN for two empty boxes, which never counts as overlap)."""
    iw = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (union - inter)


def ref_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices kept by greedy NMS, best first: the textbook loop."""
    kept: list[int] = []
    for i in sorted(range(len(scores)), key=lambda j: -scores[j]):
        if not kept or not np.any(iou_one(boxes[i], boxes[kept]) > iou):
            kept.append(i)
    return kept


def _axis_weights(start: float, length: float, grid: int, size: int, limit: int) -> np.ndarray:
    """(size, limit): per bin, the bilinear weights of its ``grid`` samples along one axis, summed (mmcv's rules: a
    sample outside [-1, limit] weighs nothing, one at or below 0 reads cell 0, one at or past the last cell reads
    the last)."""
    mat = np.zeros((size, limit))
    for p in range(size):
        for i in range(grid):
            pos = start + p * length / size + (i + 0.5) * (length / size) / grid
            if pos < -1.0 or pos > limit:
                continue
            pos = max(pos, 0.0)
            lo = int(pos)
            if lo >= limit - 1:
                mat[p, limit - 1] += 1.0
                continue
            mat[p, lo] += 1.0 - (pos - lo)
            mat[p, lo + 1] += pos - lo
    return mat


def ref_roi_align(feat: np.ndarray, box: np.ndarray, stride: int, size: int = 7) -> np.ndarray:
    """mmcv RoIAlign (aligned, sampling ratio 0) of one box on one level (C, H, W) -> (C, size, size).

    A sample weighs nothing when it is outside along either axis, so its weight is the product of per-axis
    weights (each zero outside): the bins' summed weights factor into a (size, H) and a (size, W) matrix and the
    pooled map is Wy F Wx^T divided by the samples per bin (outside ones included, as mmcv counts them).
    """
    _, h, w = feat.shape
    x1, y1, x2, y2 = (np.float32(v) * np.float32(1.0 / stride) - np.float32(0.5) for v in box)
    rw, rh = float(x2 - x1), float(y2 - y1)
    gh = int(np.ceil(np.float32(rh) / np.float32(size)))
    gw = int(np.ceil(np.float32(rw) / np.float32(size)))
    if gh <= 0 or gw <= 0:
        return np.zeros((feat.shape[0], size, size))
    wy = _axis_weights(float(y1), rh, gh, size, h)
    wx = _axis_weights(float(x1), rw, gw, size, w)
    return np.matmul(np.matmul(wy, feat), wx.T) / (gh * gw)


def ref_level(box: np.ndarray, finest: float, levels: int) -> int:
    scale = math.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 0.0))
    return int(min(max(math.floor(math.log2(scale / finest + 1e-6)), 0), levels - 1))


@dataclass
class RefDetections:
    boxes: np.ndarray  # (n, 4)
    scores: np.ndarray  # (n,)
    labels: np.ndarray  # (n,)


def ref_proposals(
    rpn: list[tuple[Tensor, Tensor]], shapes: Sequence[tuple[int, int]], cfg: RefSettings, image_hw: tuple[float, float]
) -> np.ndarray:
    """(n, 4) proposals, best first: per level the top nms_pre by sigmoid score, decoded, NMS; then the best."""
    boxes, scores = [], []
    for (logit, delta), (h, w), stride in zip(rpn, shapes, cfg.strides):
        a = len(cfg.scales) * len(cfg.ratios)
        s = 1 / (1 + np.exp(-logit.numpy().transpose(1, 2, 0).reshape(-1)))
        d = delta.numpy().reshape(a, 4, h, w).transpose(2, 3, 0, 1).reshape(-1, 4)
        order = np.argsort(-s, kind="stable")[: cfg.nms_pre]
        anchors = ref_anchors(h, w, stride, cfg.scales, cfg.ratios)
        lv_boxes = ref_decode(anchors[order], d[order], cfg.rpn_stds, image_hw)
        kept = ref_nms(lv_boxes, s[order], cfg.rpn_iou)
        boxes.append(lv_boxes[kept])
        scores.append(s[order][kept])
    all_boxes, all_scores = np.concatenate(boxes), np.concatenate(scores)
    return all_boxes[np.argsort(-all_scores, kind="stable")[: cfg.max_proposals]]


def ref_detect(
    sd: Mapping[str, Tensor], z: Sequence[Tensor], cfg: RefSettings, image_hw: tuple[float, float], num_outs: int = 5
) -> RefDetections:
    """The whole test-time pipeline for the first image of ``z``."""
    feats, rpn = ref_heads_rpn(sd, z, num_outs)
    shapes = [tuple(f.shape[1:]) for f in feats]
    proposals = ref_proposals(rpn, shapes, cfg, image_hw)
    levels = [ref_level(b, cfg.finest_scale, cfg.roi_levels) for b in proposals]
    fs = [f.numpy() for f in feats]
    roi_feats = np.stack([ref_roi_align(fs[lv], b, cfg.strides[lv], cfg.roi_size) for b, lv in zip(proposals, levels)])
    probs, deltas = ref_box_head(sd, roi_feats)
    out_boxes, out_scores, out_labels = [], [], []
    for c in range(cfg.num_classes):
        boxes = ref_decode(proposals, deltas[:, 4 * c : 4 * c + 4], cfg.bbox_stds, image_hw)
        cand = np.nonzero(probs[:, c] > cfg.score_thr)[0]
        kept = cand[ref_nms(boxes[cand], probs[cand, c], cfg.iou)]
        out_boxes.append(boxes[kept])
        out_scores.append(probs[kept, c])
        out_labels.append(np.full(len(kept), c))
    boxes, scores, labels = np.concatenate(out_boxes), np.concatenate(out_scores), np.concatenate(out_labels)
    best = np.argsort(-scores, kind="stable")[: cfg.max_per_img]
    return RefDetections(boxes[best], scores[best], labels[best])


def match(
    ref: RefDetections, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float = 0.5
) -> tuple[float, float]:
    """(F1, largest coordinate difference of the matched pairs): each detection, best first, matched to the
    unmatched reference box of its class with the highest IoU >= ``iou``."""
    used = np.zeros(len(ref.scores), dtype=bool)
    matched, worst = 0, 0.0
    for i in np.argsort(-scores, kind="stable"):
        same = np.nonzero((ref.labels == labels[i]) & ~used)[0]
        if not len(same):
            continue
        ious = np.nan_to_num(iou_one(boxes[i], ref.boxes[same]))
        j = int(np.argmax(ious))
        if ious[j] >= iou:
            used[same[j]] = True
            matched += 1
            worst = max(worst, float(np.abs(boxes[i] - ref.boxes[same[j]]).max()))
    total = len(scores) + len(ref.scores)
    return (2 * matched / total if total else 1.0), worst
