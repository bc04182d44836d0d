"""The detection heads' engine graphs and manifest entry, shared by ``export.bundle`` (a det bundle) and
``export.det_export`` (the two engines alone): FPN + RPN (``head_det_rpn``) and the box head (``head_det_box``),
each with parity inputs made of real trunk states and, for the box head, the RoI features the runtime's decoder
extracts from the RPN's reference outputs. Apart from export.bundle so that neither imports the other."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from export.centernet import OUTPUT_NAMES as CENTER_OUTPUTS
from export.centernet import CenterGraph, CenterNetConfig, CenterNetHead
from export.config import DetectorConfig, MDEQConfig
from export.detection import BoxGraph, DetectorHeads, RPNGraph, rpn_output_names
from export.mdeq import MDEQSegNet, check_resolution
from export.precision import TORCH_DTYPES, check_precision, to_half
from runtime.det_decode import DetectionDecoder, DetectSpec

SAMPLE_ITERS = 2  # cell iterations from z = 0 that make the parity inputs look like real states


def detector_entry(trunk: MDEQConfig, det: DetectorConfig | CenterNetConfig) -> dict[str, Any]:
    """The manifest's ``detector`` entry: its ``kind`` (runtime.manifest's DET_HEADS) and the head config, for the
    two-stage detector plus the FPN levels' strides (what the runtime's DetectSpec reads)."""
    if isinstance(det, CenterNetConfig):
        return det.to_dict()
    return {"kind": "faster_rcnn", **det.to_dict(), "strides": list(det.strides(trunk))}


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


def det_graph_parts(
    model: MDEQSegNet,
    heads: DetectorHeads | CenterNetHead,
    height: int,
    width: int,
    batch: int,
    precision: str,
    device: str,
) -> list[tuple[Any, ...]]:
    """The detection engine graphs (two-stage: RPN and box head; one-stage: ``head_det_ctr``), traced on one sample
    and checked on another, as export.bundle's ``EngineGraph`` arguments (plain tuples: this module may not import
    export.bundle, which imports it)."""
    check_resolution(model.cfg, height, width)
    dtype = TORCH_DTYPES[check_precision(precision)]
    heads = heads.to(device).eval()
    z_t, z_c = (sample_states(model, batch, height, width, seed, device) for seed in (1, 2))
    z_names = [f"z{i}" for i in range(model.cfg.num_scales)]
    if isinstance(heads, CenterNetHead):  # one engine; its peaks are decoded in the runtime (center_decode)
        graph = CenterGraph(heads).eval()
        graph = to_half(graph) if precision == "fp16" else graph
        cast = [t.to(dtype) for t in z_t], [t.to(dtype) for t in z_c]
        return [("head_det_ctr", graph, *cast, z_names, list(CENTER_OUTPUTS))]
    r_t, r_c = roi_inputs(heads, z_t, height, width), roi_inputs(heads, z_c, height, width)
    rpn, box = RPNGraph(heads).eval(), BoxGraph(heads).eval()
    if precision == "fp16":
        rpn, box = to_half(rpn), to_half(box)
    return [
        (
            "head_det_rpn",
            rpn,
            [t.to(dtype) for t in z_t],
            [t.to(dtype) for t in z_c],
            z_names,
            rpn_output_names(heads.det_cfg),
        ),
        ("head_det_box", box, [r_t.to(dtype)], [r_c.to(dtype)], ["roi_feats"], ["class_scores", "box_deltas"]),
    ]


__all__ = ["SAMPLE_ITERS", "det_graph_parts", "detector_entry", "roi_inputs", "sample_states"]
