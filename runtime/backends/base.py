"""The runner interface every backend implements (Polygraphy-like: load, bind, run).

Buffers are allocated once by the runtime as torch tensors and bound by name; a runner never
allocates per call where its backend allows it. A runner can hold several binding *slots*
(slot 0: z_A -> z_B, slot 1: z_B -> z_A) so the solver ping-pongs between two state buffers
without copies; one pointer is never bound as input and output of the same slot.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from runtime.buffers import torch_dtype
from runtime.bundle import EngineSpec
from runtime.errors import EngineError


class Runner(ABC):
    """One loaded engine. ``capturable``: its ``run`` may be recorded in a CUDA graph."""

    kind = "?"
    capturable = False

    def __init__(self, path: Path, spec: EngineSpec, device: torch.device) -> None:
        self.path = Path(path)
        self.spec = spec
        self.device = device
        self.slots: dict[int, dict[str, torch.Tensor]] = {}

    @abstractmethod
    def load(self) -> None:
        """Load or deserialize the engine and check it against the manifest."""

    def bind(self, name: str, tensor: torch.Tensor, slot: int = 0) -> None:
        """Bind a persistent buffer to an I/O tensor of this engine (once, at setup)."""
        names = {t.name: t for t in (*self.spec.inputs, *self.spec.outputs)}
        if name not in names:
            raise EngineError(f"{self.path.name}: no tensor named {name!r}")
        if tuple(tensor.shape) != names[name].shape:
            raise EngineError(
                f"{self.path.name}: buffer for {name} has shape {tuple(tensor.shape)}, want {names[name].shape}"
            )
        if not tensor.is_contiguous():
            raise EngineError(f"{self.path.name}: buffer for {name} must be contiguous")
        if tensor.dtype != torch_dtype(names[name].dtype):
            raise EngineError(
                f"{self.path.name}: buffer for {name} is {tensor.dtype}, the manifest says {names[name].dtype}"
            )
        bound = self.slots.setdefault(slot, {})
        outs = {t.name for t in self.spec.outputs}
        for other, t in bound.items():
            if t.data_ptr() == tensor.data_ptr() and (other in outs) != (name in outs):
                raise EngineError(f"{self.path.name}: {name} and {other} share one buffer as input and output")
        bound[name] = tensor

    def _bound(self, slot: int) -> dict[str, torch.Tensor]:
        bound = self.slots.get(slot, {})
        missing = [t.name for t in (*self.spec.inputs, *self.spec.outputs) if t.name not in bound]
        if missing:
            raise EngineError(f"{self.path.name}: slot {slot} has unbound tensors {', '.join(missing)}")
        return bound

    @abstractmethod
    def run(self, stream: Any = None, slot: int = 0) -> None:
        """Run once on the bound buffers of ``slot`` (asynchronously on ``stream`` on CUDA)."""


def check_io(
    path: Path,
    spec: EngineSpec,
    inputs: dict[str, tuple],
    outputs: dict[str, tuple],
    dtypes: dict[str, str | None] | None = None,
) -> None:
    """Engine file vs manifest: same tensor names, static shapes and (where the engine tells) element types, else one
    clear line. A plan built outside our exporter (``trtexec --fp16`` keeps fp32 I/O, say) would otherwise read our
    buffers as the wrong type without an error."""
    for what, want, got in (("inputs", spec.inputs, inputs), ("outputs", spec.outputs, outputs)):
        if sorted(t.name for t in want) != sorted(got):
            raise EngineError(
                f"{path.name}: engine {what} {sorted(got)} do not match the manifest {sorted(t.name for t in want)}"
            )
        for t in want:
            shape = got[t.name]
            if shape is not None and tuple(shape) != t.shape:
                raise EngineError(
                    f"{path.name}: {t.name} has shape {tuple(shape)} in the engine, {t.shape} in the manifest"
                )
            got_dtype = (dtypes or {}).get(t.name)
            if got_dtype is not None and got_dtype != t.dtype:
                raise EngineError(f"{path.name}: {t.name} is {got_dtype} in the engine, {t.dtype} in the manifest")
