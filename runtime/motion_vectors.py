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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.encode import EncodeOptions, VideoWriter

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
    multi_frame: this frame's vectors may span several frames (B picture or backward vectors).
    vectors: the raw AVMotionVector records (structured array), to re-grid at another stride.
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
    if stride % UNIT:
        raise ValueError(f"stride must be a multiple of {UNIT}, got {stride}")
    gh, gw = grid_size(height, width, stride)
    k = stride // UNIT
    uh, uw = gh * k, gw * k  # unit grid, padded to whole cells
    acc = np.zeros((3, uh, uw), np.float64)  # sum dx*area, sum dy*area, area
    if vectors is not None and len(vectors):
        v = vectors[vectors["source"] == source]
        scale = np.maximum(v["motion_scale"].astype(np.float64), 1.0)
        dx, dy = v["motion_x"] / scale, v["motion_y"] / scale
        bw, bh = v["w"].astype(np.int64), v["h"].astype(np.int64)
        x0 = (v["dst_x"].astype(np.int64) - bw // 2) // UNIT
        y0 = (v["dst_y"].astype(np.int64) - bh // 2) // UNIT
        for sw, sh in {(int(a), int(b)) for a, b in zip(bw, bh)}:
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
    for oy in range(ny):
        for ox in range(nx):
            xs, ys = x0 + ox, y0 + oy
            ok = (xs >= 0) & (xs < uw) & (ys >= 0) & (ys < uh)
            np.add.at(acc[0], (ys[ok], xs[ok]), dx[ok])
            np.add.at(acc[1], (ys[ok], xs[ok]), dy[ok])
            np.add.at(acc[2], (ys[ok], xs[ok]), 1.0)


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

    ``with MotionVectorDecoder("clip.mp4", stride=16) as dec: for rgb, mf in dec: ...``. Vectors of ``source = -1``
    (previous frame) are used; a warning (:class:`MultiFrameMotionWarning`) is emitted once if the stream may have
    vectors spanning several frames.
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
        self.info = probe(self._container, self._stream)
        self._warned = False
        if self.info.multi_frame:
            self._warn(f"has_b_frames={self.info.has_b_frames}, max_ref_frames={self.info.max_ref_frames}")

    def _warn(self, why: str) -> None:
        if self.warn and not self._warned:
            warnings.warn(
                f"{self.path}: motion vectors may span several frames ({why}); re-encode with "
                "runtime.motion_vectors.reencode_for_motion_vectors() (libx264 bframes=0 refs=1)",
                MultiFrameMotionWarning,
                stacklevel=3,
            )
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
        """The MotionField of one decoded frame."""
        sd = frame.side_data.get("MOTION_VECTORS")
        vectors = sd.to_ndarray() if sd is not None else None
        pict = _pict_name(frame)
        multi = pict == "B" or (vectors is not None and bool((vectors["source"] > 0).any()))
        if multi:
            self._warn(f"frame {index} is a {pict} picture" + (" with backward vectors" if vectors is not None else ""))
        disp, coverage = field_from_vectors(vectors, frame.height, frame.width, self.stride)
        return MotionField(
            disp=disp,
            valid=coverage > 0,
            coverage=coverage,
            is_key=pict == "I" or (vectors is None and bool(getattr(frame, "key_frame", False))),
            pict_type=pict,
            index=index,
            stride=self.stride,
            multi_frame=multi,
            vectors=vectors,
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
