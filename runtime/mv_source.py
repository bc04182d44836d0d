"""A video source that also delivers the codec's motion vectors (for ``--mode mv`` / ``stream-mv`` / ``mv-interp``).

It is the runtime's :class:`runtime.sources.VideoSource` with FFmpeg's ``+export_mvs`` flag and a
side hook that turns each decoded frame's vectors into a stride-4
:class:`runtime.motion_vectors.MotionField` in ``Frame.side["motion"]``. The field is computed in
the decode thread, so it overlaps the GPU work like decoding does. ``MotionVectorDecoder`` holds
the semantics (sign, units, resolving vectors that span several frames); this module plugs it into
the loop, says in one line what a stream's vectors can and cannot do, re-encodes on request
(``--reencode-mv``, on the fly, so live sources too), and picks the policy for streams that carry
no vectors at all (HEVC, VP9, AV1).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from runtime.encode import EncodeOptions
from runtime.motion_vectors import (
    MotionVectorDecoder,
    MultiFrameMotionWarning,
    StreamInfo,
    multi_frame_message,
    probe,
)
from runtime.propagation import MV_STRIDE
from runtime.sources import LIVE_PREFIXES, Pending, Source, VideoSource, open_source

VECTOR_MODES = ("mv", "stream-mv", "mv-interp")  # modes that cannot run without codec vectors
STREAM_ITERS = 2  # stream mode's default iterations (runtime.run): mv-interp's fallback, whose --iters means key frames
Log = Callable[[str], None]


class _FieldMaker(MotionVectorDecoder):
    """MotionVectorDecoder's per-frame field logic without opening its own container; warns through ``log``."""

    def __init__(self, name: str, stride: int, info: StreamInfo | None, log: Log | None) -> None:  # noqa: D107
        self.path, self.stride, self.warn, self.log, self.decode_order = Path(name), stride, True, log, True
        self.setup(info)

    def _warn(self, why: str) -> None:
        if self.log is None:
            super()._warn(why)
        elif not self._warned:
            self.log(multi_frame_message(self.path, why, self.resolver.anchored))
            self._warned = True


def motion_side_hook(name: str, stride: int = MV_STRIDE, info: StreamInfo | None = None, log: Log | None = None) -> Any:
    """side_hook(av_frame, index) -> {"motion": MotionField} for VideoSource."""
    return _FieldHook(_FieldMaker(name, stride, info, log))


class _FieldHook:
    """The side hook: ``hook(av_frame, index) -> {"motion": MotionField}``; ``hook.packet(packet)`` notes each demuxed
    packet first (H.264 decode order and reference pictures, :class:`runtime.motion_vectors.PacketLog`)."""

    def __init__(self, maker: _FieldMaker) -> None:  # noqa: D107
        self.maker = maker
        self.packet = maker.packet

    def __call__(self, frame: Any, index: int) -> dict[str, Any]:
        return {"motion": self.maker.field(frame, index)}


class FieldThread:
    """Builds each frame's motion field on a thread of its own, in display order, so the decode thread only decodes.

    Why: the field (block matching, rasterising, fitting; C code that releases the GIL) would otherwise add its cost
    to every frame's decode, and the vector modes would run slower than stream mode even where the engines are
    idle (issue #30). One worker keeps the order the resolver needs (each field reads the previous frame's)."""

    def __init__(self, hook: Callable[[Any, int], dict[str, Any]]) -> None:
        self.hook = hook
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="mv-field")
        if hasattr(hook, "packet"):  # packets are noted on the decode thread, before their frames are queued
            self.packet = hook.packet

    def __call__(self, frame: Any, index: int) -> dict[str, Any]:
        return {"motion": Pending(self.pool.submit(self._build, frame, index), self.pool)}

    def _build(self, frame: Any, index: int) -> Any:
        t0 = time.perf_counter()
        field = self.hook(frame, index)["motion"]
        field.build_ms = (time.perf_counter() - t0) * 1e3
        return field

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def open_mv_source(
    spec: str | Path,
    stride: int = MV_STRIDE,
    log: Log | None = None,
    need_vectors: bool = True,
    reencode: bool = False,
) -> Source:
    """Like ``open_source`` but with motion vectors in each frame's side data.

    ``need_vectors=False`` (dff: vectors only help it spot shot changes) accepts image folders and
    codecs without vectors and returns the plain source. A video whose codec exports no vectors
    (HEVC, VP9, AV1), and a folder of images, come back as a plain source with ``no_vectors`` set to
    the codec's name (or "a folder of images"); the caller picks the policy
    (:func:`fallback_without_vectors`). A stream whose vectors may span
    several frames says so once through ``log`` (a warning without it); with ``reencode`` such a
    stream, and one without vectors, is re-encoded on the fly with single-reference settings instead
    (:class:`ReencodingSource`).
    """
    s = str(spec)
    base = open_source(s)  # the usual checks and messages (missing, empty, folder, ...)
    if not isinstance(base, VideoSource):  # a folder of images: no codec, no vectors
        if need_vectors and reencode:
            if log is not None:
                log(f"{s}: re-encoding on the fly for single-reference motion vectors (a folder of images has none)")
            return ReencodingSource(base, stride, log)
        if need_vectors:
            base.no_vectors = "a folder of images"  # type: ignore[attr-defined]
        return base
    info = probe(base.container, base.stream)
    if reencode and (info.multi_frame or not info.has_vectors):
        if log is not None:
            why = info.describe() if info.has_vectors else f"{info.codec} carries none"
            log(f"{s}: re-encoding on the fly for single-reference motion vectors ({why})")
        return ReencodingSource(base, stride, log)
    if not info.has_vectors:
        base.no_vectors = info.codec  # type: ignore[attr-defined]
        return base
    base.close()
    live = s.startswith(LIVE_PREFIXES) or s.startswith("webcam:")
    return VideoSource(
        s,
        live=base.live if live else False,
        codec_options={"flags2": "+export_mvs"},
        side_hook=FieldThread(motion_side_hook(s, stride, info, log)),
    )


class ReencodingSource(Source):
    """Frames of another source re-encoded on the fly (libx264, no B-frames, one reference, zero latency) and decoded
    again with motion vectors: exact single-reference vectors for any input, live ones included. The policies get
    the vectors of the re-encode and the model the original pixels; each frame costs one fast encode and decode."""

    def __init__(self, inner: Source, stride: int = MV_STRIDE, log: Log | None = None) -> None:  # noqa: D107
        self.inner, self.name, self.live, self.total = inner, inner.name, inner.live, inner.total
        self.stream = getattr(inner, "stream", None)  # the loop reads the frame rate from it
        self.hook = motion_side_hook(inner.name, stride, StreamInfo("h264", 0, 0, False, 1), log)
        self.codecs: tuple[Any, Any, tuple[int, int]] | None = None

    @property
    def errors(self) -> int:  # type: ignore[override]
        return self.inner.errors

    @property
    def last_error(self) -> str:  # type: ignore[override]
        return self.inner.last_error

    @property
    def rotation(self) -> int:  # type: ignore[override]
        return self.inner.rotation

    @property
    def shortfall(self) -> dict[str, Any] | None:  # type: ignore[override]
        return self.inner.shortfall

    @property
    def notes(self) -> set[str]:  # type: ignore[override]
        return self.inner.notes

    def _pair(self, h: int, w: int) -> tuple[Any, Any]:
        """The encoder and the decoder for frames of h x w (new ones when the size changes)."""
        import av

        if self.codecs is None or self.codecs[2] != (h, w):
            enc = av.CodecContext.create("libx264", "w")
            enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
            enc.time_base = Fraction(1, 1000)
            options = EncodeOptions(crf=18, bframes=0, refs=1, gop=100_000, preset="ultrafast").av_options()
            enc.options = {**options, "tune": "zerolatency"}
            dec = av.CodecContext.create("h264", "r")
            dec.options = {"flags2": "+export_mvs", "flags": "low_delay"}
            self.codecs = (enc, dec, (h, w))
        return self.codecs[0], self.codecs[1]

    def __iter__(self) -> Iterator[Any]:
        import av

        for index, (rgb, ts, key, side) in enumerate(self.inner):
            h, w = rgb.shape[0] - rgb.shape[0] % 2, rgb.shape[1] - rgb.shape[1] % 2
            enc, dec = self._pair(h, w)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:h, :w]), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = index
            decoded = [f for packet in enc.encode(frame) for f in dec.decode(packet)]
            side = dict(side)
            if decoded:  # zero latency: the frame just encoded comes back at once
                side.update(self.hook(decoded[-1], index))
            yield rgb, ts, key, side

    def close(self) -> None:
        self.inner.close()


def open_for_mode(spec: Any, mode: str, log: Log | None = None, reencode: bool = False) -> Source:
    """The loop's source for ``mode``: motion vectors for the vector modes and dff (its shot-change hint)."""
    if mode in (*VECTOR_MODES, "dff"):
        return open_mv_source(spec, log=log, need_vectors=mode != "dff", reencode=reencode)
    return open_source(spec)


def fallback_without_vectors(cfg: Any, sources: list[Source], bundle: Any, log: Log) -> Any:
    """A vector mode on a stream without motion vectors: run dff when the bundle has a FlowNet (mv, mv-interp), else
    stream mode at ``--iters`` (mv-interp, whose --iters counts key-frame iterations: stream's default). Says so in
    one line and returns the RunConfig to run; the policy goes into every record (``fallback``) and the summary
    (``cfg.extra["record"]`` / ``["summary"]``, which the loop adds)."""
    missing = [s for s in sources if getattr(s, "no_vectors", None)]
    if cfg.mode not in VECTOR_MODES or cfg.policy is not None or not missing:
        return cfg
    codec = missing[0].no_vectors
    # mv-interp's --iters counts key-frame iterations, and mv's default key frames iterate to a tolerance: both
    # fall back to stream's default
    iters = STREAM_ITERS if cfg.mode == "mv-interp" or cfg.key_solve is not None else max(cfg.iters, 1)
    if "flownet" in bundle.engines and cfg.mode != "stream-mv":
        mode, what = "dff", f"dff (the bundle's FlowNet) with key interval {cfg.key_interval}"
    else:
        mode, what = "stream", f"stream mode at {iters} iteration(s)"
    why = f"{codec} carries no motion vectors"
    hint = f"--reencode-mv runs --mode {cfg.mode} as asked, on an on-the-fly H.264 re-encode"
    log(f"{missing[0].name}: {why}: --mode {cfg.mode} runs as {what} ({hint})")
    fallback = {"requested_mode": cfg.mode, "mode": mode, "iters": iters, "reason": why}
    extra = {**cfg.extra, "record": {"fallback": f"{mode}: {why}"}, "summary": {"fallback": fallback}}
    return dataclasses.replace(cfg, mode=mode, iters=iters, key_solve=None, extra=extra)


def probe_multi_frame(path: str | Path) -> bool:
    """True when the file's vectors may span several frames (B-frames / several references)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MultiFrameMotionWarning)
        dec = MotionVectorDecoder(path, stride=MV_STRIDE, warn=False)
        try:
            return dec.info.multi_frame
        finally:
            dec.close()
