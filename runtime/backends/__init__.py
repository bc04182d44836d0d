"""Backends: one small runner per engine kind, chosen by suffix and imported lazily, so a
missing TensorRT or onnxruntime-gpu never breaks the other kinds."""

from __future__ import annotations

import importlib

import torch

from runtime.backends.base import Runner
from runtime.bundle import EngineSpec, kind_of
from runtime.errors import EngineError

RUNNERS = {
    "onnx": ("runtime.backends.ort", "OrtRunner"),
    "pt2": ("runtime.backends.aoti", "AotiRunner"),
    "plan": ("runtime.backends.trt", "TrtRunner"),
}


def load_runner(spec: EngineSpec, device: torch.device, **kwargs: object) -> Runner:
    """Load ``spec.path`` with the runner of its kind (loaded and checked against the manifest)."""
    module, cls = RUNNERS[kind_of(spec.path)]
    try:
        runner_cls = getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise EngineError(f"{spec.path.name}: the {kind_of(spec.path)} backend cannot be imported ({e})") from None
    runner = runner_cls(spec.path, spec, device, **kwargs)
    runner.load()
    return runner


__all__ = ["Runner", "load_runner"]
