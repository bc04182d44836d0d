"""export.synthetic_pose: articulated figures whose drawn limbs pass through their joints, visibility flags that
say what the pixels show, heatmap targets the runtime's decoder reads back, and the PCK metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.synthetic import render_clip
from export.synthetic_pose import (
    BACKGROUND,
    JOINTS,
    LIMBS,
    MAX_RADIUS,
    OCCLUDED,
    OUTSIDE,
    POST,
    VISIBLE,
    pck,
    pose_targets,
    render_pose_clip,
)
from runtime.pose_decode import decode_heatmaps

H, W, T = 96, 160, 12
SEEDS = [0, 1, 4, 8, 13]  # 4, 8 and 13 have a post in front of the figure


def _distance(px: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of points (N, 2) to the segment a-b, by projection clamped to the ends."""
    d = b - a
    u = np.clip(((px - a) @ d) / max(float(d @ d), 1e-12), 0.0, 1.0)
    return np.linalg.norm(px - (a + u[:, None] * d), axis=1)


@pytest.fixture(scope="module")
def clips() -> dict[int, object]:
    return {s: render_pose_clip(s, T, H, W, noise=False) for s in SEEDS}


def test_shapes_dtypes_and_determinism(clips) -> None:
    c = clips[0]
    assert c.frames.shape == (T, H, W, 3) and c.frames.dtype == np.uint8
    assert c.joints.shape == (T, len(JOINTS), 3) and c.joints.dtype == np.float32
    assert c.parts.shape == (T, H, W) and set(np.unique(c.joints[..., 2])) <= {OUTSIDE, OCCLUDED, VISIBLE}
    again = render_pose_clip(0, T, H, W, noise=False)
    np.testing.assert_array_equal(again.frames, c.frames)
    np.testing.assert_array_equal(again.joints, c.joints)
    assert any(clips[s].meta["post"] for s in SEEDS) and not all(clips[s].meta["post"] for s in SEEDS)


def test_drawn_limbs_pass_through_their_joints(clips) -> None:
    """Along every bone (joint to joint) the pixels belong to the figure unless the post hides them, and every
    pixel painted as a bone lies within the widest limb radius of that bone's segment."""
    for c in clips.values():
        reach = MAX_RADIUS * c.meta["figure_height"] + 0.75
        for t in range(T):
            xy, parts = c.joints[t, :, :2].astype(np.float64), c.parts[t]
            for limb, (a, b) in enumerate(LIMBS):
                pts = xy[a] + np.linspace(0, 1, 11)[:, None] * (xy[b] - xy[a])
                r, col = np.round(pts[:, 1]).astype(int), np.round(pts[:, 0]).astype(int)
                keep = (r >= 0) & (r < H) & (col >= 0) & (col < W)
                on = parts[r[keep], col[keep]]
                assert np.all((on >= 0) | (on == POST)), (c.meta["seed"], t, limb)
                ys, xs = np.nonzero(parts == limb)
                if ys.size:
                    d = _distance(np.stack([xs, ys], 1).astype(np.float64), xy[a], xy[b])
                    assert d.max() <= reach, (c.meta["seed"], t, limb, d.max())


def test_flags_say_what_the_pixel_shows(clips) -> None:
    seen = {VISIBLE: 0, OCCLUDED: 0}
    for c in clips.values():
        for t in range(T):
            for x, y, flag in c.joints[t]:
                r, col = round(float(y)), round(float(x))
                inside = 0 <= r < H and 0 <= col < W
                assert (flag == OUTSIDE) == (not inside)
                if inside:
                    part = c.parts[t, r, col]
                    assert (flag == OCCLUDED) == (part == POST) and part != BACKGROUND
                    seen[int(flag)] += 1
    assert seen[VISIBLE] and seen[OCCLUDED]  # both kinds occur in these clips


def test_parts_map_is_what_was_painted(clips) -> None:
    """Without noise every part is one flat colour in the frame, and the post one more."""
    c = clips[4]
    for t in (0, T - 1):
        for part in np.unique(c.parts[t]):
            if part == BACKGROUND:
                continue
            px = c.frames[t][c.parts[t] == part]
            assert np.all(px == px[0]), part


def test_segmentation_clips_are_untouched() -> None:
    """The pose clips draw from a stream of their own: the segmentation clips of a seed stay what they were
    (rendering a pose clip first changes nothing)."""
    before = render_clip(4, 3, 64, 96)
    render_pose_clip(4, 3, 64, 96)
    after = render_clip(4, 3, 64, 96)
    for x, y in zip(before, after):
        np.testing.assert_array_equal(x, y)


def test_targets_decode_back_to_the_joints(clips) -> None:
    """Training targets and the runtime's decoder share the convention: decoded within a quarter cell (1 px)."""
    c = clips[1]
    joints = c.joints[0]
    heat, weight = pose_targets(joints, (H, W), stride=4, sigma=2.0)
    assert heat.shape == (len(JOINTS), H // 4, W // 4)
    np.testing.assert_array_equal(weight, (joints[:, 2] > OUTSIDE).astype(np.float32))
    kp = decode_heatmaps(torch.from_numpy(heat)[None], (4.0, 4.0)).numpy()[0]
    cells = joints[:, :2] / 4
    inner = np.all((cells > 1) & (cells < np.array([W // 4 - 2, H // 4 - 2])), axis=1) & (weight > 0)
    assert inner.sum() >= 10
    np.testing.assert_array_less(np.abs(kp[inner, :2] - joints[inner, :2]), 1.0 + 1e-4)


def test_pck_counts_joints_within_the_head_relative_radius() -> None:
    joints = np.zeros((2, len(JOINTS), 3), np.float32)
    joints[..., 2] = VISIBLE
    joints[:, 8, :2], joints[:, 9, :2] = (50, 40), (50, 20)  # head length 20 px
    joints[1, 0, 2] = OUTSIDE
    assert pck(joints, joints) == 1.0
    near, far = joints.copy(), joints.copy()
    near[..., 0] += 9.9  # under 0.5 x 20 px
    far[..., 0] += 10.1
    assert pck(near, joints) == 1.0 and pck(far, joints) == 0.0
    mixed = joints.copy()
    mixed[1, :, 0] += 50  # the second frame all wrong: 16 of 31 counted joints right
    assert pck(mixed, joints) == pytest.approx(16 / 31)
