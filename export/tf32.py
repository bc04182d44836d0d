"""TF32 state of PyTorch's CUDA backends, read and set in one place.

PyTorch 2.9 added per-backend ``fp32_precision`` strings and deprecated the ``allow_tf32``
booleans, and mixing the two raises. cuBLAS uses the new API where torch has it (2.11 on the GPU
machines, 2.13 here). cuDNN keeps the boolean: torch 2.13's own AOTInductor compile reads the
legacy ``cudnn.allow_tf32``, and that getter raises once cuDNN's precision was set to anything
but 'tf32' through the new API, so the new API would break every .pt2 export.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_NEW_MATMUL_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")


def _conv_tf32() -> bool:
    """cuDNN's answer; a caller that set cuDNN through the new API makes the legacy getter raise."""
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        return str(torch.backends.cudnn.conv.fp32_precision) == "tf32"


def _matmul_tf32() -> bool:
    if not _NEW_MATMUL_API:
        return bool(torch.backends.cuda.matmul.allow_tf32)
    for value in (torch.backends.cuda.matmul.fp32_precision, getattr(torch.backends, "fp32_precision", "none")):
        if str(value) != "none":
            return str(value) == "tf32"
    return False


def tf32_enabled() -> dict[str, bool]:
    """Whether fp32 convolutions (cuDNN) and matmuls (cuBLAS) may use TF32 tensor cores now."""
    return {"conv": _conv_tf32(), "matmul": _matmul_tf32()}


def _snapshot() -> tuple[bool, object]:
    mm = torch.backends.cuda.matmul.fp32_precision if _NEW_MATMUL_API else torch.backends.cuda.matmul.allow_tf32
    return _conv_tf32(), mm


def _restore(saved: tuple[bool, object]) -> None:
    conv, mm = saved
    torch.backends.cudnn.allow_tf32 = conv
    if _NEW_MATMUL_API:
        torch.backends.cuda.matmul.fp32_precision = mm
    else:
        torch.backends.cuda.matmul.allow_tf32 = mm


def set_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 for both fp32 convolutions and matmuls."""
    _restore((enabled, ("tf32" if enabled else "ieee") if _NEW_MATMUL_API else enabled))


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
