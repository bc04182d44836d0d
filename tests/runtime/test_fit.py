"""runtime.sources.Fitter: the three ways a frame meets the engine resolution, for pixels, class maps and
codec motion fields (references: F.interpolate for the field resampling, PIL for the pixels, known motion
for decoded vectors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from runtime.mv_source import open_mv_source
from runtime.sources import FIT_MODES, Fitter, Prefetcher
from tests.runtime.test_motion_vectors import VX, VY, encode, render, texture

av = pytest.importorskip("av", reason="PyAV is not installed (the GPU machines lack it unless carried)")

SRC = (128, 256)


def test_resize_field_equals_interpolate() -> None:
    """Stretching: coverage-weighted bilinear resampling == F.interpolate of (disp * w, w), vectors scaled by
    the grid ratio."""
    rng = np.random.default_rng(0)
    disp = rng.normal(size=(2, 48, 64)).astype(np.float32)
    cov = rng.uniform(0.2, 1.0, (48, 64)).astype(np.float32)
    got, wt = Fitter((192, 256), (128, 512), "resize").fit_field(disp, cov, 4)
    t = torch.from_numpy(np.concatenate([disp * cov, cov[None]]))[None]
    r = F.interpolate(t, size=(32, 128), mode="bilinear", align_corners=False)[0].numpy()
    want = r[:2] / r[2] * np.array([128 / 64, 32 / 48])[:, None, None]
    np.testing.assert_allclose(wt, r[2], atol=1e-6)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_pixels_follow_pil(mode: str) -> None:
    """pad: the aspect-kept resize at the top left, black elsewhere; crop: the centre window of the covering resize."""
    rgb = np.random.default_rng(1).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    f = Fitter((90, 160), (64, 64), mode)
    small = np.asarray(Image.fromarray(rgb).resize(f.scaled[::-1], Image.BILINEAR))
    out = f.fit(rgb)
    assert out.shape == (64, 64, 3)
    if mode == "pad":
        assert f.scaled == (36, 64) and f.offset == (0, 0)
        np.testing.assert_array_equal(out[:36], small)
        assert not out[36:].any()
    else:
        assert f.scaled == (64, 114) and f.offset == (0, 25)
        np.testing.assert_array_equal(out, small[:, 25:89])


@pytest.mark.parametrize("mode", FIT_MODES)
def test_class_map_goes_back_to_the_right_place(mode: str) -> None:
    """unfit sends each source pixel to the engine pixel that covers it (within one engine pixel)."""
    src, dst = (90, 160), (64, 48)
    f = Fitter(src, dst, mode)
    ids = np.arange(dst[0] * dst[1]).reshape(dst)
    back = f.unfit(ids)
    assert back.shape == src
    (ih, iw), (oy, ox) = f.scaled, f.offset
    ys, xs = np.divmod(back, dst[1])
    want_y = (np.arange(src[0]) + 0.5) * ih / src[0] - oy
    want_x = (np.arange(src[1]) + 0.5) * iw / src[1] - ox
    inside_y, inside_x = (want_y >= 0) & (want_y < dst[0]), (want_x >= 0) & (want_x < dst[1])
    assert np.abs(ys[inside_y][:, inside_x] + 0.5 - want_y[inside_y, None]).max() <= 0.5 + 1e-9
    assert np.abs(xs[inside_y][:, inside_x] + 0.5 - want_x[None, inside_x]).max() <= 0.5 + 1e-9


def test_bad_mode_is_clear() -> None:
    with pytest.raises(ValueError, match="resize, pad, crop"):
        Fitter((10, 10), (8, 8), "zoom")


@pytest.fixture(scope="module")
def pan(tmp_path_factory: pytest.TempPathFactory):
    if "libx264" not in av.codecs_available:
        pytest.skip("PyAV build without libx264")
    tex = texture()
    frames = [render(tex, t) for t in range(5)]
    return encode(tmp_path_factory.mktemp("fit") / "pan.mp4", frames, {"bf": "0", "refs": "1"})


@pytest.mark.parametrize(("mode", "dst"), [("resize", (128, 128)), ("pad", (128, 128)), ("crop", (128, 128))])
def test_decoded_motion_lands_on_the_engine_grid(pan, mode: str, dst: tuple[int, int]) -> None:
    """A 128x256 pan of (2.5, 1.25) px per frame through the runtime's decode thread: the field the
    policies get is the known motion in engine cells, and under pad the padding carries no motion."""
    pre = Prefetcher(open_mv_source(pan), dst, mode, keep_original=False)
    fields = []
    try:
        while (frame := pre.get()) is not None:
            fields.append(frame.side["motion"])
    finally:
        pre.close()
    f = Fitter(SRC, dst, mode)
    (ih, iw), gh, gw = f.scaled, dst[0] // 4, dst[1] // 4
    want = -np.array([VX * iw / SRC[1], VY * ih / SRC[0]]) / 4  # backward displacement, engine cells
    content = (round(ih / 4), gw) if mode == "pad" else (gh, gw)
    for m in fields[1:]:
        assert m.disp.shape == (2, gh, gw) and m.valid.shape == (gh, gw)
        core = m.disp[:, 4 : content[0] - 4, 4 : content[1] - 4]
        ok = m.valid[4 : content[0] - 4, 4 : content[1] - 4]
        assert ok.mean() > 0.9
        np.testing.assert_allclose(np.median(core[:, ok], axis=1), want, atol=0.05)
        if mode == "pad":
            assert not m.valid[content[0] + 1 :].any() and not m.disp[:, content[0] + 1 :].any()
