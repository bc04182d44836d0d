"""Today's (pre-#30) per-block motion-vector field, kept only as the tests' reference.

Copied unchanged from ``runtime/motion_vectors.py`` as it was before the field was vectorised (issue #30: dict
pairing, a per-candidate-frame loop of block matching, a per-block-size rasterisation loop). The vectorised product
code must reproduce it exactly on real clips; nothing in the product imports this module.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from runtime.motion_vectors import (
    HISTORY,
    MAX_COST,
    MAX_DISAGREE,
    MIN_PAIRS,
    TIE,
    UNIT,
    _inter_fraction,
    _pict_name,
    grid_size,
    luma,
)
from runtime.sources import _lerp_taps


def grid_blocks(
    blocks: np.ndarray | None, motion: np.ndarray | None, height: int, width: int, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise blocks (``w, h, dst_x, dst_y`` of AVMotionVector records) carrying ``motion`` (2, n) in pixels onto the
    stride-``stride`` grid: the area-weighted mean per cell in feature px, and the covered fraction of each cell."""
    if stride % UNIT:
        raise ValueError(f"stride must be a multiple of {UNIT}, got {stride}")
    gh, gw = grid_size(height, width, stride)
    k = stride // UNIT
    uh, uw = gh * k, gw * k  # unit grid, padded to whole cells
    acc = np.zeros((3, uh, uw), np.float64)  # sum dx*area, sum dy*area, area
    if blocks is not None and len(blocks):
        dx, dy = motion[0], motion[1]
        bw, bh = blocks["w"].astype(np.int64), blocks["h"].astype(np.int64)
        x0 = (blocks["dst_x"].astype(np.int64) - bw // 2) // UNIT
        y0 = (blocks["dst_y"].astype(np.int64) - bh // 2) // UNIT
        for code in np.unique(bw * 4096 + bh).tolist():
            sw, sh = divmod(code, 4096)
            sel = (bw == sw) & (bh == sh)
            _splat(acc, x0[sel], y0[sel], dx[sel], dy[sel], max(1, sw // UNIT), max(1, sh // UNIT))
    inside = np.zeros((uh, uw), np.float64)
    inside[: math.ceil(height / UNIT), : math.ceil(width / UNIT)] = 1.0
    acc[:, inside == 0] = 0.0  # blocks of the coded (padded) area beyond the picture do not count
    cells = acc.reshape(3, gh, k, gw, k).sum(axis=(2, 4))
    area = inside.reshape(gh, k, gw, k).sum(axis=(1, 3))
    covered = cells[2] > 0
    disp = np.zeros((2, gh, gw), np.float32)
    disp[:, covered] = (cells[:2, covered] / cells[2, covered]) / stride
    coverage = (cells[2] / np.maximum(area, 1.0)).astype(np.float32)
    return disp, coverage


def _splat(acc: np.ndarray, x0, y0, dx, dy, nx: int, ny: int) -> None:
    """Add each block's vector to the nx x ny units it covers (clipped to the grid)."""
    _, uh, uw = acc.shape
    xs = (x0[:, None, None] + np.arange(nx)[None, None, :]).repeat(ny, 1)
    ys = (y0[:, None, None] + np.arange(ny)[None, :, None]).repeat(nx, 2)
    ok = (xs >= 0) & (xs < uw) & (ys >= 0) & (ys < uh)
    idx = (ys * uw + xs)[ok]
    n = uh * uw
    for i, wgt in enumerate((dx, dy, np.ones_like(dx))):
        acc[i] += np.bincount(idx, weights=np.broadcast_to(wgt[:, None, None], ok.shape)[ok], minlength=n).reshape(
            uh, uw
        )


def _sample_points(blocks: np.ndarray, n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """n x n sample positions (rows, cols) inside each block: the pixels block matching compares."""
    bw, bh = blocks["w"].astype(np.int64), blocks["h"].astype(np.int64)
    x0 = blocks["dst_x"].astype(np.int64) - bw // 2
    y0 = blocks["dst_y"].astype(np.int64) - bh // 2
    f = (np.arange(n) + 0.5) / n
    xs = x0[:, None] + (f[None, :] * bw[:, None]).astype(np.int64)
    ys = y0[:, None] + (f[None, :] * bh[:, None]).astype(np.int64)
    return ys[:, :, None], xs[:, None, :]


def _at(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    h, w = img.shape
    return img[np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)].astype(np.int16)


def _sample_field(g: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A unit-grid field (2, uh, uw) at pixel positions (nearest cell): (2, n), NaN where unknown."""
    _, uh, uw = g.shape
    cx = np.clip((x // UNIT).astype(np.int64), 0, uw - 1)
    cy = np.clip((y // UNIT).astype(np.int64), 0, uh - 1)
    return g[:, cy, cx]


class ReferenceResolver:
    """Turns one stream's codec vectors into "from the previous frame" displacements, frame by frame in display order.

    Why: with B-frames or several reference frames, a forward (``source = -1``) vector may point 1, 2, ... 8 frames back
    and the side data does not say which (``source`` is only the reference list). Each such vector is checked against
    the past decoded frames: the frame whose pixels at ``block + motion`` match the block best (mean absolute luma
    error at 4 x 4 points; ties go to the frame's usual reference, see :meth:`_spans`) is its reference, and a vector
    spanning n frames moved ``v / n`` per frame. Composing it with the earlier frames' fields instead (``v - G``)
    was tried and measured worse on the validation clips (seeds 900001-19, x264 bframes=3 ref=3: P-frame vectors
    spanning 2-8 frames within 1 px of the exact flow 50-90 % composed vs 82-98 % divided), since it sums the
    B pictures' own errors. Backward (``source = +1``) vectors reference frames not decoded yet in display order: a
    B picture's blocks predicted only backward are taken at constant velocity (:meth:`_backward`); vectors no past
    frame explains and bi-predicted blocks whose two vectors disagree are dropped.
    """

    def __init__(self, single: bool = False, window: int = HISTORY) -> None:
        self.single, self.window = single, window
        self.history: deque[tuple[int, np.ndarray]] = deque(maxlen=window)  # (display index, luma), newest last
        self.fields: deque[tuple[int, np.ndarray]] = deque(maxlen=window)  # (index, (2, uh, uw) px from index - 1)
        self.unit: tuple[np.ndarray, np.ndarray] | None = None  # the last frame's field on the stride-UNIT grid

    def resolve(self, vectors: np.ndarray | None, y: np.ndarray, index: int) -> tuple[Any, Any, dict[str, float]]:
        """(blocks, motion (2, n) px from the previous frame, facts) for one frame; ``y`` its luma."""
        if self.history and self.history[-1][0] != index - 1:  # a gap (seek, dropped frame): start over
            self.history.clear()
            self.fields.clear()
        facts = {"inter": 0.0, "dropped": 0.0, "change": None}
        if self.history:
            prev = self.history[-1][1]
            if prev.shape == y.shape:
                facts["change"] = float(np.abs(prev[::8, ::8].astype(np.int16) - y[::8, ::8]).mean())
        blocks = motion = None
        if vectors is not None and len(vectors):
            facts["inter"] = _inter_fraction(vectors, *y.shape)
            fwd = vectors[vectors["source"] < 0]
            blocks, motion, spans = self._spans(fwd, y, index)
            if len(spans):
                facts["mean_span"] = float(spans.mean())
            blocks, motion = self._backward(vectors[vectors["source"] > 0], blocks, motion, index)
            facts["dropped"] = 1.0 - len(blocks) / len(vectors)
        self._advance(blocks, motion, y, index)
        return blocks, motion, facts

    def _spans(self, fwd: np.ndarray, y: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The forward vectors a past frame explains, their motion (2, n) px and span in frames.

        A block whose pixels tell the candidate frames apart takes its best match; a block that matches its frame's
        usual reference (the span most clearly matched blocks chose) about as well as its best (flat or static
        content) takes that one: ties must not go to the nearest frame, which in a P picture after B pictures is
        rarely a reference at all."""
        scale = np.maximum(fwd["motion_scale"].astype(np.float64), 1.0)
        motion = np.stack([fwd["motion_x"] / scale, fwd["motion_y"] / scale])
        spans = np.ones(len(fwd), np.int64)
        if self.single or not self.history or not len(fwd):
            return fwd, motion, spans
        ys, xs = _sample_points(fwd)
        cur = _at(y, ys, xs)
        ry, rx = np.rint(motion[1]).astype(np.int64), np.rint(motion[0]).astype(np.int64)
        cands = [(index - i, img) for i, img in reversed(self.history) if img.shape == y.shape]
        if not cands:
            return fwd, motion, spans
        cost = np.stack(
            [
                np.abs(_at(img, ys + ry[:, None, None], xs + rx[:, None, None]) - cur).mean(axis=(1, 2))
                for _, img in cands
            ],
            axis=1,
        )
        rows = np.arange(len(fwd))
        best = cost.argmin(axis=1)
        ordered = np.sort(cost, axis=1)
        clear = ordered[:, 1] - ordered[:, 0] > TIE if cost.shape[1] > 1 else np.ones(len(fwd), bool)
        usual = int(np.bincount(best[clear] if clear.any() else best).argmax())
        best = np.where(cost[rows, usual] <= cost[rows, best] + TIE, usual, best)
        keep = cost[rows, best] <= MAX_COST
        spans = np.array([cands[j][0] for j in best], np.int64)
        return fwd[keep], motion[:, keep] / spans[keep], spans[keep]

    def _backward(
        self, bwd: np.ndarray, blocks: np.ndarray, motion: np.ndarray, index: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add the backward-only blocks of a B picture, at constant velocity: a vector w to the frame m ahead moved
        -w / m per frame. Per block, m is -w.d / |d|^2 with d the previous frame's motion there (when it moved); else
        the frame's m (the same for most blocks: the next reference picture), the median of -w.d / |d|^2 over
        the blocks predicted from both sides (d: their resolved forward displacement), else over all backward blocks
        with d the previous frame's displacement there; failing both, the backward-only blocks are dropped."""
        if not len(bwd) or not len(blocks):
            return blocks, motion
        fkey = {k: i for i, k in enumerate(zip(blocks["dst_x"], blocks["dst_y"], blocks["w"], blocks["h"]))}
        pair = np.array([fkey.get(k, -1) for k in zip(bwd["dst_x"], bwd["dst_y"], bwd["w"], bwd["h"])])
        scale = np.maximum(bwd["motion_scale"].astype(np.float64), 1.0)
        w = np.stack([bwd["motion_x"] / scale, bwd["motion_y"] / scale])
        both = pair >= 0
        m = _ahead(w[:, both], motion[:, pair[both]])
        last = self.fields[-1][1] if self.fields and self.fields[-1][0] == index - 1 else None  # previous frame's
        if (m is None or not 1 <= m <= self.window) and last is not None:
            m = _ahead(w, _sample_field(last, bwd["dst_x"].astype(np.float64), bwd["dst_y"].astype(np.float64)))
        if m is None or not 1 <= m <= self.window:
            return blocks, motion
        only = ~both
        ahead = np.full(len(bwd), float(m))
        if last is not None:  # per block where the previous frame moved: the reference may differ between blocks
            dp = _sample_field(last, bwd["dst_x"].astype(np.float64), bwd["dst_y"].astype(np.float64))
            speed = np.nan_to_num((dp**2).sum(0))
            own = np.rint(-(w * np.nan_to_num(dp)).sum(0) / np.maximum(speed, 1e-9))
            use = (speed >= 0.5**2) & (own >= 1) & (own <= self.window)
            ahead[use] = own[use]
        # A block predicted from both sides whose two vectors disagree (an average of two poor matches, common on
        # smooth texture) says nothing reliable about motion: dropped.
        agree = np.ones(len(blocks), bool)
        gap = np.abs(motion[:, pair[both]] + w[:, both] / m).max(axis=0)
        agree[pair[both][gap > MAX_DISAGREE]] = False
        return (
            np.concatenate([blocks[agree], bwd[only]]),
            np.concatenate([motion[:, agree], -w[:, only] / ahead[only]], axis=1),
        )

    def _advance(self, blocks: Any, motion: Any, y: np.ndarray, index: int) -> None:
        """Keep this frame's field (px from the previous frame, NaN uncovered) and its luma."""
        h, w = y.shape
        field = np.full((2, *grid_size(h, w, UNIT)), np.nan, np.float32)
        self.unit = grid_blocks(blocks, motion, h, w, UNIT)
        disp, cov = self.unit
        field[:, cov > 0] = disp[:, cov > 0] * UNIT
        self.fields.append((index, field))
        self.history.append((index, np.array(y, copy=True)))


def _ahead(w: np.ndarray, d: np.ndarray) -> int | None:
    """How many frames ahead backward vectors ``w`` (2, n) reach, given forward displacements ``d`` (2, n) of the same
    blocks under constant velocity (w = -m d): the median of -w.d / |d|^2 over moving blocks, None with too few."""
    ok = np.isfinite(d).all(0)
    d, w = d[:, ok], w[:, ok]
    moving = (d**2).sum(0) >= 0.25**2
    if moving.sum() < MIN_PAIRS:
        return None
    ratio = -(w[:, moving] * d[:, moving]).sum(0) / (d[:, moving] ** 2).sum(0)
    return int(np.rint(np.median(ratio)))


def reference_fields(path: str, stride: int, single: bool, limit: int | None = None) -> list[dict[str, Any]]:
    """Decode ``path`` and return, per frame, what ``MotionVectorDecoder.field`` computed before #30: ``disp``,
    ``coverage``, ``inter``, ``change``, ``dropped``, ``mean_span``, ``pict``, ``vectors`` (``single``: the stream's
    probe said one reference and no B-frames; a B picture or a backward vector turns matching on, as it did)."""
    import av

    out: list[dict[str, Any]] = []
    res = ReferenceResolver(single=single)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.options = {"flags2": "+export_mvs"}
        for index, frame in enumerate(c.decode(s)):
            if limit is not None and index >= limit:
                break
            sd = frame.side_data.get("MOTION_VECTORS")
            vectors = sd.to_ndarray() if sd is not None else None
            pict = _pict_name(frame)
            if pict == "B" or (vectors is not None and bool((vectors["source"] > 0).any())):
                res.single = False
            blocks, motion, facts = res.resolve(vectors, luma(frame), index)
            if stride == UNIT and res.unit is not None:
                disp, coverage = res.unit
            else:
                disp, coverage = grid_blocks(blocks, motion, frame.height, frame.width, stride)
            out.append({"disp": disp, "coverage": coverage, "pict": pict, "vectors": vectors, **facts})
    return out


def reference_fit_field(self: Any, disp: np.ndarray, weight: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """A per-cell displacement field on the source's stride-``stride`` grid, ``disp`` (2, h, w) in
    cells and ``weight`` (h, w) its coverage -> the same on the engine picture's grid.

    Coverage-weighted bilinear sampling at each engine cell's centre (edge cells repeat, as
    ``F.interpolate`` does; cells in the padding get weight 0), vectors rescaled from source to
    engine cells per axis. Motion vectors come at the source resolution, the state at the
    engine's: without this a padded or cropped frame would be warped by misplaced motion."""
    (ih, iw), (oy, ox), (dh, dw) = self.scaled, self.offset, self.dst_hw
    h, w = weight.shape
    gh, gw = -(-dh // stride), -(-dw // stride)
    ey, ex = (np.arange(gh) + 0.5) * dh / gh + oy, (np.arange(gw) + 0.5) * dw / gw + ox  # scaled-picture px
    inside = (ey < ih)[:, None] & (ex < iw)[None, :]
    cy, cx = ey * h / ih - 0.5, ex * w / iw - 0.5  # source cell coordinates (centres at integers)
    rows, cols = _lerp_taps(cy, h), _lerp_taps(cx, w)
    stack = np.concatenate([disp * weight, weight[None]], 0).astype(np.float64)
    r = sum(a[:, None] * b[None, :] * stack[:, i][:, :, j] for a, i in rows for b, j in cols)
    wt = np.where(inside, r[2], 0.0)
    out = np.where(wt > 1e-6, r[:2] / np.maximum(wt, 1e-6), 0.0)
    out[0] *= (iw / w) / (dw / gw)  # source cells -> scaled-picture px -> engine cells
    out[1] *= (ih / h) / (dh / gh)
    return out.astype(np.float32), wt.astype(np.float32)
