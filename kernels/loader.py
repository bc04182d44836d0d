"""Load ``kernels/build/warp.fatbin`` with NVIDIA's cuda-python and launch kernels on the caller's torch stream.

Why cuda-python (``cuda.core``, or the 1:1 ``cuda.bindings.driver``) and not PyCUDA: PyCUDA ships as an sdist only,
so it compiles against nvcc at install time (a common install failure), and ``pycuda.autoinit`` creates its *own*
CUDA context, which does not share allocations or stream ordering with PyTorch's primary context. cuda-python is
NVIDIA's official binary wheel, needs no compiler at install, and lets us use PyTorch's primary context, PyTorch's
stream and raw ``tensor.data_ptr()`` pointers, so the kernels compose with torch, TensorRT and ONNX Runtime on one
stream (and inside one CUDA graph).

Nothing here touches CUDA at import time. The first launch initialises the driver; a machine without an NVIDIA
driver raises :class:`NoGPUError` with a one-line explanation. Two interchangeable backends exist because neither
could be exercised on the CPU-only build machines: ``cuda.core`` (default) and ``cuda.bindings.driver``; choose with
``DEQSTREAM_KERNEL_BACKEND=core|driver``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kernels import build as _build

BACKENDS = ("core", "driver")


class KernelUnavailable(RuntimeError):
    """The CUDA kernels cannot run here (no GPU, no fatbin, stale fatbin, wrong architecture)."""


class NoGPUError(KernelUnavailable):
    """No NVIDIA driver or no CUDA device."""


@dataclass(frozen=True)
class Arg:
    """A typed kernel argument: kind is "ptr" (device pointer as int), "i32" or "f32"."""

    kind: str
    value: int | float


def ptr(v: int) -> Arg:
    return Arg("ptr", int(v))


def i32(v: int) -> Arg:
    if not -(2**31) <= int(v) < 2**31:
        raise ValueError(f"{v} does not fit in a 32-bit kernel argument")
    return Arg("i32", int(v))


def f32(v: float) -> Arg:
    return Arg("f32", float(v))


def _no_gpu_message(detail: object) -> str:
    return (
        "no usable NVIDIA GPU/driver for the CUDA warp kernels "
        f"({detail}); pass CPU tensors to use the PyTorch reference instead"
    )


def _is_missing_driver(exc: BaseException) -> bool:
    """cuda.pathfinder raises DynamicLibNotFoundError at the first driver call when libcuda.so is absent."""
    return any(cls.__name__ in ("DynamicLibNotFoundError", "DynamicLibNotAvailableError") for cls in type(exc).__mro__)


def init_driver() -> None:
    """cuInit(0), mapping "no driver" and "no device" to NoGPUError."""
    try:
        from cuda.bindings import driver as cu
    except ImportError as exc:  # cuda-python not installed
        raise KernelUnavailable(f"cuda-python is not installed ({exc}); pip install cuda-python") from exc
    try:
        (err,) = cu.cuInit(0)
    except Exception as exc:  # noqa: BLE001 - classify below
        if _is_missing_driver(exc):
            raise NoGPUError(_no_gpu_message("libcuda.so not found")) from exc
        raise
    if err != cu.CUresult.CUDA_SUCCESS:
        raise NoGPUError(_no_gpu_message(f"cuInit: {_error_name(err)}"))


def _error_name(err: object) -> str:
    from cuda.bindings import driver as cu

    try:
        res, name = cu.cuGetErrorName(err)
        return name.decode() if res == cu.CUresult.CUDA_SUCCESS else str(err)
    except Exception:  # noqa: BLE001 - best effort for messages
        return str(err)


def _check(result: tuple, what: str) -> tuple:
    """Unpack a cuda.bindings result tuple, raising on an error code."""
    from cuda.bindings import driver as cu

    err, rest = result[0], result[1:]
    if err != cu.CUresult.CUDA_SUCCESS:
        raise KernelUnavailable(f"{what} failed: {_error_name(err)}")
    return rest


def fatbin_bytes() -> bytes:
    """The fatbin, (re)built first when it is missing or older than warp.cu and nvcc is available."""
    path, stamp = _build.FATBIN, _build.read_stamp()
    stale = stamp and stamp.get("source_sha256") != _build.source_hash()
    if not path.is_file() or stale:
        if _build.find_nvcc() is not None:
            _build.build(quiet=True)
        elif not path.is_file():
            raise KernelUnavailable(f"{path} is missing: run `python -m kernels.build` (needs nvcc) or copy it here")
        else:
            raise KernelUnavailable(f"{path} was built from an older warp.cu and nvcc is not available to rebuild it")
    return path.read_bytes()


def check_arch(data: bytes, major: int, minor: int) -> None:
    """Fail early, with the list of what the fatbin has, when it cannot run on an sm_<major><minor> GPU."""
    problem = _build.arch_problem(data, major, minor)
    if problem:
        raise KernelUnavailable(problem)


def _core() -> Any:
    """The ``cuda.core`` namespace: top level in cuda-core >= 0.5, ``cuda.core.experimental`` before."""
    try:
        import cuda.core as core

        if hasattr(core, "ObjectCode"):
            return core
        import cuda.core.experimental as core

        return core
    except ImportError as exc:
        raise KernelUnavailable(
            f"cuda.core does not import ({exc}); pip install 'cuda-core>=0.5' or set DEQSTREAM_KERNEL_BACKEND=driver"
        ) from None


class _CoreModule:
    """Kernels through ``cuda.core`` (Device/ObjectCode/LaunchConfig/launch)."""

    def __init__(self, device_index: int, data: bytes) -> None:
        core = _core()
        Device, ObjectCode = core.Device, core.ObjectCode

        self._device_index = device_index
        self._tls = threading.local()
        self._activate()
        self._dev = Device(device_index)
        major, minor = self._dev.compute_capability
        check_arch(data, major, minor)
        self._code = ObjectCode.from_fatbin(data, name="deqstream_warp")
        self._kernels: dict[str, object] = {}
        self._streams: dict[int, object] = {}

    def _activate(self) -> None:
        """Make the device's primary context (the one PyTorch uses) current for cuda.core on this thread."""
        if getattr(self._tls, "active", False):
            return
        _core().Device(self._device_index).set_current()
        self._tls.active = True

    def _stream(self, handle: int) -> object:
        core = _core()
        if handle == 0:
            return core.LEGACY_DEFAULT_STREAM
        s = self._streams.get(handle)
        if s is None:
            s = self._streams[handle] = core.Stream.from_handle(handle)
        return s

    def prepare(self, name: str, grid: tuple, block: tuple, args: Sequence[Arg]) -> Callable[[int], None]:
        """Kernel, launch configuration and typed arguments resolved once; the result launches on a stream."""
        import numpy as np

        core = _core()
        self._activate()
        kernel = self._kernels.get(name)
        if kernel is None:
            kernel = self._kernels[name] = self._code.get_kernel(name)
        # cuda.core maps a Python int to a pointer-sized argument; scalars must carry their C type.
        conv = {"ptr": int, "i32": np.int32, "f32": np.float32}
        values = tuple(conv[a.kind](a.value) for a in args)
        config = core.LaunchConfig(grid=grid, block=block)
        launch = core.launch

        def run(stream: int) -> None:
            self._activate()
            launch(self._stream(stream), config, kernel, *values)

        return run

    def launch(self, name: str, grid: tuple, block: tuple, stream: int, args: Sequence[Arg]) -> None:
        self.prepare(name, grid, block, args)(stream)


class _DriverModule:
    """Kernels through ``cuda.bindings.driver`` (cuModuleLoadData / cuModuleGetFunction / cuLaunchKernel)."""

    def __init__(self, device_index: int, data: bytes) -> None:
        from cuda.bindings import driver as cu

        self._cu = cu
        (dev,) = _check(cu.cuDeviceGet(device_index), "cuDeviceGet")
        (self._ctx,) = _check(cu.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
        self._tls = threading.local()
        self._activate()
        (major,) = _check(
            cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev), "attr"
        )
        (minor,) = _check(
            cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev), "attr"
        )
        check_arch(data, major, minor)
        import numpy as np

        # Pass the image by address (the documented cuda-python idiom); keep the buffer alive with the module.
        self._image = np.frombuffer(data, dtype=np.uint8).copy()
        (self._module,) = _check(cu.cuModuleLoadData(self._image.ctypes.data), "cuModuleLoadData")
        self._functions: dict[str, object] = {}

    def _activate(self) -> None:
        """Ensure the primary context is current on this thread; refuse foreign contexts (they break sharing)."""
        if getattr(self._tls, "active", False):
            return
        cu = self._cu
        (cur,) = _check(cu.cuCtxGetCurrent(), "cuCtxGetCurrent")
        if int(cur) == 0:
            _check(cu.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")
        elif int(cur) != int(self._ctx):
            raise KernelUnavailable("a non-primary CUDA context is current; PyTorch and the kernels need the primary")
        self._tls.active = True

    def prepare(self, name: str, grid: tuple, block: tuple, args: Sequence[Arg]) -> Callable[[int], None]:
        """Function handle and the packed parameter array built once (the driver copies the values at each
        launch, so one array serves every launch); the result launches on a stream."""
        import numpy as np

        cu = self._cu
        self._activate()
        fn = self._functions.get(name)
        if fn is None:
            (fn,) = _check(cu.cuModuleGetFunction(self._module, name.encode()), f"cuModuleGetFunction({name})")
            self._functions[name] = fn
        dtypes = {"ptr": np.uint64, "i32": np.int32, "f32": np.float32}
        holders = [np.array([a.value], dtype=dtypes[a.kind]) for a in args]
        params = np.array([h.ctypes.data for h in holders], dtype=np.uint64)
        gx, gy, gz = grid
        bx, by, bz = block
        what = f"cuLaunchKernel({name})"

        def run(stream: int) -> None:
            _ = holders  # the parameter values must outlive every launch
            self._activate()
            _check(cu.cuLaunchKernel(fn, gx, gy, gz, bx, by, bz, 0, cu.CUstream(stream), params.ctypes.data, 0), what)

        return run

    def launch(self, name: str, grid: tuple, block: tuple, stream: int, args: Sequence[Arg]) -> None:
        self.prepare(name, grid, block, args)(stream)


_modules: dict[tuple[str, int], object] = {}
_lock = threading.Lock()


def backend_name() -> str:
    name = os.environ.get("DEQSTREAM_KERNEL_BACKEND", "core").strip().lower()
    if name not in BACKENDS:
        raise KernelUnavailable(f"DEQSTREAM_KERNEL_BACKEND must be one of {BACKENDS}, got {name!r}")
    return name


def load(device_index: int = 0, backend: str | None = None) -> _CoreModule | _DriverModule:
    """The loaded kernel module for a device (cached); raises NoGPUError / KernelUnavailable with a clear reason."""
    backend = backend or backend_name()
    key = (backend, device_index)
    with _lock:
        mod = _modules.get(key)
        if mod is None:
            init_driver()
            data = fatbin_bytes()
            cls = _CoreModule if backend == "core" else _DriverModule
            mod = _modules[key] = cls(device_index, data)
    return mod


def _no_op(stream: int) -> None:
    """The launch of an empty tensor: nothing to do."""


def prepare(
    name: str,
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    args: Sequence[Arg],
    device_index: int,
    backend: str | None = None,
) -> Callable[[int], None]:
    """Resolve kernel ``name`` and pack ``args`` once; the returned callable launches it on a stream (a cudaStream_t
    as int) asynchronously. kernels.warp keeps these per launch signature, so a frame's launch costs one call."""
    if any(g <= 0 for g in grid):
        return _no_op
    return load(device_index, backend).prepare(name, grid, block, args)


def launch(
    name: str,
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    args: Sequence[Arg],
    device_index: int,
    stream: int,
    backend: str | None = None,
) -> None:
    """Launch kernel ``name`` asynchronously on ``stream`` (a cudaStream_t as int, e.g. torch's current stream)."""
    if any(g <= 0 for g in grid):
        return  # empty tensor: nothing to do
    load(device_index, backend).launch(name, grid, block, stream, args)
