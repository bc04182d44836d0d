"""The synthetic benchmark: determinism, classes, exact flow (checked by warping), MP4 round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export.config import SYNTH_CLASSES
from export.synthetic import decode_mp4, main, random_batch, random_frame, read_clip, render_clip, write_clip


def test_deterministic_by_seed() -> None:
    a = render_clip(7, 3, 64, 128)
    b = render_clip(7, 3, 64, 128)
    c = render_clip(8, 3, 64, 128)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    f1, l1 = random_frame(np.random.default_rng(3), 64, 128)
    f2, l2 = random_frame(np.random.default_rng(3), 64, 128)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(l1, l2)


def test_shapes_dtypes_and_classes() -> None:
    seen: set[int] = set()
    for seed in range(6):
        frames, labels, flows = render_clip(seed, 2, 128, 256)
        assert frames.shape == (2, 128, 256, 3) and frames.dtype == np.uint8
        assert labels.shape == (2, 128, 256) and labels.dtype == np.uint8
        assert flows.shape == (2, 128, 256, 2) and flows.dtype == np.float32
        assert labels.max() < len(SYNTH_CLASSES)
        np.testing.assert_array_equal(flows[0], 0)  # no previous frame
        seen |= set(np.unique(labels).tolist())
    assert seen == set(range(len(SYNTH_CLASSES)))  # every class is drawn somewhere
    frames, labels = random_batch(np.random.default_rng(0), 3, 32, 64)
    assert frames.shape == (3, 32, 64, 3) and labels.shape == (3, 32, 64)


def _warp_error(seed: int) -> tuple[float, float, float]:
    """Warp frame t-1 with the ground-truth flow of frame t (independently, with grid_sample)
    and compare with frame t on pixels whose class neighbourhood is unchanged (no disocclusion)."""
    f, lab, flow = render_clip(seed, 3, 64, 128, noise=False, brightness=False, shot_change=False)
    t, (h, w) = 2, lab.shape[1:]
    u = np.arange(w)[None, :] + flow[t, ..., 0]
    v = np.arange(h)[:, None] + flow[t, ..., 1]
    grid = torch.from_numpy(np.stack([2 * u / (w - 1) - 1, 2 * v / (h - 1) - 1], -1)[None]).float()
    prev = torch.from_numpy(f[t - 1]).permute(2, 0, 1)[None].float()
    warped = F.grid_sample(prev, grid, mode="bilinear", align_corners=True)[0].permute(1, 2, 0).numpy()
    ui, vi = np.clip(np.round(u).astype(int), 0, w - 1), np.clip(np.round(v).astype(int), 0, h - 1)
    pad = np.pad(lab[t], 1, mode="edge")
    uniform = np.ones((h, w), bool)
    for dy in range(3):
        for dx in range(3):
            uniform &= pad[dy : dy + h, dx : dx + w] == lab[t]
    valid = uniform & (lab[t - 1][vi, ui] == lab[t]) & (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
    err = np.abs(warped - f[t]).mean(-1)[valid]
    err_zero = np.abs(f[t - 1].astype(np.float32) - f[t]).mean(-1)[valid]
    return float(err.mean()), float(err_zero.mean()), float(np.abs(flow[t]).max())


@pytest.mark.parametrize("seed", [0, 2])
def test_flow_warps_previous_frame_onto_current(seed: int) -> None:
    err, err_zero, max_flow = _warp_error(seed)
    assert max_flow > 1.0  # the camera and objects did move
    assert err < 3.5  # residual is resampling of sharp textures only
    assert err < 0.5 * err_zero  # and the flow explains the motion


def test_mp4_round_trip(tmp_path) -> None:
    frames, labels, flows = render_clip(1, 5, 64, 128, noise=False)
    d = write_clip(tmp_path / "c", frames, labels, flows, {"seed": 1})
    decoded = decode_mp4(d / "clip.mp4")
    assert decoded.shape == (5, 64, 128, 3)
    err = np.abs(decoded.astype(np.float32) - frames).mean()
    other = render_clip(2, 5, 64, 128, noise=False)[0]
    assert err < 10.0  # crf 18; the rest is 4:2:0 chroma on sharp, small textures
    assert err < 0.3 * np.abs(decoded.astype(np.float32) - other).mean()
    dec2, lab2, flow2, meta = read_clip(d)
    np.testing.assert_array_equal(lab2, labels)
    np.testing.assert_array_equal(flow2, flows)
    assert meta["seed"] == 1 and meta["encode"]["bframes"] == 0 and meta["encode"]["refs"] == 1
    assert sorted(p.name for p in d.iterdir()) == ["clip.mp4", "labels.npz"]  # no temporary file left


def test_cli_and_bad_input(tmp_path, capsys) -> None:
    args = ["--out", str(tmp_path), "--clips", "1", "--frames", "3", "--height", "32", "--width", "64"]
    assert main([*args, "--seed", "7", "--preset", "veryfast"]) == 0
    frames, labels, flows, meta = read_clip(tmp_path / "clip_0000")
    assert meta["seed"] == 7 and meta["encode"]["preset"] == "veryfast" and frames.shape == (3, 32, 64, 3)
    np.testing.assert_array_equal(labels, render_clip(7, 3, 32, 64)[1])
    assert main(["--out", str(tmp_path), "--height", "33"]) == 2
    assert "error" in capsys.readouterr().err
