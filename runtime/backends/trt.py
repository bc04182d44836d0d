"""TensorRT 10/11 runner for ``.plan`` engines (tensor-name API only).

Each I/O tensor is bound with ``set_tensor_address`` once per slot; switching slots re-sets the
addresses (a host-side call, so it is also what a CUDA graph records per enqueue). Runs with
``execute_async_v3`` on the runtime's stream, never the default stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from runtime.backends.base import Runner, check_io
from runtime.bundle import EngineSpec
from runtime.errors import EngineError

# tensorrt.DataType member names -> the manifest's dtype names (unknown ones are not checked).
TRT_TYPES = {"FLOAT": "float32", "HALF": "float16", "UINT8": "uint8", "INT64": "int64", "INT32": "int32"}


class TrtRunner(Runner):
    kind = "plan"
    capturable = True

    def __init__(self, path: Path, spec: EngineSpec, device: torch.device, **_: Any) -> None:
        super().__init__(path, spec, device)
        self.engine: Any = None
        self.context: Any = None
        self._active: int | None = None

    def load(self) -> None:
        try:
            import tensorrt as trt
        except Exception as e:  # noqa: BLE001 - stub wheels raise non-ImportError errors
            raise EngineError(
                f"{self.path.name}: a .plan engine needs TensorRT, which does not import here ({e})"
            ) from None
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise EngineError(f"{self.path.name}: a .plan engine needs an NVIDIA GPU (none available)")
        logger = trt.Logger(trt.Logger.ERROR)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EngineError(
                f"{self.path.name}: TensorRT cannot deserialize it (corrupt, or built by another TensorRT version/GPU)"
            )
        ins, outs, dtypes = {}, {}, {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            (ins if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outs)[name] = shape
            dt = self.engine.get_tensor_dtype(name)
            dtypes[name] = TRT_TYPES.get(getattr(dt, "name", str(dt).rsplit(".", 1)[-1]))
        check_io(self.path, self.spec, ins, outs, dtypes)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError(f"{self.path.name}: TensorRT could not create an execution context (out of memory?)")

    def bind(self, name: str, tensor: torch.Tensor, slot: int = 0) -> None:
        if tensor.device.type != "cuda":
            raise EngineError(f"{self.path.name}: TensorRT buffers must live on the GPU ({name} is on {tensor.device})")
        if tensor.data_ptr() % 256:
            raise EngineError(f"{self.path.name}: buffer for {name} is not 256-byte aligned")
        super().bind(name, tensor, slot)
        self._active = None

    def run(self, stream: Any = None, slot: int = 0) -> None:
        if self._active != slot:
            for name, t in self._bound(slot).items():
                self.context.set_tensor_address(name, t.data_ptr())
            self._active = slot
        handle = (stream or torch.cuda.current_stream(self.device)).cuda_stream
        if not self.context.execute_async_v3(handle):
            raise EngineError(f"{self.path.name}: execute_async_v3 failed")
