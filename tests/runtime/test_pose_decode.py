"""runtime.pose_decode: heatmaps -> keypoints on the device, and back to source pixels through the Fitter.

References written here: a numpy loop of the quarter-cell rule, the analytic decode of a sampled Gaussian (nearest
cell plus a quarter toward the true peak), and the fit geometry re-derived from its definition and checked against
PIL's resampling of a blob."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.pose_decode import decode_heatmaps, heatmap_stride, keypoints_to_source
from runtime.sources import FIT_MODES, Fitter

ENGINE = (64, 128)  # engine input (H, W); heatmaps at stride 4
HEAT = (16, 32)
SOURCES = [(90, 160), (200, 100), (64, 128), (75, 301)]


def loop_decode(heat: np.ndarray, stride: float) -> np.ndarray:
    """The rule, one joint at a time: first maximum in raster order, a quarter cell toward the higher neighbour
    along each axis whose two neighbours exist."""
    b, j, h, w = heat.shape
    out = np.zeros((b, j, 3))
    for n in range(b):
        for k in range(j):
            m = heat[n, k]
            y, x = divmod(int(np.argmax(m)), w)
            fx, fy = float(x), float(y)
            if 0 < x < w - 1:
                fx += 0.25 * np.sign(m[y, x + 1] - m[y, x - 1])
            if 0 < y < h - 1:
                fy += 0.25 * np.sign(m[y + 1, x] - m[y - 1, x])
            out[n, k] = fx * stride, fy * stride, m[y, x]
    return out


def geometry(src_hw: tuple[int, int], dst_hw: tuple[int, int], mode: str) -> tuple[float, float, float, float]:
    """From the definition of --fit: (scale_x, scale_y, offset_x, offset_y) with
    engine = (source + 0.5) * scale - 0.5 - offset (pixel centres of the resized picture, then the engine window)."""
    (sh, sw), (dh, dw) = src_hw, dst_hw
    if mode == "resize":
        ih, iw = dh, dw
    else:
        s = min(dh / sh, dw / sw) if mode == "pad" else max(dh / sh, dw / sw)
        ih, iw = max(1, round(sh * s)), max(1, round(sw * s))
    return iw / sw, ih / sh, max(0, (iw - dw) // 2), max(0, (ih - dh) // 2)


def engine_of(xs: np.ndarray, ys: np.ndarray, g: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    ax, ay, ox, oy = g
    return (xs + 0.5) * ax - 0.5 - ox, (ys + 0.5) * ay - 0.5 - oy


def gaussians(cells: np.ndarray, hw: tuple[int, int], sigma: float = 1.5) -> np.ndarray:
    """(J, h, w) heatmaps with their exact peaks at ``cells`` (J, 2) as (x, y) in cell units."""
    v, u = np.mgrid[0 : hw[0], 0 : hw[1]]
    d2 = (u[None] - cells[:, 0, None, None]) ** 2 + (v[None] - cells[:, 1, None, None]) ** 2
    return np.exp(-d2 / (2 * sigma**2)).astype(np.float32)


def test_decode_equals_the_loop_on_random_heatmaps_with_border_peaks() -> None:
    rng = np.random.default_rng(0)
    heat = rng.normal(size=(3, 9, *HEAT)).astype(np.float32)
    peaks = [(0, 0), (0, 5), (7, 0), (HEAT[0] - 1, HEAT[1] - 1), (HEAT[0] - 1, 3), (4, HEAT[1] - 1), (1, 1)]
    for k, (y, x) in enumerate(peaks):
        heat[:, k, y, x] = 10.0 + k
    got = decode_heatmaps(torch.from_numpy(heat), (4.0, 4.0)).numpy()
    np.testing.assert_allclose(got, loop_decode(heat, 4.0), atol=1e-6)


def test_ties_take_the_first_peak_and_a_flat_neighbourhood_is_not_moved() -> None:
    heat = np.zeros((1, 1, *HEAT), np.float32)
    heat[0, 0, 5, 7] = heat[0, 0, 9, 2] = 1.0
    got = decode_heatmaps(torch.from_numpy(heat), (4.0, 4.0)).numpy()
    np.testing.assert_allclose(got[0, 0], [28.0, 20.0, 1.0])


@pytest.mark.parametrize("mode", FIT_MODES)
@pytest.mark.parametrize("src_hw", SOURCES)
def test_gaussian_peaks_map_back_to_source_pixels(mode: str, src_hw: tuple[int, int]) -> None:
    """Known sub-cell peaks inside the picture: decode + unfit == the analytic decode mapped back, and lies
    within a quarter cell (in source pixels) of the true joint."""
    g = geometry(src_hw, ENGINE, mode)
    ax, ay, ox, oy = g
    (sh, sw), (dh, dw) = src_hw, ENGINE
    # The part of the engine picture that shows the source (pad leaves black bottom/right), 2 cells inside it.
    hi_x, hi_y = min(dw, sw * ax - ox), min(dh, sh * ay - oy)
    rng = np.random.default_rng(sum(src_hw) + len(mode))
    n = 12
    base = np.stack([rng.integers(2, int(hi_x / 4) - 2, n), rng.integers(2, int(hi_y / 4) - 2, n)], 1)
    frac = rng.uniform(0.05, 0.45, (n, 2)) * rng.choice([-1.0, 1.0], (n, 2))
    cells = base + frac
    xe, ye = cells[:, 0] * 4.0, cells[:, 1] * 4.0
    xs, ys = (xe + ox + 0.5) / ax - 0.5, (ye + oy + 0.5) / ay - 0.5  # the joints in the source
    np.testing.assert_allclose(np.stack(engine_of(xs, ys, g), 1), np.stack([xe, ye], 1), atol=1e-9)

    heat = torch.from_numpy(gaussians(cells, HEAT))[None]
    kp = decode_heatmaps(heat, heatmap_stride(ENGINE, HEAT)).numpy()[0]
    got = keypoints_to_source(kp, Fitter(src_hw, ENGINE, mode))

    want_cells = base + 0.25 * np.sign(frac)
    err_engine = want_cells * 4.0 - cells * 4.0  # engine px; source px = engine px / scale
    want = np.stack([xs + err_engine[:, 0] / ax, ys + err_engine[:, 1] / ay], 1)
    np.testing.assert_allclose(got[:, :2], want, atol=1e-3)
    assert np.all(np.abs(got[:, 0] - xs) <= 0.25 * 4.0 / ax + 1e-6)
    assert np.all(np.abs(got[:, 1] - ys) <= 0.25 * 4.0 / ay + 1e-6)
    np.testing.assert_allclose(got[:, 2], kp[:, 2])


@pytest.mark.parametrize("mode", FIT_MODES)
def test_fit_geometry_follows_pil(mode: str) -> None:
    """The geometry the references use is the one Fitter.fit applies: a blob's centroid after PIL's resize and the
    window lands where ``engine_of`` puts its centre."""
    src_hw = (90, 160)
    xs, ys = 81.3, 47.6
    v, u = np.mgrid[0 : src_hw[0], 0 : src_hw[1]]
    blob = 255 * np.exp(-((u - xs) ** 2 + (v - ys) ** 2) / (2 * 7.0**2))
    rgb = np.repeat(np.round(blob).astype(np.uint8)[..., None], 3, axis=2)
    fitted = Fitter(src_hw, ENGINE, mode).fit(rgb)[..., 0].astype(np.float64)
    ev, eu = np.mgrid[0 : ENGINE[0], 0 : ENGINE[1]]
    centroid = (eu * fitted).sum() / fitted.sum(), (ev * fitted).sum() / fitted.sum()
    want = engine_of(np.array(xs), np.array(ys), geometry(src_hw, ENGINE, mode))
    np.testing.assert_allclose(centroid, [float(want[0]), float(want[1])], atol=0.1)


def test_unfit_points_round_trips_engine_of_and_identity_copies() -> None:
    pts = np.array([[0.0, 0.0], [10.5, 3.25], [127.0, 63.0]])
    same = Fitter(ENGINE, ENGINE, "crop").unfit_points(pts)
    np.testing.assert_array_equal(same, pts)
    assert same is not pts
    for mode in FIT_MODES:
        g = geometry((200, 100), ENGINE, mode)
        back = Fitter((200, 100), ENGINE, mode).unfit_points(pts[None])[0]  # leading dims are kept
        np.testing.assert_allclose(np.stack(engine_of(back[:, 0], back[:, 1], g), 1), pts, atol=1e-9)


def test_decode_reads_no_values_on_the_host() -> None:
    """On the meta device no value exists: any .item(), data-dependent branch or host copy would raise."""
    heat = torch.empty(2, 16, *HEAT, device="meta")
    out = decode_heatmaps(heat, (4.0, 4.0))
    assert out.shape == (2, 16, 3) and out.device.type == "meta"


def test_decode_writes_into_a_given_buffer_and_takes_half_heatmaps() -> None:
    rng = np.random.default_rng(3)
    heat = rng.normal(size=(2, 5, *HEAT)).astype(np.float16)
    buf = torch.full((2, 5, 3), -1.0)
    got = decode_heatmaps(torch.from_numpy(heat), (4.0, 4.0), out=buf)
    assert got is buf
    np.testing.assert_allclose(buf.numpy(), loop_decode(heat.astype(np.float32), 4.0), atol=1e-6)


def test_stride_must_divide_the_engine_input() -> None:
    assert heatmap_stride((256, 512), (64, 128)) == (4.0, 4.0)
    with pytest.raises(ValueError, match="do not divide"):
        heatmap_stride((256, 512), (60, 128))


@pytest.mark.gpu
def test_decode_is_captured_in_a_cuda_graph() -> None:
    """No host sync: the decode records into a CUDA graph and replays to the CPU answer."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(4)
    host = rng.normal(size=(2, 16, *HEAT)).astype(np.float32)
    heat = torch.from_numpy(host).cuda()
    out = torch.zeros(2, 16, 3, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        decode_heatmaps(heat, (4.0, 4.0), out=out)  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_heatmaps(heat, (4.0, 4.0), out=out)
    heat.copy_(torch.from_numpy(host[::-1].copy()))
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    np.testing.assert_allclose(out.cpu().numpy(), loop_decode(host[::-1], 4.0), atol=1e-5)
