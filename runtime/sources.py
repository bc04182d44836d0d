"""Inputs: video files (anything FFmpeg decodes, via PyAV), image folders, live URLs and webcams,
and in-memory arrays (tests, benchmarks). A decode thread fills a bounded queue so decoding
overlaps the GPU work; frames are fitted to the engine resolution there too.

A corrupt packet is skipped and counted, a stream that breaks off ends the input: what could
be decoded is processed and the rest is reported, never a crash.
"""

from __future__ import annotations

import copy
import errno
import functools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kernels import mvhost
from runtime.errors import SourceError
from runtime.yuv import planes, thumbnail

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
LIVE_PREFIXES = ("rtsp://", "rtmp://", "rtp://", "udp://", "tcp://", "srt://", "http://", "https://")


@dataclass
class Frame:
    """One decoded frame: the pixels the pipeline uploads plus what the policies and writers need."""

    index: int
    # What Pipeline.upload takes: (H, W, 3) uint8 at the engine resolution when prepared on the host; prepared on
    # the device (runtime.prepare), the decoded frame as it came: source-size RGB or YUV 4:2:0 planes (the loop
    # puts the prepared engine-size frame here after the run when a writer draws on it)
    rgb: Any
    source_hw: tuple[int, int]
    time: float | None = None
    key_frame: bool = False
    decode_ms: float = 0.0
    original: np.ndarray | None = None  # source-resolution pixels (for the overlay), if kept
    side: dict[str, Any] = field(default_factory=dict)
    thumb: np.ndarray | None = None  # the engine frame's every 8th pixel: the reset monitor's shot-change evidence


FIT_MODES = ("resize", "pad", "crop")


@functools.lru_cache(maxsize=64)
def _pillow_order(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> int | None:
    """Which pass order of ``mvhost.resize_rgb`` gives Pillow's bilinear resize from ``src_hw`` to ``dst_hw``,
    found on a random probe picture; None without the C library or when neither order does."""
    if not mvhost.available():
        return None
    from PIL import Image

    probe = np.random.default_rng(0).integers(0, 256, (*src_hw, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(probe).resize((dst_hw[1], dst_hw[0]), Image.BILINEAR))
    for order in (0, 1):
        got = mvhost.resize_rgb(probe, dst_hw, order)
        if got is not None and np.array_equal(got, want):
            return order
    return None


class Fitter:
    """Engine resolution <-> source resolution, one geometry for pixels, class maps and motion fields.

    ``resize`` stretches the frame to the engine size; ``pad`` keeps the aspect, scales to fit and
    pads bottom/right with black; ``crop`` keeps the aspect, scales to cover and centre-crops (the
    usual classification evaluation). All three are "scale to ``scaled``, then take the engine
    window at ``offset``" (pad: offset 0 and a window larger than the picture). Class maps go back
    by nearest neighbour; under ``crop`` the source's border outside the window repeats the nearest
    predicted pixel."""

    def __init__(self, src_hw: tuple[int, int], dst_hw: tuple[int, int], mode: str = "resize") -> None:
        if mode not in FIT_MODES:
            raise ValueError(f"fit mode must be one of {', '.join(FIT_MODES)}, got {mode!r}")
        (sh, sw), (dh, dw) = src_hw, dst_hw
        self.src_hw, self.dst_hw, self.mode = src_hw, dst_hw, mode
        if mode == "resize":
            self.scaled = (dh, dw)
        else:
            s = (min if mode == "pad" else max)(dh / sh, dw / sw)
            self.scaled = (max(1, round(sh * s)), max(1, round(sw * s)))
        ih, iw = self.scaled
        self.offset = (max(0, (ih - dh) // 2), max(0, (iw - dw) // 2))
        oy, ox = self.offset
        self.rows = np.clip(((np.arange(sh) + 0.5) * ih / sh).astype(np.intp) - oy, 0, dh - 1)
        self.cols = np.clip(((np.arange(sw) + 0.5) * iw / sw).astype(np.intp) - ox, 0, dw - 1)

    @property
    def identity(self) -> bool:
        return self.src_hw == self.dst_hw

    def fit(self, rgb: np.ndarray) -> np.ndarray:
        """Source pixels -> engine-resolution pixels (bilinear)."""
        if self.identity:
            return np.ascontiguousarray(rgb)
        (ih, iw), (oy, ox), (dh, dw) = self.scaled, self.offset, self.dst_hw
        small = self._resize(rgb)
        if small is None:
            from PIL import Image

            small = np.asarray(Image.fromarray(rgb).resize((iw, ih), Image.BILINEAR))
        if self.scaled == self.dst_hw:
            return np.ascontiguousarray(small)
        window = small[oy : oy + dh, ox : ox + dw]
        if window.shape[:2] == self.dst_hw:
            return np.ascontiguousarray(window)
        out = np.zeros((dh, dw, 3), np.uint8)
        out[: window.shape[0], : window.shape[1]] = window
        return out

    @functools.cached_property
    def _order(self) -> int | None:
        """The pass order that gives Pillow's pixels for this geometry (``_pillow_order``), read on first use."""
        return _pillow_order(tuple(self.src_hw), tuple(self.scaled))

    def _resize(self, rgb: np.ndarray) -> np.ndarray | None:
        """Pillow's bilinear resize to ``scaled`` in C (``mvhost.resize_rgb``), or None (Pillow then). Pillow runs its
        two passes in an order it picks by the sizes (its version decides how); which one it picks here is read once
        from a random probe of the source size, and the C code runs that order, so the pixels equal Pillow's. Neither
        order matching (another filter in a future Pillow) keeps Pillow. 5.3 -> 1.7 ms at 720p (issue #30)."""
        if self._order is None or rgb.shape[:2] != tuple(self.src_hw):  # the probe was of this size only
            return None
        return mvhost.resize_rgb(rgb, self.scaled, self._order)

    def unfit(self, classes: np.ndarray) -> np.ndarray:
        """Engine-resolution class map -> source resolution (nearest, crops the padding)."""
        if self.identity:
            return classes
        return np.take(np.take(classes, self.rows, axis=0), self.cols, axis=1)  # 5x a 2-D fancy index's speed

    def unfit_points(self, xy: np.ndarray) -> np.ndarray:
        """Engine-pixel points (..., 2) as (x, y) -> the same points in source pixels (float64).

        Pixel-index coordinates (pixel i spans [i - 0.5, i + 0.5]) on both sides, with the geometry of :meth:`fit`:
        engine pixel e is pixel e + offset of the picture scaled to ``scaled``, whose pixel centres (e + 0.5) sit at
        (e + 0.5) * source / scaled in the source (PIL's resampling grid). Keypoints go back this way."""
        pts = np.asarray(xy, dtype=np.float64)
        if self.identity:
            return pts.copy()
        (ih, iw), (oy, ox), (sh, sw) = self.scaled, self.offset, self.src_hw
        scale = np.array([sw / iw, sh / ih])
        return (pts + np.array([ox, oy]) + 0.5) * scale - 0.5

    def fit_field(self, disp: np.ndarray, weight: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
        """A per-cell displacement field on the source's stride-``stride`` grid, ``disp`` (2, h, w) in
        cells and ``weight`` (h, w) its coverage -> the same on the engine picture's grid.

        Coverage-weighted bilinear sampling at each engine cell's centre (edge cells repeat, as
        ``F.interpolate`` does; cells in the padding get weight 0), vectors rescaled from source to
        engine cells per axis. Motion vectors come at the source resolution, the state at the
        engine's: without this a padded or cropped frame would be warped by misplaced motion.
        Only the source rows under the engine rows are read (taps cached per grid size), so the cost follows the
        engine grid, not the source's (issue #30); separably, as ``kernels/mvhost.c`` does it: each engine row mixes
        its two source rows, then samples that mix at the engine columns."""
        rows, cols, inside, sx, sy, separable = self._field_taps(weight.shape, stride)
        if mvhost.available():  # the same sums in C (kernels/mvhost.c), without numpy's per-call overhead
            return mvhost.fit_field(separable, disp, weight, sx, sy)
        (ra0, rc0), (ra1, rc1) = rows
        (ca0, cc0), (ca1, cc1) = cols
        p = np.concatenate([disp * weight, weight[None]])  # float32 products, as the C code forms them
        v = ra0[:, None] * p[:, rc0].astype(np.float64) + ra1[:, None] * p[:, rc1].astype(np.float64)  # (3, gh, sw)
        r = ca0 * v[:, :, cc0] + ca1 * v[:, :, cc1]  # (3, gh, gw)
        wsum = np.where(inside, r[2], 0.0)
        out = np.where(wsum > 1e-6, r[:2] / np.maximum(wsum, 1e-6), 0.0)
        out[0] *= sx  # source cells -> scaled-picture px -> engine cells
        out[1] *= sy
        return out.astype(np.float32), wsum.astype(np.float32)

    def _field_taps(self, hw: tuple[int, int], stride: int) -> Any:
        """Bilinear taps of the rows and of the columns [(weights, source index)] x 2, the engine cells inside the
        scaled picture, and the x / y rescaling, for a source grid of ``hw`` cells (cached: one per grid size)."""
        key = (hw, stride)
        cache = self.__dict__.setdefault("_taps", {})
        if key not in cache:
            (ih, iw), (oy, ox), (dh, dw) = self.scaled, self.offset, self.dst_hw
            h, w = hw
            gh, gw = -(-dh // stride), -(-dw // stride)
            ey, ex = (np.arange(gh) + 0.5) * dh / gh + oy, (np.arange(gw) + 0.5) * dw / gw + ox  # scaled-picture px
            inside = (ey < ih)[:, None] & (ex < iw)[None, :]
            rows, cols = _lerp_taps(ey * h / ih - 0.5, h), _lerp_taps(ex * w / iw - 0.5, w)  # centres at integers
            separable = mvhost.FieldTaps(rows, cols, ey < ih, ex < iw)  # the same taps as the C code reads them
            cache[key] = (rows, cols, inside, (iw / w) / (dw / gw), (ih / h) / (dh / gh), separable)
        return cache[key]

    def fit_motion(self, motion: Any) -> Any:
        """A :class:`runtime.motion_vectors.MotionField` of the source picture -> that of the engine picture."""
        if self.identity:
            return motion
        disp, cov = self.fit_field(motion.disp, motion.coverage, motion.stride)
        out = copy.copy(motion)  # a shallow copy: dataclasses.replace re-runs __init__ (a tenth of the field's cost)
        out.disp, out.coverage, out.valid = disp, cov, cov > 0
        return out


def _lerp_taps(c: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Linear-interpolation taps at coordinates ``c`` on ``n`` cells, edges clamped: [(weights, index)] x 2
    as index arrays: the caller sums weight * value[index] (align_corners=False semantics)."""
    c = np.clip(c, 0.0, n - 1)
    i0 = np.floor(c).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    t = c - i0
    return [(1.0 - t, i0), (t, i1)]


Item = tuple[np.ndarray, float | None, bool, dict[str, Any]]


class Pending:
    """Side data still being made on a worker thread of its own (the motion field:
    :class:`runtime.mv_source.FieldThread`); ``result()`` waits for it."""

    def __init__(self, future: Future, pool: ThreadPoolExecutor) -> None:
        self.future, self.pool = future, pool

    def then(self, fn: Callable[[Any], Any]) -> Pending:
        """``fn(value)`` on the same worker, after it (one worker: tasks run in submission order)."""
        return Pending(self.pool.submit(lambda: fn(self.future.result())), self.pool)

    def result(self) -> Any:
        return self.future.result()


def after(value: Any, fn: Callable[[Any], Any]) -> Any:
    """``fn(value)``: now for a ready value, chained on its worker for a :class:`Pending` one."""
    return value.then(fn) if isinstance(value, Pending) else fn(value)


def _then(first: Callable[[Any], Any], second: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda x: second(first(x))


def _timed(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn`` (a motion field's fit) with its time added to the field's ``build_ms`` (the field thread's stage)."""

    def run(field: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(field)
        out.build_ms = getattr(field, "build_ms", 0.0) + (time.perf_counter() - t0) * 1e3
        return out

    return run


def settled(side: dict[str, Any]) -> dict[str, Any]:
    """``side`` with a pending motion field waited for (what the policies read)."""
    m = side.get("motion") if side else None
    return {**side, "motion": m.result()} if isinstance(m, Pending) else side


class Decoded:
    """A decoded video frame whose conversion to RGB waits until something needs its pixels.

    Why: in the vector modes most frames are propagated by the codec's motion (their warp and head read only the
    state), so their pixels are never uploaded; converting and fitting them anyway cost the decode thread about twice
    the codec's own decode (issue #30). :meth:`Prefetcher` reads the reset monitor's thumbnail from the planes."""

    __slots__ = ("_rgb", "dtype", "frame", "notes", "shape", "turn")

    def __init__(self, frame: Any, turn: int = 0, notes: set[str] | None = None) -> None:
        self.frame, self._rgb, self.turn = frame, None, turn  # turn: quarter turns counter-clockwise to upright
        self.notes = notes  # the source's (frame_rgb's note on a colour space FFmpeg cannot convert)
        h, w = (frame.width, frame.height) if turn % 2 else (frame.height, frame.width)
        self.shape, self.dtype = (h, w, 3), np.dtype(np.uint8)

    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8, converted by FFmpeg on first use (and turned upright)."""
        if self._rgb is None:
            self._rgb = upright(frame_rgb(self.frame, self.notes), self.turn)
        return self._rgb

    def cheapest(self) -> Any:
        """What a thumbnail reads: the 4:2:0 planes (views, no conversion, turned upright) or else the RGB frame."""
        got = planes(self.frame)
        if got is None:
            return self.rgb()
        return got.map(lambda p: np.rot90(p, self.turn)) if self.turn else got


class Fitted:
    """The engine-size frame of a :class:`Decoded` one, fitted on first use (the upload of a frame whose pixels the
    engines read: key frames)."""

    __slots__ = ("_out", "decoded", "dtype", "fitter", "shape")

    def __init__(self, decoded: Decoded, fitter: Fitter) -> None:
        self.decoded, self.fitter, self._out = decoded, fitter, None
        self.shape, self.dtype = (*fitter.dst_hw, 3), np.dtype(np.uint8)

    def get(self) -> np.ndarray:
        if self._out is None:
            self._out = self.fitter.fit(self.decoded.rgb())
        return self._out


def shortfall(container: Any, stream: Any, decoded: int, end: int | None) -> dict[str, Any] | None:
    """What a video file's packets, read to the end, fell short of: ``end`` is the latest packet end (pts + duration,
    in the stream's time base), against the video's duration: the stream's own (measured from its start), or else
    the container's when the video is its only stream (Matroska and WebM give the end time there, so the packets' end
    is taken as it is). None when they cover it within 3 frames or 2 %, when every frame the index lists decoded,
    or when the file does not say (MPEG-TS estimates its duration from its last packets, so a cut one reads as
    complete). Why time and packets, not the decoded frames' count or times: an edit list (a phone's trim) keeps
    samples the player never shows, and a last frame held for seconds (a screen recording) is one frame."""
    rate, tb = float(stream.average_rate or 0), stream.time_base
    if rate <= 0 or not tb or (stream.frames and decoded >= stream.frames):
        return None
    reached = 0.0 if end is None else float(end * tb)
    if stream.duration:
        duration = float(stream.duration * tb)
        reached -= float(stream.start_time * tb) if stream.start_time is not None else 0.0
    elif container.duration and len(container.streams) == 1:
        duration = container.duration / 1e6  # microseconds (AV_TIME_BASE)
    else:
        return None
    if duration <= 0 or duration - reached <= max(3.0 / rate, 0.02 * duration):
        return None
    listed = int(stream.frames or round(duration * rate))
    covered = round(max(reached, 0.0), 3)
    return {"duration_s": round(duration, 3), "covered_s": covered, "frames": decoded, "listed": listed}


def frame_rgb(frame: Any, notes: set[str] | None = None) -> np.ndarray:
    """A decoded frame as RGB (H, W, 3) uint8, converted by FFmpeg by its colour tags. A colour-space tag FFmpeg's
    converter refuses ("operation not supported": YCgCo, a reserved value, constant-luminance BT.2020, ICtCp) would
    lose every frame of the video; it is read as the nearest tag FFmpeg converts instead (BT.2020 for its
    constant-luminance variant, else untagged, BT.601), and ``notes`` gets one line saying so."""
    try:
        return frame.to_ndarray(format="rgb24")
    except OSError as e:
        if getattr(e, "errno", None) not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    tag = int(getattr(frame, "colorspace", 2))
    frame.colorspace, read_as = (9, "BT.2020") if tag == 10 else (2, "BT.601")
    if notes is not None:
        notes.add(
            f"its colour space (tag {tag}) is one FFmpeg cannot convert to RGB: read as {read_as}, so its colours "
            "may be off"
        )
    return frame.to_ndarray(format="rgb24")


def upright(a: np.ndarray, turn: int) -> np.ndarray:
    """A picture (H, W, ...) turned ``turn`` quarter turns counter-clockwise (a contiguous copy), or itself for 0."""
    return np.ascontiguousarray(np.rot90(a, turn)) if turn % 4 else a


def pixels_of(frame: Any) -> Any:
    """A frame's pixels as the pipeline uploads them (a :class:`Fitted` one is fitted now)."""
    return frame.get() if isinstance(frame, Fitted) else frame


class Source:
    """Iterates ``(rgb, time, key_frame, side)`` at the source resolution; counts decode errors.

    ``side`` carries per-frame extras for the policies (e.g. codec motion vectors for the
    propagation modes, filled by a ``side_hook``)."""

    name = "source"
    live = False
    # degrees counter-clockwise a player turns the picture (a video's display matrix, read from its first frame);
    # a video source turns its frames (and motion fields) upright by it, as players and ffmpeg do
    rotation = 0

    def __init__(self) -> None:
        self.errors = 0
        self.last_error = ""
        self.total: int | None = None
        # a file whose frames stop short of what its container says (truncated, or damaged past its index): what it
        # said and what the frames covered, once it has been read to the end (:func:`shortfall`)
        self.shortfall: dict[str, Any] | None = None
        self.notes: set[str] = set()  # one-line warnings about how frames were read, said after the run

    def __iter__(self) -> Iterator[Item]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the decoder (idempotent)."""


class ArraySource(Source):
    """Frames from memory (a list, an array or any iterable of HxWx3 uint8 arrays)."""

    def __init__(self, frames: Iterable[np.ndarray], name: str = "array", fps: float = 30.0) -> None:
        super().__init__()
        self.frames, self.name, self.fps = frames, name, fps
        self.total = len(frames) if hasattr(frames, "__len__") else None  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Item]:
        for i, f in enumerate(self.frames):
            yield f, i / self.fps, i == 0, {}


class ImageFolderSource(Source):
    """Sorted image files of a directory; an unreadable image is skipped and counted."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.name = str(root)
        self.files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        self.total = len(self.files)

    def __iter__(self) -> Iterator[Item]:
        from PIL import Image

        for i, p in enumerate(self.files):
            try:
                with Image.open(p) as im:
                    rgb = np.asarray(im.convert("RGB"))
            except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
                self.errors += 1
                self.last_error = f"{p.name}: {e}"
                continue
            yield rgb, float(i), True, {}


class VideoSource(Source):
    """A video file or a live URL/webcam through PyAV (FFmpeg).

    ``codec_options`` go to the decoder (``{"flags2": "+export_mvs"}`` makes FFmpeg export
    motion vectors); ``side_hook(av_frame, index) -> dict`` turns a decoded frame's side data
    into the ``side`` dict the policies see (how the motion-vector modes plug in).
    """

    def __init__(
        self,
        spec: str,
        live: bool = False,
        options: dict[str, str] | None = None,
        codec_options: dict[str, str] | None = None,
        side_hook: Callable[[Any, int], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        import av

        self.side_hook = side_hook
        # True: 4:2:0 frames come as their Y, U, V planes (runtime.yuv.planes: no colour conversion on the host,
        # the pipeline converts on the device); other pixel formats still come as RGB
        self.yuv = False
        # True: frames come as Decoded (converted to RGB only if something needs their pixels; the vector modes'
        # propagated frames never do)
        self.lazy = False
        self.name, self.live = spec, live
        fmt = None
        if spec.startswith("webcam:") or spec.startswith("/dev/video"):
            fmt, spec = "v4l2", (f"/dev/video{spec.split(':', 1)[1]}" if spec.startswith("webcam:") else spec)
        opts = dict(options or {})
        if spec.startswith("rtsp://"):
            opts.setdefault("rtsp_transport", "tcp")
        try:
            self.container = av.open(spec, format=fmt, options=opts, timeout=(15.0, 15.0) if live else None)
        except FileNotFoundError:
            raise SourceError(f"{spec}: no such file") from None
        except PermissionError:
            raise SourceError(f"{spec}: permission denied") from None
        except Exception as e:  # noqa: BLE001 - av.error.* for anything FFmpeg cannot open
            raise SourceError(f"{spec}: cannot open as video ({_one_line(e)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise SourceError(f"{spec}: contains no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        if codec_options:
            self.stream.codec_context.options = dict(codec_options)
        self.total = self.stream.frames or None

    def __iter__(self) -> Iterator[Item]:
        index, end = 0, None
        note = getattr(self.side_hook, "packet", None)  # the motion-vector field reads H.264 packet headers
        try:
            for packet in self.container.demux(self.stream):
                if note is not None:
                    note(packet)
                if packet.pts is not None:  # how far the file's video reaches (a cut file: short of its duration)
                    reach = packet.pts + (packet.duration or 0)
                    end = reach if end is None or reach > end else end
                try:
                    decoded = packet.decode()
                except Exception as e:  # noqa: BLE001 - a corrupt packet: skip it, count it
                    self.errors += 1
                    self.last_error = _one_line(e)
                    continue
                for f in decoded:
                    if index == 0:
                        self.rotation = display_rotation(f)
                    side = self.side_hook(f, index) if self.side_hook is not None else {}
                    if self.turn and side.get("motion") is not None:  # fields are built on the stored picture
                        side = {**side, "motion": after(side["motion"], self._turned)}
                    ts = float(f.time) if f.time is not None else None
                    yield self._pixels(f), ts, bool(getattr(f, "key_frame", False)), side
                    index += 1
        except Exception as e:  # noqa: BLE001 - the demuxer gave up: keep what was decoded
            self.errors += 1
            self.last_error = _one_line(e)
        if not self.live:  # read to the end (a consumer that stops early closes the generator before this line)
            self.shortfall = shortfall(self.container, self.stream, index, end)

    @property
    def turn(self) -> int:
        """Quarter turns counter-clockwise that bring the stored frames upright (from ``rotation``)."""
        return _turns(self.rotation)

    def _turned(self, motion: Any) -> Any:
        return motion.turned(self.turn)

    def _pixels(self, f: Any) -> Any:
        if self.lazy:
            return Decoded(f, self.turn, self.notes)
        if self.yuv:
            got = planes(f)
            if got is not None:
                return got.map(lambda p: upright(p, self.turn)) if self.turn else got
        return upright(frame_rgb(f, self.notes), self.turn)

    def close(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - closing twice or a dead connection is fine
            pass
        if hasattr(self.side_hook, "close"):
            self.side_hook.close()  # a side-data worker thread (runtime.mv_source.FieldThread)


def display_rotation(frame: Any) -> int:
    """The degrees counter-clockwise a player turns this decoded frame (its display matrix; 0 without one), in
    -179..180. PyAV before 14 has no ``VideoFrame.rotation``: 0 there."""
    try:
        deg = int(round(float(getattr(frame, "rotation", 0) or 0)))
    except (TypeError, ValueError):
        return 0
    return (deg + 179) % 360 - 179


def quarter_turns(frame: Any) -> int:
    """The quarter turns counter-clockwise (0..3) that bring this decoded frame upright, as a player shows it (0 for a
    display matrix turning it by other than quarter turns: such a frame is used as stored)."""
    return _turns(display_rotation(frame))


def _turns(degrees: int) -> int:
    return degrees // 90 % 4 if degrees % 90 == 0 else 0


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def open_source(spec: str | Path) -> Source:
    """A path, folder, URL or ``webcam:N`` -> the right Source (clear error if unusable)."""
    s = str(spec)
    if s.startswith(LIVE_PREFIXES) or s.startswith("webcam:") or s.startswith("/dev/video"):
        return VideoSource(s, live=not s.startswith(("http://", "https://")) or s.endswith((".m3u8", ".sdp")))
    p = Path(s)
    if not p.exists():
        raise SourceError(f"{s}: no such file or directory")
    if p.is_dir():
        return ImageFolderSource(p)
    if p.suffix.lower() in IMAGE_SUFFIXES:
        raise SourceError(f"{s}: a single image; pass the folder that holds the frames")
    try:
        with open(p, "rb") as f:
            if not f.read(1):
                raise SourceError(f"{s}: empty file (zero frames)")
    except OSError as e:
        raise SourceError(f"{s}: cannot read ({e.strerror})") from None
    return VideoSource(s)


_END = object()


class Prefetcher:
    """Decode thread: fits frames to the engine resolution and fills a bounded queue.

    ``keep_original`` keeps the source-resolution pixels for the overlay writer. ``fit_on_device``: frames stay as
    decoded (``Frame.rgb`` is the source-size RGB, or the YUV planes of a source whose ``yuv`` is set) for the
    pipeline to fit on the device (:class:`runtime.prepare.Preparers`); motion fields are still fitted here (they are
    small), and so is ``Frame.thumb`` (:func:`runtime.yuv.thumbnail`).
    """

    def __init__(
        self,
        source: Source,
        dst_hw: tuple[int, int],
        fit: str = "resize",
        maxsize: int = 8,
        keep_original: bool = True,
        max_frames: int | None = None,
        fit_on_device: bool = False,
        field_step: Callable[[Any], Any] | None = None,
    ) -> None:
        self.source, self.dst_hw, self.fit_mode, self.fit_on_device = source, dst_hw, fit, fit_on_device
        self.field_step = field_step  # more work on each fitted motion field, on the field thread (its pyramid)
        self.keep_original, self.max_frames = keep_original, max_frames
        self.q: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self.stop_event = threading.Event()
        self.fitters: dict[tuple[int, int], Fitter] = {}
        self.decoded = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name=f"decode-{source.name}", daemon=True)
        self.thread.start()

    def fitter(self, hw: tuple[int, int]) -> Fitter:
        if hw not in self.fitters:
            self.fitters[hw] = Fitter(hw, self.dst_hw, self.fit_mode)
        return self.fitters[hw]

    def _checked(self, pixels: Any) -> tuple[int, int]:
        """The frame's source size; a frame that is neither (H, W, 3) uint8 nor 4:2:0 planes is an error."""
        if isinstance(pixels, Decoded):
            return int(pixels.shape[0]), int(pixels.shape[1])
        if isinstance(pixels, tuple) and len(pixels) == 3 and all(p.dtype == np.uint8 for p in pixels):
            return int(pixels[0].shape[0]), int(pixels[0].shape[1])
        if not isinstance(pixels, np.ndarray) or pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise SourceError(f"{self.source.name}: frame {self.decoded} is not HxWx3 uint8")
        return int(pixels.shape[0]), int(pixels.shape[1])

    def _frame(self, pixels: Any, ts: float | None, key: bool, side: dict[str, Any], t0: float) -> Frame:
        hw = self._checked(pixels)
        fitter = self.fitter(hw)
        if self.fit_on_device:  # fitted by the pipeline (runtime.prepare); the shot-change pixels read here
            fitted, thumb = pixels, thumbnail(pixels, fitter)
        elif isinstance(pixels, Decoded):  # fitted only if uploaded; the shot-change pixels read from the planes
            fitted, thumb = Fitted(pixels, fitter), thumbnail(pixels.cheapest(), fitter)
        else:
            fitted = fitter.fit(pixels)
            thumb = np.ascontiguousarray(fitted[::8, ::8])  # a copy: not the whole frame kept as the next one's prev
        if side and "motion" in side:  # codec vectors are on the source picture's grid
            m = side["motion"]  # on the field thread when it is pending there (its time counted with the field's)
            fit = fitter.fit_motion
            if self.field_step is not None:
                fit = _then(fit, self.field_step)
            fit = _timed(fit) if isinstance(m, Pending) else fit
            side = {**side, "motion": after(m, fit)}
        ms = (time.perf_counter() - t0) * 1e3
        original = pixels if self.keep_original else None
        return Frame(self.decoded, fitted, hw, ts, key, ms, original, side, thumb)

    def _work(self) -> None:
        try:
            t0 = time.perf_counter()
            for pixels, ts, key, side in self.source:
                if self.max_frames is not None and self.decoded >= self.max_frames:
                    break
                if not self._put(self._frame(pixels, ts, key, side, t0)):
                    return
                self.decoded += 1
                t0 = time.perf_counter()
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, reported there
            self.error = e
        finally:
            self._put(_END)

    def _put(self, item: Any) -> bool:
        while not self.stop_event.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self, stop: Callable[[], bool] = lambda: False) -> Frame | None:
        """Next frame, or None at the end or once ``stop()`` is true while waiting (a live
        source may not deliver); re-raises a decode-thread failure."""
        while True:
            try:
                item = self.q.get(timeout=0.2)
                break
            except queue.Empty:
                if stop():
                    return None
        if item is _END:
            if self.error is not None:
                raise self.error
            return None
        if item.side:
            item.side = settled(item.side)
        return item

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)
        self.source.close()
