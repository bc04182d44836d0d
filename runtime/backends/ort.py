"""ONNX Runtime runner: IOBinding on the runtime's persistent buffers, bound by pointer.

CUDA EP (onnxruntime-gpu and a GPU present) binds torch device memory by ``data_ptr`` and
runs on the runtime's stream (``user_compute_stream``), so nothing goes through the host.
On the CPU EP the same binding by pointer makes ORT write outputs straight into our torch CPU
tensors: no per-call allocation, no copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.backends.base import Runner, check_io
from runtime.bundle import EngineSpec
from runtime.errors import EngineError

NP_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.uint8: np.uint8, torch.int64: np.int64}
# ONNX Runtime's NodeArg.type -> the manifest's dtype names (unknown ones are not checked).
ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(uint8)": "uint8",
    "tensor(int64)": "int64",
}


class OrtRunner(Runner):
    kind = "onnx"
    capturable = False  # ORT has its own CUDA-graph mode; torch.cuda.graph cannot record a session run

    def __init__(
        self, path: Path, spec: EngineSpec, device: torch.device, threads: int = 0, stream: Any = None
    ) -> None:
        super().__init__(path, spec, device)
        self.threads = threads
        self.stream = stream
        self.session: Any = None
        self.bindings: dict[int, Any] = {}
        self.on_cuda = False
        self.run_options: Any = None

    def load(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise EngineError(f"{self.path.name}: onnxruntime does not import ({e})") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # Three sessions (injection, cell, head) each own a thread pool whose threads spin after
        # every run; on a shared CPU they steal the cores from the next session and from torch's
        # solver ops. Measured on 2 cores at 256x512: stream k=2 7.3 -> 35 fps without spinning.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.threads:
            opts.intra_op_num_threads = self.threads
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            cuda_opts = {"device_id": str(self.device.index or 0)}
            if self.stream is not None:
                cuda_opts["user_compute_stream"] = str(self.stream.cuda_stream)
            providers = [("CUDAExecutionProvider", cuda_opts)]
            opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            self.on_cuda = True
        elif self.device.type == "cuda":
            raise EngineError(
                f"{self.path.name}: device is CUDA but onnxruntime has no CUDAExecutionProvider "
                "(install onnxruntime-gpu, or run with --device cpu)"
            )
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises several types for a bad file
            first = _first_line(e)
            if self.on_cuda and self._loads_on_cpu(ort):  # the model is fine: the CUDA provider is not
                raise EngineError(self._cuda_missing(ort, f"session creation failed: {first}")) from None
            raise EngineError(f"{self.path.name}: not a loadable ONNX model ({first})") from None
        loaded = self.session.get_providers()
        if self.on_cuda and "CUDAExecutionProvider" not in loaded:
            raise EngineError(self._cuda_missing(ort, f"the session runs on {', '.join(loaded)}"))
        # By default every CUDA-EP run ends with a stream sync; the pipeline syncs once per frame
        # on its own stream instead (ORT runs on it through user_compute_stream).
        self.run_options = ort.RunOptions()
        if self.on_cuda:
            self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        check_io(
            self.path,
            self.spec,
            {i.name: _static(i.shape) for i in self.session.get_inputs()},
            {o.name: _static(o.shape) for o in self.session.get_outputs()},
            {t.name: ORT_TYPES.get(t.type) for t in (*self.session.get_inputs(), *self.session.get_outputs())},
        )

    def _loads_on_cpu(self, ort: Any) -> bool:
        """Whether the model itself loads (CPU provider alone): tells a bad file from a CUDA provider that failed."""
        try:
            ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - any failure: the file is the problem
            return False
        return True

    def _cuda_missing(self, ort: Any, what: str) -> str:
        """One line: the CUDA provider did not load, and the CUDA / cuDNN this onnxruntime build needs. Why: the
        wheel lists the provider (``get_available_providers``) whether or not its CUDA libraries load; an
        onnxruntime-gpu built for another CUDA major than torch's falls back to the CPU with only a warning."""
        info = _build_info()
        cuda = info.get("cuda_version") or getattr(ort, "cuda_version", "") or "unknown"
        cudnn = info.get("cudnn_version") or "unknown"
        return (
            f"{self.path.name}: the CUDA execution provider of onnxruntime {ort.__version__} did not load ({what}); "
            f"this build needs CUDA {cuda} and cuDNN {cudnn}, torch here has CUDA {torch.version.cuda} "
            "(install the onnxruntime-gpu built for that CUDA, or run with --device cpu)"
        )

    def bind(self, name: str, tensor: torch.Tensor, slot: int = 0) -> None:
        super().bind(name, tensor, slot)
        if tensor.device.type != ("cuda" if self.on_cuda else "cpu"):
            raise EngineError(f"{self.path.name}: buffer for {name} is on {tensor.device}, the session is not")
        b = self.bindings.get(slot)
        if b is None:
            b = self.bindings[slot] = self.session.io_binding()
        dev = "cuda" if self.on_cuda else "cpu"
        idx = (tensor.device.index or 0) if self.on_cuda else 0
        args = (name, dev, idx, NP_DTYPES[tensor.dtype], list(tensor.shape), tensor.data_ptr())
        if name in {t.name for t in self.spec.outputs}:
            b.bind_output(*args)
        else:
            b.bind_input(*args)

    def run(self, stream: Any = None, slot: int = 0) -> None:
        self._bound(slot)
        self.session.run_with_iobinding(self.bindings[slot], self.run_options)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def _build_info() -> dict[str, str]:
    """cuda_version / cudnn_version that a GPU build of onnxruntime records in its build_and_package_info."""
    try:
        from onnxruntime.capi import build_and_package_info as b
    except Exception:  # noqa: BLE001 - older or stripped builds
        return {}
    return {k: str(getattr(b, k)) for k in ("cuda_version", "cudnn_version") if getattr(b, k, None)}


def _static(shape: list[Any]) -> tuple[int, ...] | None:
    """ORT shape with symbolic dims -> None (not checkable), else a tuple of ints."""
    return tuple(shape) if all(isinstance(s, int) for s in shape) else None
