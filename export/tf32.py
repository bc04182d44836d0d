"""TF32 state of PyTorch's CUDA backends, read and set through one API.

PyTorch 2.9 added per-backend ``fp32_precision`` strings and deprecated the ``allow_tf32``
booleans; mixing the two raises (reading ``cudnn.allow_tf32`` after ``cudnn.conv`` was set
through the new API is a RuntimeError). Everything here uses the new API where torch has
it (2.11 on the GPU machines, 2.13 here) and the booleans only on older releases.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_NEW_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")


def _knobs() -> dict[str, tuple[object, str]]:
    """Backend object and attribute for convolutions (cuDNN) and matmuls (cuBLAS)."""
    if _NEW_API:
        return {
            "conv": (torch.backends.cudnn.conv, "fp32_precision"),
            "matmul": (torch.backends.cuda.matmul, "fp32_precision"),
        }
    return {"conv": (torch.backends.cudnn, "allow_tf32"), "matmul": (torch.backends.cuda.matmul, "allow_tf32")}


def _resolve(value: object, parents: list[str]) -> bool:
    """A precision string of 'none' inherits from its parent; booleans are the legacy answer."""
    if isinstance(value, bool):
        return value
    for v in [str(value), *parents]:
        if v != "none":
            return v == "tf32"
    return False


def tf32_enabled() -> dict[str, bool]:
    """Whether fp32 convolutions and matmuls may use TF32 tensor cores right now."""
    parents: dict[str, list[str]] = {"conv": [], "matmul": []}
    if _NEW_API:
        top = str(getattr(torch.backends, "fp32_precision", "none"))
        parents = {"conv": [str(torch.backends.cudnn.fp32_precision), top], "matmul": [top]}
    return {name: _resolve(getattr(obj, attr), parents[name]) for name, (obj, attr) in _knobs().items()}


def _snapshot() -> dict[str, object]:
    return {name: getattr(obj, attr) for name, (obj, attr) in _knobs().items()}


def _restore(saved: dict[str, object]) -> None:
    for name, (obj, attr) in _knobs().items():
        setattr(obj, attr, saved[name])


def set_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 for both fp32 convolutions and matmuls."""
    value: object = ("tf32" if enabled else "ieee") if _NEW_API else enabled
    for obj, attr in _knobs().values():
        setattr(obj, attr, value)


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """TF32 off inside the block: CUDA references (and AOTI parity runs) in TF32 carry ~5e-4
    error per layer, which compounds through the cell past the 1e-3 parity bound against ORT's
    exact fp32 and TensorRT (built without TF32). The caller's settings come back afterwards."""
    saved = _snapshot()
    set_tf32(False)
    try:
        yield
    finally:
        _restore(saved)
