"""Accuracy and speed of the feature-propagation modes vs per-frame and streaming DEQ.

``python -m benchmarks.propagation [--quick]``: on held-out synthetic clips that went through
H.264 (libx264, bframes=0, ref=1, so every motion vector points one frame back; the clips of
:mod:`benchmarks.accuracy`, same cache), one run measures mIoU and FPS of

    frame N=20 | stream k=1, 2 | stream-mv k=1 | mv (interval 5) | mv, key frames from zero |
    dff (interval 5, if checkpoints/flownet_tiny.pt exists) | mv-interp (interval 5, buffered)

The live modes run the runtime's own policies and warp hooks (:mod:`runtime.propagation`)
through a small eager executor that does what ``runtime.pipeline.Pipeline`` does per frame
(injection only when the cell runs, zero/warp the start state, k cell iterations, head), so the
numbers are the policies', not a re-implementation's. Modes are interleaved clip by clip so a
busy shared CPU slows them alike. Motion fields are decoded once, up front, as the runtime's
decode thread does (their cost is reported separately, not in the FPS).

A second pass (skip with ``--no-runtime``) exports the checkpoint (and FlowNet) as an ONNX bundle
and runs every mode through the deployed path, ``runtime.loop.run``, end to end (mv-interp with
its n frames of delay, as ``--mode mv-interp`` runs it).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.accuracy import (
    SPLIT_SEEDS,
    Acc,
    Stepper,
    TorchStepper,
    _pct,
    add_split_argument,
    clip_dir,
    prepare_clips,
    split_suffix,
)
from benchmarks.plots import atomic_write, pyplot, write_text
from export.metrics import confusion
from kernels.warp import warp
from runtime.modes import FrameInfo, FramePolicy, Policy, StreamPolicy
from runtime.motion_vectors import MotionField, MotionVectorDecoder, MultiFrameMotionWarning
from runtime.propagation import (
    MV_STRIDE,
    DFFPolicy,
    MVPolicy,
    StreamMVPolicy,
    TorchFlow,
    interpolate_segment,
    is_cut,
    mv_pyramid,
)

FLOWNET = Path("checkpoints/flownet_tiny.pt")


# --------------------------------------------------------------------------- clips + motion
def clip_path(root: Path, i: int, frames: int, height: int, width: int, seed: int) -> Path:
    """The MP4 of held-out clip i, where benchmarks.accuracy.prepare_clips cached it."""
    return clip_dir(root, i, frames, height, width, seed) / "clip.mp4"


def motion_fields(path: Path) -> tuple[list[MotionField], float]:
    """Every frame's stride-4 MotionField and the decode+extraction time per frame (ms)."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MultiFrameMotionWarning)  # the clips must be single-reference
        with MotionVectorDecoder(path, stride=MV_STRIDE) as dec:
            fields = [mf for _, mf in dec]
    return fields, (time.perf_counter() - t0) * 1e3 / max(len(fields), 1)


# --------------------------------------------------------------------------- executor
class Executor:
    """One stream through a Policy with eager PyTorch, the Pipeline's per-frame steps."""

    def __init__(self, stepper: Stepper, policy: Policy, height: int, width: int) -> None:
        self.stepper, self.policy, self.h, self.w = stepper, policy, height, width
        self.z: list[torch.Tensor] | None = None
        self.cell_iters = 0

    def frame(self, index: int, rgb: np.ndarray, motion: MotionField) -> np.ndarray:
        info = FrameInfo(index, None, motion.is_key or index == 0, {"motion": motion, "frame": rgb})
        plan = self.policy.plan(info, self.z is not None)
        x = self.stepper.inject(rgb) if plan.run_cell else None
        if self.z is None or plan.start == "zero":
            self.z = self.stepper.zeros(self.h, self.w)
        if plan.warp is not None:
            plan.warp([t[0] for t in self.z], info)
        if plan.run_cell:
            for _ in range(plan.iters):
                self.z = self.stepper.cell(self.z, x)
            self.cell_iters += plan.iters
        return self.stepper.classes(self.z, self.h, self.w)


def run_live(
    stepper: Stepper, make: Callable[[], Policy], frames: np.ndarray, labels: np.ndarray, fields, acc: Acc
) -> tuple[float, int]:
    """A live mode over one clip; returns (seconds, cell iterations)."""
    h, w = labels.shape[1:]
    ex = Executor(stepper, make(), h, w)
    seconds = 0.0
    with torch.no_grad():
        for t, (rgb, lab, mf) in enumerate(zip(frames, labels, fields)):
            t0 = time.perf_counter()
            pred = ex.frame(t, rgb, mf)
            seconds += time.perf_counter() - t0
            acc.add(t, confusion(pred, lab, stepper.num_classes))
    return seconds, ex.cell_iters


def interp_keys(fields, interval: int) -> tuple[list[int], set[int]]:
    """Key frames of mv-interp as the live schedule picks them: every ``interval`` frames,
    restarting at shot changes (intra-coded frames); returns (keys, cuts)."""
    cuts = {t for t, mf in enumerate(fields) if t > 0 and is_cut(FrameInfo(t, side={"motion": mf}))}
    keys, k = [0], 0
    while True:
        later = [c for c in cuts if k < c <= k + interval]
        k = min(later) if later else k + interval
        if k >= len(fields):
            return keys, cuts
        keys.append(k)


def run_interp(
    stepper: Stepper, frames: np.ndarray, labels: np.ndarray, fields, acc: Acc, interval: int, iters: int
) -> tuple[float, int]:
    """mv-interp: key frames (every ``interval``, and shot changes) solved from zero (``iters``),
    the frames between interpolated from both neighbouring keys (Jain & Gonzalez). A segment
    that ends in a shot change, and the tail after the last key, are propagated forward only.
    Output lags by up to ``interval`` frames."""
    h, w = labels.shape[1:]
    n_frames = len(frames)
    t0 = time.perf_counter()
    keys, cuts = interp_keys(fields, interval)
    with torch.no_grad():
        states: dict[int, list[torch.Tensor]] = {}
        for k in keys:
            x, z = stepper.inject(frames[k]), stepper.zeros(h, w)
            for _ in range(iters):
                z = stepper.cell(z, x)
            states[k] = z
        shapes = [tuple(t.shape[2:]) for t in states[0]]
        pyr = {t: mv_pyramid(fields[t].disp, fields[t].coverage, shapes) for t in range(1, n_frames)}
        out: dict[int, list[torch.Tensor]] = {}
        for a, b in zip(keys, [*keys[1:], n_frames]):
            if b < n_frames and b not in cuts:
                seg = interpolate_segment(states[a], states[b], [None, *[pyr[t] for t in range(a + 1, b + 1)]])
                out.update({a + p: s for p, s in enumerate(seg[:-1])})
                continue
            z = out[a] = states[a]
            for t in range(a + 1, b):
                z = [warp(s, torch.from_numpy(d)[None]) for s, d in zip(z, pyr[t])]
                out[t] = z
        preds = [stepper.classes(out[t], h, w) for t in range(n_frames)]
    seconds = time.perf_counter() - t0
    for t, lab in enumerate(labels):
        acc.add(t, confusion(preds[t], lab, stepper.num_classes))
    return seconds, len(keys) * iters


# --------------------------------------------------------------------------- modes
def modes(args: argparse.Namespace, flownet: torch.nn.Module | None) -> dict[str, Callable[[], Policy] | None]:
    """Row name -> fresh policy per clip (None: the buffered mv-interp)."""
    n, k, n0 = args.interval, args.key_iters, args.f_thres
    rows: dict[str, Callable[[], Policy] | None] = {
        f"frame N={n0}": lambda: FramePolicy(n0),
        "stream k=1": lambda: StreamPolicy(1),
        "stream k=2": lambda: StreamPolicy(2),
        "stream-mv k=1": lambda: StreamMVPolicy(1),
        f"mv n={n} (key: warm k={k})": lambda: MVPolicy(n, k, n0),
        f"mv n={n} (key: zero N={n0})": lambda: MVPolicy(n, n0, n0, key_start="zero"),
    }
    if flownet is not None:
        rows[f"dff n={n} (key: zero N={n0})"] = lambda: DFFPolicy(n, n0, n0, "zero", TorchFlow(flownet))
    rows[f"mv-interp n={n} (key: zero N={n0})"] = None
    return rows


def evaluate(stepper: Stepper, clips, fields, args: argparse.Namespace, flownet) -> dict[str, Any]:
    table = modes(args, flownet)
    accs = {name: Acc() for name in table}
    secs = dict.fromkeys(table, 0.0)
    iters = dict.fromkeys(table, 0)
    n_frames = 0
    for (frames, labels, _meta), fl in zip(clips, fields):
        n_frames += len(frames)
        for name, make in table.items():  # interleaved: a busy CPU slows every mode alike
            if make is None:
                s, it = run_interp(stepper, frames, labels, fl, accs[name], args.interval, args.f_thres)
            else:
                s, it = run_live(stepper, make, frames, labels, fl, accs[name])
            secs[name] += s
            iters[name] += it
            print(f"  {name}: {s:.1f} s", flush=True)
    rows = {}
    for name in table:
        summ = accs[name].summary()
        rows[name] = {
            "miou": summ["miou"],
            "miou_from10": summ["miou_from10"],
            "per_frame_miou": summ["per_frame_miou"],
            "fps": n_frames / secs[name] if secs[name] > 0 else None,
            "ms_per_frame": 1e3 * secs[name] / n_frames,
            "cell_iters_per_frame": iters[name] / n_frames,
            "delay_frames": args.interval if table[name] is None else 0,
        }
    return rows


# --------------------------------------------------------------------------- the deployed runtime
def runtime_modes(args: argparse.Namespace, has_flownet: bool) -> dict[str, dict[str, Any]]:
    """Row name -> RunConfig fields for the runtime (python -m runtime.run) pass."""
    n, k, n0 = args.interval, args.key_iters, args.f_thres
    rows = {
        f"frame N={n0}": {"mode": "frame", "iters": n0},
        "stream k=1": {"mode": "stream", "iters": 1},
        "stream k=1 --reset-iters 4": {"mode": "stream", "iters": 1, "reset_iters": 4},
        "stream k=2": {"mode": "stream", "iters": 2},
        "stream-mv k=1": {"mode": "stream-mv", "iters": 1},
        f"mv n={n} (key: warm k={k})": {"mode": "mv", "iters": k, "reset_iters": n0, "key_interval": n},
        f"mv n={n} (key: zero N={n0})": {
            "mode": "mv",
            "iters": n0,
            "reset_iters": n0,
            "key_interval": n,
            "key_start": "zero",
        },
    }
    if has_flownet:
        rows[f"dff n={n} (key: zero N={n0})"] = {
            "mode": "dff",
            "iters": n0,
            "reset_iters": n0,
            "key_interval": n,
            "key_start": "zero",
        }
    rows[f"mv-interp n={n} (key: zero N={n0})"] = {"mode": "mv-interp", "iters": n0, "key_interval": n}
    return rows


def evaluate_runtime(bundle: Path, clips, args: argparse.Namespace, work: Path, num_classes: int) -> dict[str, Any]:
    """Every mode through runtime.loop.run on the exported bundle (ONNX Runtime, CPU here), clip by
    clip and interleaved; mIoU from the written class maps, FPS = frames / summed loop wall time."""
    from runtime.bundle import open_bundle
    from runtime.loop import RunConfig, run
    from runtime.writers import read_maps

    table = runtime_modes(args, "flownet" in open_bundle(bundle, check_hash=False).engines)
    accs = {name: Acc() for name in table}
    wall = dict.fromkeys(table, 0.0)
    frames_done = dict.fromkeys(table, 0)
    for i, (_frames, labels, _meta) in enumerate(clips):
        clip = clip_path(Path(args.data), i, args.frames, args.height, args.width, SPLIT_SEEDS[args.split])
        for name, kw in table.items():
            out = work / "run"
            summary = run(
                RunConfig(
                    engine=bundle,
                    sources=[str(clip)],
                    out=out,
                    save_maps="npz",
                    video=False,
                    progress=False,
                    threads=max(args.threads, 0),
                    reset=True,
                    log=lambda _m: None,
                    **kw,
                )
            )
            maps = list(read_maps(out / "maps.npz").values())
            for t, (pred, lab) in enumerate(zip(maps, labels)):
                accs[name].add(t, confusion(pred, lab, num_classes))
            wall[name] += summary["wall_s"]
            frames_done[name] += summary["frames"]
            print(f"  runtime {name}: {summary['throughput_fps']:.1f} fps", flush=True)
    out = {}
    for name in table:
        summ = accs[name].summary()
        out[name] = {
            "miou": summ["miou"],
            "miou_from10": summ["miou_from10"],
            "fps": frames_done[name] / wall[name],
            "ms_per_frame": 1e3 * wall[name] / frames_done[name],
        }
    return out


def runtime_pass(model: torch.nn.Module, flownet, clips, args: argparse.Namespace) -> dict[str, Any]:
    """Export the checkpoint (and FlowNet) as an ONNX bundle in a temporary folder and run it."""
    import tempfile

    from export.bundle import export_bundle
    from export.flownet_export import add_flownet

    with tempfile.TemporaryDirectory(prefix="deqstream_prop_") as tmp:
        eng = Path(tmp) / "engines"
        export_bundle(model, eng, args.height, args.width, formats=("onnx",))
        if flownet is not None:
            add_flownet(eng, flownet)
        return evaluate_runtime(eng / "deq_cell.onnx", clips, args, Path(tmp), model.cfg.num_classes)


# --------------------------------------------------------------------------- outputs
def acceptance(rows: dict[str, Any], args: argparse.Namespace, rt: dict[str, Any] | None = None) -> dict[str, Any]:
    """The two targets of the issue, as measured (speed also on the deployed runtime, if run)."""
    frame = rows[f"frame N={args.f_thres}"]
    mv = rows[f"mv n={args.interval} (key: warm k={args.key_iters})"]
    smv, s1 = rows["stream-mv k=1"], rows["stream k=1"]
    speed = mv["fps"] / frame["fps"]
    extra = {}
    if rt:
        r_mv, r_frame = rt[f"mv n={args.interval} (key: warm k={args.key_iters})"], rt[f"frame N={args.f_thres}"]
        extra = {
            "runtime_mv_fps_over_frame_fps": r_mv["fps"] / r_frame["fps"],
            "runtime_stream_mv_k1_miou_minus_stream_k1": rt["stream-mv k=1"]["miou"] - rt["stream k=1"]["miou"],
        }
    return {
        **extra,
        "stream_mv_k1_miou_minus_stream_k1": smv["miou"] - s1["miou"],
        "stream_mv_k1_at_least_stream_k1": bool(smv["miou"] >= s1["miou"]),
        "mv_fps_over_frame_fps": speed,
        "mv_at_least_3x_frame": bool(speed >= 3.0),
    }


def speedup(rows: dict[str, Any], name: str) -> str:
    """FPS of a row over the first row's (frame mode): the ratio the README quotes, measured in one run."""
    base = next(iter(rows.values()))["fps"]
    return f"{rows[name]['fps'] / base:.2f}x" if base > 0 else "-"


def markdown(rows: dict[str, Any], acc: dict[str, Any], stamp: dict[str, Any]) -> str:
    lines = [
        "# Feature propagation: accuracy and speed per mode (synthetic held-out clips, through H.264)",
        "",
        f"- command: `{stamp['command']}` ({stamp.get('wall_s', '-')} s)",
        f"- clips: {stamp.get('split', 'test')} split, seeds from {stamp.get('heldout_seed', '-')}",
        f"- machine: {stamp['machine']}; backend: {stamp['backend']}",
        f"- date: {stamp['date']}; checkpoint: {stamp['checkpoint']} ({stamp['checkpoint_steps']} steps); "
        f"clips: {stamp['clips']} x {stamp['frames']} frames at {stamp['height']}x{stamp['width']}, "
        "libx264 bframes=0 ref=1",
        f"- FPS: model work per frame (injection, warps, FlowNet, cell, head incl. full-resolution argmax), all "
        f"modes in one run, interleaved per clip; motion-vector decode + field extraction costs "
        f"{stamp['mv_ms_per_frame']:.1f} ms/frame in the decode thread (not included)",
        f"- dff: {stamp['dff']}",
        "",
        "| mode | mIoU % | mIoU % from frame 10 | FPS | vs frame | ms/frame | cell iters/frame | delay (frames) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {_pct(r['miou'])} | {_pct(r.get('miou_from10'))} | {r['fps']:.2f} | {speedup(rows, name)} | "
            f"{r['ms_per_frame']:.1f} | {r['cell_iters_per_frame']:.2f} | {r['delay_frames']} |"
        )
    rt = stamp.get("runtime_rows")
    if rt:
        lines += [
            "",
            f"## Deployed runtime: `runtime.loop.run` on the exported bundle ({stamp['runtime_backend']})",
            "",
            "Same clips; FPS = frames / loop wall time (decode thread, motion-vector extraction, upload, engines, "
            "warps, download; no writers' video). Key frames and shot changes as the runtime decides them "
            "(its reset monitor on).",
            "",
            "| mode | mIoU % | mIoU % from frame 10 | FPS | vs frame | ms/frame |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in rt.items():
            lines.append(
                f"| {name} | {_pct(r['miou'])} | {_pct(r.get('miou_from10'))} | {r['fps']:.2f} | {speedup(rt, name)} | "
                f"{r['ms_per_frame']:.1f} |"
            )
    lines += [
        "",
        "## Acceptance targets",
        "",
        f"- stream-mv k=1 at least as accurate as stream k=1: "
        f"{'MET' if acc['stream_mv_k1_at_least_stream_k1'] else 'NOT MET'} "
        f"({100 * acc['stream_mv_k1_miou_minus_stream_k1']:+.2f} mIoU points)",
        f"- mv (interval {stamp['interval']}) >= 3x the FPS of frame N={stamp['f_thres']}: "
        f"{'MET' if acc['mv_at_least_3x_frame'] else 'NOT MET'} ({acc['mv_fps_over_frame_fps']:.2f}x eager"
        + (f", {acc['runtime_mv_fps_over_frame_fps']:.2f}x deployed runtime)" if rt else ")"),
        "",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: dict[str, Any], path: Path) -> None:
    """mIoU vs FPS per mode (left) and mIoU vs frame offset (right)."""
    plt = pyplot()
    if plt is None:
        return

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5.5))
    for name, r in rows.items():
        ax.scatter(r["fps"], 100 * r["miou"], s=40)
        ax.annotate(name, (r["fps"], 100 * r["miou"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        y = [100 * v for v in r["per_frame_miou"]]
        ax2.plot(range(len(y)), y, label=name, lw=1.2)
    ax.set(xscale="log", xlabel="FPS (log)", ylabel="mIoU %", title="accuracy vs speed")
    ax2.set(xlabel="frame offset", ylabel="mIoU %", title="mIoU vs frame offset")
    ax.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=90, format="png"))
    plt.close(fig)


# --------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.propagation",
        description="mIoU and FPS of frame / stream / stream-mv / mv / dff / mv-interp on held-out synthetic clips "
        "encoded with libx264 (bframes=0, ref=1) so the codec motion vectors are real.",
    )
    p.add_argument("--checkpoint", default="checkpoints/tiny_sur.pt", help="deqstream-ckpt/1 MDEQ checkpoint")
    p.add_argument("--flownet", default=str(FLOWNET), help="trained FlowNet for dff (row skipped if missing)")
    p.add_argument("--quick", action="store_true", help="2 clips x 20 frames")
    p.add_argument("--clips", type=int, default=None, help="held-out clips (default 6, quick 2)")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default 30, quick 20)")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--interval", type=int, default=5, help="key-frame interval of mv, dff and mv-interp")
    p.add_argument("--key-iters", type=int, default=2, help="iterations of a warm-started mv key frame")
    p.add_argument("--f-thres", type=int, default=20, help="N of frame mode and of key frames solved from zero")
    p.add_argument("--data", default="data/accuracy_clips", help="cache of the held-out MP4 clips")
    p.add_argument("--out", default="benchmarks/results")
    add_split_argument(p)
    p.add_argument(
        "--no-runtime",
        action="store_true",
        help="skip the second pass through the deployed runtime (exports an ONNX bundle to a temporary folder)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared CPU more threads oversubscribe; 0: torch default)",
    )
    a = p.parse_args(argv)
    a.clips = a.clips or (2 if a.quick else 6)
    a.frames = a.frames or (20 if a.quick else 30)
    return a


def main(argv: list[str] | None = None) -> int:
    from export.train import load_model, machine
    from export.train_flow import load_flownet

    a = parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    args = argv if argv is not None else sys.argv[1:]
    try:
        if min(a.clips, a.frames, a.interval, a.key_iters, a.f_thres) < 1:
            raise ValueError("--clips, --frames, --interval, --key-iters and --f-thres must be >= 1")
        model, meta = load_model(Path(a.checkpoint), "cpu")
        flownet = load_flownet(a.flownet)[0] if Path(a.flownet).is_file() else None
        seed = SPLIT_SEEDS[a.split]
        clips = prepare_clips(Path(a.data), a.clips, a.frames, a.height, a.width, seed)
        fields, mv_ms = [], []
        for i in range(a.clips):
            fl, ms = motion_fields(clip_path(Path(a.data), i, a.frames, a.height, a.width, seed))
            if len(fl) != a.frames:
                raise RuntimeError(f"clip {i}: {len(fl)} motion fields for {a.frames} frames")
            fields.append(fl)
            mv_ms.append(ms)
    except (ValueError, OSError, RuntimeError, MultiFrameMotionWarning) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stamp = {
        "command": "python -m benchmarks.propagation " + " ".join(shlex.quote(s) for s in args),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "backend": "PyTorch eager (CPU), runtime.propagation policies and warp hooks",
        "checkpoint": a.checkpoint,
        "checkpoint_steps": meta.get("steps"),
        "checkpoint_meta": meta,
        "split": a.split,
        "heldout_seed": SPLIT_SEEDS[a.split],
        "clips": a.clips,
        "frames": a.frames,
        "height": a.height,
        "width": a.width,
        "interval": a.interval,
        "key_iters": a.key_iters,
        "f_thres": a.f_thres,
        "mv_ms_per_frame": float(np.mean(mv_ms)),
        "dff": f"FlowNet {a.flownet}" if flownet is not None else f"not run: no trained FlowNet at {a.flownet}",
    }
    t0 = time.time()
    rows = evaluate(TorchStepper(model, "cpu"), clips, fields, a, flownet)
    rt = None
    if not a.no_runtime:
        rt = runtime_pass(model, flownet, clips, a)
        stamp["runtime_rows"] = rt
        stamp["runtime_backend"] = f"ONNX Runtime CPU, {a.threads} intra-op thread(s), fp32"
    stamp["wall_s"] = round(time.time() - t0, 1)
    acc = acceptance(rows, a, rt)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = ("propagation_quick" if a.quick else "propagation") + split_suffix(a.split)
    text = markdown(rows, acc, stamp)
    write_text(out / f"{stem}.md", text)
    write_text(out / f"{stem}.json", json.dumps({"stamp": stamp, "acceptance": acc, "rows": rows}, indent=1))
    plot(rows, out / f"{stem}.png")
    print(text)
    print(f"wrote {out / stem}.md, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
