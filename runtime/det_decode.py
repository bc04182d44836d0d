"""Two-stage detection decoding on the device: anchors, proposals, NMS, multi-level RoIAlign, final boxes.

The detector's convolutions and FC layers are engines (``head_det_rpn``, ``head_det_box``); everything between and
after them runs here, in plain torch on whatever device holds the engines' outputs, so every backend (ONNX Runtime,
AOTInductor, TensorRT) shares one implementation and no engine needs a TensorRT plugin. The semantics are
MMDetection 2.x's as StreamDEQ's ImageNet-VID detector uses them (test_cfg: 1000 boxes per level before the RPN's
NMS, IoU 0.7 within each level, 1000 proposals; score > 0.05, per-class NMS 0.5, 100 boxes):

* anchors: per level, ``len(ratios) * len(scales)`` boxes of side ``stride * scale`` (ratio h/w), centred on
  ``stride * (x, y)`` (center offset 0), laid out row, column, anchor;
* deltas (DeltaXYWHBBoxCoder): ``d * stds + means``; dw, dh clamped to |log(wh_ratio_clip)|; centre moved by
  ``(dx w, dy h)``, size scaled by ``exp``; the box clipped to the image (its un-padded size);
* NMS (mmcv's ``nms`` with offset 0): in score order, a box is dropped when a kept higher one overlaps it with
  ``inter > iou * union``; groups (levels, classes) never suppress each other;
* RoI level ``floor(log2(sqrt(w h) / 56 + 1e-6))`` clamped to the RoI levels; RoIAlign as mmcv's (aligned: the
  box shifted by half a cell; sampling ratio 0: each RoI samples ``ceil(side / 7)`` points per bin and axis, so
  its grid depends on its size; a sample outside [-1, size] contributes zero, one at or below 0 is clamped).

Shapes are fixed: proposals, RoI features and detections are padded to their maxima with a validity mask or a
count, so a download is one copy. The data-dependent host reads are NMS's convergence checks (one per
``NMS_CHECK_EVERY`` rounds; :func:`greedy_keep`) and, with ``roi_max_grid`` None, the frame's largest RoIAlign grid
(:func:`roi_align`); ``roi_max_grid`` set removes the latter at the price of an approximation
(benchmarks/det_decode.py measures it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

NMS_CHECK_EVERY = 4  # fixed-point rounds of the NMS between two convergence checks (one host read each)


@dataclass(frozen=True)
class DetectSpec:
    """The decoding settings, as the manifest's ``detector`` entry gives them (``DetectorConfig.to_dict()`` plus
    ``strides``, the FPN levels' strides)."""

    strides: tuple[int, ...]
    num_classes: int = 30
    anchor_scales: tuple[float, ...] = (8.0,)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_means: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    rpn_stds: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    bbox_means: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    bbox_stds: tuple[float, ...] = (0.1, 0.1, 0.2, 0.2)
    wh_ratio_clip: float = 16 / 1000
    rpn_pre_nms: int = 1000
    rpn_nms_iou: float = 0.7
    rpn_proposals: int = 1000
    rpn_min_size: float = 0.0
    roi_size: int = 7
    roi_levels: int = 4
    roi_sampling_ratio: int = 0
    roi_finest_scale: float = 56.0
    roi_max_grid: int | None = None
    score_thr: float = 0.05
    nms_iou: float = 0.5
    max_per_img: int = 100

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> DetectSpec:
        """The spec from a manifest entry; keys it does not use (architecture, class names) are ignored."""
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in entry:
                value = entry[f.name]
                kw[f.name] = tuple(value) if isinstance(value, list) else value
        if "strides" not in kw:
            raise ValueError("detector entry lacks 'strides'")
        return cls(**kw)

    @property
    def max_ratio(self) -> float:
        return abs(math.log(self.wh_ratio_clip))


class Proposals(NamedTuple):
    boxes: Tensor  # (B, P, 4) x1, y1, x2, y2 in input pixels, best first
    scores: Tensor  # (B, P) objectness
    valid: Tensor  # (B, P) bool: the first count rows of each image


class Detections(NamedTuple):
    boxes: Tensor  # (B, M, 4) x1, y1, x2, y2 in input pixels; rows past count are zero
    scores: Tensor  # (B, M), best first; 0 past count
    labels: Tensor  # (B, M) int64 class index (background excluded); -1 past count
    count: Tensor  # (B,) int64


# ----------------------------------------------------------------------------------------------- anchors


def level_shapes(height: int, width: int, strides: tuple[int, ...]) -> list[tuple[int, int]]:
    """Feature size of each FPN level: the trunk's levels divide the input exactly, each max-pooled level
    (kernel 1, stride 2) keeps ceil(half) of the one before, which is ceil(size / stride) throughout."""
    return [(-(-height // s), -(-width // s)) for s in strides]


def base_anchors(stride: int, scales: tuple[float, ...], ratios: tuple[float, ...]) -> Tensor:
    """(A, 4) anchors around (0, 0): ratio-major, as AnchorGenerator with scale_major=True."""
    r = torch.tensor(ratios, dtype=torch.float32)
    s = torch.tensor(scales, dtype=torch.float32)
    h_ratio = torch.sqrt(r)
    w_ratio = 1 / h_ratio
    ws = (stride * w_ratio[:, None] * s[None, :]).reshape(-1)
    hs = (stride * h_ratio[:, None] * s[None, :]).reshape(-1)
    return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)


def grid_anchors(spec: DetectSpec, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """(N, 4) anchors of every level, in the RPN engine's output order (level, row, column, anchor)."""
    out = []
    for stride, (h, w) in zip(spec.strides, level_shapes(height, width, spec.strides)):
        base = base_anchors(stride, spec.anchor_scales, spec.anchor_ratios)
        xs = torch.arange(w, dtype=torch.float32) * stride
        ys = torch.arange(h, dtype=torch.float32) * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
        out.append((shifts + base[None]).reshape(-1, 4))
    return torch.cat(out).to(device)


# -------------------------------------------------------------------------------------------- box coding


def clip_boxes(boxes: Tensor, image_hw: Tensor) -> Tensor:
    """Clip (B, ..., 4) boxes to [0, w] x [0, h] of their image (``image_hw`` (B, 2), float)."""
    lim = image_hw.flip(-1).repeat(1, 2).view(boxes.shape[0], *([1] * (boxes.dim() - 2)), 4)
    return torch.minimum(boxes.clamp(min=0), lim)


def decode_deltas(
    refs: Tensor, deltas: Tensor, means: tuple[float, ...], stds: tuple[float, ...], max_ratio: float
) -> Tensor:
    """DeltaXYWHBBoxCoder.decode without the clip: ``refs`` and ``deltas`` (..., 4) broadcast together."""
    d = deltas * deltas.new_tensor(stds) + deltas.new_tensor(means)
    dx, dy, dw, dh = d.unbind(-1)
    dw, dh = dw.clamp(-max_ratio, max_ratio), dh.clamp(-max_ratio, max_ratio)
    px, py = (refs[..., 0] + refs[..., 2]) * 0.5, (refs[..., 1] + refs[..., 3]) * 0.5
    pw, ph = refs[..., 2] - refs[..., 0], refs[..., 3] - refs[..., 1]
    gw, gh = pw * dw.exp(), ph * dh.exp()
    gx, gy = px + pw * dx, py + ph * dy
    return torch.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], dim=-1)


# ---------------------------------------------------------------------------------------------------- NMS


def overlaps(boxes: Tensor, iou: float) -> Tensor:
    """(G, K, K) bool: ``[g, j, i]`` when boxes j and i of group g overlap with IoU above ``iou``, tested as
    mmcv does, ``inter > iou * union`` (no division: two empty boxes never overlap)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    area = (x2 - x1) * (y2 - y1)
    w = torch.minimum(x2[:, :, None], x2[:, None, :]).sub_(torch.maximum(x1[:, :, None], x1[:, None, :]))
    h = torch.minimum(y2[:, :, None], y2[:, None, :]).sub_(torch.maximum(y1[:, :, None], y1[:, None, :]))
    inter = w.clamp_(min=0).mul_(h.clamp_(min=0))
    union = (area[:, :, None] + area[:, None, :]).sub_(inter)
    return inter > union.mul_(iou)


def greedy_keep(suppress: Tensor, valid: Tensor, max_rounds: int | None = None) -> tuple[Tensor, int]:
    """Greedy NMS on score-sorted candidates as a fixed point, without a per-box loop.

    ``suppress[g, j, i]`` (j before i) says a kept j drops i. Greedy NMS's answer is the one ``keep`` with
    ``keep[i] = valid[i] and no kept j suppresses i``; iterating that map from "all valid" settles one more
    leading position per round at least, so it reaches the answer in at most K rounds, in practice in as many as
    the longest chain of boxes whose fate depends on the one before (measured: a handful). Rounds run
    ``NMS_CHECK_EVERY`` at a time between checks (the only host reads). Returns (keep, rounds run).
    """
    k = valid.shape[-1]
    limit = k if max_rounds is None else max_rounds
    s = suppress.to(torch.float32)
    keep = valid
    rounds = 0
    while rounds < limit:
        prev = keep
        for _ in range(min(NMS_CHECK_EVERY, limit - rounds)):
            prev = keep
            hit = torch.bmm(keep.to(torch.float32).unsqueeze(1), s).squeeze(1) > 0
            keep = valid & ~hit
            rounds += 1
        if torch.equal(keep, prev):
            break
    return keep, rounds


def batched_nms(boxes: Tensor, scores: Tensor, valid: Tensor, iou: float, rounds: list[int] | None = None) -> Tensor:
    """(G, K) bool kept mask in the input order: greedy NMS within each group g of ``boxes`` (G, K, 4) by
    ``scores`` (G, K); invalid candidates are neither kept nor suppress anything. ``rounds`` (optional) gets
    the fixed point's round count appended."""
    order = scores.masked_fill(~valid, float("-inf")).argsort(dim=1, descending=True, stable=True)
    b = boxes.gather(1, order.unsqueeze(-1).expand(-1, -1, 4))
    v = valid.gather(1, order)
    k = b.shape[1]
    later = torch.ones(k, k, dtype=torch.bool, device=b.device).triu(diagonal=1)
    sup = overlaps(b, iou) & later & v.unsqueeze(2)
    keep_sorted, n = greedy_keep(sup, v)
    if rounds is not None:
        rounds.append(n)
    return torch.zeros_like(valid).scatter(1, order, keep_sorted)


# ------------------------------------------------------------------------------------------------ RoIAlign


def roi_level(boxes: Tensor, finest_scale: float, levels: int) -> Tensor:
    """MMDetection's SingleRoIExtractor level of each box (int64)."""
    scale = torch.sqrt((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))
    return torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(0, levels - 1).long()


def _axis_samples(
    start: Tensor, length: Tensor, grid: Tensor, index: int, size: int, limit: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sample ``index`` of every bin along one axis for every RoI: (low cell, high cell, weight of low, weight of
    high), each (R, size); a sample past the RoI's grid or outside [-1, limit] gets zero weights."""
    bin_len = length / size
    pos = start[:, None] + torch.arange(size, device=start.device) * bin_len[:, None]
    pos = pos + ((index + 0.5) * bin_len / grid.clamp(min=1))[:, None]
    lim = limit[:, None].to(pos.dtype)
    inside = (pos >= -1.0) & (pos <= lim) & (index < grid)[:, None]
    pos = pos.clamp(min=0)
    low = pos.floor()
    top = lim - 1
    at_edge = low >= top
    low = torch.where(at_edge, top, low)
    high = torch.where(at_edge, top, low + 1)
    pos = torch.where(at_edge, top, pos)
    frac = pos - low
    zero = torch.zeros_like(frac)
    return low.long(), high.long(), torch.where(inside, 1 - frac, zero), torch.where(inside, frac, zero)


def roi_grid(lengths: Tensor, size: int, sampling_ratio: int) -> Tensor:
    """Samples per bin along one axis: the sampling ratio, or mmcv's adaptive ``ceil(length / size)``."""
    if sampling_ratio > 0:
        return torch.full_like(lengths, sampling_ratio, dtype=torch.long)
    return torch.ceil(lengths / size).long()


def _sample_sum(table: Tensor, rois: tuple[Tensor, ...], needing: list[int], size: int) -> Tensor:
    """Sum over each RoI's samples of the bilinear reads of ``table`` rows: (R, size, size, C). ``needing[m]`` is
    how many leading RoIs have a grid above m (they are sorted so), so sample pair (iy, ix) runs on that many."""
    x0, y0, roi_w, roi_h, grid_h, grid_w, base, h, w = rois
    n_all, c = x0.shape[0], table.shape[1]
    acc = table.new_zeros(n_all, size, size, c)
    steps = len(needing) - 1
    xs = [_axis_samples(x0, roi_w, grid_w, i, size, w) for i in range(steps)]
    for iy in range(steps):
        ys = _axis_samples(y0, roi_h, grid_h, iy, size, h)
        for ix in range(steps):
            n = needing[max(iy, ix)]
            if n == 0:
                continue
            y_lo, y_hi, wy_lo, wy_hi = (t[:n] for t in ys)
            x_lo, x_hi, wx_lo, wx_hi = (t[:n] for t in xs[ix])
            for yi, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):
                for xi, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
                    idx = base[:n, None, None] + yi[:, :, None] * w[:n, None, None] + xi[:, None, :]
                    weight = (wy[:, :, None] * wx[:, None, :]).to(table.dtype).unsqueeze(-1)
                    acc[:n].addcmul_(table.index_select(0, idx.reshape(-1)).view(n, size, size, c), weight)
    return acc


def roi_align(
    feats: list[Tensor],
    boxes: Tensor,
    levels: Tensor,
    strides: tuple[int, ...],
    size: int = 7,
    sampling_ratio: int = 0,
    max_grid: int | None = None,
) -> Tensor:
    """Multi-level RoIAlign (mmcv's, aligned=True): (B * R, C, size, size) for ``boxes`` (B, R, 4) in input
    pixels, each read from level ``levels`` (B, R) of ``feats`` (per level (B, C, H_l, W_l)).

    The features are laid out once as rows of C channels (every level and image), so each sample is four row
    gathers for all RoIs at once whatever their levels. The adaptive grid varies per RoI, so the fixed shapes
    come from masking: a sample past a RoI's own grid weighs zero, which is exact. With ``max_grid`` None the
    RoIs are sorted by grid and the frame's grid histogram read from the device (one host read per frame); sample
    pair (iy, ix) then runs only on the leading RoIs whose grid exceeds both, so the work is about the sum of the
    squared grids, not the number of RoIs times the largest one squared. An integer ``max_grid`` fixes the loop
    instead (no read, graph capturable) and samples a RoI whose grid exceeds it on ``max_grid`` points per bin
    and axis (spread over the bin): an approximation, which benchmarks/det_decode.py measures.
    """
    b, r = boxes.shape[:2]
    c = feats[0].shape[1]
    table = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, c) for f in feats])
    dev = boxes.device
    hs = torch.tensor([f.shape[2] for f in feats], device=dev)
    ws = torch.tensor([f.shape[3] for f in feats], device=dev)
    sizes = torch.tensor([f.shape[0] * f.shape[2] * f.shape[3] for f in feats], device=dev)
    offsets = torch.cumsum(sizes, 0) - sizes
    scale = 1.0 / torch.tensor(strides[: len(feats)], dtype=torch.float32, device=dev)
    lv = levels.reshape(-1)
    img = torch.arange(b, device=dev).repeat_interleave(r)
    h, w = hs[lv], ws[lv]
    base = offsets[lv] + img * h * w
    flat = boxes.reshape(-1, 4) * scale[lv][:, None] - 0.5
    x0, y0 = flat[:, 0], flat[:, 1]
    roi_w, roi_h = flat[:, 2] - x0, flat[:, 3] - y0
    grid_h, grid_w = roi_grid(roi_h, size, sampling_ratio), roi_grid(roi_w, size, sampling_ratio)
    rois = (x0, y0, roi_w, roi_h, grid_h, grid_w, base, h, w)
    if max_grid is None:  # exact: RoIs sorted by grid, each sample pair run on the prefix that needs it
        grid = torch.maximum(grid_h, grid_w)
        order = torch.argsort(grid, descending=True)
        rois = tuple(t[order] for t in rois)
        hist = torch.bincount(grid, minlength=1).tolist() if grid.numel() else [0]  # the one host read
        needing = [sum(hist[m + 1 :]) for m in range(len(hist))]  # RoIs whose grid exceeds m
    else:  # fixed loop, no host read; larger grids capped
        rois = (*rois[:4], grid_h.clamp(max=max_grid), grid_w.clamp(max=max_grid), *rois[6:])
        needing = [b * r] * max_grid + [0]
    acc = _sample_sum(table, rois, needing, size)
    count = (rois[4] * rois[5]).clamp(min=1).to(table.dtype)
    acc = acc / count[:, None, None, None]
    if max_grid is None:
        acc = torch.empty_like(acc).index_copy_(0, order, acc)
    return acc.permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------------------------------- frame geometry


def content_hw(scaled: tuple[int, int], offset: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of the engine picture that hold the frame, from runtime.sources.Fitter's ``scaled``,
    ``offset`` and ``dst_hw`` (--fit pad leaves black below and right of them): the limit boxes are clipped to,
    as MMDetection clips to the resized image, not the padded one."""
    return min(scaled[0] - offset[0], dst_hw[0]), min(scaled[1] - offset[1], dst_hw[1])


def unfit_boxes(boxes: Tensor, scaled: tuple[int, int], offset: tuple[int, int], src_hw: tuple[int, int]) -> Tensor:
    """Engine-picture boxes (..., 4) -> the source frame's pixels (runtime.sources.Fitter's geometry: the picture
    is the frame scaled to ``scaled`` and windowed at ``offset``), clipped to the frame."""
    (ih, iw), (oy, ox), (sh, sw) = scaled, offset, src_hw
    shift = boxes.new_tensor([ox, oy, ox, oy])
    factor = boxes.new_tensor([sw / iw, sh / ih, sw / iw, sh / ih])
    out = (boxes + shift) * factor
    return torch.minimum(out.clamp(min=0), boxes.new_tensor([sw, sh, sw, sh]))


# ---------------------------------------------------------------------------------------------- the stages


class DetectionDecoder:
    """The decoding stages for one input size: anchors built once, then per frame
    ``proposals`` -> ``roi_features`` (box engine input) -> ``detections``."""

    def __init__(self, spec: DetectSpec, height: int, width: int, device: torch.device | str = "cpu") -> None:
        self.spec, self.height, self.width = spec, height, width
        self.device = torch.device(device)
        self.anchors = grid_anchors(spec, height, width, self.device)
        counts = [h * w * len(spec.anchor_scales) * len(spec.anchor_ratios) for h, w in self.shapes]
        self.level_slices = [slice(s - n, s) for s, n in zip(torch.tensor(counts).cumsum(0).tolist(), counts)]
        self.nms_rounds: dict[str, list[int]] = {}  # the last frame's NMS fixed-point rounds, "rpn" and "final"

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return level_shapes(self.height, self.width, self.spec.strides)

    @property
    def num_anchors(self) -> int:
        return self.anchors.shape[0]

    def image_hw(self, batch: int, image_hw: Tensor | tuple[int, int] | None = None) -> Tensor:
        """(B, 2) float valid image size per frame (the content a --fit pad leaves); the input size by default."""
        if image_hw is None:
            image_hw = (self.height, self.width)
        t = torch.as_tensor(image_hw, dtype=torch.float32, device=self.device)
        return t.expand(batch, 2) if t.dim() == 1 else t

    def proposals(self, logits: Tensor, deltas: Tensor, image_hw: Tensor | tuple[int, int] | None = None) -> Proposals:
        """RPN outputs (B, N) logits and (B, N, 4) deltas -> the best ``rpn_proposals`` boxes after per-level
        top-k and NMS (padded; ``valid`` marks the real ones)."""
        spec = self.spec
        b = logits.shape[0]
        hw = self.image_hw(b, image_hw)
        scores = logits.float().sigmoid()
        k = max(min(spec.rpn_pre_nms, sl.stop - sl.start) for sl in self.level_slices)
        lv_scores, lv_boxes, lv_valid = [], [], []
        for sl in self.level_slices:
            n = min(spec.rpn_pre_nms, sl.stop - sl.start)
            top, idx = scores[:, sl].topk(n, dim=1)
            d = deltas[:, sl].float().gather(1, idx.unsqueeze(-1).expand(-1, -1, 4))
            box = clip_boxes(decode_deltas(self.anchors[sl][idx], d, spec.rpn_means, spec.rpn_stds, spec.max_ratio), hw)
            pad = k - n
            lv_scores.append(F.pad(top, (0, pad)))
            lv_boxes.append(F.pad(box, (0, 0, 0, pad)))
            lv_valid.append(torch.arange(k, device=logits.device).expand(b, k) < n)
        s, bx, v = torch.stack(lv_scores, 1), torch.stack(lv_boxes, 1), torch.stack(lv_valid, 1)  # (B, L, K)
        if spec.rpn_min_size > 0:
            v = v & (bx[..., 2] - bx[..., 0] >= spec.rpn_min_size) & (bx[..., 3] - bx[..., 1] >= spec.rpn_min_size)
        levels = s.shape[1]
        rounds: list[int] = []
        keep = batched_nms(
            bx.reshape(b * levels, k, 4),
            s.reshape(b * levels, k),
            v.reshape(b * levels, k),
            spec.rpn_nms_iou,
            rounds,
        )
        self.nms_rounds["rpn"] = rounds
        return _top(bx.reshape(b, -1, 4), s.reshape(b, -1), keep.reshape(b, -1), spec.rpn_proposals)[0]

    def roi_features(self, feats: list[Tensor], proposals: Proposals, dtype: torch.dtype | None = None) -> Tensor:
        """The box engine's input (B * P, C, size, size) from the RoI levels' features p0.., computed in fp32 and
        returned in ``dtype`` (the box engine's input type; default fp32). Invalid rows read whatever their zero
        boxes give; ``detections`` drops them."""
        spec = self.spec
        levels = roi_level(proposals.boxes, spec.roi_finest_scale, spec.roi_levels)
        return roi_align(
            [f.float() for f in feats[: spec.roi_levels]],
            proposals.boxes,
            levels,
            spec.strides,
            spec.roi_size,
            spec.roi_sampling_ratio,
            spec.roi_max_grid,
        ).to(dtype or torch.float32)

    def detections(
        self,
        proposals: Proposals,
        class_scores: Tensor,
        box_deltas: Tensor,
        image_hw: Tensor | tuple[int, int] | None = None,
    ) -> Detections:
        """Box engine outputs (B * P, classes + 1) probabilities, (B * P, 4 * classes) deltas -> per-class boxes
        above ``score_thr``, per-class NMS, the best ``max_per_img`` per image."""
        spec = self.spec
        b, p = proposals.valid.shape
        c = spec.num_classes
        hw = self.image_hw(b, image_hw)
        scores = class_scores.float().view(b, p, c + 1)[..., :c]
        deltas = box_deltas.float().view(b, p, c, 4)
        boxes = decode_deltas(proposals.boxes[:, :, None, :], deltas, spec.bbox_means, spec.bbox_stds, spec.max_ratio)
        boxes = clip_boxes(boxes, hw)
        cand = proposals.valid[:, :, None] & (scores > spec.score_thr)
        per_class = (boxes.permute(0, 2, 1, 3).reshape(b * c, p, 4), scores.transpose(1, 2).reshape(b * c, p))
        rounds: list[int] = []
        keep = batched_nms(*per_class, cand.transpose(1, 2).reshape(b * c, p), spec.nms_iou, rounds)
        self.nms_rounds["final"] = rounds
        top, idx = _top(
            per_class[0].reshape(b, c * p, 4), per_class[1].reshape(b, c * p), keep.reshape(b, c * p), spec.max_per_img
        )
        labels = torch.where(top.valid, idx // p, -1)
        return Detections(top.boxes, top.scores, labels, top.valid.sum(1))


def _top(boxes: Tensor, scores: Tensor, keep: Tensor, n: int) -> tuple[Proposals, Tensor]:
    """The ``n`` best kept rows per image, best first, padded with invalid zero rows; and their indices."""
    m = scores.shape[1]
    top, idx = scores.masked_fill(~keep, float("-inf")).topk(min(n, m), dim=1)
    valid = keep.gather(1, idx)
    picked = boxes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4)).masked_fill(~valid.unsqueeze(-1), 0.0)
    top = top.masked_fill(~valid, 0.0)
    if m < n:  # fewer candidates than rows
        pad = n - m
        picked, top = F.pad(picked, (0, 0, 0, pad)), F.pad(top, (0, pad))
        valid, idx = F.pad(valid, (0, pad)), F.pad(idx, (0, pad))
    return Proposals(picked, top, valid), idx
