"""``python -m runtime.run --engine engines/deq_cell.onnx video.mp4``: the streaming runtime CLI.

Bad input ends with one line on stderr and a non-zero exit code, never a traceback:
2 = unusable input/engine/output, 3 = the input was only partly decodable (decode errors, or a file whose frames
stop short of the length it gives: outputs written for what decoded), 130 = interrupted (outputs written for what
was processed).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.errors import DeqRuntimeError, EngineError, Interrupted, OneLineParser
from runtime.manifest import AUTO, SOLVER_NAMES
from runtime.solve import RETURNS, STOPS
from runtime.sources import FIT_MODES

MODES = ("frame", "stream", "stream-mv", "mv", "dff", "mv-interp")
KEY_MODES = ("mv", "dff", "mv-interp")
# mv's warm key frames by default iterate until the relative residual is below this (at most the manifest's f_thres):
# on the validation clip (Big Buck Bunny) the cheapest key-frame setting that agreed with the converged answer at
# least as well as stream k=1 (benchmarks/results/validation/mv_keys/real_footage.md); 2 fixed iterations did not.
MV_KEY_TOL = 0.01
WARM_KEY_MODES = ("mv", "dff")  # mv-interp solves every key frame from zero

EXAMPLES = """examples:
  python -m runtime.run --engine engines/deq_cell.onnx clip.mp4 --mode stream --iters 2
  python -m runtime.run --engine engines/deq_cell.onnx clip.mp4 --mode frame --iters 20 --video
  python -m runtime.run --engine engines/deq_cell.plan rtsp://camera/stream --budget-ms 33
  python -m runtime.run --engine engines_b2/deq_cell.onnx a.mp4 b.mp4 --streams 2
  python -m runtime.run --engine engines/deq_cell.onnx clip.mp4 --mode mv --key-interval 5
  python -m runtime.run --engine engines/deq_cell.onnx clip.mp4 --mode stream-mv --iters 1
  python -m runtime.run --engine engines/deq_cell.onnx clip.mp4 --mode dff --key-interval 5   (bundle with flownet)
  python -m runtime.run --engine engines/deq_cell.onnx clip.mp4 --mode mv-interp --key-interval 5   (delayed output)
outputs (in --out): maps.npz (engine-size class maps, fit geometry included) or maps/, frames.jsonl (one record per
frame), summary.json, and with --video overlay.mp4
"""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m runtime.run",
        description="Run an exported MDEQ engine bundle over video: per-frame DEQ (--mode frame), "
        "StreamDEQ warm-started iterations (--mode stream), or feature propagation between key frames "
        "(--mode mv / stream-mv with codec motion vectors, --mode dff with the bundle's FlowNet, --mode mv-interp "
        "interpolating between key frames with a delay). "
        "Reads only the engines and manifest.json.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_options(p)
    return p


def add_run_options(p: argparse.ArgumentParser, streams: bool = True, video: bool = False) -> None:
    """The inputs, engine, solving and I/O options (runtime.fleet reuses them; ``streams``: add --streams; ``video``:
    the overlay's default, on for the fleet, whose durable writer re-renders it after a move)."""
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="video file, image folder, live URL (rtsp://, http://...) or webcam:N; one per stream",
    )
    p.add_argument(
        "--engine",
        required=True,
        type=Path,
        help="the cell engine, e.g. engines/deq_cell.onnx; its suffix picks the backend "
        "(.onnx ONNX Runtime, .pt2 AOTInductor, .plan TensorRT); manifest.json must sit next to it",
    )
    g = p.add_argument_group("solving")
    g.add_argument(
        "--mode",
        choices=MODES,
        default="stream",
        help="frame: z = 0 every frame; stream: warm start from the previous frame (default); "
        "stream-mv: previous state warped by the codec motion vectors, then --iters iterations; "
        "mv: key frames solved, other frames only warped by the motion vectors (no cell); "
        "dff: key frames solved, other frames = key state warped by the FlowNet's flow x scale; "
        "mv-interp: key frames solved from zero, the frames between interpolated from both neighbouring key "
        "frames along the motion vectors (output waits for the next key frame; one stream)",
    )
    g.add_argument(
        "--key-interval",
        type=int,
        default=None,
        help="mv/dff/mv-interp: a key frame every N frames (default 5; codec I-frames and shot changes "
        "are key frames too)",
    )
    g.add_argument(
        "--key-start",
        choices=("previous", "zero"),
        default="previous",
        help="mv/dff key frames: warm start from the propagated state with --iters iterations (default), "
        "or from zero with --reset-iters iterations",
    )
    g.add_argument(
        "--reencode-mv",
        action="store_true",
        help="mv/stream-mv/mv-interp on an input whose motion vectors span several frames (B-frames, several "
        "reference frames): re-encode it on the fly (libx264, no B-frames, one reference; files and live sources) "
        "for exact vectors, instead of resolving each vector's reference frame by block matching",
    )
    g.add_argument(
        "--iters",
        type=int,
        default=None,
        help="iterations per frame in the solver's unit (a Broyden iteration is an update after one evaluation of "
        "the start: K iterations cost K + 1 cell evaluations; plain and Anderson iterations are one evaluation each). "
        "Default: the manifest's solve (config.stream_solve for the warm-started modes, config.test_solve for "
        "--mode frame, e.g. F_THRES Broyden updates for a published model), else 2 (stream) / its f_thres (frame); "
        "mv/dff: iterations of a warm-started key frame (dff default 2; mv default: until the relative residual is "
        "below 0.01, at most the manifest's f_thres, unless --tol is given); mv-interp: iterations of every key frame "
        "(default: --reset-iters, else the manifest's f_thres); stream-mv: 0 means a pure warp",
    )
    g.add_argument(
        "--solver",
        choices=(*SOLVER_NAMES, AUTO),
        default=None,
        help="fixed-point solver (default: the manifest's solve for the mode: config.stream_solve for stream, "
        "stream-mv and warm key frames, config.test_solve for --mode frame and key frames from zero; e.g. "
        "StreamDEQ's Broyden for an IL-trained model, plain iteration for UR/SUR; fixed_point for bundles without "
        "one). Naming another solver applies that solver's own rule (README 'Streaming solves'): fixed_point "
        "returns f of the last iterate, anderson and broyden the lowest-residual new iterate. auto: plain "
        "iterations until a stream's residual grows within a frame (the cell is not a contraction there), then "
        "safeguarded Anderson for that stream until its next reset; each record says which ran. Our broyden is "
        "safeguarded (a growing or NaN residual drops its history for a plain step from the best point); a "
        "manifest's own Broyden rule (StreamDEQ, MDEQ) runs as the reference ran it",
    )
    g.add_argument(
        "--carry-history",
        action="store_true",
        help="anderson / broyden: keep the solver's history (difference pairs, low-rank inverse Jacobian) from frame "
        "to frame instead of starting it afresh every frame; dropped whenever a stream starts from zero",
    )
    g.add_argument(
        "--returns",
        choices=RETURNS,
        default=None,
        help="which iterate a frame returns and the next frame starts from: f_last (f of the last iterate), "
        "last_iterate, lowest (lowest residual, the start included) or lowest_new (lowest among the new iterates, "
        "StreamDEQ's rule); default: the solve's own",
    )
    g.add_argument(
        "--stop",
        choices=STOPS,
        default=None,
        help="what --tol bounds: rel (per stream ||f(z)-z||/||f(z)||, the default with --tol) or abs "
        "(||f(z)-z||_2 over the whole state, unscaled)",
    )
    g.add_argument(
        "--tol",
        type=float,
        default=None,
        help="stop a frame early once its residual is below this (relative unless --stop abs; it replaces the "
        "manifest solve's tolerance)",
    )
    g.add_argument(
        "--check-every",
        type=int,
        default=None,
        help="with a tolerance: check every N iterations, one sync each (default 4; 1 for the test-time solve)",
    )
    g.add_argument(
        "--budget-ms",
        type=float,
        default=None,
        help="choose iterations per frame to keep the frame latency under this many milliseconds",
    )
    g.add_argument("--max-iters", type=int, default=20, help="upper bound on iterations chosen by --budget-ms")
    g.add_argument(
        "--reset-iters",
        type=int,
        default=None,
        help="iterations for a stream's first frame and after a state reset (default: --iters; "
        "mv/dff: the manifest's f_thres; mv-interp: the default of --iters)",
    )
    g.add_argument(
        "--no-reset",
        action="store_true",
        help="never drop the state (by default it is dropped at a shot change: a jump in the pixel difference "
        "from the previous frame or in the solver residual; and when the residual diverges)",
    )
    if streams:
        g.add_argument(
            "--streams",
            type=int,
            default=None,
            help="number of streams processed together in one batched call (default: number of inputs)",
        )
    d = p.add_argument_group("device and I/O")
    d.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    d.add_argument("--no-graphs", action="store_true", help="disable CUDA graph capture of the iterations")
    d.add_argument(
        "--threads",
        type=int,
        default=0,
        help="intra-op threads of ONNX Runtime and of torch's CPU ops (solver, warps) (0: their defaults)",
    )
    d.add_argument(
        "--fit",
        choices=FIT_MODES,
        default="resize",
        help="how frames meet the engine resolution: stretch (resize, default), scale to fit and pad "
        "(pad), or scale to cover and centre-crop (crop, the usual classification evaluation)",
    )
    d.add_argument(
        "--prepare",
        choices=("auto", "host", "device"),
        default="auto",
        help="where frames are fitted to the engine size (resize / pad / crop) and converted to RGB: device (the "
        "decoded frame goes up as it is, as its YUV 4:2:0 planes where the video has them, and is prepared by torch "
        "where the engines run: the host only decodes), host (Pillow's bilinear resize, in C, on the decode thread: "
        "cheaper on a CPU, benchmarks/results/host.md), or auto (default: device on CUDA, host on the CPU)",
    )
    d.add_argument("--out", type=Path, default=Path("out"), help="output directory (default out/)")
    d.add_argument(
        "--save-maps",
        choices=("png", "npz", "none"),
        default="npz",
        help="per-frame class maps: one NPZ, run-length coded (default; a fraction of the PNGs' cost per frame, "
        "benchmarks/results/host.md; runtime.writers.read_maps reads it), a PNG folder (images at the source size), "
        "or none",
    )
    d.add_argument(
        "--maps-size",
        choices=("engine", "source"),
        default="engine",
        help="NPZ class maps as the engines made them, with the fit geometry recorded in the file (default: their "
        "cost does not grow with the source; runtime.writers.read_maps brings them to the source size), or brought "
        "to the source size while writing",
    )
    d.add_argument(
        "--video",
        action=argparse.BooleanOptionalAction,
        default=video,
        help="write overlay.mp4, the prediction drawn over the frames ("
        + (
            "on by default"
            if video
            else "off by default: with it the writers cost more per frame than the codec's "
            "own decode of a standard-definition clip, benchmarks/results/host.md"
        )
        + ")",
    )
    d.add_argument(
        "--overlay-size",
        choices=("engine", "source"),
        default="engine",
        help="with --video: draw the overlay on the frame the engines saw (default: its cost does not grow with the "
        "source size) or on the decoded frame at the source's size",
    )
    d.add_argument("--max-frames", type=int, default=None, help="stop after this many frames per stream")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.add_argument("--no-hash", action="store_true", help="skip the sha256 check of the engines against the manifest")


def _validate(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.iters is not None and a.iters < (0 if a.mode == "stream-mv" else 1):
        p.error("--iters must be >= 1" + (" (0 is allowed only with --mode stream-mv)" if a.iters == 0 else ""))
    if a.key_interval is not None and a.mode not in KEY_MODES:
        p.error(f"--key-interval applies to --mode {' / '.join(KEY_MODES)}, not {a.mode}")
    if a.key_interval is not None and a.key_interval < 1:
        p.error("--key-interval must be >= 1")
    if a.key_start != "previous" and a.mode not in WARM_KEY_MODES:
        p.error(f"--key-start applies to --mode {' / '.join(WARM_KEY_MODES)}, not {a.mode}")
    if a.mode in KEY_MODES and a.budget_ms is not None:
        p.error(f"--budget-ms does not apply to --mode {a.mode} (its propagated frames run no iterations)")
    for name in ("check_every", "max_iters", "reset_iters", "streams", "max_frames"):
        v = getattr(a, name, None)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.tol is not None and not a.tol > 0:
        p.error("--tol must be > 0")
    if a.budget_ms is not None and not a.budget_ms > 0:
        p.error("--budget-ms must be > 0")
    if getattr(a, "streams", None) is not None and a.streams != len(a.inputs):
        p.error(f"--streams {a.streams} but {len(a.inputs)} input(s) given (one input per stream)")


def output_names(out: Path, streams: int) -> list[str]:
    """What the run wrote into --out, read from the folder itself (so every task's files are named: a pose or det
    run writes no maps, a det run writes detections.json); per stream folder when there are several."""
    if streams == 1:
        return _listing(out)
    return [f"stream<i>/{{{', '.join(_listing(out / 'stream0'))}}}", "summary.json"]


def _listing(folder: Path) -> list[str]:
    """A folder's entries, folders with a trailing slash, hidden ones (a run's journal) left out."""
    if not folder.is_dir():
        return []
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith("."))


def solve_use(mode: str, key_start: str) -> str:
    """Which manifest solve a mode runs: ``frame`` (config.test_solve) where every solved frame starts from zero,
    ``stream`` (config.stream_solve) where frames start from the previous (or propagated) state."""
    return "frame" if mode in ("frame", "mv-interp") or key_start == "zero" else "stream"


def resolve_solve(args: argparse.Namespace, bundle: Any) -> tuple[Any, int | None]:
    """The run's ``Solve`` and the manifest's iterations for it (None: no manifest entry, or another solver).

    The manifest's entry for the mode (``runtime.solve.manifest_solve``), then the flags field by field: --solver
    (another solver brings its own rule), --returns, --stop, --tol (relative unless --stop abs), --check-every.
    """
    from runtime.solve import Solve, manifest_solve

    found = manifest_solve(bundle.manifest, solve_use(args.mode, args.key_start), sum(s.numel for s in bundle.state))
    spec, iters = found if found is not None else (Solve(), None)
    if args.solver is not None and args.solver != spec.solver:
        spec, iters = spec.with_solver(args.solver), None
    changes: dict[str, Any] = {}
    if args.returns is not None:
        changes["returns"] = args.returns
    if args.tol is not None:
        changes.update(tol=args.tol, stop=args.stop or "rel")
    elif args.stop is not None:
        changes["stop"] = args.stop
    if args.check_every is not None:
        changes["check_every"] = args.check_every
    if getattr(args, "carry_history", False):
        changes["carry"] = True
    return dataclasses.replace(spec, **changes), iters


def config_from_args(args: argparse.Namespace, sources: list[Any]) -> Any:
    """The RunConfig of parsed options (defaults that depend on the bundle resolved here; runtime.fleet too)."""
    from runtime.bundle import open_bundle
    from runtime.loop import RunConfig

    bundle = open_bundle(args.engine, check_hash=False)
    spec, entry_iters = resolve_solve(args, bundle)
    iters, reset_iters = args.iters, args.reset_iters
    if iters is None and args.mode == "mv-interp":  # every key frame is solved from zero
        iters = reset_iters or entry_iters or bundle.f_thres
    key_solve = None
    if args.mode == "mv" and args.key_start == "previous" and iters is None and args.tol is None:
        iters, key_solve = bundle.f_thres, dataclasses.replace(spec, tol=MV_KEY_TOL, stop="rel")
    if (
        iters is None
        and entry_iters is not None
        and (args.mode == "frame" or solve_use(args.mode, args.key_start) == "stream")
    ):
        iters = entry_iters  # key frames from zero (--key-start zero) run --reset-iters: their --iters keeps 2
    if iters is None:
        iters = bundle.f_thres if args.mode == "frame" else 2
    if reset_iters is None and args.mode in KEY_MODES:
        reset_iters = bundle.f_thres
    if args.mode == "dff" and "flownet" not in bundle.engines:
        raise EngineError(
            f"--mode dff needs a flownet engine in the bundle next to {args.engine} "
            "(export it with `python -m export.flownet_export`)"
        )
    return RunConfig(
        engine=args.engine,
        sources=sources,
        out=args.out,
        mode=args.mode,
        iters=iters,
        solve=spec,
        key_solve=key_solve,
        budget_ms=args.budget_ms,
        max_iters=args.max_iters,
        reset_iters=reset_iters,
        key_interval=args.key_interval or 5,
        key_start=args.key_start,
        reencode_mv=getattr(args, "reencode_mv", False),
        reset=not args.no_reset,
        fit=args.fit,
        prepare=args.prepare,
        save_maps=args.save_maps,
        maps_size=args.maps_size,
        overlay_size=args.overlay_size,
        video=args.video,
        device=args.device,
        graphs=not args.no_graphs,
        max_frames=args.max_frames,
        threads=args.threads,
        progress=not args.no_progress,
        check_hash=not args.no_hash,
    )


def guarded(work: Callable[[], Any]) -> tuple[int | None, Any]:
    """Run ``work`` for a CLI: (None, its result), or (exit code, None) after one ``error:`` line. Bad input and
    interruption are expected; anything else is a bug, still one line unless DEQSTREAM_DEBUG asks for the traceback.
    After a startup SIGTERM every error is the interruption (it can surface as another one: see ``_STOPPING``)."""
    try:
        return None, work()
    except DeqRuntimeError as e:
        if _STOPPING.is_set():
            return _interrupted()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code, None
    except (KeyboardInterrupt, Interrupted):
        return _interrupted()
    except MemoryError:
        print("error: out of memory", file=sys.stderr)
        return 2, None
    except Exception as e:  # noqa: BLE001 - a bug, not bad input
        if _STOPPING.is_set():
            return _interrupted()
        if os.environ.get("DEQSTREAM_DEBUG"):
            raise
        msg = (str(e).strip().splitlines() or [""])[0][:300]
        print(
            f"error: internal error {type(e).__name__}: {msg} (set DEQSTREAM_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1, None


def _interrupted() -> tuple[int, None]:
    print("error: interrupted", file=sys.stderr)
    return 130, None


# Set by the startup SIGTERM handler. Raised inside an extension module's initialisation (onnxruntime's, numpy's C
# API), Interrupted comes back as an ImportError "initialization failed" or "import numpy failed", so `guarded` asks
# this flag before it reports such an error (3 of 40 SIGTERMs 0.3-3 s after start exited 2 with that message).
_STOPPING = threading.Event()


def _interrupt(*_: object) -> None:
    """SIGTERM before the loop has its own handler (imports, opening the engines): as Ctrl-C."""
    _STOPPING.set()
    raise Interrupted


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from runtime.loop import run

    if args.threads > 0:  # the CPU path's torch ops (solver residuals, warps) oversubscribe a shared CPU otherwise
        import torch

        torch.set_num_threads(args.threads)
    return run(config_from_args(args, list(args.inputs)))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(parser, args)
    _STOPPING.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    failed, summary = guarded(lambda: _run(args))
    if failed is not None:
        return failed
    from runtime.loop import format_summary

    print(format_summary(summary))
    print(f"outputs: {args.out.resolve()} ({', '.join(output_names(args.out, len(args.inputs)))})")
    code = 0
    for s in summary["streams"]:
        if s["resets"]:
            causes = ", ".join(f"{k}: {v}" for k, v in sorted((s.get("reset_causes") or {}).items()))
            print(f"{s['source']}: {len(s['resets'])} from-zero start(s) after frame 0 ({causes}; see frames.jsonl)")
        if s["decode_errors"]:
            print(
                f"warning: {s['source']}: {s['decode_errors']} decode error(s), last: {s['last_decode_error']}; "
                f"outputs cover the {_frames(s['frames'])} that decoded",
                file=sys.stderr,
            )
            code = 3
        short = s.get("shortfall")
        if short and not summary["interrupted"]:
            print(
                f"warning: {s['source']}: its frames stop at {short['covered_s']:.2f} s of the "
                f"{short['duration_s']:.2f} s it says it lasts (about {short['listed']} frames; truncated or "
                f"damaged?); outputs cover the {_frames(s['frames'])} that decoded",
                file=sys.stderr,
            )
            code = 3
    if summary["interrupted"]:
        code = 130
    return code


def _frames(n: int) -> str:
    return f"{n} frame" if n == 1 else f"{n} frames"


if __name__ == "__main__":
    sys.exit(main())
