"""runtime.sources.shortfall: a cut file says so; intact files whose packets reach their length do not, however their
time is laid out (a last frame held for seconds, a stream that starts late), in MP4 and in Matroska."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from runtime.sources import VideoSource

av = pytest.importorskip("av")
MS = Fraction(1, 1000)


def _mux(path: Path, pts_ms: list[int], last_ms: int = 100) -> Path:
    """Frames at ``pts_ms`` (ms), each shown 100 ms, the last ``last_ms``; libx264 without B-frames."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.time_base = s.codec_context.time_base = MS
        s.codec_context.max_b_frames = 0
        packets = []
        for i, t in enumerate(pts_ms):
            rgb = np.full((48, 64, 3), (i * 9) % 255, np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = t, MS
            packets += s.encode(frame)
        packets += s.encode()
        for j, p in enumerate(packets):
            p.duration = last_ms if j == len(packets) - 1 else 100
            c.mux(p)
    return path


def _read(path: Path) -> tuple[int, dict | None]:
    src = VideoSource(str(path))
    n = sum(1 for _ in src)
    src.close()
    return n, src.shortfall


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_intact_files_are_not_taken_for_cut_ones(tmp_path, ext) -> None:
    held = _mux(tmp_path / f"held.{ext}", [i * 100 for i in range(20)], last_ms=3000)  # a screen recording's end
    late = _mux(tmp_path / f"late.{ext}", [2000 + i * 100 for i in range(20)])  # starts 2 s in
    for path in (held, late):
        assert _read(path) == (20, None), path.name


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_a_cut_file_falls_short_of_its_length(tmp_path, ext) -> None:
    whole = _mux(tmp_path / f"w.{ext}", [i * 100 for i in range(40)])
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    if ext == "mp4":  # its index is at the end: moved up front, as web and phone MP4s have it, then cut
        whole = _faststart(whole, tmp_path / "fs.mp4")
        data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    n, short = _read(cut)
    assert short is not None and short["duration_s"] == pytest.approx(4.0, abs=0.1)
    assert n / 10 <= short["covered_s"] < 3.0 and short["frames"] == n


def _faststart(src: Path, dst: Path) -> Path:
    with av.open(str(src)) as i, av.open(str(dst), "w", options={"movflags": "faststart"}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.dts is not None:
                p.stream = s
                o.mux(p)
    return dst
