"""The machinery that runs the GPU check's steps (``benchmarks.gpu_check``) and its rehearsal
(``benchmarks.gpu_rehearse``): a step, its outcome, running one under a limit with its whole process group killed at
the limit, the work folder, reading pytest's junit XML.

Why a module of its own: the check and the rehearsal both run steps; the check starts the rehearsal, so what they
share lives here and neither imports the other's internals.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]  # the steps run here, whatever the caller's folder
# Where the carried wheels are installed (the rehearsal points it at its own folder through the environment).
SITE = Path(os.environ.get("DEQSTREAM_GPU_SITE", "/tmp/deqstream-site"))
MARKER = ".gpu_check"  # marks a work folder as ours, so a new run may empty it
GRACE_S = 5  # SIGTERM to SIGKILL


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


def child_env() -> dict[str, str]:
    """The steps' environment: unbuffered output, and the carried wheels (if installed) ahead on the path."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if SITE.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), env.get("PYTHONPATH", "")) if p)
    return env


def run_step(step: Step, work: Path, log: Path, timeout_s: float, env: dict[str, str] | None = None) -> Outcome:
    """Run one step in ROOT with its output appended to ``log``; a timeout kills its whole process group.
    ``env`` replaces the steps' environment (the rehearsal's device-like one)."""
    argv = [a.replace("{work}", str(work)) for a in step.argv]
    t0 = time.monotonic()
    with open(log, "a") as f:
        f.write(f"\n===== {step.name}: {' '.join(argv)} (limit {timeout_s:.0f} s)\n")
        f.flush()
        try:
            # Its own process group (not session): killpg reaches its compile workers, and whoever kills
            # gpu_check's session (the device tool at its limit) still reaches the step.
            proc = subprocess.Popen(
                argv, stdout=f, stderr=subprocess.STDOUT, env=env or child_env(), cwd=ROOT, **_GROUP
            )
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


def on_sigterm(*_: object) -> None:
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


def load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
