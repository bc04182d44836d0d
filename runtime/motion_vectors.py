"""Codec motion vectors as feature-grid displacement fields (cheap flow for feature propagation).

Why: H.264/MPEG-4 streams already carry block motion; FFmpeg exports it while decoding (``flags2=+export_mvs``), so
propagating features between key frames costs no optical-flow network. This module decodes a video with PyAV and turns
each frame's vectors into the displacement field the warp kernels take (``kernels.warp.warp``):

    out(p) = prev(p + disp(p)),  disp in feature pixels (pixels / stride), channel 0 = x, 1 = y.

Sign (verified by experiment, PyAV 18.1 / FFmpeg 8.1): a ``source = -1`` vector at block centre ``dst`` says the block
was predicted from ``src = dst + motion / motion_scale`` in the previous frame, so content moving +2.5 px right gives
``motion_x / motion_scale = -2.5`` and ``disp = motion / motion_scale / stride`` directly (no negation).

Vectors are only "one frame back" when the stream has no B-frames and one reference frame (x264 ``bframes=0,
ref=1``); otherwise a vector may span several frames and ``source`` cannot say how many. Such streams are detected
(B pictures, ``source = +1`` vectors, ``has_b_frames``, or an H.264 SPS with ``max_num_ref_frames > 1``) and warned
about; :func:`reencode_for_motion_vectors` rewrites them with safe settings. How far a forward vector reaches is
taken from the picture types where the codec has one reference per direction (MPEG-1/2/4 family: the previous I or P
picture) and found by block matching only where it may be any of several (H.264); see :class:`ReferenceResolver`.

Everything per frame is vectorised over blocks (issue #30): no Python loop over blocks, block sizes or candidate
frames. ``python -m benchmarks.host`` times it against the codec's own decode; ``tests/runtime/test_mv_vectorised.py``
holds it to the per-block implementation it replaced (bit-identical on the real H.264 clips).
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kernels import mvhost
from runtime.encode import EncodeOptions, VideoWriter

MV_CODECS = (
    "h264",
    "mpeg4",
    "mpeg2video",
    "mpeg1video",
    "h263",
    "h263p",
    "msmpeg4v2",
    "msmpeg4v3",
    "wmv1",
    "wmv2",
    "flv",
)
# Codecs whose pictures have one reference per direction, the nearest anchor (I or P picture) in display order:
# a forward vector's span is the distance to the previous anchor, no block matching needed (H.264 may reference
# any of several earlier pictures, and says which only through reference indices FFmpeg does not export).
ANCHOR_CODECS = ("mpeg4", "mpeg2video", "mpeg1video", "h263", "h263p", "msmpeg4v2", "msmpeg4v3", "wmv1", "wmv2", "flv")
ANCHORS = ("I", "P", "S", "SI", "SP")  # picture types that later pictures predict from (S: MPEG-4 sprite / GMC)
UNIT = 4  # rasterisation granularity in pixels: exported blocks are 8 or 16 px and 8-px aligned


class MultiFrameMotionWarning(UserWarning):
    """The stream's vectors may reference frames other than the previous one (B-frames or several references)."""


@dataclass
class MotionField:
    """One frame's motion on the feature grid.

    disp: (2, h, w) float32, feature pixels, backward-warp convention ``cur(p) = prev(p + disp(p))``.
    valid: (h, w) bool, cells covered by at least one inter-predicted block; intra/uncovered cells have disp 0.
    coverage: (h, w) float32, fraction of the cell's area covered by inter blocks.
    is_key: I-frame (no vectors at all): a natural key frame for the feature network.
    multi_frame: this frame's vectors could not be resolved to "from the previous frame" (never, since the
        :class:`ReferenceResolver` resolves or drops each vector; kept for callers that check it).
    vectors: the raw AVMotionVector records (structured array), to re-grid at another stride.
    inter: fraction of the picture coded inter by either reference list (a shot change codes little inter).
    change: mean absolute luma difference from the previous display frame (0..255), None on the first frame;
        measured when first read (only a frame with little inter coverage is asked, by the cut test), from the two
        lumas the field keeps until then: 14-20 us a frame the field thread no longer spends (issue #30).
    dropped: fraction of the frame's vectors not used (backward vectors, vectors no past frame explains).
    mean_span: mean number of frames the used forward vectors reached back before they were resolved.
    build_ms: wall ms the field thread spent building and fitting it (0 when built on the decode thread).
    pyramid: its per-scale fields for the state's shapes, when the field thread made them.
    """

    disp: np.ndarray
    valid: np.ndarray
    coverage: np.ndarray
    is_key: bool
    pict_type: str
    index: int
    stride: int
    multi_frame: bool = False
    vectors: np.ndarray | None = field(default=None, repr=False)
    inter: float | None = None
    _change: Any = field(default=None, repr=False)  # the change, or (previous luma, luma) until it is read
    dropped: float = 0.0
    mean_span: float = 1.0
    build_ms: float = 0.0  # time the field thread spent on it (built and fitted; runtime.mv_source.FieldThread)
    # (state shapes, per-scale fields) made on the field thread (runtime.propagation.pyramid_step), None: not yet
    pyramid: tuple[list[tuple[int, int]], list[np.ndarray]] | None = field(default=None, repr=False)

    def turned(self, turn: int) -> MotionField:
        """This field as seen after turning the picture ``turn`` quarter turns counter-clockwise (``np.rot90``): the
        grid turned, and each displacement with it ((dx, dy) -> (dy, -dx) per quarter turn, image axes pointing
        right and down). Where the stored size is not a multiple of the stride the cells shift by under one cell.
        ``vectors`` stay the codec's records, in the stored picture's coordinates."""
        turn %= 4
        if not turn:
            return self
        dx, dy = self.disp[0], self.disp[1]
        comps = {1: (dy, -dx), 2: (-dx, -dy), 3: (-dy, dx)}[turn]
        out = copy.copy(self)  # a shallow copy: the facts (key, inter, change, spans) hold for the turned picture
        out.disp = np.ascontiguousarray(np.stack([np.rot90(c, turn) for c in comps]), np.float32)
        out.valid = np.ascontiguousarray(np.rot90(self.valid, turn))
        out.coverage = np.ascontiguousarray(np.rot90(self.coverage, turn))
        out.pyramid = None
        return out

    @property
    def change(self) -> float | None:
        if isinstance(self._change, tuple):
            prev, y = self._change
            self._change = mvhost.change(prev, y) if mvhost.available() else _change(prev, y)
        return self._change


@dataclass
class StreamInfo:
    """What could be learned about how far the stream's vectors reach."""

    codec: str
    width: int
    height: int
    has_b_frames: bool
    max_ref_frames: int | None  # H.264 SPS max_num_ref_frames; None when not parsable
    nal_length: int = 0  # H.264 in MP4/MKV (avcC): bytes of each NAL unit's length prefix; 0: Annex B start codes

    @property
    def multi_frame(self) -> bool:
        return self.has_b_frames or (self.max_ref_frames is not None and self.max_ref_frames > 1)

    @property
    def has_vectors(self) -> bool:
        """FFmpeg exports motion vectors for H.264 and the MPEG-1/2/4 / H.263 family only (not HEVC, VP9, AV1)."""
        return self.codec in MV_CODECS

    def describe(self) -> str:
        """Why the vectors may span several frames, e.g. ``has_b_frames=True, max_ref_frames=3``."""
        return f"has_b_frames={self.has_b_frames}, max_ref_frames={self.max_ref_frames}"


def grid_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """Feature grid of a stride-``stride`` network (ceil, like padded convolutions; exact for multiples)."""
    return math.ceil(height / stride), math.ceil(width / stride)


def field_from_vectors(
    vectors: np.ndarray | None, height: int, width: int, stride: int, source: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted average of the ``source`` vectors over each feature cell.

    Returns ``(disp (2, h, w) float32 in feature px, coverage (h, w) float32)``. Each block covers
    ``[dst - size/2, dst + size/2)``; a cell's displacement is the mean over the part of it covered by blocks, weighted
    by overlap area, with sub-pel precision from ``motion / motion_scale``.
    """
    v = vectors[vectors["source"] == source] if vectors is not None and len(vectors) else None
    if v is None:
        return grid_blocks(None, None, height, width, stride)
    scale = np.maximum(v["motion_scale"].astype(np.float64), 1.0)
    return grid_blocks(v, np.stack([v["motion_x"] / scale, v["motion_y"] / scale]), height, width, stride)


def grid_blocks(
    blocks: np.ndarray | mvhost.Picked | None, motion: np.ndarray | None, height: int, width: int, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise blocks (``w, h, dst_x, dst_y`` of AVMotionVector records) carrying ``motion`` (2, n) in pixels onto the
    stride-``stride`` grid: the area-weighted mean per cell in feature px, and the covered fraction of each cell.

    Vectorised (issue #30): one ``bincount`` per channel over every (block, cell) pair, on the coarsest grid the
    blocks are aligned to (8 px for most codecs' blocks, so a quarter of the stride-4 cells), then repeated onto the
    stride-4 units. Sums run in the order of the earlier per-block-size loop (sizes ascending, blocks in stream order,
    cells row-major), so overlapping blocks give bit-identical results."""
    if stride % UNIT:
        raise ValueError(f"stride must be a multiple of {UNIT}, got {stride}")
    gh, gw = grid_size(height, width, stride)
    k = stride // UNIT
    uh, uw = gh * k, gw * k  # unit grid, padded to whole cells
    ph, pw = math.ceil(height / UNIT), math.ceil(width / UNIT)  # units inside the picture
    if blocks is None or not len(blocks):
        z = np.zeros((gh, gw), np.float32)
        return np.stack([z, z]), z
    if k == 1 and mvhost.usable(blocks):
        return mvhost.grid_unit(blocks, motion, height, width)
    if isinstance(blocks, mvhost.Picked):
        blocks = blocks.array()
    acc, m = _rasterise(blocks, motion, uh, uw, ph, pw)
    if k == 1:  # the runtime's grid: cells are units (an inside unit has area 1); each m x m block of them is equal
        disp = np.zeros((2, *acc.shape[1:]), np.float64)
        np.divide(acc[:2], acc[2], out=disp, where=acc[2] > 0)
        out = _units_of(np.concatenate([disp / stride, acc[2:]]).astype(np.float32), m, uh, uw, ph, pw)
        return out[:2], out[2]
    disp = np.zeros((2, gh, gw), np.float64)
    cells = _units_of(acc, m, uh, uw, ph, pw).reshape(3, gh, k, gw, k).sum(axis=(2, 4))
    rows = np.clip(ph - np.arange(gh) * k, 0, k).astype(np.float64)  # picture units per cell row / column
    cols = np.clip(pw - np.arange(gw) * k, 0, k).astype(np.float64)
    np.divide(cells[:2], cells[2], out=disp, where=cells[2] > 0)
    coverage = cells[2] / np.maximum(rows[:, None] * cols[None, :], 1.0)
    return (disp / stride).astype(np.float32), coverage.astype(np.float32)


def _units_of(cells: np.ndarray, m: int, uh: int, uw: int, ph: int, pw: int) -> np.ndarray:
    """Channels (c, ceil(uh / m), ceil(uw / m)) on the m-unit grid -> (c, uh, uw) on the stride-UNIT units, 0 outside
    the ph x pw picture (blocks of the coded, padded area beyond the picture do not count)."""
    if m > 1:
        cells = cells.repeat(m, axis=1).repeat(m, axis=2)[:, :uh, :uw]
    cells[:, ph:, :] = 0.0
    cells[:, :, pw:] = 0.0
    return cells


def _rasterise(blocks: np.ndarray, motion: np.ndarray, uh: int, uw: int, ph: int, pw: int) -> tuple[np.ndarray, int]:
    """(sum dx * area, sum dy * area, area) on the m-unit grid (3, ceil(uh / m), ceil(uw / m)), and m.

    Blocks whose corners and sizes are multiples of m units are rasterised on the m-unit grid: every unit of an
    m x m cell is covered by the same blocks, so its sums are the cell's numbers (:func:`_units_of` repeats them)."""
    bw, bh = blocks["w"].astype(np.int64), blocks["h"].astype(np.int64)
    x0, y0 = blocks["dst_x"].astype(np.int64) - bw // 2, blocks["dst_y"].astype(np.int64) - bh // 2
    g = int(np.gcd.reduce(np.concatenate([x0, y0, bw, bh])))
    m = g // UNIT if g and g % UNIT == 0 else 1
    cell = UNIT * m
    mh, mw = -(-uh // m), -(-uw // m)
    order = np.argsort(bw * 4096 + bh, kind="stable")
    nx, ny = np.maximum(bw[order] // cell, 1), np.maximum(bh[order] // cell, 1)
    count = nx * ny
    which = np.repeat(order, count)
    off = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    span = np.repeat(nx, count)
    xs, ys = x0[which] // cell + off % span, y0[which] // cell + off // span
    ok = (xs >= 0) & (xs < -(-pw // m)) & (ys >= 0) & (ys < -(-ph // m))
    idx, which = (ys * mw + xs)[ok], which[ok]
    acc = np.empty((3, mh * mw), np.float64)
    acc[0] = np.bincount(idx, weights=motion[0][which], minlength=mh * mw)
    acc[1] = np.bincount(idx, weights=motion[1][which], minlength=mh * mw)
    acc[2] = np.bincount(idx, minlength=mh * mw)
    return acc.reshape(3, mh, mw), m


# ----------------------------------------------------------------- which frame a vector references

HISTORY = 16  # display frames a vector may reach back (x264 refs=3 with a B-pyramid reaches 8)
TIE = 1.0  # mean absolute luma error (of 255) within which a block matches two frames equally well
MIN_PAIRS = 8  # bi-predicted moving blocks needed to tell how far ahead a B picture's backward vectors reach
MAX_DISAGREE = 1.0  # px per frame between the two vectors of a bi-predicted block above which it is dropped
MAX_COST = 40.0  # mean absolute luma error above which no past frame explains the block: the vector is dropped
POINTS = 4  # block matching compares POINTS x POINTS pixels per block


def luma(frame: Any) -> np.ndarray:
    """The decoded picture's luma plane (H, W) uint8, read from the frame's first plane without a colour conversion."""
    name = getattr(getattr(frame, "format", None), "name", "")
    if name.startswith(("yuv", "yuvj", "nv12", "gray")) and not name.endswith(("p10le", "p10be", "p12le", "p16le")):
        plane = frame.planes[0]
        rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
        return rows[: frame.height, : frame.width]
    return _own_reformatter().reformat(frame, format="gray").to_ndarray()


_THREAD = threading.local()


def _own_reformatter() -> Any:
    """This thread's own PyAV reformatter. Why not ``frame.to_ndarray``: that converts through a reformatter PyAV
    keeps on the frame, and the field thread reads the luma of a frame whose RGB another thread may be converting at
    the same moment (10-bit and other formats without a plain 8-bit luma plane); two threads in one scaler context
    deadlocked inside FFmpeg (found on 10-bit H.264 in every vector mode)."""
    own = getattr(_THREAD, "reformatter", None)
    if own is None:
        from av.video.reformatter import VideoReformatter

        own = _THREAD.reformatter = VideoReformatter()
    return own


def _points(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (POINTS, n) and columns (POINTS, n) of the POINTS x POINTS pixels block matching compares in each block."""
    bw, bh = blocks["w"].astype(np.int64), blocks["h"].astype(np.int64)
    f = ((np.arange(POINTS) + 0.5) / POINTS)[:, None]
    xs = (blocks["dst_x"].astype(np.int64) - bw // 2)[None, :] + (f * bw[None, :]).astype(np.int64)
    ys = (blocks["dst_y"].astype(np.int64) - bh // 2)[None, :] + (f * bh[None, :]).astype(np.int64)
    return ys, xs


def _flat(ys: np.ndarray, xs: np.ndarray, height: int, width: int, dy: Any = 0, dx: Any = 0) -> np.ndarray:
    """Flat pixel indices (POINTS * POINTS, n) of the points ``_points`` gave, moved by (dx, dy) whole pixels per block
    and clamped to the picture (points first, so the per-block sums run over contiguous rows)."""
    xs, ys = np.clip(xs + dx, 0, width - 1), np.clip(ys + dy, 0, height - 1)
    return (ys[:, None, :] * width + xs[None, :, :]).reshape(POINTS * POINTS, -1)


def _sample_field(g: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A unit-grid field (c, uh, uw) at pixel positions (nearest cell): (c, n)."""
    c, uh, uw = g.shape
    cx = np.clip((x // UNIT).astype(np.int64), 0, uw - 1)
    cy = np.clip((y // UNIT).astype(np.int64), 0, uh - 1)
    return np.take(g.reshape(c, -1), cy * uw + cx, axis=1)


def _pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each block of ``b``, the index of the last block of ``a`` with the same position and size, else -1."""

    def key(v: np.ndarray) -> np.ndarray:
        x, y = v["dst_x"].astype(np.int64) + 32768, v["dst_y"].astype(np.int64) + 32768
        return (x << 32) | (y << 16) | (v["w"].astype(np.int64) << 8) | v["h"].astype(np.int64)

    ka, kb = key(a), key(b)
    order = np.argsort(ka, kind="stable")
    pos = np.searchsorted(ka[order], kb, side="right") - 1
    hit = (pos >= 0) & (ka[order][np.maximum(pos, 0)] == kb)
    return np.where(hit, order[np.maximum(pos, 0)], -1)


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

    Everything is vectorised over blocks (issue #30): the past lumas sit in one ring array, so matching every block
    against every candidate frame is one gather; a stream known to have one reference (``single``) never matches, and
    an ``anchored`` one (MPEG-1/2/4 family, one reference per direction) takes every forward vector's span from the
    picture types: the distance to the previous I or P picture.
    """

    def __init__(
        self,
        single: bool = False,
        window: int = HISTORY,
        anchored: bool = False,
        refs: int | None = None,
        dpb: int | None = None,
    ) -> None:
        self.single, self.window, self.anchored = single, window, anchored
        # P-only streams: every picture is a reference and the decoder keeps the last ``refs`` (the SPS's
        # max_num_ref_frames), so no vector reaches further back; None where B pictures reorder them
        self.refs = refs
        # the SPS's max_num_ref_frames for any H.264 stream: with the packets' decode order (``resolve``'s ``order``)
        # only that many reference pictures decoded before a frame can be its forward references
        self.dpb = dpb
        self.order: dict[int, tuple[int, bool]] = {}  # display index -> (decode position, is a reference picture)
        self.anchor: int | None = None  # anchored codecs: display index of the last I / P picture
        self.ring: np.ndarray | None = None  # (window, H, W) past lumas; display index i in slot i % window
        self.prev_luma: np.ndarray | None = None  # the previous display frame's luma (a view of its plane)
        self.held = 0  # consecutive past frames in the ring, the newest being display index self.last
        self.last = -1
        self.prev_field: tuple[int, Any] | None = None  # (index, its unit field (disp, coverage)) for _backward
        self.unit: tuple[np.ndarray, np.ndarray] | None = None  # the last frame's field on the stride-UNIT grid

    def remember(self, index: int, y: np.ndarray) -> None:
        """Keep display frame ``index``'s luma: as the previous picture (the ``change`` fact; a view, no copy) and,
        where vectors may reach further back, in the ring of candidates block matching reads. A stream known to have
        one reference, or whose codec names it (``anchored``), is never matched: no copy (at 720p the copy cost a
        quarter of the whole field)."""
        self.prev_luma = y
        if self.single or self.anchored:
            self.held, self.last = 0, index
            return
        if self.ring is None or self.ring.shape[1:] != y.shape:
            self.ring = np.zeros((self.window, *y.shape), np.uint8)
            self.held = 0
        elif self.held and self.last != index - 1:
            self.held = 0
        self.ring[index % self.window] = y
        self.held, self.last = min(self.held + 1, self.window), index

    def _candidates(self, shape: tuple[int, ...]) -> int:
        """How many past frames (newest first, spans 1..n) can be matched against a picture of ``shape``."""
        return self.held if self.ring is not None and self.ring.shape[1:] == shape else 0

    def resolve(
        self,
        vectors: np.ndarray | None,
        y: np.ndarray,
        index: int,
        pict: str | None = None,
        order: tuple[int, bool] | None = None,
    ) -> tuple[Any, Any, dict[str, float]]:
        """(blocks, motion (2, n) px from the previous frame, facts) for one frame; ``y`` its luma, ``pict`` its
        picture type (``anchored`` streams: the previous I / P picture is every forward vector's reference),
        ``order`` its (decode position, is a reference picture) from :class:`PacketLog` where known."""
        if self.last >= 0 and self.last != index - 1:  # a gap (seek, dropped frame): start over
            self.held = 0
            self.prev_field = None
            self.anchor = None
            self.prev_luma = None
            self.order.clear()
        self.order.pop(index - self.window - 1, None)
        if order is not None:
            self.order[index] = order
        else:
            self.order.pop(index, None)
        facts = {"inter": 0.0, "dropped": 0.0, "change": None}
        prev = self.prev_luma
        if prev is not None and prev.shape == y.shape:
            facts["change"] = (prev, y)  # measured if MotionField.change is read
        blocks = motion = None
        if vectors is not None and len(vectors) and mvhost.usable(vectors):
            blocks, motion = self._resolve_c(vectors, y, index, pict, facts)
        elif vectors is not None and len(vectors):
            facts["inter"] = _inter_fraction(vectors, *y.shape)
            fwd = vectors[vectors["source"] < 0]
            blocks, motion, spans = self._spans(fwd, y, index, pict)
            if len(spans):
                facts["mean_span"] = float(spans.mean())
            blocks, motion = self._backward(vectors[vectors["source"] > 0], blocks, motion, index)
            facts["dropped"] = 1.0 - len(blocks) / len(vectors)
        self._advance(blocks, motion, y, index)
        if pict in ANCHORS:
            self.anchor = index
        return blocks, motion, facts

    def _reach(self, shape: tuple[int, ...], index: int, pict: str | None) -> tuple[int, int]:
        """How this frame's forward vectors find their reference: ``(span, 0)`` for an anchored codec (every vector
        spans the distance to the previous I / P picture), else ``(0, n)``: match against the n newest past frames
        (0: a single-reference stream, or nothing held yet; no matching, every span 1)."""
        if self.anchored and self.anchor is not None and pict is not None:
            return max(1, index - self.anchor), 0
        return 0, 0 if self.single else min(self._candidates(shape), self.refs or self.window)

    def _allowed(self, index: int, n_cand: int) -> np.ndarray | None:
        """Which spans 1..n_cand a forward vector of frame ``index`` can have (uint8 mask): the reference pictures
        decoded before it, the newest ``dpb`` of them in decode order (the decoder keeps no more). None where the
        packets did not tell (a frame without pts, another codec): every held frame is a candidate, as before."""
        me = self.order.get(index)
        if me is None or n_cand <= 1:
            return None
        past = []
        for span in range(1, n_cand + 1):
            got = self.order.get(index - span)
            if got is None:
                return None
            if got[0] < me[0] and got[1]:
                past.append((got[0], span))
        past.sort(reverse=True)
        keep = past[: self.dpb] if self.dpb else past
        if not keep:
            return None
        mask = np.zeros(n_cand, np.uint8)
        mask[[span - 1 for _, span in keep]] = 1
        return mask

    def _resolve_c(
        self, vectors: np.ndarray, y: np.ndarray, index: int, pict: str | None, facts: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_spans` and :meth:`_backward` (and the inter fraction) in one call of ``kernels/mvhost.c``: the same
        rules and arithmetic, without numpy's per-call overhead on a few hundred blocks."""
        span, n_cand = self._reach(y.shape, index, pict)
        allowed = self._allowed(index, n_cand)
        prev = self.prev_field[1] if self.prev_field is not None and self.prev_field[0] == index - 1 else None
        idx, motion, facts["inter"], mean_span = mvhost.resolve(
            vectors, y, self.ring, self.last, n_cand, span, prev, allowed
        )
        if mean_span is not None:
            facts["mean_span"] = mean_span
        facts["dropped"] = 1.0 - len(idx) / len(vectors)
        return mvhost.Picked(vectors, idx), motion

    def _spans(
        self, fwd: np.ndarray, y: np.ndarray, index: int, pict: str | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The forward vectors a past frame explains, their motion (2, n) px and span in frames.

        A block whose pixels tell the candidate frames apart takes its best match; a block that matches its frame's
        usual reference (the span most clearly matched blocks chose) about as well as its best (flat or static
        content) takes that one: ties must not go to the nearest frame, which in a P picture after B pictures is
        rarely a reference at all."""
        scale = np.maximum(fwd["motion_scale"].astype(np.float64), 1.0)
        motion = np.stack([fwd["motion_x"] / scale, fwd["motion_y"] / scale])
        spans = np.ones(len(fwd), np.int64)
        span, n_cand = self._reach(y.shape, index, pict)
        if span and len(fwd):
            spans[:] = span  # the codec's one forward reference: the previous anchor
            return fwd, motion / spans, spans
        if not n_cand or not len(fwd):
            return fwd, motion, spans
        assert self.ring is not None
        h, w = y.shape
        ys, xs = _points(fwd)
        cur = np.take(y, _flat(ys, xs, h, w))  # (16, n)
        at = _flat(ys, xs, h, w, np.rint(motion[1]).astype(np.int64), np.rint(motion[0]).astype(np.int64))
        slots = (self.last - np.arange(n_cand)) % self.window  # newest first: span j + 1
        lo = int(slots[-1])
        rows = self.ring.reshape(self.window, -1)
        if lo <= self.last % self.window:  # the held frames are one run of slots: read only those
            rows, slots = rows[lo : self.last % self.window + 1], slots - lo
        past = np.take(rows, at, axis=1)  # (frames, 16, n)
        diff = np.maximum(past, cur)
        diff -= np.minimum(past, cur)  # |past - cur| without leaving uint8
        cost = diff.sum(axis=1, dtype=np.uint16)[slots].T / float(POINTS * POINTS)  # (n, cands), mean abs error
        allowed = self._allowed(index, n_cand)
        if allowed is not None:  # frames this one cannot reference (decode order, non-reference pictures)
            cost[:, allowed == 0] = np.inf
        best = cost.argmin(axis=1)
        if n_cand > 1:
            two = np.partition(cost, 1, axis=1)
            clear = two[:, 1] - two[:, 0] > TIE
        else:
            clear = np.ones(len(fwd), bool)
        usual = int(np.bincount(best[clear] if clear.any() else best).argmax())
        best = np.where(cost[:, usual] <= np.take_along_axis(cost, best[:, None], 1)[:, 0] + TIE, usual, best)
        keep = np.take_along_axis(cost, best[:, None], 1)[:, 0] <= MAX_COST
        spans = best + 1
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
        pair = _pairs(blocks, bwd)
        scale = np.maximum(bwd["motion_scale"].astype(np.float64), 1.0)
        w = np.stack([bwd["motion_x"] / scale, bwd["motion_y"] / scale])
        both = pair >= 0
        mate = np.take(motion, pair[both], axis=1)  # the forward displacement of each bi-predicted block
        m = _ahead(w[:, both], mate)
        dp = None  # the previous frame's motion (px) under each backward block, NaN where it had none
        if self.prev_field is not None and self.prev_field[0] == index - 1:
            disp, cov = self.prev_field[1]
            x, y = bwd["dst_x"].astype(np.float64), bwd["dst_y"].astype(np.float64)
            dp = _sample_field(disp, x, y) * np.float32(UNIT)
            dp[:, _sample_field(cov[None], x, y)[0] <= 0] = np.nan
        if (m is None or not 1 <= m <= self.window) and dp is not None:
            m = _ahead(w, dp)
        if m is None or not 1 <= m <= self.window:
            return blocks, motion
        only = ~both
        ahead = np.full(len(bwd), float(m))
        if dp is not None:  # per block where the previous frame moved: the reference may differ between blocks
            speed = np.nan_to_num((dp**2).sum(0))
            own = np.rint(-(w * np.nan_to_num(dp)).sum(0) / np.maximum(speed, 1e-9))
            use = (speed >= 0.5**2) & (own >= 1) & (own <= self.window)
            ahead[use] = own[use]
        # A block predicted from both sides whose two vectors disagree (an average of two poor matches, common on
        # smooth texture) says nothing reliable about motion: dropped.
        agree = np.ones(len(blocks), bool)
        gap = np.abs(mate + w[:, both] / m).max(axis=0)
        agree[pair[both][gap > MAX_DISAGREE]] = False
        return (
            np.concatenate([blocks[agree], bwd[only]]),
            np.concatenate([motion[:, agree], -w[:, only] / ahead[only]], axis=1),
        )

    def _advance(self, blocks: Any, motion: Any, y: np.ndarray, index: int) -> None:
        """Keep this frame's field (px from the previous frame, NaN uncovered) and its luma."""
        h, w = y.shape
        self.unit = grid_blocks(blocks, motion, h, w, UNIT)
        self.prev_field = (index, self.unit)  # sampled only where a B picture's backward blocks need it
        self.remember(index, y)


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


def _change(prev: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute luma difference (0..255) between two pictures at every 8th pixel of every 8th row."""
    return float(np.abs(prev[::8, ::8].astype(np.int16) - y[::8, ::8]).mean())


def _inter_fraction(vectors: np.ndarray, height: int, width: int) -> float:
    """Fraction of the picture covered by inter-predicted blocks of either reference list (a shot change has few)."""
    bw, bh = vectors["w"].astype(np.int64), vectors["h"].astype(np.int64)
    x0, y0 = vectors["dst_x"].astype(np.int64) - bw // 2, vectors["dst_y"].astype(np.int64) - bh // 2
    _, first = np.unique(((x0 + 64) * 65536 + y0 + 64) * 4096 + bw * 64 + bh, return_index=True)  # each block once
    x0, y0, bw, bh = x0[first], y0[first], bw[first], bh[first]
    cw = np.clip(x0 + bw, 0, width) - np.clip(x0, 0, width)
    ch = np.clip(y0 + bh, 0, height) - np.clip(y0, 0, height)
    return float(min(1.0, (cw * ch).sum() / max(height * width, 1)))


# ----------------------------------------------------------------- H.264 SPS: max_num_ref_frames


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u(self, n: int) -> int:
        v = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]
            v = (v << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _unescape(nal: bytes) -> bytes:
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def sps_max_ref_frames(sps_nal: bytes) -> int:
    """max_num_ref_frames from an H.264 SPS NAL unit (header byte included)."""
    b = _Bits(_unescape(sps_nal[1:]))
    profile = b.u(8)
    b.u(16)  # constraint flags + level
    b.ue()  # seq_parameter_set_id
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma = b.ue()
        if chroma == 3:
            b.u(1)
        b.ue(), b.ue(), b.u(1)  # bit depths, qpprime_y_zero_transform_bypass
        if b.u(1):  # seq_scaling_matrix_present_flag
            for i in range(12 if chroma == 3 else 8):
                if b.u(1):
                    last = nxt = 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt:
                            nxt = (last + b.se() + 256) % 256
                        last = nxt or last
    b.ue()  # log2_max_frame_num_minus4
    poc_type = b.ue()
    if poc_type == 0:
        b.ue()
    elif poc_type == 1:
        b.u(1), b.se(), b.se()
        for _ in range(b.ue()):
            b.se()
    return b.ue()


def _find_sps(data: bytes) -> bytes | None:
    """The first SPS in avcC extradata or in an Annex-B byte stream."""
    if len(data) > 8 and data[0] == 1 and data[5] & 0x1F:  # avcC
        size = int.from_bytes(data[6:8], "big")
        return data[8 : 8 + size]
    for part in data.split(b"\x00\x00\x01")[1:]:
        if part and part[0] & 0x1F == 7:
            return part.rstrip(b"\x00")
    return None


def probe(container, stream) -> StreamInfo:
    """Stream facts that bound how far its vectors reach (B-frames, reference count)."""
    cc = stream.codec_context
    refs = None
    if cc.name in ("h264",):
        sps = _find_sps(bytes(cc.extradata or b""))
        if sps is not None:
            try:
                refs = sps_max_ref_frames(sps)
            except (ValueError, IndexError):
                refs = None
    extra = bytes(cc.extradata or b"")
    nal_length = (extra[4] & 3) + 1 if cc.name == "h264" and len(extra) > 4 and extra[0] == 1 else 0
    return StreamInfo(cc.name, cc.width, cc.height, bool(cc.has_b_frames), refs, nal_length)


# ----------------------------------------------------------------- H.264 packets: decode order and reference pictures

SLICE_NALS = (1, 5)  # coded slice of a non-IDR / IDR picture


def nal_ref_idc(data: bytes | memoryview, nal_length: int = 0) -> int | None:
    """The nal_ref_idc of an H.264 access unit's first slice (0: no later picture may predict from it), from its
    length-prefixed (``nal_length`` bytes, avcC) or Annex-B NAL units; None when it holds no slice."""
    n = len(data)
    if nal_length:
        i = 0
        while i + nal_length < n:
            size = int.from_bytes(data[i : i + nal_length], "big")
            i += nal_length
            if data[i] & 0x1F in SLICE_NALS:
                return (data[i] >> 5) & 3
            i += size
        return None
    # parameter sets and SEI come first: the first slice header is near the start, so its first 4 KiB are read first
    for raw in (bytes(data[:4096]), bytes(data)) if n > 4096 else (bytes(data),):
        for i in _starts(raw):
            if raw[i + 3] & 0x1F in SLICE_NALS:
                return (raw[i + 3] >> 5) & 3
    return None


def _starts(raw: bytes) -> Iterator[int]:
    i = raw.find(b"\x00\x00\x01")
    while 0 <= i < len(raw) - 3:
        yield i
        i = raw.find(b"\x00\x00\x01", i + 3)


class PacketLog:
    """Each H.264 packet's decode position and whether it is a reference picture, by presentation time.

    Why: a forward vector can only point at a picture decoded before its own that the codec kept as a reference.
    With B-frames, the display neighbours of a P picture are decoded after it and non-reference B pictures are never
    kept, so of the 16 past frames block matching would weigh only the last ``max_num_ref_frames`` reference pictures
    can be meant (about 4): fewer candidates to match, and no block resolved to a frame it cannot reference (issue
    #30). The demuxing loop calls :meth:`note` with each packet before decoding it; the field looks frames up by pts."""

    LIMIT = 512  # packets remembered (frames come out of the decoder a few packets after their own)

    def __init__(self, nal_length: int) -> None:
        self.nal_length, self.count = nal_length, 0
        self.seen: OrderedDict[int, tuple[int, bool]] = OrderedDict()

    def note(self, packet: Any) -> None:
        """Remember one packet (demux order is decode order). Reads only its NAL headers."""
        if packet.pts is None or not packet.size:
            return
        ref = nal_ref_idc(memoryview(packet), self.nal_length)
        if ref is not None:
            self.seen[int(packet.pts)] = (self.count, ref > 0)
            self.count += 1
            if len(self.seen) > self.LIMIT:
                self.seen.popitem(last=False)  # one atomic call: the field thread reads concurrently

    def get(self, pts: int | None) -> tuple[int, bool] | None:
        """(decode position, is a reference picture) of the frame shown at ``pts``, or None if unknown."""
        return None if pts is None else self.seen.get(int(pts))


# ----------------------------------------------------------------- decoding


def _picture_types() -> Any:
    """PyAV's PictureType enum, imported once (an import statement per frame costs more than the lookup)."""
    if "PictureType" not in _AV:
        from av.video.frame import PictureType

        _AV["PictureType"] = PictureType
    return _AV["PictureType"]


_AV: dict[str, Any] = {}


def _pict_name(frame) -> str:
    """ "I", "P", "B", ... (PyAV 18 returns a plain int; older versions an enum or a string)."""
    pt = frame.pict_type
    if isinstance(pt, str):
        return pt
    try:
        return _picture_types()(int(pt)).name
    except (ImportError, ValueError, TypeError):
        return getattr(pt, "name", str(pt))


class MotionVectorDecoder:
    """Decode a video, yielding ``(frame_rgb (H, W, 3) uint8, MotionField)`` per frame, in display order.

    ``with MotionVectorDecoder("clip.mp4", stride=16) as dec: for rgb, mf in dec: ...``. Each forward vector is
    resolved to the past frame it references (:class:`ReferenceResolver`) and expressed as displacement from the
    previous frame; a stream whose vectors may span several frames warns once (:class:`MultiFrameMotionWarning`):
    its backward vectors are dropped and re-encoding gives exact single-reference vectors.
    """

    def __init__(self, path: str | os.PathLike, stride: int = 16, warn: bool = True, decode_order: bool = True) -> None:
        import av

        self.path, self.stride, self.warn, self.decode_order = Path(path), stride, warn, decode_order
        if not self.path.is_file():
            raise FileNotFoundError(f"no such video: {self.path}")
        self._container = av.open(str(self.path))
        if not self._container.streams.video:
            self._container.close()
            raise ValueError(f"{self.path} has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.codec_context.options = {"flags2": "+export_mvs"}
        self.setup(probe(self._container, self._stream))

    def setup(self, info: StreamInfo | None) -> None:
        """Per-stream state: the reference resolver (block matching only where vectors may span several frames)."""
        self.info = info
        self._warned = False
        self.resolver = ReferenceResolver(
            single=info is not None and not info.multi_frame,
            anchored=info is not None and info.codec in ANCHOR_CODECS,
            refs=info.max_ref_frames if info is not None and info.codec == "h264" and not info.has_b_frames else None,
            dpb=info.max_ref_frames if info is not None and info.codec == "h264" else None,
        )
        h264 = info is not None and info.codec == "h264" and self.decode_order
        self.packets = PacketLog(info.nal_length) if h264 else None
        if info is not None and info.multi_frame:
            self._warn(info.describe())

    def _warn(self, why: str) -> None:
        if self.warn and not self._warned:
            message = multi_frame_message(self.path, why, self.resolver.anchored)
            warnings.warn(message, MultiFrameMotionWarning, stacklevel=3)
            self._warned = True

    def __enter__(self) -> MotionVectorDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def __iter__(self) -> Iterator[tuple[np.ndarray, MotionField]]:
        index = 0
        for packet in self._container.demux(self._stream):
            self.packet(packet)
            for frame in packet.decode():
                yield frame.to_ndarray(format="rgb24"), self.field(frame, index)
                index += 1

    def packet(self, packet: Any) -> None:
        """Note a demuxed packet before it is decoded (H.264: its decode position and reference flag, which bound
        the frames block matching weighs); the demuxing loop calls this, nothing else needs to."""
        if self.packets is not None:
            self.packets.note(packet)

    def field(self, frame, index: int) -> MotionField:
        """The MotionField of one decoded frame (frames must come in display order, as decoders return them)."""
        sd = frame.side_data.get("MOTION_VECTORS")
        vectors = sd.to_ndarray() if sd is not None else None
        pict = _pict_name(frame)
        if pict == "B" or (vectors is not None and bool((vectors["source"] > 0).any())):
            self.resolver.single, self.resolver.refs = False, None  # the stream said otherwise; trust the pictures
            self._warn(f"frame {index} is a {pict} picture")
        order = self.packets.get(frame.pts) if self.packets is not None else None
        blocks, motion, facts = self.resolver.resolve(vectors, luma(frame), index, pict, order)
        if self.stride == UNIT and self.resolver.unit is not None:
            disp, coverage = self.resolver.unit
        else:
            disp, coverage = grid_blocks(blocks, motion, frame.height, frame.width, self.stride)
        return MotionField(
            disp=disp,
            valid=coverage > 0,
            coverage=coverage,
            is_key=pict == "I" or (vectors is None and bool(getattr(frame, "key_frame", False))),
            pict_type=pict,
            index=index,
            stride=self.stride,
            vectors=vectors,
            inter=facts["inter"],
            _change=facts["change"],
            dropped=facts["dropped"],
            mean_span=facts.get("mean_span", 1.0),
        )


def multi_frame_message(path: str | os.PathLike, why: str, anchored: bool = False) -> str:
    """The one line a multi-frame stream gets (the CLI prints it like its other warnings); ``anchored``: an
    MPEG-1/2/4-family stream, whose forward vectors reference the previous I / P picture (no matching)."""
    how = "the previous I or P picture (the codec's only forward reference)" if anchored else "by block matching"
    return (
        f"{path}: motion vectors may span several frames ({why}); each forward vector is resolved to the frame it "
        f"references {how}, backward-only ones at constant velocity; for exact single-reference vectors "
        "re-encode (--reencode-mv, or runtime.motion_vectors.reencode_for_motion_vectors())"
    )


def reencode_for_motion_vectors(
    src: str | os.PathLike, dst: str | os.PathLike | None = None, gop: int = 250, crf: int = 18, preset: str = "fast"
) -> Path:
    """Re-encode ``src`` with libx264, no B-frames, one reference frame and no scene-cut I-frames, so that every vector
    means "from the previous frame". Writes ``dst`` (default: a new temporary .mp4) atomically; returns its path."""
    import av

    if "libx264" not in av.codecs_available:
        raise RuntimeError("this PyAV build has no libx264 encoder")
    if dst is None:
        fd, name = tempfile.mkstemp(suffix=".mp4", prefix="deqstream_mv_")
        os.close(fd)
        dst = name
    options = EncodeOptions(crf=crf, bframes=0, refs=1, gop=gop, preset=preset).av_options()
    with av.open(str(src)) as inp:
        vin = inp.streams.video[0]
        with VideoWriter(dst, vin.average_rate or 25, options) as out:
            for frame in inp.decode(vin):
                out.write(frame.to_ndarray(format="rgb24"))
            if out.frames == 0:
                raise ValueError(f"{src} has no decodable video frames")
    return Path(dst)
