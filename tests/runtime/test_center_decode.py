"""The one-stage detector's device decode (runtime/center_decode.py) against a numpy reference written here: peaks
found by looping over every cell and its 3x3 neighbourhood, ranked by score, boxes from the cell, offset and size,
clipped to the content and mapped back to the source frame by hand for every ``--fit`` mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.center_decode import CenterSpec, decode_centers
from runtime.det_decode import content_hw
from runtime.sources import Fitter
from runtime.tasks import TASKS

STRIDE, C, H, W = 4, 3, 16, 24  # a 64 x 96 engine picture


def synthetic_outputs(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int, int, float]]]:
    """Low noise everywhere, plus known peaks (class, y, x, score) with a halo that is lower than the peak."""
    rng = np.random.default_rng(seed)
    heat = rng.uniform(0, 0.05, (1, C, H, W)).astype(np.float32)
    peaks = [(0, 3, 4, 0.93), (1, 8, 10, 0.81), (2, 12, 20, 0.66), (0, 14, 2, 0.52), (1, 0, 23, 0.44)]
    for c, y, x, s in peaks:
        ys, xs = slice(max(y - 1, 0), y + 2), slice(max(x - 1, 0), x + 2)
        heat[0, c, ys, xs] = np.maximum(heat[0, c, ys, xs], s * 0.7)
        heat[0, c, y, x] = s
    size = rng.uniform(-1, 12, (1, 2, H, W)).astype(np.float32)  # a few negative: empty boxes
    offset = rng.uniform(0, 1, (1, 2, H, W)).astype(np.float32)
    return heat, size, offset, peaks


def reference(heat, size, offset, k: int, thr: float, limit_hw: tuple[int, int]) -> np.ndarray:
    """(n, 6) boxes by explicit loops."""
    found = []
    _, c, h, w = heat.shape
    for ci in range(c):
        for y in range(h):
            for x in range(w):
                v = heat[0, ci, y, x]
                nb = heat[0, ci, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
                if v >= nb.max():
                    found.append((float(v), ci, y, x))
    found.sort(key=lambda t: -t[0])
    rows = []
    for v, ci, y, x in found[:k]:
        if v <= thr:
            continue
        cx, cy = (x + offset[0, 0, y, x]) * STRIDE, (y + offset[0, 1, y, x]) * STRIDE
        bw, bh = max(size[0, 0, y, x], 0) * STRIDE, max(size[0, 1, y, x], 0) * STRIDE
        lh, lw = limit_hw
        box = [min(max(cx - bw / 2, 0), lw), min(max(cy - bh / 2, 0), lh)]
        box += [min(max(cx + bw / 2, 0), lw), min(max(cy + bh / 2, 0), lh)]
        rows.append([*box, v, ci])
    return np.array(rows, np.float32).reshape(-1, 6)


def to_source(rows: np.ndarray, fitter: Fitter) -> np.ndarray:
    """Engine-picture boxes back to source pixels by hand: undo the window offset, then the scale."""
    (ih, iw), (oy, ox), (sh, sw) = fitter.scaled, fitter.offset, fitter.src_hw
    out = rows.copy()
    out[:, [0, 2]] = np.clip((rows[:, [0, 2]] + ox) * sw / iw, 0, sw)
    out[:, [1, 3]] = np.clip((rows[:, [1, 3]] + oy) * sh / ih, 0, sh)
    return out


@pytest.mark.parametrize("fit", ["resize", "pad", "crop"])
def test_decode_matches_the_reference_peaks_and_boxes_in_source_pixels(fit):
    heat, size, offset, peaks = synthetic_outputs(0)
    spec = CenterSpec(num_classes=C, stride=STRIDE, score_thr=0.3, max_per_img=10)
    fitter = Fitter((90, 100), (H * STRIDE, W * STRIDE), fit)  # another aspect: pad leaves rows/columns black
    hw = content_hw(fitter.scaled, fitter.offset, fitter.dst_hw)
    t = [torch.from_numpy(a) for a in (heat, size, offset)]
    out = decode_centers(*t, spec, torch.tensor([hw], dtype=torch.float32)).numpy()[0]
    assert out.shape == (10, 6)
    valid = out[out[:, 5] >= 0]
    assert [(int(r[5]), round(float(r[4]), 2)) for r in valid] == [(c, s) for c, _, _, s in peaks]  # only the peaks
    ref = reference(heat, size, offset, 10, 0.3, hw)
    np.testing.assert_allclose(valid, ref, atol=1e-4)
    assert (out[len(valid) :, 5] == -1).all() and (out[len(valid) :, :5] == 0).all()  # padding rows
    source = TASKS["det"].source(out, fitter)  # what the record and detections.json get
    np.testing.assert_allclose(source, to_source(ref, fitter), atol=1e-3)


def test_a_peak_threshold_and_top_k_cut_the_list():
    heat, size, offset, _ = synthetic_outputs(1)
    t = [torch.from_numpy(a) for a in (heat, size, offset)]
    full = torch.tensor([[H * STRIDE, W * STRIDE]], dtype=torch.float32)
    out = decode_centers(*t, CenterSpec(C, STRIDE, 0.3, 3), full).numpy()[0]
    np.testing.assert_allclose(out, reference(heat, size, offset, 3, 0.3, (H * STRIDE, W * STRIDE)), atol=1e-4)
    low = decode_centers(*t, CenterSpec(C, STRIDE, 0.3, 200), full, score_thr=0.0).numpy()[0]
    ref = reference(heat, size, offset, 200, 0.0, (H * STRIDE, W * STRIDE))
    assert (low[:, 5] >= 0).sum() == len(ref) > 5  # the noise's own local maxima too, best first
    np.testing.assert_allclose(low[: len(ref)], ref, atol=1e-4)


@pytest.mark.gpu
def test_the_decode_on_cuda_equals_the_cpu_one():
    """The same tensor operations on the device (no host read): the CUDA result equals the CPU one."""
    heat, size, offset, _ = synthetic_outputs(2)
    spec = CenterSpec(num_classes=C, stride=STRIDE, score_thr=0.3, max_per_img=10)
    hw = torch.tensor([[H * STRIDE - 8, W * STRIDE]], dtype=torch.float32)
    cpu = decode_centers(*(torch.from_numpy(a) for a in (heat, size, offset)), spec, hw)
    dst = torch.zeros(1, 10, 6, device="cuda")
    gpu = decode_centers(*(torch.from_numpy(a).cuda() for a in (heat, size, offset)), spec, hw.cuda(), out=dst)
    assert gpu.data_ptr() == dst.data_ptr()
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
