"""``manifest.json``: the one file the runtime reads to know what a bundle holds.

The layout is fixed by ARCHITECTURE.md ("deqstream-bundle/1") and defined once, torch-free, in
:mod:`runtime.manifest` (format, required keys, reading, validation, hashes), so the exporter
and the runtime cannot drift apart; the exporter may import the runtime, never the reverse.
This module adds the writer's side: the pieces (tensor specs, dtypes, versions) and an atomic
write.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runtime.manifest import (
    ENGINE_KEYS,
    ENGINE_SUFFIXES,
    FORMAT,
    MANIFEST_NAME,
    REQUIRED_KEYS,
    ManifestError,
    load_bundle_manifest,
    read_manifest,
    sha256_file,
    validate_manifest,
)


def tensor_spec(name: str, shape: Sequence[int], dtype: str) -> dict[str, Any]:
    return {"name": name, "shape": [int(s) for s in shape], "dtype": dtype}


def dtype_name(dtype: Any) -> str:
    """torch/numpy dtype -> the manifest's spelling ("float32", "float16", "uint8")."""
    return str(dtype).replace("torch.", "")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _module_version(name: str) -> str | None:
    try:
        return str(importlib.import_module(name).__version__)
    except Exception:  # noqa: BLE001 - missing or broken module means "not available"
        return None


def collect_versions() -> dict[str, Any]:
    """Library versions and the GPU the engines were built on (None where absent).

    A TensorRT plan or a CUDA .pt2 only runs on a matching stack, so the runtime and the
    reader of a benchmark need to know what produced the bundle.
    """
    import torch

    out: dict[str, Any] = {
        "torch": torch.__version__,
        "onnx": _module_version("onnx"),
        "onnxruntime": _module_version("onnxruntime"),
        "tensorrt": _module_version("tensorrt"),
        "cuda": torch.version.cuda,
        "gpu": None,
        "compute_capability": None,
    }
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        out["compute_capability"] = f"{major}.{minor}"
    return out


def default_mode(base: int = 0o666) -> int:
    """Permissions an ordinary open() would give (mkstemp/mkdtemp use 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def write_manifest(manifest: dict[str, Any], bundle_dir: str | os.PathLike[str]) -> Path:
    """Write ``manifest.json`` via a temp file + rename so readers never see half a file."""
    bundle = Path(bundle_dir)
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".json", dir=bundle)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        os.chmod(tmp, default_mode())
        os.replace(tmp, bundle / MANIFEST_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return bundle / MANIFEST_NAME


__all__ = [
    "ENGINE_KEYS",
    "ENGINE_SUFFIXES",
    "FORMAT",
    "MANIFEST_NAME",
    "REQUIRED_KEYS",
    "ManifestError",
    "collect_versions",
    "default_mode",
    "dtype_name",
    "load_bundle_manifest",
    "read_manifest",
    "sha256_file",
    "tensor_spec",
    "utc_now",
    "validate_manifest",
    "write_manifest",
]
