"""runtime.pose_draw: the skeleton overlay draws the bones between confident joints only, coloured by side, and
keypoints become plain JSON lists."""

from __future__ import annotations

import json

import numpy as np

from runtime.pose_draw import (
    AXIS_COLOR,
    LEFT_COLOR,
    MPII_JOINTS,
    MPII_LIMBS,
    RIGHT_COLOR,
    draw_skeleton,
    keypoints_record,
)


def _pose() -> np.ndarray:
    """A standing figure in a 120 x 160 picture: every joint at a known place, all confident."""
    kp = np.zeros((16, 3), np.float32)
    at = {
        "r_ankle": (60, 110), "r_knee": (62, 90), "r_hip": (65, 70), "l_hip": (95, 70), "l_knee": (98, 90),
        "l_ankle": (100, 110), "pelvis": (80, 70), "thorax": (80, 35), "upper_neck": (80, 28), "head_top": (80, 10),
        "r_wrist": (40, 70), "r_elbow": (45, 52), "r_shoulder": (62, 35), "l_shoulder": (98, 35),
        "l_elbow": (115, 52), "l_wrist": (120, 70),
    }  # fmt: skip
    for i, name in enumerate(MPII_JOINTS):
        kp[i, :2], kp[i, 2] = at[name], 0.9
    return kp


def _mid(kp: np.ndarray, a: int, b: int) -> tuple[int, int]:
    x, y = (kp[a, :2] + kp[b, :2]) / 2
    return round(float(y)), round(float(x))


def test_bones_are_drawn_through_their_joints_in_side_colours() -> None:
    kp = _pose()
    img = np.zeros((120, 160, 3), np.uint8)
    out = draw_skeleton(img, kp, width=3)
    assert out.shape == img.shape and not img.any()  # a copy: the input is not drawn on
    want = {(0, 1): RIGHT_COLOR, (3, 4): LEFT_COLOR, (6, 7): AXIS_COLOR, (13, 14): LEFT_COLOR, (10, 11): RIGHT_COLOR}
    for (a, b), colour in want.items():
        assert tuple(out[_mid(kp, a, b)]) == colour, (MPII_JOINTS[a], MPII_JOINTS[b])
    for x, y, _ in kp:
        assert tuple(out[round(float(y)), round(float(x))]) == (255, 255, 255)  # joint dots


def test_bones_of_unconfident_joints_are_left_out() -> None:
    kp = _pose()
    kp[MPII_JOINTS.index("l_knee"), 2] = 0.1
    out = draw_skeleton(np.zeros((120, 160, 3), np.uint8), kp, min_score=0.5, width=3)
    for a, b in MPII_LIMBS:
        if MPII_JOINTS.index("l_knee") in (a, b):
            assert not out[_mid(kp, a, b)].any()
    assert out[_mid(kp, 0, 1)].any()


def test_keypoints_record_is_plain_json() -> None:
    rec = keypoints_record(np.array([[1.23456, 2.5, 0.987654]], np.float32))
    assert json.loads(json.dumps(rec)) == [[1.23, 2.5, 0.99]]
