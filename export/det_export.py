"""Export of the detection heads as two plugin-free engines, each checked against PyTorch.

``head_det_rpn``: the FPN and the RPN convolutions, z0..z3 -> p0..p3 (the RoI levels' features), ``rpn_logits``
(B, N) and ``rpn_deltas`` (B, N, 4) over all N anchors. ``head_det_box``: the shared-FC box head, ``roi_feats``
(B * P, C, 7, 7) -> ``class_scores`` (softmax, background last) and ``box_deltas`` (B * P, 4 * classes), P the
proposals per image. Both are static-shape, standard-operator graphs (Conv, Resize nearest, MaxPool, Gemm,
Softmax, Transpose/Reshape/Concat): no NMS, RoIAlign or TopK inside, so no TensorRT plugin library; those run in
the runtime on the device (runtime/det_decode.py). Each engine goes through export.bundle's ``export_engine`` (the
same formats, parity gate and tolerances as the bundle's other engines), fed with real inputs: trunk states from
a couple of cell iterations on random frames, and for the box head the RoI features that the decoder extracts
from the RPN engine's reference outputs.

``export_bundle(..., detector=heads)`` puts the two engines and the manifest's ``detector`` entry into a bundle
(task ``det``, run by ``python -m runtime.run``); ``export_detector`` writes only the two engines into a folder with
``detector.json`` (the decode settings and each engine's manifest entry).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from export.bundle import EngineGraph, export_engine
from export.det_graphs import SAMPLE_ITERS, det_graph_parts, detector_entry, roi_inputs, sample_states
from export.detection import DetectorHeads
from export.mdeq import MDEQSegNet
from export.tf32 import exact_fp32

DETECTOR_JSON = "detector.json"


def build_det_graphs(
    model: MDEQSegNet, heads: DetectorHeads, height: int, width: int, batch: int, precision: str, device: str
) -> list[EngineGraph]:
    """The two detection engine graphs, traced on one sample and checked on another."""
    return [EngineGraph(*parts) for parts in det_graph_parts(model, heads, height, width, batch, precision, device)]


def export_detector(
    model: MDEQSegNet,
    heads: DetectorHeads,
    out_dir: str | os.PathLike[str],
    height: int,
    width: int,
    batch: int = 1,
    formats: Sequence[str] = ("onnx",),
    precision: str = "fp32",
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
    skip_parity: bool = False,
) -> dict[str, Any]:
    """Export ``head_det_rpn`` and ``head_det_box`` into ``out_dir`` (created) and write ``detector.json``:
    ``{"detector": <decode settings>, "classes": [...], "engines": {name: manifest entry}}``, returned.
    Raises ParityError (one line) when an engine disagrees with PyTorch beyond the bundle's tolerance."""
    log = log or (lambda _msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    engines: dict[str, Any] = {}
    with exact_fp32():
        for graph in build_det_graphs(model, heads, height, width, batch, precision, device):
            engines[graph.name] = export_engine(graph, out, formats, precision, device, log, skip_parity)
    det = heads.det_cfg
    result = {
        "detector": detector_entry(model.cfg, det),
        "classes": list(det.class_names) or [f"class{i}" for i in range(det.num_classes)],
        "height": height,
        "width": width,
        "batch": batch,
        "precision": precision,
        "engines": engines,
    }
    (out / DETECTOR_JSON).write_text(json.dumps(result, indent=2) + "\n")
    return result


__all__ = [
    "DETECTOR_JSON",
    "SAMPLE_ITERS",
    "build_det_graphs",
    "detector_entry",
    "export_detector",
    "roi_inputs",
    "sample_states",
]
