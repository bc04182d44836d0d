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

import torch
from torch import Tensor

from export.bundle import EngineGraph, export_engine
from export.config import DetectorConfig, MDEQConfig
from export.detection import BoxGraph, DetectorHeads, RPNGraph, rpn_output_names
from export.mdeq import MDEQSegNet, check_resolution
from export.precision import TORCH_DTYPES, check_precision, to_half
from export.tf32 import exact_fp32
from runtime.det_decode import DetectionDecoder, DetectSpec

DETECTOR_JSON = "detector.json"
SAMPLE_ITERS = 2  # cell iterations from z = 0 that make the parity inputs look like real states


def detector_entry(trunk: MDEQConfig, det: DetectorConfig) -> dict[str, Any]:
    """The manifest's ``detector`` entry: the head config plus the FPN levels' strides (what the runtime's
    DetectSpec reads)."""
    return {**det.to_dict(), "strides": list(det.strides(trunk))}


def sample_states(model: MDEQSegNet, batch: int, height: int, width: int, seed: int, device: str) -> list[Tensor]:
    """Trunk states for a random frame after ``SAMPLE_ITERS`` cell iterations, dense NCHW as the runtime's."""
    gen = torch.Generator().manual_seed(seed)
    frame = torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=gen).to(device)
    with torch.no_grad():
        z, _ = model.solve(frame, iters=SAMPLE_ITERS)
    return [t.contiguous() for t in z]


def roi_inputs(heads: DetectorHeads, z: Sequence[Tensor], height: int, width: int) -> Tensor:
    """The box head's input for states ``z``: PyTorch's RPN outputs decoded into proposals and RoI features."""
    spec = DetectSpec.from_dict(detector_entry(heads.trunk_cfg, heads.det_cfg))
    decoder = DetectionDecoder(spec, height, width, z[0].device)
    with torch.no_grad():
        *feats, logits, deltas = RPNGraph(heads)(*z)
        return decoder.roi_features(feats, decoder.proposals(logits, deltas)).contiguous()


def build_det_graphs(
    model: MDEQSegNet, heads: DetectorHeads, height: int, width: int, batch: int, precision: str, device: str
) -> list[EngineGraph]:
    """The two detection engine graphs, traced on one sample and checked on another."""
    check_resolution(model.cfg, height, width)
    dtype = TORCH_DTYPES[check_precision(precision)]
    heads = heads.to(device).eval()
    z_t, z_c = (sample_states(model, batch, height, width, seed, device) for seed in (1, 2))
    r_t, r_c = roi_inputs(heads, z_t, height, width), roi_inputs(heads, z_c, height, width)
    rpn, box = RPNGraph(heads).eval(), BoxGraph(heads).eval()
    if precision == "fp16":
        rpn, box = to_half(rpn), to_half(box)
    z_names = [f"z{i}" for i in range(model.cfg.num_scales)]
    return [
        EngineGraph(
            "head_det_rpn",
            rpn,
            [t.to(dtype) for t in z_t],
            [t.to(dtype) for t in z_c],
            z_names,
            rpn_output_names(heads.det_cfg),
        ),
        EngineGraph(
            "head_det_box", box, [r_t.to(dtype)], [r_c.to(dtype)], ["roi_feats"], ["class_scores", "box_deltas"]
        ),
    ]


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


__all__ = ["DETECTOR_JSON", "build_det_graphs", "detector_entry", "export_detector", "roi_inputs", "sample_states"]
