"""``make demo``: run the bundle over a sample clip in stream mode, say where the results are.

``make demo`` passes ``--clip``, a synthetic street scene like those the tiny model trains on,
written by ``python -m export.synthetic``; without ``--clip`` a simple moving pattern is drawn
here. The runtime never imports ``export`` (ARCHITECTURE.md): a deployment machine has only
the engines and the manifest.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from runtime.bundle import open_bundle
from runtime.encode import EncodeOptions, encode_mp4
from runtime.errors import DeqRuntimeError, OneLineParser
from runtime.writers import prepare_out_dir


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


def make_clip(path: Path, n: int, h: int, w: int) -> Path:
    """Write the drawn sample clip (:func:`pattern_clip`) as H.264; returns ``path``."""
    return encode_mp4(path, pattern_clip(n, h - h % 2, w - w % 2), EncodeOptions(preset="veryfast"))


def save_still(video: Path, png: Path) -> Path:
    """The overlay video's middle frame as a PNG: a picture of the result that a README or a report can show,
    made by the demo itself rather than by hand (the stream has warmed up by then)."""
    import av
    from PIL import Image

    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    Image.fromarray(frames[len(frames) // 2]).save(png, optimize=True)
    return png


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m runtime.demo", description=__doc__.splitlines()[0])
    p.add_argument("--engines", type=Path, default=Path("engines"), help="bundle directory (default engines/)")
    p.add_argument("--kind", choices=("onnx", "pt2", "plan"), default="onnx", help="engine kind to run (default onnx)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory (default out/demo)")
    p.add_argument("--clip", type=Path, help="video to run (default: draw a moving pattern at the engines' resolution)")
    p.add_argument("--frames", type=int, default=60, help="length of the drawn clip (default 60)")
    p.add_argument("--iters", type=int, default=2, help="stream-mode iterations per frame (default 2)")
    a = p.parse_args(argv)
    if a.frames < 1 or a.iters < 1:
        p.error("--frames and --iters must be >= 1")
    from runtime.loop import RunConfig, format_summary, run

    try:
        bundle = open_bundle(a.engines / f"deq_cell.{a.kind}")
        prepare_out_dir(a.out)
        clip = a.clip if a.clip is not None else make_clip(a.out / "sample.mp4", a.frames, bundle.height, bundle.width)
        print(f"sample clip: {clip}" + ("" if a.clip is not None else f" ({a.frames} frames of a drawn pattern)"))
        summary = run(
            RunConfig(
                engine=bundle.engines["deq_cell"].path,
                sources=[str(clip)],
                out=a.out,
                mode="stream",
                iters=a.iters,
                save_maps="none",
                video=True,  # the demo's point: a clip to look at
            )
        )
    except DeqRuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    still = save_still(a.out / "overlay.mp4", a.out / "overlay.png")
    print(format_summary(summary))
    print(f"overlay video: {a.out / 'overlay.mp4'}")
    print(f"overlay still: {still}")
    print(f"per-frame log: {a.out / 'frames.jsonl'}")
    print(f"summary:       {a.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
