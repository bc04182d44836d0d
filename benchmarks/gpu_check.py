"""Every GPU check of one plan in one prepared, time-boxed call (``python3 -m benchmarks.gpu_check --out "$OUT"``).

Why: a lent GPU machine comes with minutes of device time (here 15 a task, its start included, at most 10 a
call), so the checks must fit one call and a failure must not waste it:
- the machine is taken as it is (Python 3.12, torch 2.11 CUDA 13, nvcc 13, cuda-core, CuPy, ONNX Runtime CPU
  build; no PyAV, no TensorRT, no network): what it lacks travels with the working tree, prepared here --
  PyAV's wheel in ``.whl/`` (``make gpu-wheels``) and the warp fatbin in ``kernels/build/`` (``make kernels``);
  the device call names both in its ``carry`` (``--plan`` prints the call);
- steps run in the order of what they tell us per second: the carried wheels, the environment, the carried
  fatbin (checked, not rebuilt), kernel parity, the runtime's GPU tests (CUDA graphs == plain launches, no
  allocation or host copy in the loop, fp16), the warp bandwidth, one AOTInductor speed point small enough to
  compile within its slot; the cold small-seg 1024x2048 compiles and the benchmarks' six-compile GPU test are a
  second plan (``--plan-name speed``) for a second device session;
- every step has a limit and the main plan's limits sum to at most 420 s; ``--plan`` prints them, the device
  command, its carry list and what travels, without running anything;
- a step that fails or times out does not stop the next, and one that no longer fits the budget is listed as such;
- after every step the summary and the results archive are rewritten under ``--out``, so a call killed at its
  limit still brings back everything finished so far;
- ``--out`` gets four files (the device tool returns at most eight): summary.md, summary.json (what
  ``benchmarks.verified_on`` reads), log.txt (all the steps' output) and results.tar.gz (junit XML,
  environment.json, warp_bandwidth.json, the fps tables, JSON and plots).

``--rehearse`` runs the main plan here in a fresh virtual environment made to look like the device
(``benchmarks.gpu_rehearse``): no PyAV until the carried wheels are installed, no network, torch without CUDA;
GPU-only steps report that they would run, with their test counts.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.gpu_rehearse import rehearse
from benchmarks.gpu_steps import (
    PY,
    ROOT,
    SITE,
    Outcome,
    Step,
    child_env,
    junit_counts,
    on_sigterm,
    prepare_work,
    pytest_step,
    run_step,
)
from benchmarks.gpu_steps import load_json as _load
from benchmarks.plots import atomic_write, write_json, write_text

WHEELS = ROOT / ".whl"
# Ignored paths the device call carries (prepared here: `make gpu-wheels`, `make kernels`), and the tool's limits.
CARRY = (".whl", "kernels/build")
TRAVEL_LIMIT_BYTES = 64 * 2**20  # the working tree and the carried paths together
CALL_MARGIN_S = 60  # the device call's timeout_s = budget + this (the last kill and the archive come after it)
DEVICE_ARCH = 90  # H100 / H200
DEFAULT_OUT = Path("out/gpu_check")
DEFAULT_WORK = Path("out/gpu_check_files")
DEFAULT_REHEARSAL = Path("out/gpu_rehearsal")
MIN_STEP_S = 15  # a step that would get less than this is not started
FPS_ARGS = (
    "--configs small-seg --resolutions 1024x2048 --pairs eager:fp32,aoti:fp16 --iters 1,2,4 --e2e-iters 1 "
    "--warmup 5 --frames 30 --e2e-frames 20 --no-scaling"
).split()
# One AOTInductor speed point that compiles within its slot: the tiny config (three small engines) at 256x512, fp16
# AOTI against eager fp32 (no compile), stream k = 1 and 2.
SPEED_POINT_ARGS = (
    "--configs tiny --resolutions 256x512 --pairs eager:fp32,aoti:fp16 --iters 1,2 --e2e-iters 1 "
    "--warmup 5 --frames 30 --e2e-frames 20 --no-scaling"
).split()


WHEELS_STEP = Step("wheels", (PY, "-m", "benchmarks.gpu_check", "--install-wheels"), 20, "PyAV from the carried .whl/")
ENV_STEP = Step(
    "environment",
    (PY, "-m", "benchmarks.gpu_check", "--environment", "{work}/environment.json"),
    15,
    "nvidia-smi; torch, CUDA, cuda-core, cuda-bindings, PyAV, ONNX Runtime, TensorRT versions",
)
# Ordered by information per second: what every later step depends on first (wheels, environment, fatbin), then
# the checks that are fast and decide correctness (kernel parity, the runtime's CUDA graph / no-copy tests), then
# the measurements. Limits are estimates for a 16-core H100/H200 (each pytest process pays ~10 s of torch + CUDA
# start-up; the runtime tests compile three tiny AOTInductor engines); nothing here has been timed on one yet.
MAIN_STEPS: tuple[Step, ...] = (
    WHEELS_STEP,
    ENV_STEP,
    Step(
        "kernels",
        (PY, "-m", "kernels.build", "--check", "--arch", str(DEVICE_ARCH)),
        15,
        f"the carried warp fatbin is current and has sm_{DEVICE_ARCH} code (built here, not rebuilt there)",
    ),
    pytest_step("kernel-tests", "gpu", ["tests/kernels"], 60, "kernel vs grid_sample parity (#6)", []),
    pytest_step(
        "runtime-gpu-tests",
        "gpu or tensorrt",
        ["tests/runtime", "tests/export"],
        150,
        "CUDA graphs == plain launches, no allocation or copy in the loop, fp16, pinned motion fields, TensorRT "
        "plans vs ONNX Runtime where TensorRT imports",
        [],
    ),
    Step(
        "warp-bandwidth",
        (PY, "-m", "benchmarks.warp_bandwidth", "--out", "{work}/warp_bandwidth.json"),
        45,
        "warp kernel GB/s (CUDA events) vs device copy at 256 ch x 256x512, host us per call (#6)",
    ),
    Step(
        "aoti-speed-point",
        (PY, "-m", "benchmarks.fps", *SPEED_POINT_ARGS, "--out", "{work}/fps_point"),
        115,
        "tiny 256x512: AOTI fp16 vs eager fp32, stream k=1,2 (three small compiles)",
    ),
)
# Cold AOTInductor compiles of small-seg at 1024x2048 take minutes, and the benchmarks' GPU test compiles six
# engines: neither fits beside the rest, so they are a second plan, for a second device session.
SPEED_STEPS: tuple[Step, ...] = (
    WHEELS_STEP,
    ENV_STEP,
    Step(
        "fps-small-seg",
        (PY, "-m", "benchmarks.fps", *FPS_ARGS, "--out", "{work}/fps"),
        420,
        "small-seg 1024x2048: AOTI fp16 vs roofline and eager fp32, stream k=1 end to end (#7)",
    ),
    pytest_step("bench-gpu-tests", "gpu", ["tests/benchmarks"], 55, "the benchmarks' GPU paths (events, graphs)", []),
)
# The shipped detector and pose models on the GPU (issues #27 and #28): exported there as AOTInductor bundles (ONNX
# Runtime is a CPU build there), then the FPS benchmark measures each as it is, with the task's decoding on the
# device in its own column (head_decode). A third plan, for a third device session.
TASK_SIZE = ("--height", "256", "--width", "512", "--formats", "pt2", "--device", "cuda")
TASK_STEPS: tuple[Step, ...] = (
    WHEELS_STEP,
    ENV_STEP,
    Step(
        "export-det",
        (
            PY,
            "-m",
            "export",
            "--checkpoint",
            "checkpoints/tiny_det.pt",
            *TASK_SIZE,
            "--det-score-thr",
            "0.3",
            "--out",
            "{work}/engines-det",
        ),
        140,
        "the shipped one-stage detector as .pt2 engines on the GPU (parity against PyTorch there)",
    ),  # fmt: skip
    Step(
        "export-pose",
        (
            PY,
            "-m",
            "export",
            "--checkpoint",
            "checkpoints/tiny_pose.pt",
            "--heads",
            "pose",
            *TASK_SIZE,
            "--out",
            "{work}/engines-pose",
        ),
        140,
        "the shipped pose model as .pt2 engines on the GPU",
    ),  # fmt: skip
    Step(
        "fps-tasks",
        (
            PY,
            "-m",
            "benchmarks.fps",
            "--engine",
            "{work}/engines-det/deq_cell.pt2",
            "{work}/engines-pose/deq_cell.pt2",
            "--quick",
            "--device",
            "cuda",
            "--out",
            "{work}/fps_tasks",
        ),
        90,
        "det and pose bundles: stream k and frame N with the head and its device decoding timed apart (#27, #28)",
    ),  # fmt: skip
)
PLANS: dict[str, tuple[Step, ...]] = {"main": MAIN_STEPS, "speed": SPEED_STEPS, "tasks": TASK_STEPS}
BUDGETS: dict[str, float] = {"main": 420.0, "speed": 540.0, "tasks": 420.0}
DEFAULT_BUDGET_S = BUDGETS["main"]
STEPS = MAIN_STEPS  # the default plan


def plan_text(name: str, steps: list[Step] | tuple[Step, ...], budget_s: float) -> str:
    """The plan as printed by ``--plan``: one line per step with its limit, then the sum against the budget."""
    lines = [f"plan {name} (budget {budget_s:.0f} s):"]
    lines += [f"  {i}. {s.name:<18} {s.timeout_s:>4} s  {s.why}" for i, s in enumerate(steps, 1)]
    total = sum(s.timeout_s for s in steps)
    verdict = "fits" if total <= budget_s else "DOES NOT FIT: later steps get what is left"
    lines.append(f"  total {total} s of {budget_s:.0f} s ({verdict})")
    return "\n".join(lines)


def device_command(name: str, budget_s: float) -> str:
    """The command the device call runs (no make, no network there)."""
    extra = "" if name == "main" else f" --plan-name {name}"
    extra += "" if budget_s == BUDGETS.get(name) else f" --budget {budget_s:g}"
    return f'python3 -m benchmarks.gpu_check --out "$OUT"{extra}'


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def tree_bytes(root: Path = ROOT) -> int | None:
    """What travels without being carried: tracked and untracked-not-ignored files (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=root, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    files = (root / f for f in out.decode().split("\0") if f)
    return sum(f.stat().st_size for f in files if f.is_file() and not f.is_symlink())


def travel_text(root: Path = ROOT, carry: tuple[str, ...] = CARRY) -> tuple[str, bool, list[str]]:
    """What the call sends (working tree + each carried path) against the tool's 64 MiB: the line, whether it fits
    (and the tree could be measured), the carried paths that are missing."""
    tree = tree_bytes(root)
    parts, total, missing = [], tree or 0, []
    parts.append(f"working tree {tree / 1e6:.1f} MB" if tree is not None else "working tree ? (not a git checkout)")
    for c in carry:
        path = root / c
        if not path.exists():
            parts.append(f"{c} MISSING")
            missing.append(c)
            continue
        size = _size(path)
        total += size
        parts.append(f"{c} {size / 1e6:.1f} MB")
    fits = total <= TRAVEL_LIMIT_BYTES
    verdict = "fits" if fits else "OVER the limit"
    text = f"travels: {' + '.join(parts)} = {total / 1e6:.1f} MB of {TRAVEL_LIMIT_BYTES / 1e6:.1f} MB ({verdict})"
    return text, fits and tree is not None, missing


def call_text(name: str, budget_s: float, root: Path = ROOT) -> str:
    """The exact device call of a plan: command, carry list, timeout; what travels; what to prepare first."""
    carry = ", ".join(f'"{c}"' for c in CARRY)
    travel, fits, missing = travel_text(root)
    lines = [
        f"device call (one, on a session of its own{'' if name == 'main' else ': after main'}):",
        f"  command:   {device_command(name, budget_s)}",
        f"  carry:     [{carry}]",
        f"  timeout_s: {min(600, int(budget_s) + CALL_MARGIN_S)}  (budget {budget_s:.0f} s + {CALL_MARGIN_S} s)",
        f"  {travel}",
        "  prepare here first: make gpu-wheels && make kernels && python -m benchmarks.gpu_check --rehearse",
    ]
    why = ([f"missing {', '.join(missing)}"] if missing else []) + ([] if fits else ["what travels is over the limit"])
    if why:
        lines.append(f"  NOT READY: {'; '.join(why)}")
    return "\n".join(lines)


def run_all(
    steps: list[Step],
    out: Path,
    work: Path,
    budget_s: float,
    say: Callable[[str], None] = print,
    plan: str = "main",
) -> list[Outcome]:
    """Every step in order within ``budget_s``; ``out`` is brought up to date after each one."""
    started = utc_now()
    out.mkdir(parents=True, exist_ok=True)
    prepare_work(work)
    log = out / "log.txt"
    log.write_text("")
    deadline = time.monotonic() + budget_s
    outcomes: list[Outcome] = []
    try:
        for step in steps:
            left = deadline - time.monotonic()
            if left < MIN_STEP_S:
                outcomes.append(Outcome(step.name, "not run", headline=f"budget spent ({budget_s:.0f} s)"))
            else:
                say(f"gpu_check: {step.name} (limit {min(step.timeout_s, left):.0f} s): {step.why}")
                res = run_step(step, work, log, min(step.timeout_s, left))
                headline(res, work)
                outcomes.append(res)
                tail = f": {res.headline}" if res.headline else ""
                say(f"gpu_check: {step.name} {res.status} in {res.seconds:.0f} s{tail}")
            write_outputs(steps, outcomes, out, work, budget_s, plan, started)
    except BaseException:  # stopped mid-step: keep what finished
        write_outputs(steps, outcomes, out, work, budget_s, plan, started)
        raise
    return outcomes


# --------------------------------------------------------------------------- reading the results
WARP_FRACTION = 0.6  # #6: the warp moves at least 60% of the measured (copy) bandwidth


def warp_headline(path: Path) -> tuple[str, dict[str, Any]]:
    """The best plain-warp fraction of copy bandwidth per dtype, each against the #6 criterion."""
    rows = _load(path).get("results", [])
    best: dict[str, float] = {}
    for r in rows:
        if r.get("op") == "warp":
            best[r["dtype"]] = max(best.get(r["dtype"], 0.0), r["fraction_of_copy"])
    checks = [
        {"check": f"warp {d} fraction of copy bandwidth", "value": v, "limit": f">= {WARP_FRACTION:g}",
         "pass": v >= WARP_FRACTION}
        for d, v in sorted(best.items())
    ]  # fmt: skip
    text = ", ".join(
        f"warp {d} {100 * v:.0f}% of copy ({_verdict(v >= WARP_FRACTION)})" for d, v in sorted(best.items())
    )
    return text, {"warp_fraction_of_copy": best, "acceptance": checks}


def fps_headline(folder: Path) -> tuple[str, dict[str, Any]]:
    """The fps run's acceptance checks, one ``check value limit PASS/FAIL`` each."""
    checks = []
    for path in sorted(folder.glob("fps_*.json")):
        checks += _load(path).get("acceptance", [])
    parts = [
        f"{c['backend']} {c['check']} = {_num(c['value'])} ({c['limit']}: {c.get('verdict') or _verdict(c['pass'])})"
        for c in checks
    ]
    return "; ".join(parts), {"acceptance": checks}


def environment_headline(path: Path) -> tuple[str, dict[str, Any]]:
    """GPU, driver and the versions that decide whether the later steps can run."""
    env = _load(path)
    if not env:
        return "", {}
    keys = ("torch", "cuda_runtime", "cuda_core", "cuda_bindings", "pyav", "onnxruntime", "tensorrt")
    parts = [env.get("gpu") or "no GPU", f"driver {env.get('driver')}"]
    parts += [f"{k.replace('_', '-')} {env.get(k)}" for k in keys]
    return ", ".join(parts), {"environment": env}


def speed_point_headline(folder: Path) -> tuple[str, dict[str, Any]]:
    """FPS of each device-loop stream row (backend, precision, k) of the speed point's run."""
    rows = []
    for path in sorted(folder.glob("fps_*.json")):
        rows += [r for r in _load(path).get("rows", []) if r.get("measure") == "device" and r.get("mode") == "stream"]
    points = [
        {"backend": r["backend"], "precision": r.get("precision"), "k": r["iters"], "fps": r["fps"]}
        for r in rows
        if {"backend", "iters", "fps"} <= set(r)
    ]
    text = ", ".join(f"{q['backend']} {q['precision']} k={q['k']} {_num(q['fps'])} fps" for q in points)
    return text, {"points": points}


def decode_headline(folder: Path) -> tuple[str, dict[str, Any]]:
    """Per task, the device loop's stream k=1 frame time and the part of it its decoding took (fps ``head_decode``)."""
    rows: list[dict[str, Any]] = []
    for path in sorted(folder.glob("fps_*.json")):
        rows += [r for r in _load(path).get("head_decode", []) if r.get("measure") == "device"]
    points = [
        {"task": r["task"], "backend": r["backend"], "latency_ms": r["latency_ms"], "decode_ms": r["head_decode_ms"]}
        for r in rows
        if r.get("mode") == "stream"
        and r.get("k") == 1
        and {"task", "backend", "latency_ms", "head_decode_ms"} <= set(r)
    ]
    text = ", ".join(
        f"{q['task']} {q['backend']} k=1 {_num(q['latency_ms'])} ms, decode {_num(q['decode_ms'])} ms" for q in points
    )
    return text, {"points": points}


RESULT_READERS: dict[str, Callable[[Path], tuple[str, dict[str, Any]]]] = {
    "environment": lambda work: environment_headline(work / "environment.json"),
    "warp-bandwidth": lambda work: warp_headline(work / "warp_bandwidth.json"),
    "aoti-speed-point": lambda work: speed_point_headline(work / "fps_point"),
    "fps-small-seg": lambda work: fps_headline(work / "fps"),
    "fps-tasks": lambda work: decode_headline(work / "fps_tasks"),
}


def headline(res: Outcome, work: Path) -> None:
    """Fill ``res.headline``/``details`` from the files the step wrote (whatever exists, also after a failure)."""
    counts = junit_counts(work / f"{res.name}.xml")
    if counts is not None:
        res.details["tests"] = counts
        res.headline = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
        if not any(counts.values()) and res.rc:
            res.headline += f" (pytest exit {res.rc})"  # 4: usage error, 5: nothing collected
        if res.status == "passed" and counts["passed"] == 0:
            res.status = "skipped"  # every test skipped (no GPU): nothing was checked
    elif res.name in RESULT_READERS:
        res.headline, res.details = RESULT_READERS[res.name](work)
        if res.status == "passed" and not res.headline:
            res.status, res.headline = "no results", "wrote no results (no GPU?)"
        if res.status == "passed" and any(c.get("pass") is False for c in res.details.get("acceptance", [])):
            res.status = "criteria failed"
    if res.status == "timed out":
        res.headline = ("timed out; " + res.headline).strip("; ")


def _num(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, (int, float)) else "n/a"


def _verdict(ok: bool | None) -> str:
    return {True: "PASS", False: "FAIL"}.get(ok, "n/a")


# --------------------------------------------------------------------------- writing
def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def summary_markdown(steps: list[Step], outcomes: list[Outcome], budget_s: float, plan: str = "main") -> str:
    done = {o.name: o for o in outcomes}
    lines = [
        "# GPU check",
        "",
        f"`python -m benchmarks.gpu_check --plan-name {plan}`, {utc_now()}, "
        f"budget {budget_s:.0f} s. The steps' output is in log.txt, their files in results.tar.gz.",
        "",
        "| step | status | s | result | why |",
        "|---|---|---|---|---|",
    ]
    for s in steps:
        o = done.get(s.name, Outcome(s.name, "pending"))
        result = o.headline.replace("|", "/") or (f"exit {o.rc}" if o.rc is not None else "")
        lines.append(f"| {s.name} | {o.status} | {o.seconds:.0f} | {result} | {s.why} |")
    return "\n".join(lines) + "\n"


def write_outputs(
    steps: list[Step],
    outcomes: list[Outcome],
    out: Path,
    work: Path,
    budget_s: float,
    plan: str = "main",
    started: str | None = None,
) -> None:
    """summary.md, summary.json (plan, start time, the environment step's record, every step's outcome; what
    ``benchmarks.verified_on`` reads) and the archive of the work folder."""
    write_text(out / "summary.md", summary_markdown(steps, outcomes, budget_s, plan))
    summary = {
        "format": "deqstream-gpu-check/2",
        "plan": plan,
        "started": started or utc_now(),
        "budget_s": budget_s,
        "planned": [{"name": s.name, "timeout_s": s.timeout_s, "why": s.why} for s in steps],
        "environment": _load(work / "environment.json") or None,
        "steps": [asdict(o) for o in outcomes],
    }
    write_json(out / "summary.json", summary)
    atomic_write(out / "results.tar.gz", lambda p: _tar(work, p))


def _tar(work: Path, path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for f in sorted(work.rglob("*")):
            if f.is_file() and not f.name.startswith(".") and ".tmp" not in f.name:  # no half-written files
                tar.add(f, arcname=str(f.relative_to(work)))


# --------------------------------------------------------------------------- CLI
def install_wheels(wheels: Path = WHEELS, site: Path = SITE) -> int:
    """pip-install the carried wheels into ``site`` (no index, no dependencies), as the device notes advise, then
    check that PyAV imports with the steps' environment (without it the later steps fail far less clearly)."""
    found = sorted(wheels.glob("*.whl"))
    if found:
        argv = [PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"]
        argv += ["--upgrade", "--target", str(site), *map(str, found)]
        print(" ".join(argv), flush=True)
        if subprocess.call(argv):
            return 1
    else:
        print(f"no wheels in {wheels}/ (`make gpu-wheels` where pip works, then carry .whl)")
    probe = [PY, "-c", "import av; print('PyAV', av.__version__, 'from', av.__file__)"]
    if subprocess.call(probe, env=child_env()):
        print("error: PyAV does not import; the video steps need it (carry its wheel in .whl/)")
        return 1
    return 0


def _dist_version(*names: str) -> str | None:
    """Installed version of the first distribution found (metadata only: importing TensorRT is slow)."""
    import importlib.metadata

    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def record_environment(path: Path) -> int:
    """The environment step: nvidia-smi's report into the log, and the GPU plus every version a later step
    depends on into ``path`` (benchmarks.env's record, with cuda-core, cuda-bindings and PyAV added)."""
    try:
        subprocess.run(["nvidia-smi"], check=False, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"nvidia-smi: {e}")
    from benchmarks.env import environment

    env = environment()
    env["cuda_core"] = _dist_version("cuda-core", "cuda_core")
    env["cuda_bindings"] = _dist_version("cuda-bindings", "cuda_bindings")
    env["pyav"] = _dist_version("av")
    env["date"] = utc_now()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, env)
    print(json.dumps(env, indent=1))
    return 0 if env.get("gpu") else 1  # no GPU: the later steps will all skip; say so here


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description="Every GPU check of one plan in one time-boxed call. Plan main (one device call, 420 s): "
        "carried wheels, environment, carried fatbin, warp kernel parity, the runtime GPU tests, warp bandwidth, "
        "one AOTInductor speed point. Plan speed (a second device session): the small-seg 1024x2048 speed case. "
        "Each step has its own timeout; after each one summary.md, summary.json, log.txt and results.tar.gz in "
        "--out are brought up to date.",
        epilog="\n\n".join(plan_text(n, st, BUDGETS[n]) for n, st in PLANS.items())
        + "\n\n--plan also prints the device call (command, carry, timeout_s) and what travels; --rehearse runs "
        "the main plan here in a device-like virtual environment",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--plan-name", choices=sorted(PLANS), default="main", help="which plan to run (default main)")
    p.add_argument("--plan", action="store_true", help="print the plan, the device call and what travels; run nothing")
    p.add_argument(
        "--rehearse", action="store_true", help="run the main plan here in a device-like virtual environment"
    )
    p.add_argument("--out", type=Path, default=None, help=f"the four result files (default {DEFAULT_OUT})")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"the steps' files (default {DEFAULT_WORK})")
    p.add_argument(
        "--budget", type=float, default=None, help="seconds for all steps (default: the plan's, main 420, speed 540)"
    )
    p.add_argument("--steps", default=None, help="comma list, a subset of the plan's steps (run in plan order)")
    p.add_argument("--install-wheels", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--environment", type=Path, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.budget = BUDGETS[a.plan_name] if a.budget is None else a.budget
    names = [s.name for s in PLANS[a.plan_name]]
    a.steps = a.steps or ",".join(names)
    unknown = [n for n in a.steps.split(",") if n not in names]
    if unknown:
        p.error(f"unknown step(s) {', '.join(unknown)} in plan {a.plan_name}; choose from {', '.join(names)}")
    default_out = DEFAULT_REHEARSAL if a.rehearse else DEFAULT_OUT
    out, work = (a.out or default_out).resolve(), a.work.resolve()
    if out.is_relative_to(work) or work.is_relative_to(out):
        p.error("--out and --work must not lie inside each other (--out gets four files; --work is archived)")
    a.out, a.work = out, work
    if a.budget < MIN_STEP_S:
        p.error(f"--budget must be at least {MIN_STEP_S} s")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.install_wheels:
        return install_wheels()
    if a.environment is not None:
        return record_environment(a.environment)
    chosen = set(a.steps.split(","))
    steps = [s for s in PLANS[a.plan_name] if s.name in chosen]
    if a.plan:
        print(plan_text(a.plan_name, steps, a.budget))
        print(call_text(a.plan_name, a.budget))
        return 0
    if a.rehearse:
        return rehearse(steps, a.out, a.budget, PLANS, WHEELS, travel_text)
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        outcomes = run_all(steps, a.out, a.work, a.budget, plan=a.plan_name)
    except KeyboardInterrupt:
        print("gpu_check: stopped; the outputs hold what finished", file=sys.stderr)
        return 130
    print(summary_markdown(steps, outcomes, a.budget, a.plan_name))
    return 0 if all(o.status == "passed" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
