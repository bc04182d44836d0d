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
about; :func:`reencode_for_motion_vectors` rewrites them with safe settings.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
    change: mean absolute luma difference from the previous display frame (0..255), None on the first frame.
    dropped: fraction of the frame's vectors not used (backward vectors, vectors no past frame explains).
    mean_span: mean number of frames the used forward vectors reached back before they were resolved.
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
    change: float | None = None
    dropped: float = 0.0
    mean_span: float = 1.0


@dataclass
class StreamInfo:
    """What could be learned about how far the stream's vectors reach."""

    codec: str
    width: int
    height: int
    has_b_frames: bool
    max_ref_frames: int | None  # H.264 SPS max_num_ref_frames; None when not parsable

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


# ----------------------------------------------------------------- which frame a vector references

HISTORY = 16  # display frames a vector may reach back (x264 refs=3 with a B-pyramid reaches 8)
TIE = 1.0  # mean absolute luma error (of 255) within which a block matches two frames equally well
MIN_PAIRS = 8  # bi-predicted moving blocks needed to tell how far ahead a B picture's backward vectors reach
MAX_DISAGREE = 1.0  # px per frame between the two vectors of a bi-predicted block above which it is dropped
MAX_COST = 40.0  # mean absolute luma error above which no past frame explains the block: the vector is dropped


def luma(frame: Any) -> np.ndarray:
    """The decoded picture's luma plane (H, W) uint8, read from the frame's first plane without a colour conversion."""
    name = getattr(getattr(frame, "format", None), "name", "")
    if name.startswith(("yuv", "yuvj", "nv12", "gray")) and not name.endswith(("p10le", "p10be", "p12le", "p16le")):
        plane = frame.planes[0]
        rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
        return rows[: frame.height, : frame.width]
    return frame.to_ndarray(format="gray")


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
    return StreamInfo(cc.name, cc.width, cc.height, bool(cc.has_b_frames), refs)


# ----------------------------------------------------------------- decoding


def _pict_name(frame) -> str:
    """ "I", "P", "B", ... (PyAV 18 returns a plain int; older versions an enum or a string)."""
    pt = frame.pict_type
    if isinstance(pt, str):
        return pt
    try:
        from av.video.frame import PictureType

        return PictureType(int(pt)).name
    except (ImportError, ValueError, TypeError):
        return getattr(pt, "name", str(pt))


class MotionVectorDecoder:
    """Decode a video, yielding ``(frame_rgb (H, W, 3) uint8, MotionField)`` per frame, in display order.

    ``with MotionVectorDecoder("clip.mp4", stride=16) as dec: for rgb, mf in dec: ...``. Each forward vector is
    resolved to the past frame it references (:class:`ReferenceResolver`) and expressed as displacement from the
    previous frame; a stream whose vectors may span several frames warns once (:class:`MultiFrameMotionWarning`):
    its backward vectors are dropped and re-encoding gives exact single-reference vectors.
    """

    def __init__(self, path: str | os.PathLike, stride: int = 16, warn: bool = True) -> None:
        import av

        self.path, self.stride, self.warn = Path(path), stride, warn
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
        self.resolver = ReferenceResolver(single=info is not None and not info.multi_frame)
        if info is not None and info.multi_frame:
            self._warn(info.describe())

    def _warn(self, why: str) -> None:
        if self.warn and not self._warned:
            warnings.warn(multi_frame_message(self.path, why), MultiFrameMotionWarning, stacklevel=3)
            self._warned = True

    def __enter__(self) -> MotionVectorDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def __iter__(self) -> Iterator[tuple[np.ndarray, MotionField]]:
        for index, frame in enumerate(self._container.decode(self._stream)):
            yield frame.to_ndarray(format="rgb24"), self.field(frame, index)

    def field(self, frame, index: int) -> MotionField:
        """The MotionField of one decoded frame (frames must come in display order, as decoders return them)."""
        sd = frame.side_data.get("MOTION_VECTORS")
        vectors = sd.to_ndarray() if sd is not None else None
        pict = _pict_name(frame)
        if pict == "B" or (vectors is not None and bool((vectors["source"] > 0).any())):
            self.resolver.single = False  # the stream said otherwise; trust the pictures
            self._warn(f"frame {index} is a {pict} picture")
        blocks, motion, facts = self.resolver.resolve(vectors, luma(frame), index)
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
            change=facts["change"],
            dropped=facts["dropped"],
            mean_span=facts.get("mean_span", 1.0),
        )


def multi_frame_message(path: str | os.PathLike, why: str) -> str:
    """The one line a multi-frame stream gets (the CLI prints it like its other warnings)."""
    return (
        f"{path}: motion vectors may span several frames ({why}); each forward vector is resolved to the frame it "
        "references by block matching, backward-only ones at constant velocity; for exact single-reference vectors "
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
