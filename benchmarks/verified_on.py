"""The README's "verified on" table, generated from the committed GPU check summaries (``python -m
benchmarks.verified_on`` -> benchmarks/results/verified_on.md).

Why generated: a claim that something works on a GPU must come from a run whose results are committed, never from
memory. Every ``summary.json`` that ``python -m benchmarks.gpu_check`` wrote and that was committed under
benchmarks/results/gpu/ (one folder per run or plan) is read; each check gets the GPU, date and outcome of the
latest run that included it, and a check no committed run included says "never ran". TensorRT is judged from the
TensorRT tests' own junit records inside the run's results.tar.gz (a run on a machine without TensorRT skips them).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.plots import write_text

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_GPU_DIR = RESULTS / "gpu"
DEFAULT_OUT = RESULTS / "verified_on.md"
TENSORRT_TESTS = "test_tensorrt"  # tests/runtime/test_tensorrt.py: plans vs ONNX Runtime (fp32, fp16)


@dataclass(frozen=True)
class Check:
    """One row: what is verified and which gpu_check step verifies it."""

    what: str
    step: str


CHECKS = (
    Check("warp kernels: the carried fatbin (sm_75..sm_90 + PTX) is current and has sm_90 code", "kernels"),
    Check("warp kernels vs grid_sample (fp32 <= 1e-5, fp16 <= 1e-2)", "kernel-tests"),
    Check(
        "runtime on CUDA: graphs == plain launches, no allocation or host copy in the loop, fp16, pinned motion fields",
        "runtime-gpu-tests",
    ),
    Check("warp kernel >= 60 % of device copy bandwidth (256 ch x 256x512)", "warp-bandwidth"),
    Check("AOTInductor speed point (tiny 256x512, AOTI fp16 vs eager fp32, stream k=1,2)", "aoti-speed-point"),
    Check("small-seg 1024x2048 speed criteria (AOTI fp16 vs roofline and eager fp32, stream k=1)", "fps-small-seg"),
)


class SummaryError(ValueError):
    """A committed summary that cannot be read (one-line message)."""


def load_runs(gpu_dir: Path) -> list[dict[str, Any]]:
    """Every committed summary.json under ``gpu_dir``, oldest first (by its start time)."""
    runs = []
    for path in sorted(gpu_dir.rglob("summary.json")) if gpu_dir.is_dir() else []:
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SummaryError(f"{path}: not a readable gpu_check summary ({type(e).__name__})") from None
        if not isinstance(run, dict) or not isinstance(run.get("steps"), list):
            raise SummaryError(f"{path}: not a gpu_check summary (no 'steps' list)")
        run["_dir"] = path.parent
        runs.append(run)
    return sorted(runs, key=lambda r: str(r.get("started", "")))


def _gpu(run: dict[str, Any]) -> str:
    env = run.get("environment") or {}
    return str(env.get("gpu") or "unknown GPU")


def _date(run: dict[str, Any]) -> str:
    return str(run.get("started") or "unknown date")[:10]


def _row(check: Check, runs: list[dict[str, Any]]) -> list[str]:
    """GPU, date and outcome of the latest run that included the check's step."""
    for run in reversed(runs):
        for step in run["steps"]:
            if step.get("name") == check.step and step.get("status") not in ("not run", "pending"):
                result = f"{step.get('status')}: {step.get('headline')}" if step.get("headline") else step.get("status")
                return [check.what, _gpu(run), _date(run), str(result).replace("|", "/")]
    return [check.what, "-", "-", "never ran on a GPU"]


def tensorrt_counts(run: dict[str, Any]) -> dict[str, int] | None:
    """passed/failed/skipped of the TensorRT tests in the run's archived junit XML (None: not in the archive)."""
    archive = Path(run["_dir"]) / "results.tar.gz"
    if not archive.is_file():
        return None
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    found = False
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not member.name.endswith(".xml"):
                continue
            data = tar.extractfile(member)
            try:
                root = ET.parse(io.BytesIO(data.read() if data else b"")).getroot()
            except ET.ParseError:
                continue
            for case in root.iter("testcase"):
                if TENSORRT_TESTS not in case.get("classname", ""):
                    continue
                found = True
                kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
                counts["failed" if kind in ("failure", "error") else kind] += 1
    return counts if found else None


def _tensorrt_row(runs: list[dict[str, Any]]) -> list[str]:
    what = "TensorRT plans (fp32, fp16 strongly typed) vs ONNX Runtime through the runtime"
    for run in reversed(runs):
        counts = tensorrt_counts(run)
        if counts and counts["passed"] + counts["failed"]:
            result = f"{counts['passed']} passed, {counts['failed']} failed"
            return [what, _gpu(run), _date(run), result]
    versions = sorted({str((r.get("environment") or {}).get("tensorrt")) for r in runs} - {"None"})
    if not runs:
        why = "nothing has run on a GPU"
    else:
        why = "TensorRT not installed on the GPU machines" if not versions else "no run included its tests"
    return [what, "-", "-", f"never ran ({why})"]


def table(runs: list[dict[str, Any]]) -> str:
    """The markdown the README embeds."""
    lines = ["## Verified on", ""]
    if runs:
        gpus = ", ".join(sorted({f"{_gpu(r)} ({_date(r)}, plan {r.get('plan', '?')})" for r in runs}))
        lines.append(
            f"From the committed `python -m benchmarks.gpu_check` summaries in benchmarks/results/gpu/: {gpus}."
        )
    else:
        lines.append(
            "No GPU check summary is committed under benchmarks/results/gpu/: **nothing in this repository has run "
            "on a GPU yet**, and TensorRT has never run. Every row below is a check that exists but has not run."
        )
    lines += ["", "| check | GPU | date | result |", "|---|---|---|---|"]
    rows = [_row(c, runs) for c in CHECKS] + [_tensorrt_row(runs)]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    lines += ["", "Generated by `python -m benchmarks.verified_on`; CPU results are in the tables above it."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.verified_on",
        description="Write the README's 'verified on' table from the committed GPU check summaries "
        "(benchmarks/results/gpu/**/summary.json, written by python -m benchmarks.gpu_check).",
    )
    p.add_argument(
        "--results", type=Path, default=DEFAULT_GPU_DIR, help=f"summaries folder (default {DEFAULT_GPU_DIR})"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"markdown output (default {DEFAULT_OUT})")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        runs = load_runs(a.results)
    except SummaryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_text(a.out, table(runs))
    print(f"wrote {a.out} ({len(runs)} GPU check run(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
