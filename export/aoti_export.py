"""AOTInductor export: one graph -> a self-contained ``.pt2`` package.

The package is compiled for the device its module and example inputs live on (cpu or
cuda) with static shapes. Only the calls that torch 2.11 and 2.13 share are used:
``torch.export.export(module, args, strict=False)``,
``torch._inductor.aoti_compile_and_package(ep, package_path=...)`` and
``torch._inductor.aoti_load_package(path, run_single_threaded=...)``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


def export_pt2(module: nn.Module, inputs: Sequence[Tensor], path: str | os.PathLike[str]) -> Path:
    """Export and compile ``module(*inputs)`` into the package ``path`` (must end in .pt2)."""
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"an AOTInductor package must end in .pt2, got {path.name}")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module.eval(), tuple(inputs), strict=False)
        out = torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return Path(out)


def load_pt2(path: str | os.PathLike[str], single_threaded: bool = True) -> Any:
    """Load a package; ``run_single_threaded`` skips the per-call lock and is what a
    runtime that drives one model from one thread (and captures CUDA graphs) wants."""
    try:
        return torch._inductor.aoti_load_package(str(path), run_single_threaded=single_threaded)
    except TypeError:  # a torch without the keyword (older than both versions we target)
        return torch._inductor.aoti_load_package(str(path))


def run_pt2(path: str | os.PathLike[str], inputs: Sequence[Tensor]) -> list[Tensor]:
    model = load_pt2(path)
    with torch.no_grad():
        out = model(*inputs)
    return [out] if isinstance(out, Tensor) else list(out)
