"""The skeleton: MPII's joints and bones (the default a pose bundle's manifest may override), drawn on a frame, and
keypoints as a frame record's JSON.

Lives in the runtime because the runtime never imports ``export``; the synthetic pose clips
(``export.synthetic_pose``) take their joints and bones from here, so training data, records and overlay agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MPII_JOINTS = (
    "r_ankle",
    "r_knee",
    "r_hip",
    "l_hip",
    "l_knee",
    "l_ankle",
    "pelvis",
    "thorax",
    "upper_neck",
    "head_top",
    "r_wrist",
    "r_elbow",
    "r_shoulder",
    "l_shoulder",
    "l_elbow",
    "l_wrist",
)
# Bones as (joint, joint) index pairs of MPII's skeleton.
MPII_LIMBS = (
    (0, 1), (1, 2), (3, 4), (4, 5),  # right shin, right thigh, left thigh, left shin
    (6, 7), (7, 8), (8, 9),  # pelvis-thorax, neck, head
    (10, 11), (11, 12), (13, 14), (14, 15),  # right forearm, right upper arm, left upper arm, left forearm
    (2, 6), (3, 6), (12, 7), (13, 7),  # hips and shoulders to the body's axis
)  # fmt: skip
LEFT_COLOR, RIGHT_COLOR, AXIS_COLOR = (40, 120, 255), (255, 80, 40), (60, 220, 90)


def _bone_color(names: Sequence[str], a: int, b: int) -> tuple[int, int, int]:
    """Left side blue, right side orange, the body's axis green (by the joints' name prefixes l_ / r_)."""
    sides = {names[i][:2] for i in (a, b) if i < len(names)}
    if "l_" in sides and "r_" not in sides:
        return LEFT_COLOR
    if "r_" in sides and "l_" not in sides:
        return RIGHT_COLOR
    return AXIS_COLOR


def draw_skeleton(
    rgb: np.ndarray,
    keypoints: np.ndarray,
    limbs: Sequence[tuple[int, int]] = MPII_LIMBS,
    names: Sequence[str] = MPII_JOINTS,
    min_score: float = 0.0,
    width: int | None = None,
) -> np.ndarray:
    """A copy of ``rgb`` (H, W, 3) uint8 with the bones whose two joints score above ``min_score`` drawn as lines
    and those joints as dots; ``keypoints`` (J, 3) are (x, y, score) in this picture's pixels."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(img)
    lw = width or max(2, round(min(rgb.shape[:2]) / 160))
    ok = keypoints[:, 2] > min_score
    for a, b in limbs:
        if ok[a] and ok[b]:
            xy = [(float(keypoints[a, 0]), float(keypoints[a, 1])), (float(keypoints[b, 0]), float(keypoints[b, 1]))]
            draw.line(xy, fill=_bone_color(names, a, b), width=lw)
    r = lw + 1
    for x, y in keypoints[ok, :2]:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 255, 255))
    return np.asarray(img)


def keypoints_record(keypoints: np.ndarray, decimals: int = 2) -> list[list[float]]:
    """(J, 3) keypoints as a frame record's ``keypoints``: [[x, y, score], ...] in source pixels, rounded."""
    return [[round(float(v), decimals) for v in row] for row in np.asarray(keypoints, dtype=np.float64)]


__all__ = ["MPII_JOINTS", "MPII_LIMBS", "draw_skeleton", "keypoints_record"]
