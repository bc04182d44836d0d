"""CPU checks of the grid_sample reference (and of the CPU path of kernels.warp) against plain numpy bilinear."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import reference, warp


def numpy_warp(feat: np.ndarray, disp: np.ndarray) -> np.ndarray:
    """Independent per-pixel bilinear backward warp: out(p) = feat(p + d(p)), out-of-bounds taps are zero."""
    n, c, h, w = feat.shape
    out = np.zeros_like(feat, dtype=np.float64)
    for b in range(n):
        for y in range(h):
            for x in range(w):
                sx, sy = x + disp[b, 0, y, x], y + disp[b, 1, y, x]
                x0, y0 = int(np.floor(sx)), int(np.floor(sy))
                ax, ay = sx - x0, sy - y0
                for ty, tx, wt in ((y0, x0, (1 - ax) * (1 - ay)), (y0, x0 + 1, ax * (1 - ay)),
                                   (y0 + 1, x0, (1 - ax) * ay), (y0 + 1, x0 + 1, ax * ay)):  # fmt: skip
                    if 0 <= tx < w and 0 <= ty < h:
                        out[b, :, y, x] += wt * feat[b, :, ty, tx]
    return out


def random_case(seed: int, n: int = 2, c: int = 3, h: int = 7, w: int = 9, spread: float = 4.0):
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    # spread > image size / 2 sends many samples partly or fully outside the image
    disp = (torch.rand(n, 2, h, w, generator=g, dtype=torch.float64) * 2 - 1) * spread
    return feat, disp


@pytest.mark.parametrize("seed,spread", [(0, 0.7), (1, 4.0), (2, 12.0)])
def test_reference_matches_numpy(seed: int, spread: float) -> None:
    feat, disp = random_case(seed, spread=spread)
    got = reference.warp(feat, disp).numpy()
    want = numpy_warp(feat.numpy(), disp.numpy())
    np.testing.assert_allclose(got, want, atol=1e-10)
    assert np.abs(want).sum() > 0  # not a vacuous all-zero comparison


def test_reference_float32_close_to_numpy() -> None:
    feat, disp = random_case(3, spread=3.0)
    got = reference.warp(feat.float(), disp.float()).double().numpy()
    np.testing.assert_allclose(got, numpy_warp(feat.numpy(), disp.numpy()), atol=2e-4)


def test_zero_displacement_is_identity() -> None:
    feat, _ = random_case(4)
    out = reference.warp(feat, torch.zeros(2, 2, 7, 9, dtype=torch.float64))
    torch.testing.assert_close(out, feat, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dx,dy", [(2, 0), (0, -3), (-1, 2), (3, 3)])
def test_integer_shift(dx: int, dy: int) -> None:
    feat, _ = random_case(5)
    disp = torch.zeros(2, 2, 7, 9, dtype=torch.float64)
    disp[:, 0], disp[:, 1] = dx, dy
    out = reference.warp(feat, disp)
    want = torch.zeros_like(feat)
    h, w = feat.shape[2:]
    ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
    yt, xt = slice(max(0, dy), min(h, h + dy)), slice(max(0, dx), min(w, w + dx))
    want[:, :, ys, xs] = feat[:, :, yt, xt]
    torch.testing.assert_close(out, want, atol=1e-12, rtol=0)


def test_scale_field() -> None:
    feat, disp = random_case(6)
    scale = torch.rand_like(feat) + 0.5
    torch.testing.assert_close(reference.warp(feat, disp, scale), reference.warp(feat, disp) * scale)
    np.testing.assert_allclose(reference.warp(feat, disp, scale).numpy(), numpy_warp(feat.numpy(), disp.numpy()) *
                               scale.numpy(), atol=1e-10)  # fmt: skip


@pytest.mark.parametrize("mode", ["weighted", "max", "avg"])
def test_interp_modes(mode: str) -> None:
    a, da = random_case(7, spread=3.0)
    b, db = random_case(8, spread=3.0)
    n_key, pos = 5, 2
    w_prev, w_next = (n_key - pos) / n_key, pos / n_key
    got = reference.warp_interp(a, da, b, db, w_prev, w_next, mode).numpy()
    wa, wb = numpy_warp(a.numpy(), da.numpy()), numpy_warp(b.numpy(), db.numpy())
    want = {"weighted": w_prev * wa + w_next * wb, "max": np.maximum(wa, wb), "avg": (wa + wb) / 2}[mode]
    np.testing.assert_allclose(got, want, atol=1e-10)


def test_public_api_cpu_dispatch_layouts_and_out() -> None:
    feat, disp = random_case(9, c=4)
    feat, disp = feat.float(), disp.float()
    want = reference.warp(feat, disp)
    cl = feat.contiguous(memory_format=torch.channels_last)
    out = torch.empty_like(cl)
    res = warp.warp(cl, disp, out=out)
    assert res is out and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, want)
    b, db = random_case(10, c=4)
    got = warp.warp_interp(feat, disp, b.float(), db.float(), 0.25, 0.75)
    torch.testing.assert_close(got, 0.25 * want + 0.75 * reference.warp(b.float(), db.float()))


def test_half_reference_rounds_once() -> None:
    feat, disp = random_case(11)
    got = reference.warp(feat.half(), disp.float())
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), reference.warp(feat.float(), disp.float()), atol=2e-3, rtol=2e-3)


def test_bad_inputs_raise_clear_errors() -> None:
    feat, disp = random_case(12)
    with pytest.raises(ValueError, match="shape"):
        warp.warp(feat, disp[:, :1])
    with pytest.raises(ValueError, match="contiguous"):
        warp.warp(feat.transpose(2, 3), disp)
    with pytest.raises(ValueError, match="mode"):
        warp.warp_interp(feat, disp, feat, disp, mode="sum")
    with pytest.raises(ValueError, match="overlap"):
        warp.warp(feat, disp, out=feat)
    with pytest.raises(ValueError, match="2x2"):
        warp.warp(feat[:, :, :1].contiguous(), disp[:, :, :1].contiguous())
