"""The environment record stamped into every benchmark result (trtexec prints the same before its numbers).

Why: a frame rate means nothing without the machine, the library versions and how busy the machine was; the load
average is recorded because our CPU runs share two cores with other work.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from typing import Any

import torch

from export.tf32 import tf32_enabled


def _version(dist: str) -> str | None:
    """Installed version of a distribution, without importing it (tensorrt imports are slow or may fail)."""
    for name in (dist, dist.replace("-", "_")):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def gpu_info() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"gpu": None}
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "sm_count": props.multi_processor_count,
        "driver": _driver_version(),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "tf32_conv": tf32_enabled()["conv"],
        "tf32_matmul": tf32_enabled()["matmul"],
    }


def ort_providers() -> list[str]:
    try:
        import onnxruntime as ort

        return list(ort.get_available_providers())
    except ImportError:
        return []


def environment() -> dict[str, Any]:
    """Machine, accelerator, library versions and the current load."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "host": platform.node(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_average": load,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "onnxruntime_providers": ort_providers(),
        "tensorrt": _version("tensorrt") or _version("tensorrt-cu12") or _version("tensorrt-cu13"),
        "cuda_python": _version("cuda-python"),
        "numpy": _version("numpy"),
        **gpu_info(),
    }


def machine_tag(env: dict[str, Any]) -> str:
    """Short file-name tag: ``cpu`` or the GPU model (``h100``, ``h200``, ``a100``, else a slug of the name)."""
    gpu = env.get("gpu")
    if not gpu:
        return "cpu"
    m = re.search(r"\b([A-Z]\d{2,4}[A-Za-z]?)\b", gpu)
    slug = m.group(1) if m else re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-")
    return slug.lower()


def stamp(prog: str, argv: list[str] | None) -> dict[str, Any]:
    """Command, UTC date and machine line for a result file."""
    args = sys.argv[1:] if argv is None else argv
    env = environment()
    gpu = env.get("gpu") or "no GPU"
    return {
        "command": f"python -m {prog} " + " ".join(shlex.quote(a) for a in args),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{env['host']}: {env['cpu']} ({env['cpu_count']} cpus, load {env['load_average']}), {gpu}",
        "machine_tag": machine_tag(env),
        "environment": env,
    }
