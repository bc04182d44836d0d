"""The one H.264 encoder: frames come back through PyAV's decoder as written (odd sizes cropped
to even), the low-latency options give single-reference P frames with key frames every gop, and
a failed or empty write leaves no file behind (not even the hidden temporary one)."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from runtime.encode import EncodeOptions, VideoWriter, encode_mp4

av = pytest.importorskip("av", reason="PyAV is not installed (the GPU machines lack it unless carried)")

pytestmark = pytest.mark.skipif("libx264" not in av.codecs_available, reason="PyAV build without libx264")


def frames(n: int, h: int, w: int) -> np.ndarray:
    """Smooth moving gradients (easy for the codec, so decoded values stay close)."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i, ..., 0] = (xx * 3 + i * 4) % 256
        out[i, ..., 1] = (yy * 3) % 256
        out[i, ..., 2] = 128
    return out


def decode(path: Path) -> tuple[np.ndarray, list[bool]]:
    with av.open(str(path)) as c:
        decoded = [(f.to_ndarray(format="rgb24"), bool(f.key_frame)) for f in c.decode(video=0)]
    return np.stack([f for f, _ in decoded]), [k for _, k in decoded]


def test_frames_round_trip_and_odd_sizes_are_cropped(tmp_path: Path) -> None:
    src = frames(4, 33, 47)
    with VideoWriter(tmp_path / "v.mp4", 25, {"crf": "10", "preset": "ultrafast"}) as out:
        for f in src:
            out.write(f)
    got, _ = decode(tmp_path / "v.mp4")
    assert got.shape == (4, 32, 46, 3)
    assert np.abs(got.astype(int) - src[:, :32, :46]).mean() < 3
    assert stat.S_IMODE((tmp_path / "v.mp4").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_low_latency_options_give_key_frames_every_gop(tmp_path: Path) -> None:
    path = encode_mp4(tmp_path / "c.mp4", frames(10, 32, 64), EncodeOptions(gop=4, preset="ultrafast"))
    got, keys = decode(path)
    assert len(got) == 10 and keys == [i % 4 == 0 for i in range(10)]
    with pytest.raises(ValueError, match="even height and width"):
        encode_mp4(tmp_path / "odd.mp4", frames(2, 31, 64), EncodeOptions())


def test_failure_or_no_frames_leave_no_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), VideoWriter(tmp_path / "a.mp4", 30, {}) as out:
        out.write(frames(1, 16, 16)[0])
        raise RuntimeError("boom")
    empty = VideoWriter(tmp_path / "b.mp4", 30, {})
    assert empty.close() is None
    assert list(tmp_path.iterdir()) == []
