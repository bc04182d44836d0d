"""Frames per second vs iterations per frame, per backend, on the device and end to end (``python -m benchmarks.fps``).

Why: StreamDEQ's claim is that k warm-started iterations per frame (stream) buy most of the accuracy of N=20 cold
iterations (frame) at ~N/k times the frame rate. This measures that speed-up where it is paid: on the device (the
loop the engines run: injection + k cell iterations + head on persistent buffers, the frame already on the device)
and end to end (decode -> upload -> engines -> class map on the host, through the runtime's Pipeline and decode
thread), so the cost around the cell is visible. Backends: PyTorch eager (the reference, as the papers ran it),
AOTInductor (.pt2), ONNX Runtime (.onnx) and TensorRT (.plan); one that cannot run here is skipped with the reason.

Statistics follow trtexec (runtime/stats.py): warm-up, then throughput, latency mean/median/p90/p95/p99, GPU compute
time from CUDA events, host overhead (latency - GPU compute) and a warning when the coefficient of variation is above
2.5 %. Also: the roofline of one cell iteration (benchmarks/roofline.py), time per frame vs resolution, throughput vs
batched streams, and accuracy vs FPS when benchmarks/results/accuracy*.json exists. Outputs (atomic):
``<out>/fps_<machine>[_quick].{md,json,png}`` and ``<out>/roofline_<machine>[_quick].{md,json}``.

This module is the command line and the order of the run; the loops and timers are in benchmarks/fps_measure.py,
the derived tables in benchmarks/fps_tables.py, the acceptance checks in benchmarks/fps_criteria.py and the writers
in benchmarks/plots.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.env import stamp as make_stamp
from benchmarks.fps_measure import (
    BACKENDS,
    BundleCache,
    Case,
    EngineLoop,
    bundle_case,
    entry,
    load_model,
    make_clip,
    measure_device,
    measure_e2e,
    open_loop,
    pick_device,
    release,
    unavailable,
)
from benchmarks.fps_tables import derive
from runtime.stats import CV_WARN

DEFAULT_OUT = Path("benchmarks/results")
QUICK_NO_AOTI = (
    "not in --quick: compiling the 3 AOTInductor graphs takes ~2.5 min on the shared 2-core CPU "
    "(pass --backends eager,onnx,aoti to include it)"
)


# --------------------------------------------------------------------------- settings
@dataclass
class Settings:
    """Everything one run measures, validated by :func:`settings_from_args` (the defaults depend on --quick)."""

    configs: list[str]
    resolutions: list[tuple[int, int]]
    backends: list[str]
    iters: list[int]
    e2e_iters: list[int]
    il_iters: list[int]
    precisions: list[str]
    frame_n: int
    warmup: int
    frames: int
    e2e_frames: int
    scale_resolutions: list[tuple[int, int]]
    scale_batches: list[int]
    scale_backend: str | None
    scale_k: int
    device: str
    quick: bool
    out: Path
    checkpoint: bool
    threads: int = 0
    pairs: list[tuple[str, str]] | None = None  # only these (backend, precision) pairs, when given
    engines: list[Path] = field(default_factory=list)  # exported bundles measured as they are (--engine)

    def measures(self, backend: str, precision: str) -> bool:
        """Whether this (backend, precision) pair is measured (--pairs narrows the backends x precisions grid)."""
        return self.pairs is None or (backend, precision) in self.pairs


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            vals = [kind(v.strip()) for v in text.split(",") if v.strip()]
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise argparse.ArgumentTypeError(f"bad list {text!r}: {e}") from None
        if not vals:
            raise argparse.ArgumentTypeError("empty list")
        return vals

    return parse


def _res(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"resolution must look like 512x1024, got {text!r}")
    return int(parts[0]), int(parts[1])


def _pair(text: str) -> tuple[str, str]:
    backend, sep, precision = text.partition(":")
    if not sep or not backend or not precision:
        raise argparse.ArgumentTypeError(f"a pair looks like aoti:fp16, got {text!r}")
    return backend, precision


def _pos_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.fps",
        description="FPS vs iterations per frame (stream k vs per-frame N) for PyTorch eager, AOTInductor, ONNX "
        "Runtime and TensorRT; device-only loop and end to end; trtexec-style statistics; cell roofline; "
        "resolution and batch scaling. Writes fps_<machine>.{md,json,png} and roofline_<machine>.{md,json}.",
        epilog="examples:\n  python -m benchmarks.fps --quick                      # CPU smoke run, ~2-3 min\n"
        "  python -m benchmarks.fps --configs small-seg --resolutions 1024x2048 --precision fp16 "
        "--backends eager,aoti,tensorrt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small CPU run: tiny at 128x256, onnx+eager, few frames")
    p.add_argument("--configs", type=_csv(str), default=None, help="comma list (default tiny,small-seg; quick tiny)")
    p.add_argument(
        "--resolutions",
        type=_csv(_res),
        default=None,
        help="comma list HxW (default 512x1024,1024x2048; quick 128x256)",
    )
    p.add_argument(
        "--backends", type=_csv(str), default=None, help="comma list of eager,aoti,onnx,tensorrt (quick: eager,onnx)"
    )
    p.add_argument("--iters", type=_csv(_pos_int), default=[1, 2, 4, 8, 16, 20], help="stream k values")
    p.add_argument("--e2e-iters", type=_csv(_pos_int), default=None, help="stream k end to end (default --iters)")
    p.add_argument(
        "--il-iters",
        type=_csv(_pos_int),
        default=[1, 2, 4],
        help="K of StreamDEQ's streaming rule (Broyden, K updates = K + 1 cell evaluations, the lowest new iterate "
        "kept) on the engine backends' device loop, beside plain unrolling: the evaluations table compares the two "
        "at equal cost (default 1,2,4; '' skips)",
    )
    p.add_argument("--frame-n", type=_pos_int, default=20, help="per-frame baseline iterations N (default 20)")
    p.add_argument("--precision", type=_csv(str), default=None, help="fp32,fp16 (fp16 only on GPU; default both)")
    p.add_argument(
        "--pairs",
        type=_csv(_pair),
        default=None,
        help="measure only these backend:precision pairs, e.g. eager:fp32,aoti:fp16 (the acceptance comparison "
        "without compiling an fp32 AOTI graph); replaces --backends and --precision",
    )
    p.add_argument("--warmup", type=int, default=None, help="warm-up frames per measurement (default 10, quick 2)")
    p.add_argument("--frames", type=_pos_int, default=None, help="timed frames per measurement (default 50, quick 8)")
    p.add_argument("--e2e-frames", type=_pos_int, default=None, help="timed end-to-end frames (default 40, quick 8)")
    p.add_argument("--scale-resolutions", type=_csv(_res), default=None, help="resolutions for the scaling table")
    p.add_argument("--scale-batches", type=_csv(_pos_int), default=None, help="batched streams B (default 1,2,4)")
    p.add_argument("--scale-backend", default=None, help="backend for scaling (default: aoti on GPU, onnx on CPU)")
    p.add_argument("--scale-k", type=_pos_int, default=2, help="stream k used in the scaling measurements")
    p.add_argument("--no-scaling", action="store_true", help="skip the resolution and batch scaling measurements")
    p.add_argument("--no-checkpoint", action="store_true", help="random weights even where a checkpoint exists")
    p.add_argument(
        "--engine",
        type=Path,
        nargs="+",
        default=None,
        metavar="ENGINE",
        help="also measure these exported bundles as they are (e.g. engines-det/deq_cell.onnx), on their engine's "
        "backend, stream k and frame N on the device and end to end: the task's head and, for pose and det "
        "bundles, its decoding on the device are in the frame time, the decoding also in a column of its own "
        "(head_decode). Alone (without --configs) only these are measured",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch and ONNX Runtime (default 1 on CPU: on a shared, oversubscribed CPU the "
        "multi-threaded kernels' spin barriers make them orders of magnitude slower; 0 = library default)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    return p


def settings_from_args(a: argparse.Namespace) -> Settings:
    """Defaults depend on --quick; everything is validated here so a bad value is one line."""
    from export.config import CONFIGS
    from export.mdeq import check_resolution

    q = a.quick
    engines = list(a.engine or [])
    for eng in engines:
        bundle_case(eng)  # a file that is no bundle: one line now, not after the other measurements
    configs = a.configs or ([] if engines else ["tiny"] if q else ["tiny", "small-seg"])
    res = a.resolutions or ([(128, 256)] if q else [(512, 1024), (1024, 2048)])
    backends = a.backends or (["eager", "onnx"] if q else list(BACKENDS))
    precisions = a.precision or ["fp32", "fp16"]
    if a.pairs:
        backends = list(dict.fromkeys(b for b, _ in a.pairs))
        precisions = list(dict.fromkeys(pr for _, pr in a.pairs))
    for name in configs:
        if name not in CONFIGS:
            raise ValueError(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    for pr in precisions:
        if pr not in ("fp32", "fp16"):
            raise ValueError(f"unknown precision {pr!r}; choose fp32 or fp16")
    scale_res = a.scale_resolutions or ([(64, 128), res[0]] if q else [(256, 512), *res])
    for name in configs:
        for h, w in {*res, *scale_res}:
            check_resolution(CONFIGS[name], h, w)
    if a.device not in ("auto", "cpu") and not a.device.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {a.device!r}")
    if a.scale_backend is not None and a.scale_backend not in BACKENDS:
        raise ValueError(f"unknown --scale-backend {a.scale_backend!r}")
    warmup = a.warmup if a.warmup is not None else (3 if q else 10)
    if warmup < 0:
        raise ValueError("--warmup must be >= 0")
    return Settings(
        configs=configs,
        resolutions=res,
        backends=backends,
        iters=sorted(set(a.iters)),
        e2e_iters=sorted(set(a.e2e_iters or ([1, 2] if q else a.iters))),
        il_iters=sorted(set(a.il_iters or [])),
        precisions=precisions,
        frame_n=a.frame_n,
        warmup=warmup,
        frames=a.frames or (30 if q else 50),
        e2e_frames=a.e2e_frames or (24 if q else 40),
        scale_resolutions=[] if a.no_scaling or not configs else sorted(set(scale_res)),
        scale_batches=[]
        if a.no_scaling or not configs
        else sorted(set(a.scale_batches or ([1, 2] if q else [1, 2, 4]))),
        scale_backend=a.scale_backend,
        scale_k=a.scale_k,
        device=a.device,
        quick=q,
        out=a.out,
        checkpoint=not a.no_checkpoint,
        threads=a.threads if a.threads is not None else (1 if pick_device(a.device).type == "cpu" else 0),
        pairs=list(dict.fromkeys(a.pairs)) if a.pairs else None,
        engines=engines,
    )


# --------------------------------------------------------------------------- the run
class Progress:
    """Per-case progress lines on stderr (elapsed time, case, result)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.perf_counter()

    def line(self, msg: str, count: bool = True) -> None:
        if count:
            self.done += 1
        pos = f"[{self.done}/{self.total}]" if count else "[..]"
        print(f"{pos} {time.perf_counter() - self.t0:6.1f}s {msg}", file=sys.stderr, flush=True)


def measure_backend(
    s: Settings,
    backend: str,
    model: Any,
    case: Case,
    device: torch.device,
    cache: BundleCache,
    clip: Path | None,
    prog: Progress,
    engine: Path | None = None,
) -> list[dict[str, Any]]:
    """Device loop for stream k in s.iters and frame N, then end to end for s.e2e_iters and frame N (``engine``: a
    bundle as it is, instead of the one exported for ``case``)."""
    loop = open_loop(backend, model, case, device, cache, s.threads, engine)
    rows = []
    plan = [("stream", k) for k in s.iters] + [("frame", s.frame_n)]
    for mode, k in plan:
        summ = measure_device(loop, k, mode == "frame", s.warmup, s.frames)
        rows.append(entry(case, backend, "device", mode, k, summ))
        prog.line(f"{backend:<8} {case.label} device {_mk(mode, k)}: {summ['throughput_fps']:.2f} fps{_cvnote(summ)}")
    if isinstance(loop, EngineLoop) and s.il_iters:
        rows += measure_il(s, backend, case, loop, prog)
    if clip is not None:
        for mode, k in [("stream", k) for k in s.e2e_iters] + [("frame", s.frame_n)]:
            summ = measure_e2e(loop, clip, k, mode == "frame", max(1, s.warmup), s.e2e_frames)
            rows.append(entry(case, backend, "e2e", mode, k, summ))
            prog.line(
                f"{backend:<8} {case.label} e2e    {_mk(mode, k)}: {summ['throughput_fps']:.2f} fps{_cvnote(summ)}"
            )
    if isinstance(loop, EngineLoop):
        for r in rows:
            r["cuda_graphs"] = loop.graphs_used()
            if engine is not None:
                r["engine"] = str(engine)
    release(loop)
    return rows


def measure_il(s: Settings, backend: str, case: Case, loop: EngineLoop, prog: Progress) -> list[dict[str, Any]]:
    """StreamDEQ's streaming rule on the same engines (a second pipeline over the same bundle): device rows
    ``stream-il`` with K + 1 evaluations per frame."""
    from export.config import streamdeq_solve
    from runtime.solve import from_entry

    spec, _ = from_entry(streamdeq_solve().to_entry(), 1, "streamdeq_solve")
    il = EngineLoop(loop.bundle.engines["deq_cell"].path, loop.device, s.threads, spec)
    rows = []
    for k in s.il_iters:
        summ = measure_device(il, k, False, s.warmup, s.frames)
        rows.append(entry(case, backend, "device", "stream-il", k, summ, spec.evaluations(k)))
        prog.line(f"{backend:<8} {case.label} device {_mk('stream-il', k)}: {summ['throughput_fps']:.2f} fps")
    release(il)
    return rows


def _mk(mode: str, k: int) -> str:
    return {"stream": f"stream k={k}", "stream-il": f"stream-il K={k}"}.get(mode, f"frame N={k}")


def _cvnote(summary: dict[str, Any]) -> str:
    cv = summary.get("cv") or 0.0
    return f" (CV {100 * cv:.1f}% > {100 * CV_WARN:g}%)" if cv > CV_WARN else ""


def run_benchmark(
    s: Settings, argv: list[str] | None, on_partial: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Every measurement; returns the results dict that the writers turn into md/json/png.

    ``on_partial`` gets the results so far (derived, marked ``partial``) after each backend and case, so a run cut
    off at a time limit (a long AOTInductor compile on a lent GPU machine) still leaves what it measured."""
    device = pick_device(s.device)
    if s.threads > 0:
        torch.set_num_threads(s.threads)
    stamp = make_stamp("benchmarks.fps", argv)
    stamp["threads"] = s.threads
    stamp["quick"] = s.quick
    stamp["device"] = str(device)
    if s.engines and not s.configs:  # only bundles: their own files (fps_<machine>_det), not the configs' results
        stamp["stem_suffix"] = "_" + "_".join(sorted({bundle_case(e)[0].task for e in s.engines}))
    if device.type == "cpu":
        stamp["note"] = "CPU run on a shared machine: absolute numbers are noisy, compare ratios within this run only"
    skipped: list[dict[str, str]] = []
    cases = [Case(c, h, w, p) for c in s.configs for (h, w) in s.resolutions for p in s.precisions]
    work: list[tuple[Case, str, Path | None]] = []
    if s.quick and "aoti" not in s.backends and s.configs:
        skipped.append({"backend": "aoti", "case": "all", "reason": QUICK_NO_AOTI})
    for case in cases:
        for b in s.backends:
            if not s.measures(b, case.precision):
                continue
            why = unavailable(b, case.precision, device)
            if why:
                skipped.append({"backend": b, "case": case.label, "reason": why})
            else:
                work.append((case, b, None))
    bundles: dict[str, str] = {}
    for eng in s.engines:  # bundles as they are: their own backend, case and task
        case, b = bundle_case(eng)
        bundles[case.label] = f"bundle {eng}"
        why = unavailable(b, case.precision, device)
        if why:
            skipped.append({"backend": b, "case": f"{case.label} ({eng})", "reason": why})
        else:
            work.append((case, b, eng))
    per_case = len(s.iters) + len(s.e2e_iters) + 2 + len(s.il_iters)
    prog = Progress(len(work) * per_case + len(s.scale_resolutions) + len(s.scale_batches))
    for sk in skipped:
        prog.line(f"skip {sk['backend']} {sk['case']}: {sk['reason']}", count=False)
    results: dict[str, Any] = {"stamp": stamp, "settings": _settings_dict(s), "skipped": skipped, "rows": []}
    models: dict[str, tuple[Any, str]] = {}
    with tempfile.TemporaryDirectory(prefix="deqstream-bench-") as tmp:
        cache = BundleCache(Path(tmp), device, stamp["command"])
        clips: dict[tuple[int, int], Path] = {}
        for case, backend, eng in work:
            if eng is None and case.config not in models:
                models[case.config] = load_model(case.config, s.checkpoint)
            model = models[case.config][0] if eng is None else None
            hw = (case.height, case.width)
            if hw not in clips:
                clips[hw] = make_clip(Path(tmp), *hw)
            try:
                results["rows"] += measure_backend(s, backend, model, case, device, cache, clips[hw], prog, eng)
            except Exception as e:  # noqa: BLE001 - one backend failing must not lose the others' numbers
                msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                skipped.append({"backend": backend, "case": case.label, "reason": f"failed: {type(e).__name__}: {msg}"})
                prog.line(f"{backend} {case.label} FAILED: {msg}", count=False)
            if on_partial is not None:
                snap = {**results, "rows": list(results["rows"]), "skipped": list(skipped), "partial": True}
                snap["weights"] = {**{name: src for name, (_, src) in models.items()}, **bundles}
                derive_for(snap, s, device)
                on_partial(snap)
        results["scaling"] = run_scaling(s, models, device, cache, skipped, prog)
        results["export_s"] = cache.export_s
    results["weights"] = {**{name: src for name, (_, src) in models.items()}, **bundles}
    derive_for(results, s, device)
    results["wall_s"] = round(time.perf_counter() - prog.t0, 1)
    return results


def derive_for(results: dict[str, Any], s: Settings, device: torch.device) -> None:
    """The derived tables of ``results`` with this run's settings (peaks at the run's thread count; accuracy results
    read from the output folder)."""
    derive(results, device, quick=s.quick, threads=s.threads, accuracy_dir=s.out)


def _settings_dict(s: Settings) -> dict[str, Any]:
    d = asdict(s)
    d["out"] = str(s.out)
    d["engines"] = [str(e) for e in s.engines]
    return d


def run_scaling(
    s: Settings,
    models: dict[str, tuple[Any, str]],
    device: torch.device,
    cache: BundleCache,
    skipped: list[dict[str, str]],
    prog: Progress,
) -> dict[str, list[dict[str, Any]]]:
    """Time per frame vs resolution (B=1) and throughput vs batched streams B (at the first main resolution)."""
    out: dict[str, list[dict[str, Any]]] = {"resolution": [], "batch": []}
    if not s.scale_resolutions and not s.scale_batches:
        return out
    precision = ("fp16" if "fp16" in s.precisions else s.precisions[0]) if device.type == "cuda" else "fp32"
    backend = s.scale_backend or ("aoti" if device.type == "cuda" else "onnx")
    why = unavailable(backend, precision, device)
    if why:
        skipped.append({"backend": backend, "case": "scaling", "reason": why})
        return out
    config = s.configs[0]
    if config not in models:
        models[config] = load_model(config, s.checkpoint)
    model = models[config][0]
    h0, w0 = s.resolutions[0]
    todo = [("resolution", Case(config, h, w, precision)) for h, w in s.scale_resolutions]
    todo += [("batch", Case(config, h0, w0, precision, b)) for b in s.scale_batches]
    done: dict[Case, dict[str, Any]] = {}
    for kind, case in todo:
        if case in done:  # B=1 at the main resolution is also a resolution point: measure it once
            out[kind].append(done[case])
            prog.line(f"scaling {backend} {case.label}: same as above")
            continue
        try:
            loop = open_loop(backend, model, case, device, cache, s.threads)
            summ = measure_device(loop, s.scale_k, False, s.warmup, s.frames)
            release(loop)
        except Exception as e:  # noqa: BLE001 - keep the rest of the table
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            skipped.append({"backend": backend, "case": f"scaling {case.label}", "reason": f"failed: {msg}"})
            prog.line(f"scaling {case.label} FAILED: {msg}")
            continue
        row = entry(case, backend, "device", "stream", s.scale_k, summ)
        row["ms_per_frame"] = summ["latency_ms"]["median"]
        row["pixels"] = case.height * case.width
        out[kind].append(row)
        done[case] = row
        prog.line(f"scaling {backend} {case.label} stream k={s.scale_k}: {summ['throughput_fps']:.2f} images/s")
    return out


# --------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """Parse, validate (a bad value is one ``error:`` line and exit 2), run, write; exit 1 when nothing ran."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        s = settings_from_args(args)
        pick_device(s.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from benchmarks.plots import write_outputs

    try:
        results = run_benchmark(s, argv, on_partial=lambda r: write_outputs(r, s.out))
        paths = write_outputs(results, s.out)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"error: cannot write results: {e}", file=sys.stderr)
        return 2
    print(paths["md_text"])
    print("wrote " + ", ".join(str(p) for k, p in paths.items() if k != "md_text"))
    return 0 if results["rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
