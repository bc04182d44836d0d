"""Every GPU check of one plan in one prepared, time-boxed call (``python3 -m benchmarks.gpu_check --out "$OUT"``).

Why: a lent GPU machine comes with minutes of device time (here 15 a task, its start included, at most 10 a
call), so the checks must fit one call and a failure must not waste it:
- steps run in the order of what they tell us per second: the environment (nvidia-smi, library versions), the
  fatbin build, kernel parity, the runtime's GPU tests (CUDA graphs == plain launches, no allocation or host copy in
  the loop, TensorRT where it imports), the warp bandwidth; the small-seg speed case needs minutes of AOTInductor
  compiles and is a separate plan (``--plan-name speed``), a second call;
- every step has a realistic limit and each plan's limits sum to at most the default budget (540 s); ``--plan``
  prints them without running anything;
- a step that fails or times out does not stop the next, and one that no longer fits the budget is listed as such;
- after every step the summary and the results archive are rewritten under ``--out``, so a call killed at its
  limit still brings back everything finished so far;
- ``--out`` gets four files (the device tool returns at most eight): summary.md, summary.json (what
  ``benchmarks.verified_on`` reads), log.txt (all the steps' output) and results.tar.gz (junit XML,
  environment.json, warp_bandwidth.json, the fps/roofline tables, JSON and plots).

It runs with ``python3 -m`` alone (no make, no network). PyAV is the one package those machines lack: ``make
gpu-wheels`` puts its wheel into ``.whl/`` here, the device call carries ``.whl``, and the ``wheels`` step installs
every carried wheel into a private folder (no index, no dependencies) that the other steps put first on their path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.plots import atomic_write, write_json, write_text

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]  # the steps run here, whatever the caller's folder
WHEELS = ROOT / ".whl"
SITE = Path("/tmp/deqstream-site")
DEFAULT_OUT = Path("out/gpu_check")
DEFAULT_WORK = Path("out/gpu_check_files")
MARKER = ".gpu_check"  # marks a work folder as ours, so a new run may empty it
MIN_STEP_S = 15  # a step that would get less than this is not started
GRACE_S = 5  # SIGTERM to SIGKILL
FPS_ARGS = (
    "--configs small-seg --resolutions 1024x2048 --pairs eager:fp32,aoti:fp16 --iters 1,2,4 --e2e-iters 1 "
    "--warmup 5 --frames 30 --e2e-frames 20 --no-scaling"
).split()


@dataclass(frozen=True)
class Step:
    """One command of the check; ``{work}`` in an argument is replaced by the work folder."""

    name: str
    argv: tuple[str, ...]
    timeout_s: int
    why: str


@dataclass
class Outcome:
    name: str
    status: str  # passed, failed, timed out, not run, skipped (all tests skipped), no results, criteria failed
    seconds: float = 0.0
    rc: int | None = None
    headline: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def pytest_step(name: str, marker: str, paths: list[str], timeout_s: int, why: str, extra: list[str]) -> Step:
    argv = [PY, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", marker, *paths, *extra]
    return Step(name, (*argv, f"--junitxml={{work}}/{name}.xml"), timeout_s, why)


WHEELS_STEP = Step("wheels", (PY, "-m", "benchmarks.gpu_check", "--install-wheels"), 40, "PyAV from the carried .whl/")
ENV_STEP = Step(
    "environment",
    (PY, "-m", "benchmarks.gpu_check", "--environment", "{work}/environment.json"),
    25,
    "nvidia-smi; torch, CUDA, cuda-core, cuda-bindings, PyAV, ONNX Runtime, TensorRT versions",
)
# Ordered by information per second: what every later step depends on first (environment, fatbin), then the
# checks that are fast and decide correctness (kernel parity, the runtime's CUDA graph / no-copy tests), then the
# bandwidth measurement. Limits are a few times the expected time on an H100/H200 with 16 cores (fatbin: ~6 s of
# nvcc CPU time here; each pytest process pays ~10 s of torch + CUDA start-up).
MAIN_STEPS: tuple[Step, ...] = (
    WHEELS_STEP,
    ENV_STEP,
    Step("kernels", (PY, "-m", "kernels.build"), 60, "nvcc fatbin of the warp kernels (#6)"),
    pytest_step("kernel-tests", "gpu", ["tests/kernels"], 100, "kernel vs grid_sample parity (#6)", []),
    pytest_step(
        "runtime-gpu-tests",
        "gpu or tensorrt",
        ["tests/runtime", "tests/export"],
        200,
        "CUDA graphs == plain launches, no allocation or copy in the loop, TensorRT plans vs ONNX Runtime",
        [],
    ),
    Step(
        "warp-bandwidth",
        (PY, "-m", "benchmarks.warp_bandwidth", "--out", "{work}/warp_bandwidth.json"),
        90,
        "warp kernel GB/s (CUDA events) vs device copy at 256 ch x 256x512, host us per call (#6)",
    ),
)
# The small-seg speed case needs AOTInductor compiles of a large model (minutes): it cannot fit beside the rest,
# so it is a second, separate call with its own plan (``--plan-name speed``).
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
PLANS: dict[str, tuple[Step, ...]] = {"main": MAIN_STEPS, "speed": SPEED_STEPS}
DEFAULT_BUDGET_S = 540.0
STEPS = MAIN_STEPS  # the default plan


def plan_text(name: str, steps: list[Step] | tuple[Step, ...], budget_s: float) -> str:
    """The plan as printed by ``--plan``: one line per step with its limit, then the sum against the budget."""
    lines = [f"plan {name} (budget {budget_s:.0f} s):"]
    lines += [f"  {i}. {s.name:<18} {s.timeout_s:>4} s  {s.why}" for i, s in enumerate(steps, 1)]
    total = sum(s.timeout_s for s in steps)
    verdict = "fits" if total <= budget_s else "DOES NOT FIT: later steps get what is left"
    lines.append(f"  total {total} s of {budget_s:.0f} s ({verdict})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- running
def child_env() -> dict[str, str]:
    """The steps' environment: unbuffered output, and the carried wheels (if installed) ahead on the path."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if SITE.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), env.get("PYTHONPATH", "")) if p)
    return env


def run_step(step: Step, work: Path, log: Path, timeout_s: float) -> Outcome:
    """Run one step in ROOT with its output appended to ``log``; a timeout kills its whole process group."""
    argv = [a.replace("{work}", str(work)) for a in step.argv]
    t0 = time.monotonic()
    with open(log, "a") as f:
        f.write(f"\n===== {step.name}: {' '.join(argv)} (limit {timeout_s:.0f} s)\n")
        f.flush()
        try:
            # Its own process group (not session): killpg reaches its compile workers, and whoever kills
            # gpu_check's session (the device tool at its limit) still reaches the step.
            proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT, **_GROUP)
        except OSError as e:
            f.write(f"cannot start: {e}\n")
            return Outcome(step.name, "failed", headline=f"cannot start: {e.strerror or e}")
        _running.append(proc)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            f.write(f"===== {step.name}: timed out after {timeout_s:.0f} s\n")
            return Outcome(step.name, "timed out", round(time.monotonic() - t0, 1))
        finally:
            _running.remove(proc)
        f.write(f"===== {step.name}: exit {rc}\n")
    status = "passed" if rc == 0 else "failed"
    return Outcome(step.name, status, round(time.monotonic() - t0, 1), rc)


_GROUP: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
_running: list[subprocess.Popen] = []


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the step's group, then SIGKILL after a grace period (also when the leader exited on SIGTERM:
    its children may not have)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        if sig == signal.SIGTERM:
            time.sleep(0.2)


def _on_sigterm(*_: object) -> None:
    """Killed from outside: take the running step's group down too, then stop (the finally writes the outputs)."""
    for proc in list(_running):
        kill_group(proc)
    raise KeyboardInterrupt


def prepare_work(work: Path) -> None:
    """An empty work folder: a previous run's files must not pass for this run's (a warm machine keeps them)."""
    if work.exists():
        if any(work.iterdir()) and not (work / MARKER).exists():
            raise SystemExit(f"error: {work} is not empty and was not made by gpu_check; choose another --work")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("made by benchmarks.gpu_check; emptied at the start of each run\n")


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
def junit_counts(path: Path) -> dict[str, int] | None:
    """passed/failed/skipped from pytest's junit XML (None when the file is missing or unreadable)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = n["failures"] + n["errors"]
    return {"passed": n["tests"] - failed - n["skipped"], "failed": failed, "skipped": n["skipped"]}


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


RESULT_READERS: dict[str, Callable[[Path], tuple[str, dict[str, Any]]]] = {
    "environment": lambda work: environment_headline(work / "environment.json"),
    "warp-bandwidth": lambda work: warp_headline(work / "warp_bandwidth.json"),
    "fps-small-seg": lambda work: fps_headline(work / "fps"),
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


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


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
        description="Every GPU check of one plan in one time-boxed call. Plan main: environment, fatbin, warp "
        "kernel parity, the runtime GPU tests, warp bandwidth. Plan speed (a separate call): the small-seg "
        "1024x2048 speed case. Each step has its own timeout; after each one summary.md, summary.json, log.txt "
        "and results.tar.gz in --out are brought up to date.",
        epilog="\n\n".join(plan_text(n, st, DEFAULT_BUDGET_S) for n, st in PLANS.items())
        + '\n\non a lent GPU machine: python3 -m benchmarks.gpu_check --out "$OUT" [--plan-name speed]\n'
        "(give that call a limit of at least the budget + 60 s: the last step's kill and the archive come after it)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--plan-name", choices=sorted(PLANS), default="main", help="which plan to run (default main)")
    p.add_argument("--plan", action="store_true", help="print the plan's steps and limits, run nothing")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the four result files (default {DEFAULT_OUT})")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"the steps' files (default {DEFAULT_WORK})")
    p.add_argument(
        "--budget", type=float, default=DEFAULT_BUDGET_S, help=f"seconds for all steps (default {DEFAULT_BUDGET_S:g})"
    )
    p.add_argument("--steps", default=None, help="comma list, a subset of the plan's steps (run in plan order)")
    p.add_argument("--install-wheels", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--environment", type=Path, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    names = [s.name for s in PLANS[a.plan_name]]
    a.steps = a.steps or ",".join(names)
    unknown = [n for n in a.steps.split(",") if n not in names]
    if unknown:
        p.error(f"unknown step(s) {', '.join(unknown)} in plan {a.plan_name}; choose from {', '.join(names)}")
    out, work = a.out.resolve(), a.work.resolve()
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
        return 0
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        outcomes = run_all(steps, a.out, a.work, a.budget, plan=a.plan_name)
    except KeyboardInterrupt:
        print("gpu_check: stopped; the outputs hold what finished", file=sys.stderr)
        return 130
    print(summary_markdown(steps, outcomes, a.budget, a.plan_name))
    return 0 if all(o.status == "passed" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
