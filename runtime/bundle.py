"""Read an engine bundle: ``manifest.json`` plus the engine files of one kind.

The runtime knows the model only through the manifest (ARCHITECTURE.md, "deqstream-bundle/1"),
so this is where a bundle that does not fit the contract is caught, before any engine is
loaded: missing keys, missing files, hashes that differ, state tensors that do not line up
with the cell's inputs and outputs. The contract itself (format, required keys, hashes) is
:mod:`runtime.manifest`, which the exporter uses too; this module adds what the runtime
relies on beyond it (engines of one kind, shapes that agree), from the file alone.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import BundleError
from runtime.manifest import (
    CORE_ENGINES,
    ENGINE_SUFFIXES,
    MANIFEST_NAME,
    SUFFIX_KIND,
    TASK_HEADS,
    check_engine_file,
    detector_kind,
    read_manifest,
    sha256_file,
    task_head,
)


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and dtype of one engine input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @classmethod
    def parse(cls, d: dict[str, Any], where: str) -> TensorSpec:
        try:
            return cls(str(d["name"]), tuple(int(s) for s in d["shape"]), str(d.get("dtype", "float32")))
        except (KeyError, TypeError, ValueError):
            raise BundleError(f"manifest: malformed tensor spec in {where}: {d!r}") from None


@dataclass(frozen=True)
class EngineSpec:
    """One engine of the bundle as the manifest describes it, resolved to a file of our kind."""

    name: str
    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    device: str | None = None

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)


@dataclass
class Bundle:
    """What the runtime needs from a bundle: resolution, state layout, engines of one kind."""

    root: Path
    kind: str
    manifest: dict[str, Any]
    height: int
    width: int
    batch: int
    state: tuple[TensorSpec, ...]
    engines: dict[str, EngineSpec]
    classes: list[str] = field(default_factory=list)
    palette: list[tuple[int, int, int]] = field(default_factory=list)
    f_thres: int = 20
    # The cell's relaxation (export MDEQConfig.relax): it outputs (1 - relax) z + relax f(z), so its step is relax
    # times f's; the runtime divides residuals by it to report (and compare --tol with) f's own step.
    relax: float = 1.0

    @property
    def task(self) -> str:
        """The manifest's ``task`` when its head engine is in the bundle; else (a bundle exported before pose
        bundles said ``"task": "pose"``) the task of the head the runtime always picked: head_seg, else the
        first head engine."""
        task = self.manifest.get("task")
        if isinstance(task, str) and task_head(task, self.manifest) in self.engines:
            return str(task)
        if task == "det" and isinstance(self.manifest.get("detector"), dict):  # its head engine is missing
            head = task_head("det", self.manifest)
            raise BundleError(f"manifest: this det bundle ({detector_kind(self.manifest)}) needs the {head!r} engine")
        first = "head_seg" if "head_seg" in self.engines else next(n for n in self.engines if n.startswith("head"))
        return next((t for t, h in TASK_HEADS.items() if h == first), "seg")

    @property
    def head_name(self) -> str:
        """The head engine the runtime runs: the task's (a bundle may hold several heads)."""
        head = task_head(self.task, self.manifest)
        return head if head in self.engines else next(n for n in self.engines if n.startswith("head"))


def kind_of(path: str | Path) -> str:
    """Backend kind from the file suffix (the contract: .onnx, .pt2, .plan)."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIX_KIND:
        raise BundleError(f"{path}: unknown engine suffix {suffix!r}; expected one of {', '.join(SUFFIX_KIND)}")
    return SUFFIX_KIND[suffix]


def _engine_spec(root: Path, name: str, entry: dict[str, Any], kind: str, check_hash: bool) -> EngineSpec:
    files = entry.get("files", {})
    if kind not in files:
        have = ", ".join(sorted(files)) or "none"
        raise BundleError(f"manifest: engine {name!r} has no {kind!r} file (has: {have})")
    if check_hash:
        path = check_engine_file(root, files[kind], entry.get("sha256", {}))
    else:
        path = root / files[kind]
        if not path.is_file():
            raise BundleError(f"engine file {path} is missing (listed in the manifest)")
    inputs = tuple(TensorSpec.parse(t, f"{name}.inputs") for t in entry.get("inputs", []))
    outputs = tuple(TensorSpec.parse(t, f"{name}.outputs") for t in entry.get("outputs", []))
    if not inputs or not outputs:
        raise BundleError(f"manifest: engine {name!r} lists no inputs or no outputs")
    device = entry.get("device", {}).get(kind) if isinstance(entry.get("device"), dict) else None
    return EngineSpec(name, path, inputs, outputs, device)


def _check_consistency(b: Bundle) -> None:
    """The runtime allocates buffers from the manifest and binds them by name: check the
    shapes it will bind agree across engines, so a mismatch is one line, not a crash."""
    n = len(b.state)
    cell = b.engines["deq_cell"]
    if [t.name for t in cell.inputs[:n]] != [s.name for s in b.state]:
        raise BundleError(
            "manifest: deq_cell inputs do not start with the state tensors " + ",".join(s.name for s in b.state)
        )
    for z, zin, f in zip(b.state, cell.inputs[:n], cell.outputs):
        if not (z.shape == zin.shape == f.shape):
            raise BundleError(f"manifest: state {z.name} {z.shape} does not match deq_cell {zin.shape} -> {f.shape}")
    if len(cell.outputs) != n or len(cell.inputs) != n + 1:
        raise BundleError("manifest: deq_cell must map z0..z{n-1}, x to f0..f{n-1}")
    inj = b.engines["injection"]
    if inj.outputs[0].shape != cell.inputs[n].shape:
        raise BundleError(f"manifest: injection output {inj.outputs[0].shape} != deq_cell x {cell.inputs[n].shape}")
    if inj.inputs[0].shape != (b.batch, b.height, b.width, 3):
        raise BundleError(f"manifest: injection input {inj.inputs[0].shape} != ({b.batch}, {b.height}, {b.width}, 3)")
    head = b.engines[b.head_name]
    if tuple(t.shape for t in head.inputs) != tuple(s.shape for s in b.state):
        raise BundleError(f"manifest: {b.head_name} inputs do not match the state shapes")
    if b.task == "det" and b.head_name == "head_det_rpn":  # its outputs become the box engine's input (det_stage)
        if "head_det_box" not in b.engines:
            raise BundleError("manifest: a det bundle lists head_det_rpn but no 'head_det_box' engine")
        if not isinstance(b.manifest.get("detector"), dict):
            raise BundleError("manifest: a det bundle lacks its 'detector' entry (the decode settings)")


def _export_command(root: Path, kind: str) -> str:
    """The command that builds a ``kind`` engine into ``root``: the bundle's own export command (its manifest records
    it) with ``kind`` added to ``--formats``, else ``make export`` into that folder. Read as plain JSON on purpose: a
    newcomer's folder may hold anything, and this only words an error."""
    try:
        argv = shlex.split(json.loads((root / MANIFEST_NAME).read_text())["command"])
        if argv[:3] != ["python", "-m", "export"]:
            raise ValueError(argv[:3])
    except (OSError, ValueError, KeyError, TypeError):
        formats = "onnx" if kind == "onnx" else f"onnx,{kind}"
        return f"make export ENGINES={shlex.quote(str(root))}" + ("" if kind == "onnx" else f" FORMATS={formats}")
    kinds, rest, i = [], [], 3
    while i < len(argv):
        if argv[i] in ("--formats", "--out") and i + 1 < len(argv):
            kinds += argv[i + 1].split(",") if argv[i] == "--formats" and argv[i + 1] != "auto" else []
            i += 2
            continue
        rest.append(argv[i])
        i += 1
    kinds = kinds or ["onnx"]
    wanted = [k for k in ENGINE_SUFFIXES if k in kinds or k == kind]
    return shlex.join(["python", "-m", "export", *rest, "--formats", ",".join(wanted), "--out", str(root)])


def missing_engine_message(engine: Path) -> str:
    """One line for an ``--engine`` file that does not exist: the engines its folder does hold, and the exact
    command that builds the asked kind there (a .plan needs TensorRT and a GPU, said too)."""
    root, kind = engine.parent, kind_of(engine)
    have = sorted(p.name for p in root.iterdir() if p.suffix in SUFFIX_KIND) if root.is_dir() else []
    where = f"{root}/ holds {', '.join(have)}" if have else f"{root}/ holds no engines"
    need = " (needs TensorRT and a CUDA GPU)" if kind == "plan" else ""
    build = _export_command(root, kind)
    return f"engine file {engine} does not exist; {where}; build the {kind} engines with: {build}{need}"


def open_bundle(engine: str | Path, check_hash: bool = True) -> Bundle:
    """Resolve ``engines/deq_cell.onnx`` (or the bundle directory) to a validated Bundle.

    The suffix of the engine picks the kind; the other engines of that kind come from the
    manifest's ``files``.
    """
    engine = Path(engine)
    if engine.is_dir():
        root = engine
        manifest = read_manifest(root)
        kinds = list(manifest["engines"].get("deq_cell", {}).get("files", {}))
        if not kinds:
            raise BundleError(f"{root}: manifest lists no deq_cell engine")
        kind = "onnx" if "onnx" in kinds else kinds[0]
    else:
        kind = kind_of(engine)
        if not engine.exists():
            raise BundleError(missing_engine_message(engine))
        root = engine.parent
        manifest = read_manifest(root)
    try:
        state = tuple(TensorSpec.parse(t, "state") for t in manifest["state"])
        engines = {}
        for name, entry in manifest["engines"].items():
            if name in CORE_ENGINES or name.startswith("head") or kind in entry.get("files", {}):
                engines[name] = _engine_spec(root, name, entry, kind, check_hash)
        for name in CORE_ENGINES:
            if name not in engines:
                raise BundleError(f"manifest has no {name!r} engine")
        task = manifest.get("task")
        head = (task_head(task, manifest) if isinstance(task, str) else None) or "head_seg"
        if not any(n.startswith("head") for n in engines):
            raise BundleError(f"manifest has no head engine ({head})")
        if task in TASK_HEADS and task != "seg" and head not in engines:  # old bundles say seg over another head
            raise BundleError(f"manifest: a {task} bundle without its {head} engine (has: {', '.join(engines)})")
        b = Bundle(
            root=root,
            kind=kind,
            manifest=manifest,
            height=int(manifest["height"]),
            width=int(manifest["width"]),
            batch=int(manifest["batch"]),
            state=state,
            engines=engines,
            classes=[str(c) for c in manifest.get("classes", [])],
            palette=[tuple(int(v) for v in p) for p in manifest.get("palette", [])],
            f_thres=int(manifest.get("f_thres", 20)),
            relax=float(manifest.get("config", {}).get("relax", 1.0)),
        )
        if not 0.0 < b.relax <= 1.0:
            raise ValueError(f"config.relax must be in (0, 1], got {b.relax}")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BundleError(f"{root / MANIFEST_NAME}: malformed manifest ({type(e).__name__}: {e})") from None
    if not engine.is_dir() and engine.resolve() not in {e.path.resolve() for e in b.engines.values()}:
        raise BundleError(f"{engine} is not one of the engines listed in {root / MANIFEST_NAME}")
    _check_consistency(b)
    return b


__all__ = ["Bundle", "EngineSpec", "TensorSpec", "kind_of", "open_bundle", "read_manifest", "sha256_file"]
