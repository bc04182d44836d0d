"""TensorRT 10/11 runner for ``.plan`` engines (tensor-name API only).

One execution context per binding slot, each with its tensor addresses set once, at ``bind``. Why: TensorRT
reads a context's addresses when ``execute_async_v3`` is enqueued, and a CUDA graph fixes what was enqueued at
capture; the ping-pong solve captures slot 0 and slot 1 alternately in one graph, so one context whose
addresses were switched between the enqueues (``set_tensor_address`` inside the capture) is not a documented
pattern and may capture nothing or replay stale addresses. The contexts are created ``USER_MANAGED`` and share
one activation block (``set_device_memory``): they run one after the other on the runtime's stream, so one block
the size of one context's activations serves all slots. Runs with ``execute_async_v3`` on the runtime's
stream, never the default stream.
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
        self.contexts: dict[int, Any] = {}
        self.memory: torch.Tensor | None = None  # the activation block every context shares
        self._trt: Any = None

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
        self._trt = trt
        self._slot_context(0)  # fails here, at load, when TensorRT cannot make one

    @property
    def context(self) -> Any:
        """Slot 0's execution context."""
        return self.contexts.get(0)

    def _activation_memory(self, size: int) -> torch.Tensor:
        """One device block for the contexts' activations (torch's allocator aligns blocks to 512 bytes)."""
        return torch.empty(max(size, 256), dtype=torch.uint8, device=self.device)

    def _slot_context(self, slot: int) -> Any:
        """The execution context of ``slot``, created on first use; all share one activation block."""
        if slot in self.contexts:
            return self.contexts[slot]
        strategy = getattr(self._trt, "ExecutionContextAllocationStrategy", None)
        if strategy is None:  # no user-managed memory in this TensorRT: each context allocates its own
            ctx = self.engine.create_execution_context()
        else:
            ctx = self.engine.create_execution_context(strategy.USER_MANAGED)
        if ctx is None:
            raise EngineError(f"{self.path.name}: TensorRT could not create an execution context (out of memory?)")
        if strategy is not None:
            size = int(getattr(self.engine, "device_memory_size_v2", None) or self.engine.device_memory_size)
            if self.memory is None:
                self.memory = self._activation_memory(size)
            if hasattr(ctx, "set_device_memory"):  # TensorRT >= 10.1 (pointer and size)
                ctx.set_device_memory(self.memory.data_ptr(), size)
            else:
                ctx.device_memory = self.memory.data_ptr()
        self.contexts[slot] = ctx
        return ctx

    def bind(self, name: str, tensor: torch.Tensor, slot: int = 0) -> None:
        """Bind and set the address in the slot's own context, once: ``run`` never changes an address."""
        if tensor.device.type != "cuda":
            raise EngineError(f"{self.path.name}: TensorRT buffers must live on the GPU ({name} is on {tensor.device})")
        if tensor.data_ptr() % 256:
            raise EngineError(f"{self.path.name}: buffer for {name} is not 256-byte aligned")
        super().bind(name, tensor, slot)
        if not self._slot_context(slot).set_tensor_address(name, tensor.data_ptr()):
            raise EngineError(f"{self.path.name}: TensorRT refused the address of {name}")

    def run(self, stream: Any = None, slot: int = 0) -> None:
        self._bound(slot)  # every tensor of the slot has its address
        handle = (stream or torch.cuda.current_stream(self.device)).cuda_stream
        if not self.contexts[slot].execute_async_v3(handle):
            raise EngineError(f"{self.path.name}: execute_async_v3 failed")
