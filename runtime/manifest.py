"""The bundle contract, ``manifest.json`` ("deqstream-bundle/1", ARCHITECTURE.md), defined once.

Why here: the exporter writes the manifest and the runtime reads it, and the two must agree on
one definition of the format, its required keys, the engine kinds and the file hashes. The
runtime may not import the PyTorch side (``export``), so the contract lives on the runtime side,
free of torch, and ``export.manifest`` builds on it. Errors are :class:`ManifestError`: a
``BundleError`` for the runtime's CLI (one line, non-zero exit) and a ``ValueError`` for the
exporter's.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from runtime.errors import BundleError

FORMAT = "deqstream-bundle/1"
MANIFEST_NAME = "manifest.json"
ENGINE_SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "plan": ".plan"}  # engine kind -> file suffix
SUFFIX_KIND = {suffix: kind for kind, suffix in ENGINE_SUFFIXES.items()}
CORE_ENGINES = ("injection", "deq_cell")  # plus at least one head_* engine
# The manifest's ``task`` -> the head engine the runtime runs for it (runtime.tasks says what its output means).
# det: head_det_rpn, whose outputs the decoding turns into head_det_box's input (runtime.det_stage).
TASK_HEADS = {"seg": "head_seg", "cls": "head_cls", "pose": "head_pose", "det": "head_det_rpn"}
# A det bundle's head engine depends on its detector (the manifest's ``detector.kind``; absent: faster_rcnn, the
# bundles written before one-stage detectors): the two-stage RPN engine, or the one-stage CenterNet-style head
# (runtime.center_decode), whose peaks are decoded on the device with no second engine.
DET_HEADS = {"faster_rcnn": "head_det_rpn", "centernet": "head_det_ctr"}
# The fixed-point solvers a manifest's config.test_solve (and --solver) may name; runtime.solvers implements them.
# Here, torch-free, so the CLI parses its arguments (and installs its SIGTERM handler) before torch is imported.
SOLVER_NAMES = ("fixed_point", "anderson", "broyden")
# Not a solver of its own: the runtime's Pipeline runs fixed_point and switches a stream to anderson once its
# residual grows within a frame (``--solver auto``).
AUTO = "auto"
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

PathLike = str | os.PathLike[str]


class ManifestError(BundleError, ValueError):
    """A manifest or bundle that does not fit the contract (one-line message)."""


def detector_kind(manifest: dict[str, Any]) -> str:
    """The kind of a det bundle's detector (``DET_HEADS``); an unknown kind is one line."""
    entry = manifest.get("detector")
    kind = entry.get("kind", "faster_rcnn") if isinstance(entry, dict) else "faster_rcnn"
    if kind not in DET_HEADS:
        raise ManifestError(f"manifest: unknown detector kind {kind!r}; this runtime knows {', '.join(DET_HEADS)}")
    return str(kind)


def task_head(task: str, manifest: dict[str, Any]) -> str | None:
    """The head engine the runtime runs for ``task`` (det: its detector kind's); None for an unknown task."""
    if task == "det":
        return DET_HEADS[detector_kind(manifest)]
    return TASK_HEADS.get(task)


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB pieces (engines can be hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(bundle_dir: PathLike) -> dict[str, Any]:
    """``manifest.json`` of a bundle directory, checked for the format and the required keys."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in {bundle_dir} (export a bundle with `python -m export`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path} is not a readable JSON manifest: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ManifestError(f"{path}: format is {got!r}, expected {FORMAT!r}")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ManifestError(f"{path} lacks keys: {', '.join(missing)}")
    return manifest


def check_engine_file(bundle_dir: PathLike, fname: str, sha256: dict[str, str]) -> Path:
    """The engine file ``fname`` of the bundle, which must exist and match its hash in ``sha256``."""
    path = Path(bundle_dir) / fname
    if not path.is_file():
        raise ManifestError(f"engine file {path} is missing (listed in the manifest)")
    want = sha256.get(fname)
    if want is None:
        raise ManifestError(f"manifest: no sha256 for {fname}")
    if sha256_file(path) != want:
        raise ManifestError(f"engine file {path} does not match its sha256 in the manifest (rebuilt or corrupted?)")
    return path


def validate_manifest(manifest: dict[str, Any], bundle_dir: PathLike | None = None) -> None:
    """Check the whole structure (and, given the directory, that every engine file of every kind
    exists and matches its hash). The runtime checks less up front: only the kind it loads."""
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ManifestError(f"manifest lacks keys: {', '.join(missing)}")
    if manifest["format"] != FORMAT:
        raise ManifestError(f"manifest format is {manifest['format']!r}, expected {FORMAT!r}")
    for name in CORE_ENGINES:
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
            if bundle_dir is not None:
                check_engine_file(bundle_dir, fname, eng["sha256"])


def load_bundle_manifest(bundle_dir: PathLike, check_files: bool = True) -> dict[str, Any]:
    """Read and validate in one call."""
    manifest = read_manifest(bundle_dir)
    validate_manifest(manifest, bundle_dir if check_files else None)
    return manifest
