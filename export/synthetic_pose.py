"""Synthetic pose videos: one articulated figure with known joints walking over the street scenes.

Why: the pose task needs training and test clips with exact keypoints, anywhere and deterministic by seed, as the
segmentation task has :mod:`export.synthetic`. The background is a shot of that module's scenes (its own generator,
untouched: the segmentation clips do not change); on top, a figure with MPII's 16 joints (:data:`JOINTS`) whose
joint angles swing smoothly over time (a walking cycle with random amplitudes, arms free to rise) and whose root
walks and bobs. Limbs are capsules, the torso a quadrilateral, the head a disc; left limbs are drawn darker than right
ones so the two sides can be told apart. A post in front of the figure (in some clips) hides joints that pass behind
it.

Per joint and frame: (x, y, flag) in frame pixels (pixel-index coordinates, as runtime.pose_decode gives), flag 2
visible, 1 inside the frame but hidden by the post, 0 outside the frame (COCO's convention). :func:`pose_targets`
makes the stride-4 Gaussian heatmaps a keypoint head is trained on (cell = joint / stride, the decoder's
convention) and :func:`pck` scores predictions against the joints, relative to the figure's head length (PCKh-like).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from export.synthetic import REF_HEIGHT, _finish, _render, _shot
from runtime.pose_draw import MPII_JOINTS, MPII_LIMBS

JOINTS = MPII_JOINTS
J = len(JOINTS)
LIMBS = MPII_LIMBS  # the part ids in PoseClip.parts are indices into this tuple (its order is the styles' order)
VISIBLE, OCCLUDED, OUTSIDE = 2, 1, 0
BACKGROUND, POST = -1, -2  # PoseClip.parts values that are not limbs
HEAD = (8, 9)  # upper_neck, head_top: the reference length of pck


@dataclass
class Figure:
    """Proportions (in units of the figure's height), colours and the motion of one figure."""

    height: float  # pixels
    x0: float
    y0: float  # pelvis at frame 0
    vx: float
    omega: float  # walking cycle, radians per frame
    phase: float
    swing: np.ndarray  # per-angle amplitudes (radians)
    base: np.ndarray  # per-angle rest angles (radians)
    lean: float
    colors: dict[str, np.ndarray] = field(default_factory=dict)


# Angles (from straight down, counter-clockwise positive in image coordinates): thighs and knees, shoulders and
# elbows, right then left; the cycle's phase per angle (left opposite to right).
_ANGLE_PHASE = np.array([0.0, 0.0, np.pi, np.pi, np.pi, np.pi, 0.0, 0.0])


def _make_figure(rng: np.random.Generator, h: int, w: int) -> Figure:
    fh = rng.uniform(0.4, 0.65) * h
    swing = np.array(
        [rng.uniform(0.2, 0.6), rng.uniform(0.1, 0.6)] * 2 + [rng.uniform(0.2, 1.6), rng.uniform(0.1, 0.9)] * 2
    )
    base = np.array([0.0, -0.3, 0.0, -0.3, rng.uniform(-0.3, 1.2), 0.6, rng.uniform(-1.2, 0.3), -0.6])
    base[4:] *= rng.choice([-1.0, 1.0])  # arms raised forward or back
    skin = rng.uniform((120, 80, 60), (240, 200, 170))
    colors = {"shirt": rng.uniform(20, 235, 3), "trousers": rng.uniform(15, 160, 3), "skin": skin}
    return Figure(
        height=fh,
        x0=rng.uniform(0.25, 0.75) * w,
        y0=rng.uniform(0.45, 0.7) * h,
        vx=rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 2.0) * h / REF_HEIGHT,
        omega=rng.uniform(0.12, 0.35),
        phase=rng.uniform(0, 2 * np.pi),
        swing=swing,
        base=base,
        lean=rng.uniform(-0.15, 0.15),
        colors={k: v.astype(np.float32) for k, v in colors.items()},
    )


def _down(angle: np.ndarray | float) -> np.ndarray:
    """Unit vector at ``angle`` from straight down (image y grows downward)."""
    return np.array([np.sin(angle), np.cos(angle)])


def figure_joints(fig: Figure, t: int) -> np.ndarray:
    """(J, 2) joint positions (x, y) in frame pixels at frame t (forward kinematics)."""
    s = fig.height
    ang = fig.base + fig.swing * np.sin(fig.omega * t + fig.phase + _ANGLE_PHASE)
    pelvis = np.array([fig.x0 + fig.vx * t, fig.y0 + 0.015 * s * np.sin(2 * fig.omega * t + fig.phase)])
    up = -_down(fig.lean)
    side = np.array([-up[1], up[0]])  # the figure's right, on the image's left (it faces the camera)
    p = np.zeros((J, 2))
    p[6] = pelvis
    p[7] = pelvis + 0.3 * s * up
    p[8] = p[7] + 0.06 * s * up
    p[9] = p[8] + 0.12 * s * up
    for hip, knee, ankle, k in ((2, 1, 0, 0), (3, 4, 5, 2)):
        sign = -1.0 if k == 0 else 1.0
        p[hip] = pelvis + sign * 0.08 * s * side
        p[knee] = p[hip] + 0.24 * s * _down(ang[k])
        p[ankle] = p[knee] + 0.24 * s * _down(ang[k] + min(ang[k + 1], 0.0))
    for sh, el, wr, k in ((12, 11, 10, 4), (13, 14, 15, 6)):
        sign = -1.0 if k == 4 else 1.0
        p[sh] = p[7] + sign * 0.11 * s * side
        p[el] = p[sh] + 0.17 * s * _down(ang[k] * sign)
        p[wr] = p[el] + 0.15 * s * _down((ang[k] + ang[k + 1]) * sign)
    return p


def _segment_distance(xx: np.ndarray, yy: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of every pixel centre to the segment a-b."""
    d = b - a
    n = max(float(d @ d), 1e-9)
    u = np.clip(((xx - a[0]) * d[0] + (yy - a[1]) * d[1]) / n, 0.0, 1.0)
    return np.hypot(xx - a[0] - u * d[0], yy - a[1] - u * d[1])


# Per part (LIMBS index): radius in figure heights, clothing. Left limbs are drawn darker (LEFT_SHADE).
_STYLE = (
    (0.035, "trousers"), (0.045, "trousers"), (0.045, "trousers"), (0.035, "trousers"),
    (0.09, "shirt"), (0.025, "skin"), (0.05, "skin"),
    (0.025, "skin"), (0.03, "shirt"), (0.03, "shirt"), (0.025, "skin"),
    (0.05, "trousers"), (0.05, "trousers"), (0.04, "shirt"), (0.04, "shirt"),
)  # fmt: skip
LEFT_PARTS = (2, 3, 9, 10)
LEFT_SHADE = 0.6
MAX_RADIUS = max(r for r, _ in _STYLE)  # figure heights
# Drawing order: the left (far) limbs, the body, the right limbs, neck and head last.
_ORDER = (2, 3, 9, 10, 12, 14, 11, 13, 4, 0, 1, 7, 8, 5, 6)


def _limb_style(fig: Figure, limb: int) -> tuple[float, np.ndarray]:
    """(radius in pixels, colour) of a part."""
    r, cloth = _STYLE[limb]
    shade = LEFT_SHADE if limb in LEFT_PARTS else 1.0
    return max(r * fig.height, 1.0), fig.colors[cloth] * shade


def draw_figure(img: np.ndarray, parts: np.ndarray, joints: np.ndarray, fig: Figure) -> None:
    """Paint the figure into ``img`` (H, W, 3) float32 and its part ids into ``parts`` (H, W), in place."""
    h, w = parts.shape
    r_max = MAX_RADIUS * fig.height + 2
    x0, y0 = np.floor(joints.min(0) - r_max).astype(int)
    x1, y1 = np.ceil(joints.max(0) + r_max).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    for limb in _ORDER:
        a, b = LIMBS[limb]
        r, col = _limb_style(fig, limb)
        m = _segment_distance(xx, yy, joints[a], joints[b]) <= r
        img[y0:y1, x0:x1][m] = col
        parts[y0:y1, x0:x1][m] = limb


@dataclass
class PoseClip:
    frames: np.ndarray  # (T, H, W, 3) uint8
    joints: np.ndarray  # (T, J, 3) float32: x, y, flag (2 visible, 1 hidden by the post, 0 outside)
    parts: np.ndarray  # (T, H, W) int8: limb index (LIMBS), BACKGROUND or POST
    meta: dict[str, Any]


def _post(rng: np.random.Generator, h: int, w: int, fig: Figure) -> tuple[int, int] | None:
    """Columns [c0, c1) of a post in front of the figure's walk, a little ahead of it so that the figure passes
    behind it during the clip, or None (half the clips)."""
    if rng.random() >= 0.5:
        return None
    width = int(rng.uniform(0.03, 0.07) * w) + 1
    centre = fig.x0 + np.sign(fig.vx) * rng.uniform(0.03, 0.15) * w
    c0 = int(np.clip(centre - width / 2, 0, w - width))
    return c0, c0 + width


def _flags(joints: np.ndarray, parts: np.ndarray) -> np.ndarray:
    h, w = parts.shape
    r, c = np.round(joints[:, 1]).astype(int), np.round(joints[:, 0]).astype(int)
    inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    hidden = np.zeros(J, bool)
    hidden[inside] = parts[r[inside], c[inside]] == POST
    return np.where(inside, np.where(hidden, OCCLUDED, VISIBLE), OUTSIDE)


def render_pose_clip(
    seed: int, num_frames: int = 30, height: int = 256, width: int = 512, noise: bool = True, motion: bool = True
) -> PoseClip:
    """A clip with one walking figure over a street-scene shot; deterministic by seed."""
    if num_frames < 1 or height < 32 or width < 32:
        raise ValueError(f"need num_frames >= 1 and height, width >= 32, got {num_frames}, {height}x{width}")
    rng = np.random.default_rng([seed, 28])  # a stream of its own: never the segmentation clips' draws
    scene, cams = _shot(rng, num_frames, height, width, motion)
    fig = _make_figure(rng, height, width)
    post = _post(rng, height, width, fig)
    post_color = rng.uniform(20, 200, 3).astype(np.float32)
    sigma = float(rng.uniform(1.0, 4.0)) if noise else 0.0
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    joints = np.empty((num_frames, J, 3), np.float32)
    parts = np.empty((num_frames, height, width), np.int8)
    for t in range(num_frames):
        img, _, _ = _render(scene, cams[t], t, height, width)
        part = np.full((height, width), BACKGROUND, np.int8)
        xy = figure_joints(fig, t if motion else 0)
        draw_figure(img, part, xy, fig)
        if post is not None:
            img[:, post[0] : post[1]] = post_color
            part[:, post[0] : post[1]] = POST
        frames[t] = _finish(img, 1.0, sigma, rng)
        joints[t, :, :2], joints[t, :, 2] = xy, _flags(xy, part)
        parts[t] = part
    meta = {
        "seed": seed,
        "num_frames": num_frames,
        "height": height,
        "width": width,
        "joints": list(JOINTS),
        "limbs": [list(lb) for lb in LIMBS],
        "figure_height": float(fig.height),
        "post": None if post is None else list(post),
        "noise_sigma": sigma,
        "flags": {"2": "visible", "1": "hidden by the post", "0": "outside the frame"},
    }
    return PoseClip(frames, joints, parts, meta)


def pose_targets(
    joints: np.ndarray, hw: tuple[int, int], stride: int = 4, sigma: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """(J, H/stride, W/stride) Gaussian heatmaps (peak 1 at joint / stride, in cells) and (J,) weights (1 for joints
    inside the frame, visible or hidden; 0 outside), for one frame's (J, 3) joints."""
    h, w = hw[0] // stride, hw[1] // stride
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = joints[:, 0] / stride, joints[:, 1] / stride
    d2 = (u[None] - cx[:, None, None]) ** 2 + (v[None] - cy[:, None, None]) ** 2
    weight = (joints[:, 2] > OUTSIDE).astype(np.float32)
    return np.exp(-d2 / (2 * sigma**2)).astype(np.float32) * weight[:, None, None], weight


def pck_counts(pred: np.ndarray, joints: np.ndarray, thr: float = 0.5) -> tuple[int, int]:
    """(hits, counted): the joints inside the frame (flag > 0) and how many of them have their prediction
    (..., J, >=2) within ``thr`` times the figure's head length (upper_neck to head_top, per frame) of the truth
    (..., J, 3). Counts, so that scores over many frames pool exactly."""
    head = np.linalg.norm(joints[..., HEAD[1], :2] - joints[..., HEAD[0], :2], axis=-1)
    dist = np.linalg.norm(pred[..., :2] - joints[..., :2], axis=-1)
    counted = joints[..., 2] > OUTSIDE
    hit = (dist <= thr * head[..., None]) & counted
    return int(hit.sum()), int(counted.sum())


def pck(pred: np.ndarray, joints: np.ndarray, thr: float = 0.5) -> float:
    """Share of the joints inside the frame whose prediction lies within ``thr`` head lengths (:func:`pck_counts`)."""
    hits, counted = pck_counts(pred, joints, thr)
    return hits / max(counted, 1)


__all__ = [
    "JOINTS",
    "LIMBS",
    "PoseClip",
    "draw_figure",
    "figure_joints",
    "pck",
    "pck_counts",
    "pose_targets",
    "render_pose_clip",
]
