"""Fixtures for the runtime tests: a tiny MDEQ exported once per session, and small clips.

The randomly initialised tiny MDEQ is not a contraction (its relative residual stays near 0.9
after 40 plain iterations), so it has no fixed point to compare solvers on. ``contract``
rescales a copy so that it is: GroupNorm makes the cell scale-invariant in z, so we shrink
conv1 far below GroupNorm's eps (the z path becomes a small linear map), give gn1 a bias (the
branches without injection keep a z-independent signal) and amplify gn2 (so the residual
z enters gn3 with a small weight). The result still depends on the frame, as the tests check.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

H, W = 64, 128


def contract(model: torch.nn.Module, conv1: float = 1e-3, gn2: float = 10.0, seed: int = 0) -> torch.nn.Module:
    """A copy of an MDEQSegNet whose cell is a contraction (see the module docstring)."""
    m = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for branch in m.fullstage.branches:
            b = branch.blocks[0]
            b.conv1.weight.mul_(conv1)
            b.gn1.bias.copy_(torch.randn(b.gn1.bias.shape, generator=gen))
            b.gn2.weight.mul_(gn2)
            b.gn2.bias.mul_(gn2)
    return m


def moving_frames(n: int, h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """A textured scene panning right with a bright bar crossing it (smooth, video-like)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h // 8 + 1, (w + 4 * n) // 8 + 2, 3)).astype(np.float32)
    big = np.kron(base, np.ones((8, 8, 1), np.float32))
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = big[:h, 2 * i : 2 * i + w].copy()
        x = (i * 7) % w
        img[:, x : x + 12] = 250
        out[i] = img.clip(0, 255).astype(np.uint8)
    return out


def write_clip(
    path: Path,
    frames: np.ndarray,
    fps: int = 10,
    codec: str = "libx264",
    rotation: int = 0,
    options: Any = None,
    container_options: Any = None,
    colorspace: int | None = None,
) -> Path:
    """``frames`` encoded into ``path``; ``rotation``: a display matrix turning them that many degrees
    counter-clockwise for viewing (as phones record portrait video); ``options``: the encoder's, instead of fast
    x264 settings; ``container_options``: the muxer's (``{"movflags": "faststart"}``: an MP4's index up front);
    ``colorspace``: the colour-space tag (AVColorSpace) the stream carries."""
    import av

    with av.open(str(path), "w", options=dict(container_options or {})) as c:
        s = c.add_stream(codec, rate=fps)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = "yuv420p"
        if rotation:
            s.set_display_rotation(rotation)
        if colorspace is not None:
            s.codec_context.colorspace = colorspace
        if options is not None:
            s.options = dict(options)
        elif codec == "libx264":
            s.options = {"preset": "ultrafast", "crf": "18", "g": "4"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def decode_clip(path: Path) -> np.ndarray:
    """Independent decode with PyAV (what the reference model sees)."""
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="session")
def tiny_model() -> torch.nn.Module:
    from export.config import get_config
    from export.mdeq import build_model

    return contract(build_model(get_config("tiny"), seed=0))


@pytest.fixture(scope="session")
def bundle64(tiny_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.bundle import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "engines"
    export_bundle(tiny_model, out, H, W, batch=1, formats=("onnx",))
    return out


@pytest.fixture(scope="session")
def clip64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", moving_frames(8))
