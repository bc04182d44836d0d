"""Procedural labelled street-scene videos: frames, class maps and exact optical flow.

Why: we need a video segmentation benchmark that runs anywhere (no dataset download),
is deterministic by seed, and has exact ground truth, including the flow from each frame
back to the previous one. A scene is a 2-D layered world (a background canvas plus moving
sprites); the camera pans and zooms over it with an axis-aligned affine map, so every
pixel's world position, and therefore its flow, is known in closed form.

Classes follow ``export.config.SYNTH_CLASSES``. Colours overlap on purpose (overcast sky vs
grey buildings vs road, car bodies in any colour, clothing in any colour), so a pixel's class
needs context (window grids, lane marks, wheel/head shapes, position above the ground line).

Two scene families (:data:`VARIANTS`). The benchmark's, "context", makes building vs
vegetation a long-range decision, as real street scenes make many classes (Cityscapes needs
context far beyond what two iterations of a shallow cell can see; see :func:`_context_skyline`):
the skyline comes in districts separated by sky gaps; a district's texture (window grid or
foliage) and roof line are drawn independently of its class, which shows only in the coloured
ends of its plinth (warm: building, cool: vegetation). Pixels in a district's middle are
90-270 px from that evidence, so per-frame inference needs several cell iterations while a
streamed state carries it over from earlier frames. "plain" is the earlier family, where the
texture gives the class away locally (two iterations from zero nearly suffice there).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.config import SYNTH_CLASSES
from runtime.encode import EncodeOptions, encode_mp4, publish, temp_sibling

ROAD, SKY, BUILDING, VEGETATION, CAR, PERSON, SIGN = range(7)
assert len(SYNTH_CLASSES) == 7 and SYNTH_CLASSES[CAR] == "car" and SYNTH_CLASSES[SIGN] == "sign"

REF_HEIGHT = 256  # object and texture sizes are in pixels at this frame height

VARIANTS = ("context", "plain")  # the first is the default: the benchmark's scenes


# --------------------------------------------------------------------------- sampling helpers
def _axis(coords: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer base index and fraction for linear interpolation along one axis (clamped)."""
    c = np.clip(coords, 0.0, size - 1.000001)
    i0 = np.floor(c).astype(np.int64)
    return i0, (c - i0).astype(np.float32)


def _bilinear(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Separable bilinear sample of img (H, W[, C]) at rows ys and columns xs (a grid)."""
    y0, fy = _axis(ys, img.shape[0])
    x0, fx = _axis(xs, img.shape[1])
    fy = fy[:, None, None] if img.ndim == 3 else fy[:, None]
    fx = fx[None, :, None] if img.ndim == 3 else fx[None, :]
    top, bot = img[y0], img[np.minimum(y0 + 1, img.shape[0] - 1)]
    rows = top * (1 - fy) + bot * fy
    left, right = rows[:, x0], rows[:, np.minimum(x0 + 1, img.shape[1] - 1)]
    return left * (1 - fx) + right * fx


def _nearest(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    yi = np.clip(np.floor(ys + 0.5).astype(np.int64), 0, img.shape[0] - 1)
    xi = np.clip(np.floor(xs + 0.5).astype(np.int64), 0, img.shape[1] - 1)
    return img[yi][:, xi]


def _noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth value noise in [0, 1] with feature size ``cell`` pixels."""
    cell = max(cell, 1.0)
    gh, gw = int(h / cell) + 3, int(w / cell) + 3
    grid = rng.random((gh, gw), dtype=np.float32)
    return _bilinear(grid, np.arange(h) / cell, np.arange(w) / cell).astype(np.float32)


def _rgb(rng: np.random.Generator, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    return rng.uniform(lo, hi).astype(np.float32)


# --------------------------------------------------------------------------- scene
@dataclass
class Sprite:
    """A moving object: colour (h, w, 3) float32, mask (h, w) bool, its class, world position
    of its top-left corner at frame 0 (x, y) and its velocity in world pixels per frame."""

    color: np.ndarray
    mask: np.ndarray
    cls: int
    x: float
    y: float
    vx: float
    vy: float
    depth: float  # bottom y: larger is nearer, drawn later


@dataclass
class Scene:
    color: np.ndarray  # (Hw, Ww, 3) float32 background
    label: np.ndarray  # (Hw, Ww) uint8
    sprites: list[Sprite]
    ground: int


def _sky(rng: np.random.Generator, h: int, w: int, sc: float) -> np.ndarray:
    overcast = rng.random() < 0.35
    if overcast:
        top = np.full(3, rng.uniform(110, 190), np.float32) + rng.uniform(-8, 8, 3).astype(np.float32)
        bottom = top + rng.uniform(10, 40)
    else:
        top = _rgb(rng, (40, 80, 150), (100, 150, 230))
        bottom = top + _rgb(rng, (30, 30, 10), (90, 80, 30))
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    sky = np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).copy()
    clouds = np.clip((_noise(rng, h, w, 40 * sc) - rng.uniform(0.45, 0.7)) * 3.0, 0, 1)[..., None]
    return sky * (1 - clouds) + rng.uniform(200, 250) * clouds


def _building(rng: np.random.Generator, h: int, w: int, sc: float) -> np.ndarray:
    base = np.full(3, rng.uniform(60, 175), np.float32) + _rgb(rng, (-15, -15, -15), (25, 15, 10))
    img = np.broadcast_to(base, (h, w, 3)).copy()
    img += (_noise(rng, h, w, 3 * sc)[..., None] - 0.5) * 18
    px, py = rng.uniform(10, 22) * sc, rng.uniform(12, 24) * sc
    fx, fy = rng.uniform(0.4, 0.7), rng.uniform(0.4, 0.7)
    ox, oy = rng.uniform(0, px), rng.uniform(0, py)
    win = ((np.arange(w) + ox) % px < px * fx)[None, :] & ((np.arange(h) + oy) % py < py * fy)[:, None]
    wcol = base * rng.uniform(0.3, 0.6) if rng.random() < 0.6 else _rgb(rng, (120, 150, 170), (190, 215, 240))
    img[win] = wcol
    return img


def _vegetation(rng: np.random.Generator, h: int, w: int, sc: float) -> np.ndarray:
    base = _rgb(rng, (35, 80, 15), (115, 165, 75))
    n = 0.6 * _noise(rng, h, w, 3 * sc) + 0.4 * _noise(rng, h, w, 9 * sc)
    leaves = 0.45 + 1.1 * n
    return base * leaves[..., None]


def _road(rng: np.random.Generator, h: int, w: int, sc: float) -> np.ndarray:
    base = np.full(3, rng.uniform(65, 135), np.float32) + _rgb(rng, (-5, -10, -5), (15, 5, 20))
    img = np.broadcast_to(base, (h, w, 3)).copy()
    img += (_noise(rng, h, w, 1.5 * sc)[..., None] - 0.5) * 22
    mark = (
        _rgb(rng, (200, 200, 200), (250, 250, 250)) if rng.random() < 0.7 else _rgb(rng, (200, 170, 0), (250, 220, 60))
    )
    period, dash = rng.uniform(30, 60) * sc, rng.uniform(0.3, 0.6)
    thick = max(1, int(round(3 * sc)))
    for frac in rng.uniform(0.25, 0.9, size=rng.integers(1, 3)):
        r = int(frac * h)
        on = (np.arange(w) + rng.uniform(0, period)) % period < period * dash
        img[r : r + thick, on] = mark
    img[: max(1, int(3 * sc))] *= 0.6  # curb shadow
    return img


def _box(h: int, w: int, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _car(rng: np.random.Generator, sc: float) -> tuple[np.ndarray, np.ndarray]:
    w = int(rng.uniform(50, 100) * sc)
    h = int(w * rng.uniform(0.42, 0.55))
    body = rng.uniform(10, 245, 3).astype(np.float32)
    img = np.broadcast_to(body, (h, w, 3)).copy()
    img *= np.linspace(1.1, 0.8, h, dtype=np.float32)[:, None, None]
    inset = w * rng.uniform(0.12, 0.25)
    cabin = _box(h, w, 0, 0.42 * h, inset, w - inset)
    lower = _box(h, w, 0.38 * h, 0.85 * h, 0, w)
    window = _box(h, w, 0.08 * h, 0.38 * h, inset + 0.06 * w, w - inset - 0.06 * w)
    img[window] = _rgb(rng, (20, 30, 40), (90, 110, 130))
    r = 0.17 * h
    wheels = _disc(h, w, h - r - 0.5, 0.22 * w, r) | _disc(h, w, h - r - 0.5, 0.78 * w, r)
    img[wheels] = rng.uniform(10, 35)
    lights = _box(h, w, 0.5 * h, 0.6 * h, 0, 0.06 * w) | _box(h, w, 0.5 * h, 0.6 * h, 0.94 * w, w)
    img[lights] = (240, 230, 180) if rng.random() < 0.5 else (200, 30, 30)
    return img, cabin | lower | wheels


def _person(rng: np.random.Generator, sc: float) -> tuple[np.ndarray, np.ndarray]:
    h = int(rng.uniform(34, 70) * sc)
    w = max(6, int(h * 0.38))
    img = np.zeros((h, w, 3), np.float32)
    head = _disc(h, w, 0.1 * h, w / 2, 0.09 * h)
    torso = _box(h, w, 0.19 * h, 0.58 * h, 0.2 * w, 0.8 * w)
    arms = _box(h, w, 0.2 * h, 0.52 * h, 0.05 * w, 0.95 * w) & ~torso
    arms &= _box(h, w, 0, h, 0.05 * w, 0.15 * w) | _box(h, w, 0, h, 0.85 * w, 0.95 * w)
    legs = _box(h, w, 0.58 * h, h, 0.25 * w, 0.46 * w) | _box(h, w, 0.58 * h, h, 0.54 * w, 0.75 * w)
    cloth = rng.uniform(10, 245, 3)
    img[torso | arms] = cloth
    img[legs] = rng.uniform(15, 120, 3)
    img[head] = _rgb(rng, (120, 80, 60), (240, 200, 170))
    return img, head | torso | arms | legs


def _sign(rng: np.random.Generator, sc: float) -> tuple[np.ndarray, np.ndarray]:
    plate = max(8, int(rng.uniform(14, 28) * sc))
    pole_h = int(rng.uniform(30, 70) * sc)
    pw = max(2, int(round(3 * sc)))
    h, w = plate + pole_h, plate
    img = np.zeros((h, w, 3), np.float32)
    pole = _box(h, w, plate * 0.5, h, (w - pw) / 2, (w + pw) / 2)
    img[pole] = rng.uniform(90, 160)
    shape = rng.integers(0, 3)
    if shape == 0:
        face = _box(h, w, 0, plate, 0, w)
    elif shape == 1:
        face = _disc(h, w, plate / 2 - 0.5, w / 2 - 0.5, plate / 2)
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        face = (np.abs(xx - w / 2 + 0.5) + np.abs(yy - plate / 2 + 0.5)) <= plate / 2
    colors = [(230, 200, 20), (200, 30, 30), (30, 70, 190), (235, 235, 235)]
    a, b = rng.choice(len(colors), 2, replace=False)
    img[face] = colors[a]
    inner = face & _disc(h, w, plate / 2 - 0.5, w / 2 - 0.5, plate * 0.3)
    img[inner] = colors[b]
    return img, pole | face


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown scene variant {variant!r}; choose from {', '.join(VARIANTS)}")


def _paste_block(
    color: np.ndarray, label: np.ndarray, tex: np.ndarray, tops: np.ndarray, x: int, y0: int, cls: int
) -> None:
    """Draw a skyline block in place: ``tex`` covers rows y0.. and columns x.. of the canvas
    (clipped to it), shown where a row is at or below the block's roof line ``tops``."""
    x0, x1 = max(x, 0), min(x + tex.shape[1], label.shape[1])
    if x1 <= x0:
        return
    y1 = y0 + tex.shape[0]
    m = np.arange(y0, y1)[:, None] >= tops[None, x0 - x : x1 - x]
    color[y0:y1, x0:x1][m] = tex[:, x0 - x : x1 - x][m]
    label[y0:y1, x0:x1][m] = cls


def _context_skyline(rng: np.random.Generator, color: np.ndarray, label: np.ndarray, ground: int, sc: float) -> None:
    """The "context" variant's skyline, drawn in place (see VARIANTS).

    Districts are 280-480 px wide, alternate between the two classes (so every view of two
    or more shows both, and frame-wide statistics cannot tell them apart) and carry their
    marker at both ends of the plinth (so a district cut by the frame edge still shows one).
    The middle of a district is 90-210 px from the nearest marker pixel (times the camera's zoom,
    1.0-1.3): for most districts beyond what two cell iterations from zero can use (their receptive
    field through the stride-32 branch reaches about 140 px, most of its weight nearer), within
    what a converged state sees."""
    hw, ww = label.shape
    plinth = max(2, int(round(10 * sc)))
    top_min = int(hw * 0.06)
    x = int(rng.uniform(-300, 0) * sc)  # districts may start left of the world
    cls = BUILDING if rng.random() < 0.5 else VEGETATION
    while x < ww:
        dw = int(rng.uniform(280, 480) * sc)
        make_tex = _building if rng.random() < 0.5 else _vegetation
        tex = make_tex(rng, ground - top_min, dw, sc)
        bumpy = rng.random() < 0.5
        tops = np.empty(dw, np.int64)
        bx = 0
        while bx < dw:
            w = min(int(rng.uniform(60, 140) * sc), dw - bx)
            top = int(hw * rng.uniform(0.06, 0.4))
            if bumpy:
                bump = (_noise(rng, 1, w, 12 * sc)[0] - 0.5) * 30 * sc
                tops[bx : bx + w] = np.clip(top + bump + 10 * sc, top_min, ground - plinth - 2).astype(np.int64)
            else:
                tops[bx : bx + w] = top
            bx += w
        tex[-plinth:] = np.full(3, rng.uniform(90, 170), np.float32)
        if cls == BUILDING:  # warm marker: red to orange
            mark = _rgb(rng, (190, 20, 0), (250, 110, 40))
        else:  # cool marker: blue to cyan
            mark = _rgb(rng, (0, 60, 190), (60, 200, 250))
        mw = int(rng.uniform(30, 50) * sc)
        tex[-plinth:, :mw] = mark
        tex[-plinth:, dw - mw :] = mark
        _paste_block(color, label, tex, tops, x, top_min, cls)
        x += dw + int(rng.uniform(40, 70) * sc)  # a sky gap separates districts
        cls = VEGETATION if cls == BUILDING else BUILDING


def _plain_skyline(rng: np.random.Generator, color: np.ndarray, label: np.ndarray, ground: int, sc: float) -> None:
    """The "plain" variant's skyline, drawn in place: blocks whose texture gives the class away."""
    hw, ww = label.shape
    x = 0
    while x < ww:
        bw = int(rng.uniform(40, 170) * sc)
        top = int(hw * rng.uniform(0.06, 0.45))
        if rng.random() < 0.55:
            tex, cls = _building(rng, ground - top, bw, sc), BUILDING
            tops = np.full(bw, top)
        else:
            tex, cls = _vegetation(rng, ground - top, bw, sc), VEGETATION
            bump = (_noise(rng, 1, bw, 12 * sc)[0] - 0.5) * 30 * sc
            tops = np.clip(top + bump + 10 * sc, 0, ground - 2).astype(np.int64)
        _paste_block(color, label, tex, tops, x, top, cls)
        x += bw


def make_scene(
    rng: np.random.Generator, hw: int, ww: int, sc: float, speed: float = 1.0, variant: str = VARIANTS[0]
) -> Scene:
    """A world of hw x ww pixels: sky, a skyline of buildings/vegetation, road, sprites."""
    _check_variant(variant)
    color = _sky(rng, hw, ww, sc)
    label = np.full((hw, ww), SKY, np.uint8)
    ground = int(hw * rng.uniform(0.55, 0.72))
    skyline = _context_skyline if variant == "context" else _plain_skyline
    skyline(rng, color, label, ground, sc)
    color[ground:] = _road(rng, hw - ground, ww, sc)
    label[ground:] = ROAD
    sprites = []
    n_car = rng.integers(1, 5)
    n_person = rng.integers(1, 6)
    n_sign = rng.integers(0, 4)
    for kind, n in ((CAR, n_car), (PERSON, n_person), (SIGN, n_sign)):
        for _ in range(n):
            img, mask = {CAR: _car, PERSON: _person, SIGN: _sign}[kind](rng, sc)
            h, w = mask.shape
            if kind == CAR:
                bottom = rng.uniform(ground + 0.15 * (hw - ground), hw + 0.1 * h)
                vx = rng.choice([-1, 1]) * rng.uniform(1.0, 4.0) * sc * speed
            elif kind == PERSON:
                bottom = rng.uniform(ground + 2, ground + 0.5 * (hw - ground))
                vx = rng.choice([-1, 1]) * rng.uniform(0.3, 1.5) * sc * speed
            else:
                bottom, vx = rng.uniform(ground + 2, ground + 0.25 * (hw - ground)), 0.0
            sprites.append(Sprite(img, mask, kind, rng.uniform(-w, ww), bottom - h, vx, 0.0, bottom))
    sprites.sort(key=lambda s: s.depth)
    return Scene(color, label, sprites, ground)


# --------------------------------------------------------------------------- rendering
@dataclass
class Camera:
    """Frame pixel (u, v) shows world point (tx + u / s, ty + v / s)."""

    s: float
    tx: float
    ty: float


def _render(scene: Scene, cam: Camera, t: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colour (float32), labels and the index of the owning layer (-1 background) at frame t."""
    xs = cam.tx + np.arange(w, dtype=np.float64) / cam.s
    ys = cam.ty + np.arange(h, dtype=np.float64) / cam.s
    img = _bilinear(scene.color, ys, xs)
    lab = _nearest(scene.label, ys, xs)
    owner = np.full((h, w), -1, np.int16)
    for k, sp in enumerate(scene.sprites):
        lx, ly = xs - (sp.x + sp.vx * t), ys - (sp.y + sp.vy * t)
        sh, sw = sp.mask.shape
        cols = np.nonzero((lx > -0.5) & (lx < sw - 0.5))[0]
        rows = np.nonzero((ly > -0.5) & (ly < sh - 0.5))[0]
        if cols.size == 0 or rows.size == 0:
            continue
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        m = _nearest(sp.mask, ly[r0:r1], lx[c0:c1])
        col = _bilinear(sp.color, ly[r0:r1], lx[c0:c1])
        img[r0:r1, c0:c1][m] = col[m]
        lab[r0:r1, c0:c1][m] = sp.cls
        owner[r0:r1, c0:c1][m] = k
    return img, lab, owner


DET_SOURCE_CLASSES = (CAR, PERSON, SIGN)  # the sprite classes that get boxes; detection class i is the i-th
MIN_BOX_PIXELS = 24  # visible pixels below which an object gets no box (a sliver at the frame edge or behind another)


def object_boxes(scene: Scene, owner: np.ndarray, min_pixels: int = MIN_BOX_PIXELS) -> np.ndarray:
    """(n, 5) float32 rows ``[x1, y1, x2, y2, class]`` of the objects visible in one rendered frame: each sprite's
    box is the extent of the pixels it owns in ``owner`` (:func:`_render`'s layer index; occluded parts excluded),
    in pixel-edge coordinates (x2, y2 one past the last pixel); class is the index into ``DET_SOURCE_CLASSES``.
    Reads nothing random, so adding boxes changes no frame a seed renders."""
    rows = []
    for k, sp in enumerate(scene.sprites):
        if sp.cls not in DET_SOURCE_CLASSES:
            continue
        ys, xs = np.nonzero(owner == k)
        if ys.size < min_pixels:
            continue
        rows.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, DET_SOURCE_CLASSES.index(sp.cls)])
    return np.array(rows, np.float32).reshape(-1, 5)


def _flow(scene: Scene, cam: Camera, prev: Camera, t: int, owner: np.ndarray) -> np.ndarray:
    """Flow current -> previous in pixels: where each pixel's world point was at t-1."""
    h, w = owner.shape
    u, v = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    wx, wy = cam.tx + u / cam.s, cam.ty + v / cam.s
    fx = np.broadcast_to((wx - prev.tx) * prev.s - u, (h, w)).copy()
    fy = np.broadcast_to(((wy - prev.ty) * prev.s - v)[:, None], (h, w)).copy()
    for k, sp in enumerate(scene.sprites):
        m = owner == k
        if m.any():  # the point moved with the sprite: it was (vx, vy) world pixels back
            fx[m] -= sp.vx * prev.s
            fy[m] -= sp.vy * prev.s
    return np.stack([fx, fy], -1).astype(np.float32)


def _finish(img: np.ndarray, gain: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    out = img * gain
    if sigma > 0:
        out = out + rng.normal(0, sigma, img.shape).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _shot(
    rng: np.random.Generator, n: int, h: int, w: int, motion: bool, variant: str = VARIANTS[0]
) -> tuple[Scene, list[Camera]]:
    """One continuous shot: a world large enough for the camera path, and the path."""
    sc = h / REF_HEIGHT
    pan = rng.uniform(-2.5, 2.5) * sc if motion else 0.0
    tilt = rng.uniform(-0.3, 0.3) * sc if motion else 0.0
    s0 = rng.uniform(1.0, 1.15)
    s1 = float(np.clip(s0 + (rng.uniform(-0.15, 0.15) if motion else 0.0), 1.0, 1.3))
    hw = int(h * 1.08) + int(abs(tilt) * n) + 4
    ww = int(w * 1.08) + int(abs(pan) * n) + 4
    scene = make_scene(rng, hw, ww, sc, speed=1.0 if motion else 0.0, variant=variant)
    cams = []
    for t in range(n):
        s = s0 + (s1 - s0) * t / max(n - 1, 1)
        tx = (ww - w / s) / 2 + pan * (t - (n - 1) / 2)
        ty = (hw - h / s) / 2 + tilt * (t - (n - 1) / 2)
        cams.append(Camera(s, float(np.clip(tx, 0, ww - w / s - 1)), float(np.clip(ty, 0, hw - h / s - 1))))
    return scene, cams


def render_clip_with_meta(
    seed: int,
    num_frames: int = 30,
    height: int = 256,
    width: int = 512,
    shot_change: bool | None = None,
    noise: bool = True,
    brightness: bool = True,
    motion: bool = True,
    variant: str = VARIANTS[0],
    boxes: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Like :func:`render_clip`, plus a meta dict (seed, cuts, gains, noise sigma, classes).
    ``variant`` picks the scene family (:data:`VARIANTS`; the first is the benchmark's). ``boxes`` adds
    ``meta["boxes"]``: per frame, the visible objects' ``[x1, y1, x2, y2, class]`` (:func:`object_boxes`) and
    ``meta["det_classes"]``; the frames are the same either way."""
    _check_variant(variant)
    if num_frames < 1 or height < 8 or width < 8:
        raise ValueError(f"need num_frames >= 1 and height, width >= 8, got {num_frames}, {height}x{width}")
    rng = np.random.default_rng(seed)
    if shot_change is None:
        shot_change = bool(rng.random() < 0.3)
    cut = int(rng.integers(num_frames // 3, 2 * num_frames // 3 + 1)) if shot_change and num_frames >= 3 else None
    lengths = [num_frames] if cut is None else [cut, num_frames - cut]
    sigma = float(rng.uniform(1.5, 5.0)) if noise else 0.0
    phase, amp, period = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.2), rng.uniform(15, 60)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    labels = np.empty((num_frames, height, width), np.uint8)
    flows = np.zeros((num_frames, height, width, 2), np.float32)
    gains = []
    frame_boxes: list[list[list[float]]] = []
    t_all = 0
    for length in lengths:
        scene, cams = _shot(rng, length, height, width, motion, variant)
        for t in range(length):
            img, lab, owner = _render(scene, cams[t], t, height, width)
            gain = 1.0 + amp * np.sin(phase + 2 * np.pi * t_all / period) if brightness else 1.0
            gains.append(float(gain))
            frames[t_all] = _finish(img, gain, sigma, rng)
            labels[t_all] = lab
            if boxes:
                frame_boxes.append(object_boxes(scene, owner).tolist())
            if t > 0:
                flows[t_all] = _flow(scene, cams[t], cams[t - 1], t, owner)
            t_all += 1
    meta = {
        "seed": seed,
        "num_frames": num_frames,
        "height": height,
        "width": width,
        "cuts": [] if cut is None else [cut],
        "gains": gains,
        "noise_sigma": sigma,
        "classes": list(SYNTH_CLASSES),
        "flow": "current -> previous, pixels (x, y); zero on frame 0 and on cut frames",
        "variant": variant,
    }
    if boxes:
        meta["boxes"] = frame_boxes
        meta["det_classes"] = [SYNTH_CLASSES[c] for c in DET_SOURCE_CLASSES]
    return frames, labels, flows, meta


def render_clip(
    seed: int, num_frames: int = 30, height: int = 256, width: int = 512, **kwargs: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames (T,H,W,3) uint8 RGB, class maps (T,H,W) uint8, flow current->previous (T,H,W,2)
    float32 in pixels (x, y). Deterministic by seed. kwargs: shot_change, noise, brightness, motion,
    variant."""
    frames, labels, flows, _ = render_clip_with_meta(seed, num_frames, height, width, **kwargs)  # type: ignore[arg-type]
    return frames, labels, flows


def random_frame(
    rng: np.random.Generator,
    height: int,
    width: int,
    scene_height: int = 256,
    scene_width: int = 512,
    variant: str = VARIANTS[0],
) -> tuple[np.ndarray, np.ndarray]:
    """One training frame: a height x width crop of a random scene seen at scene_height x
    scene_width (so object scale matches full-size clips). Returns (frame uint8 (H,W,3), labels)."""
    frame, lab, _ = random_frame_boxes(rng, height, width, scene_height, scene_width, variant)
    return frame, lab


def random_frame_boxes(
    rng: np.random.Generator,
    height: int,
    width: int,
    scene_height: int = 256,
    scene_width: int = 512,
    variant: str = VARIANTS[0],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`random_frame` (the same draws, so the same frame) plus its objects' boxes (:func:`object_boxes`)."""
    scene_height, scene_width = max(scene_height, height), max(scene_width, width)
    sc = scene_height / REF_HEIGHT
    hw, ww = int(scene_height * 1.05) + 2, int(scene_width * 1.05) + 2
    scene = make_scene(rng, hw, ww, sc, variant=variant)
    s = rng.uniform(1.0, 1.3)
    v0, u0 = rng.uniform(0, scene_height - height + 1e-6), rng.uniform(0, scene_width - width + 1e-6)
    tx = rng.uniform(0, ww - scene_width / s - 1) + u0 / s
    ty = rng.uniform(0, hw - scene_height / s - 1) + v0 / s
    t = int(rng.integers(0, 30))
    img, lab, owner = _render(scene, Camera(s, tx, ty), t, height, width)
    frame = _finish(img, rng.uniform(0.75, 1.25), rng.uniform(0, 6), rng)
    return frame, lab, object_boxes(scene, owner)


def random_batch(
    rng: np.random.Generator, batch: int, height: int, width: int, variant: str = VARIANTS[0]
) -> tuple[np.ndarray, np.ndarray]:
    """A stack of :func:`random_frame` results (with a random horizontal flip)."""
    _check_variant(variant)
    frames, labels = [], []
    for _ in range(batch):
        f, lab = random_frame(rng, height, width, variant=variant)
        if rng.random() < 0.5:
            f, lab = f[:, ::-1], lab[:, ::-1]
        frames.append(f)
        labels.append(lab)
    return np.ascontiguousarray(np.stack(frames)), np.ascontiguousarray(np.stack(labels))


def random_det_batch(
    rng: np.random.Generator, batch: int, height: int, width: int, variant: str = VARIANTS[0]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Detection training frames: (B, H, W, 3) uint8 and per frame its (n, 5) boxes (:func:`object_boxes`), each
    frame flipped horizontally with probability 1/2 (its boxes with it)."""
    _check_variant(variant)
    frames, boxes = [], []
    for _ in range(batch):
        f, _, b = random_frame_boxes(rng, height, width, variant=variant)
        if rng.random() < 0.5:
            f = f[:, ::-1]
            b = b.copy()
            b[:, [0, 2]] = width - b[:, [2, 0]]
        frames.append(f)
        boxes.append(b)
    return np.ascontiguousarray(np.stack(frames)), boxes


# --------------------------------------------------------------------------- I/O
def decode_mp4(path: Path) -> np.ndarray:
    """All frames of a video as (T,H,W,3) uint8 RGB."""
    import av

    with av.open(str(path)) as inp:
        return np.stack([f.to_ndarray(format="rgb24") for f in inp.decode(video=0)])


def write_clip(
    out_dir: Path,
    frames: np.ndarray,
    labels: np.ndarray,
    flows: np.ndarray,
    meta: dict | None = None,
    opts: EncodeOptions | None = None,
) -> Path:
    """Write ``clip.mp4`` and ``labels.npz`` (labels, flows, fps, meta as JSON) into out_dir."""
    opts = opts or EncodeOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    encode_mp4(out_dir / "clip.mp4", frames, opts)
    meta = dict(meta or {})
    meta["encode"] = vars(opts)
    tmp = temp_sibling(out_dir / "labels.npz")  # unique: benchmarks run side by side fill the same clip cache
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, labels=labels, flows=flows, fps=np.int32(opts.fps), meta=np.array(json.dumps(meta)))
    publish(tmp, out_dir / "labels.npz")
    return out_dir


def read_clip(clip_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Decoded frames (through the codec), labels, flows and meta of a written clip."""
    clip_dir = Path(clip_dir)
    frames = decode_mp4(clip_dir / "clip.mp4")
    with np.load(clip_dir / "labels.npz") as z:
        labels, flows, meta = z["labels"], z["flows"], json.loads(str(z["meta"]))
    return frames, labels, flows, meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m export.synthetic", description="Write procedural labelled street-scene clips (MP4 + labels)."
    )
    p.add_argument("--out", default="data/synth", help="output directory; one clip_XXXX/ folder per clip")
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--seed", type=int, default=100000, help="clip i uses seed + i")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--crf", type=int, default=18)
    p.add_argument("--bframes", type=int, default=0)
    p.add_argument("--refs", type=int, default=1)
    p.add_argument("--gop", type=int, default=30)
    p.add_argument("--preset", default="medium", help="libx264 speed/size preset (default: %(default)s)")
    p.add_argument("--variant", choices=VARIANTS, default=VARIANTS[0], help="scene family (default: %(default)s)")
    a = p.parse_args(argv)
    if a.clips < 1 or a.frames < 1 or a.height < 8 or a.width < 8 or a.height % 2 or a.width % 2:
        print("error: need --clips, --frames >= 1 and even --height, --width >= 8", file=sys.stderr)
        return 2
    opts = EncodeOptions(fps=a.fps, crf=a.crf, bframes=a.bframes, refs=a.refs, gop=a.gop, preset=a.preset)
    for i in range(a.clips):
        frames, labels, flows, meta = render_clip_with_meta(a.seed + i, a.frames, a.height, a.width, variant=a.variant)
        d = write_clip(Path(a.out) / f"clip_{i:04d}", frames, labels, flows, meta, opts)
        print(f"wrote {d} ({a.frames} frames, cuts {meta['cuts']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
