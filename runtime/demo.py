"""``make demo``: make a sample clip, run the bundle over it in stream mode, say where the results are.

The clip comes from ``export.synthetic`` (the synthetic street scenes the tiny model trains
on) when that package is importable; otherwise a simple moving pattern is drawn here. This is
the only place the runtime package touches ``export``, and only to make the input clip.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from runtime.bundle import open_bundle
from runtime.errors import DeqRuntimeError


def pattern_clip(n: int, h: int, w: int) -> np.ndarray:
    """Fallback clip: a sky/road split with a box moving across it (frames (n, h, w, 3))."""
    frames = np.empty((n, h, w, 3), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        img = np.where((yy < h // 2)[..., None], [70, 130, 180], [128, 64, 128]).astype(np.uint8)
        img = img + ((xx + 3 * i) % 32 < 2)[..., None].astype(np.uint8) * 40
        x0 = (i * max(w // 60, 2)) % (w - w // 6)
        img[h // 2 - h // 8 : h // 2 + h // 8, x0 : x0 + w // 6] = (0, 0, 142)
        frames[i] = img
    return frames


def make_clip(path: Path, n: int, h: int, w: int) -> str:
    """Write the sample clip; returns where it came from."""
    try:
        from export.synthetic import EncodeOptions, encode_mp4, render_clip

        frames = render_clip(seed=7, num_frames=n, height=h, width=w)[0]
        encode_mp4(path, frames, EncodeOptions(preset="veryfast"))
        return "export.synthetic"
    except ImportError:
        import av

        frames = pattern_clip(n, h, w)
        tmp = path.with_name(path.name + ".tmp")
        with av.open(str(tmp), "w", format="mp4") as c:
            s = c.add_stream("libx264", rate=30)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            for f in frames:
                for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        tmp.replace(path)
        return "a drawn moving pattern"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.demo", description=__doc__.splitlines()[0])
    p.add_argument("--engines", type=Path, default=Path("engines"), help="bundle directory (default engines/)")
    p.add_argument("--kind", choices=("onnx", "pt2", "plan"), default="onnx", help="engine kind to run (default onnx)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory (default out/demo)")
    p.add_argument("--frames", type=int, default=60, help="length of the sample clip (default 60)")
    p.add_argument("--iters", type=int, default=2, help="stream-mode iterations per frame (default 2)")
    a = p.parse_args(argv)
    from runtime.loop import RunConfig, format_summary, run

    try:
        bundle = open_bundle(a.engines / f"deq_cell.{a.kind}")
        a.out.mkdir(parents=True, exist_ok=True)
        clip = a.out / "sample.mp4"
        origin = make_clip(clip, a.frames, bundle.height, bundle.width)
        print(f"sample clip: {clip} ({a.frames} frames from {origin})")
        summary = run(
            RunConfig(
                engine=bundle.engines["deq_cell"].path,
                sources=[str(clip)],
                out=a.out,
                mode="stream",
                iters=a.iters,
                save_maps="none",
            )
        )
    except DeqRuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(format_summary(summary))
    print(f"overlay video: {a.out / 'overlay.mp4'}")
    print(f"per-frame log: {a.out / 'frames.jsonl'}")
    print(f"summary:       {a.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
