"""``manifest.json``: the one file the runtime reads to know what a bundle holds.

The layout is fixed by ARCHITECTURE.md ("deqstream-bundle/1"). This module builds the
pieces (tensor specs, versions, hashes), writes the file atomically, and validates a
bundle on disk so that a broken or hand-edited bundle fails early with a clear message.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FORMAT = "deqstream-bundle/1"
MANIFEST_NAME = "manifest.json"
ENGINE_SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "plan": ".plan"}
REQUIRED_KEYS = (
    "format",
    "created",
    "command",
    "config",
    "task",
    "height",
    "width",
    "batch",
    "strides",
    "state",
    "normalization",
    "classes",
    "palette",
    "precision",
    "f_thres",
    "versions",
    "engines",
)
ENGINE_KEYS = ("inputs", "outputs", "files", "sha256", "parity", "device")


class ManifestError(ValueError):
    """A manifest or bundle that does not match the contract (one-line message)."""


def tensor_spec(name: str, shape: Sequence[int], dtype: str) -> dict[str, Any]:
    return {"name": name, "shape": [int(s) for s in shape], "dtype": dtype}


def dtype_name(dtype: Any) -> str:
    """torch/numpy dtype -> the manifest's spelling ("float32", "float16", "uint8")."""
    return str(dtype).replace("torch.", "")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def read_manifest(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in {bundle_dir} (export a bundle with `python -m export`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from None
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def validate_manifest(manifest: dict[str, Any], bundle_dir: str | os.PathLike[str] | None = None) -> None:
    """Check the structure (and, given the directory, that files exist and hashes match)."""
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ManifestError(f"manifest lacks keys: {', '.join(missing)}")
    if manifest["format"] != FORMAT:
        raise ManifestError(f"manifest format is {manifest['format']!r}, expected {FORMAT!r}")
    for name in ("injection", "deq_cell"):
        if name not in manifest["engines"]:
            raise ManifestError(f"manifest has no {name!r} engine")
    state_names = [s["name"] for s in manifest["state"]]
    for name, eng in manifest["engines"].items():
        lacking = [k for k in ENGINE_KEYS if k not in eng]
        if lacking:
            raise ManifestError(f"engine {name!r} lacks keys: {', '.join(lacking)}")
        if name == "deq_cell" and [t["name"] for t in eng["inputs"]][: len(state_names)] != state_names:
            raise ManifestError("deq_cell inputs do not start with the state tensors z0..")
        for kind, fname in eng["files"].items():
            if kind not in ENGINE_SUFFIXES or not fname.endswith(ENGINE_SUFFIXES[kind]):
                raise ManifestError(f"engine {name!r}: file {fname!r} does not fit kind {kind!r}")
            if bundle_dir is None:
                continue
            path = Path(bundle_dir) / fname
            if not path.is_file():
                raise ManifestError(f"engine file {path} is missing")
            want = eng["sha256"].get(fname)
            if want is None or sha256_file(path) != want:
                raise ManifestError(f"engine file {path} does not match its sha256 in the manifest")


def load_bundle_manifest(bundle_dir: str | os.PathLike[str], check_files: bool = True) -> dict[str, Any]:
    """Read and validate in one call (what the runtime and the tests want)."""
    manifest = read_manifest(bundle_dir)
    validate_manifest(manifest, bundle_dir if check_files else None)
    return manifest
