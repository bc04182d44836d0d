"""AOTInductor runner for ``.pt2`` packages.

``run_single_threaded=True`` makes the loaded model recordable in a CUDA graph (the default
multi-threaded runtime fails under capture). AOTI returns fresh output tensors, so ``run``
copies them into the bound output buffers; under a CUDA graph those come from the graph pool.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from runtime.backends.base import Runner
from runtime.bundle import EngineSpec
from runtime.errors import EngineError


class AotiRunner(Runner):
    kind = "pt2"
    capturable = True

    def __init__(self, path: Path, spec: EngineSpec, device: torch.device, **_: Any) -> None:
        super().__init__(path, spec, device)
        self.model: Any = None

    def load(self) -> None:
        built_for = self.spec.device
        if built_for and torch.device(built_for).type != self.device.type:
            raise EngineError(
                f"{self.path.name}: package was compiled for {built_for}, the runtime runs on {self.device}"
            )
        try:
            import zipfile

            if not zipfile.is_zipfile(self.path):
                raise EngineError(f"{self.path.name}: not an AOTInductor package (not a zip archive)")
            loader = torch._inductor.aoti_load_package
            try:
                self.model = loader(str(self.path), run_single_threaded=True)
            except TypeError:  # older signature without run_single_threaded
                self.model = loader(str(self.path))
        except EngineError:
            raise
        except Exception as e:  # noqa: BLE001 - the loader raises many types for a bad package
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise EngineError(f"{self.path.name}: cannot load the AOTInductor package ({first[:200]})") from None

    def run(self, stream: Any = None, slot: int = 0) -> None:
        bound = self._bound(slot)
        args = [bound[t.name] for t in self.spec.inputs]
        # AOTI launches on the current stream: make it the caller's, as the other runners use theirs
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            outs = self.model(*args)
            if isinstance(outs, torch.Tensor):
                outs = [outs]
            for t, o in zip(self.spec.outputs, outs):
                bound[t.name].copy_(o)
