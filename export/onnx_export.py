"""ONNX export of one engine graph, and its numeric check through ONNX Runtime.

We use the TorchScript exporter (``dynamo=False``) at opset 17 with static shapes: it is
the path verified on the MDEQ cell (notes/mdeq-streamdeq.md §6), it exists on torch 2.11
and 2.13, and static shapes are what TensorRT and the runtime's preallocated buffers want.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

OPSET = 17


class ParityError(RuntimeError):
    """An exported engine disagrees with PyTorch beyond the tolerance (one-line message)."""


def export_onnx(
    module: nn.Module,
    inputs: Sequence[Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    path: str | os.PathLike[str],
) -> Path:
    """Trace ``module(*inputs)`` into ``path`` with fixed tensor names and shapes."""
    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo; we choose it on purpose.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(inputs),
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def ort_session(path: str | os.PathLike[str], threads: int = 0) -> Any:
    """A CPU ONNX Runtime session (the parity check is defined against ORT CPU)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    # No busy-waiting worker threads: the check is short and the CPU is often shared.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(path: str | os.PathLike[str], feeds: dict[str, Tensor]) -> list[np.ndarray]:
    sess = ort_session(path)
    return sess.run(None, {k: v.detach().cpu().numpy() for k, v in feeds.items()})


def compare(ref: Tensor | np.ndarray, got: Tensor | np.ndarray) -> dict[str, float]:
    """max_abs, and max_rel relative to max|ref| (elementwise relative error is meaningless
    near the zeros that ReLU/GN produce); for integer outputs also the mismatch fraction."""
    r = ref.detach().cpu().numpy() if isinstance(ref, Tensor) else np.asarray(ref)
    g = got.detach().cpu().numpy() if isinstance(got, Tensor) else np.asarray(got)
    if r.shape != g.shape:
        raise ParityError(f"shape mismatch: reference {r.shape}, engine {g.shape}")
    diff = np.abs(r.astype(np.float64) - g.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(r.astype(np.float64)).max()) if r.size else 0.0
    out = {"max_abs": max_abs, "max_rel": max_abs / scale if scale > 0 else max_abs}
    if not np.issubdtype(r.dtype, np.floating):
        out["mismatch"] = float((r != g).mean()) if r.size else 0.0
    return out


def merge_parity(results: Sequence[dict[str, float]]) -> dict[str, float]:
    """Worst case over an engine's outputs."""
    merged: dict[str, float] = {}
    for res in results:
        for k, v in res.items():
            merged[k] = max(merged.get(k, 0.0), v)
    return merged


def check_tolerance(engine: str, kind: str, parity: dict[str, float], tol: float) -> None:
    """Raise ParityError when an engine is off; class maps are judged by differing pixels
    (a tie in the argmax may flip a boundary pixel, a wrong graph flips many)."""
    if "mismatch" in parity:
        bad, value, what = parity["mismatch"] > tol, parity["mismatch"], "fraction of differing pixels"
    else:
        bad, value, what = parity["max_rel"] > tol, parity["max_rel"], "max_rel"
    if bad:
        raise ParityError(f"{engine}.{kind} disagrees with PyTorch: {what} {value:.3g} > {tol:g}")
