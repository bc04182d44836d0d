"""Test helper: random-weight checkpoints in the layout of StreamDEQ's ImageNet-VID detector.

Written from MMDetection 2.10's module definitions (not from export/detection.py): what ``MDEQ_FasterRCNN``'s
``state_dict()`` holds besides the trunk, and what mmcv's ``save_checkpoint`` wraps around it (``meta`` with
``mmdet_version``, ``CLASSES``, ``epoch``; ``state_dict``; ``optimizer``). FPN: ``lateral_convs.i`` 1x1 and
``fpn_convs.i`` 3x3 ConvModules (conv with bias, no norm) per trunk level, nothing for the max-pooled levels;
RPNHead: ``rpn_conv`` 3x3, ``rpn_cls`` one sigmoid channel per anchor, ``rpn_reg`` four per anchor;
Shared2FCBBoxHead: ``shared_fcs.0`` (C*7*7 -> fc), ``shared_fcs.1`` (fc -> fc), ``fc_cls`` (classes + 1),
``fc_reg`` (4 * classes). The weights are scaled so that scores and deltas spread (a detection test on them
exercises the ranking, the size clamp and the clipping, not a sea of ties).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from export.config import DetectorConfig, MDEQConfig
from tests.export.published_layout import published_state_dict


def head_shapes(trunk: MDEQConfig, det: DetectorConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the neck and heads in MMDetection's naming."""
    f, r, a = det.fpn_channels, det.rpn_channels, len(det.anchor_scales) * len(det.anchor_ratios)
    shapes: dict[str, tuple[int, ...]] = {}
    for i, c in enumerate(trunk.channels):
        shapes[f"neck.lateral_convs.{i}.conv.weight"] = (f, c, 1, 1)
        shapes[f"neck.lateral_convs.{i}.conv.bias"] = (f,)
        shapes[f"neck.fpn_convs.{i}.conv.weight"] = (f, f, 3, 3)
        shapes[f"neck.fpn_convs.{i}.conv.bias"] = (f,)
    shapes.update(
        {
            "rpn_head.rpn_conv.weight": (r, f, 3, 3),
            "rpn_head.rpn_conv.bias": (r,),
            "rpn_head.rpn_cls.weight": (a, r, 1, 1),
            "rpn_head.rpn_cls.bias": (a,),
            "rpn_head.rpn_reg.weight": (4 * a, r, 1, 1),
            "rpn_head.rpn_reg.bias": (4 * a,),
        }
    )
    box, fc, n = "roi_head.bbox_head.", det.fc_channels, det.num_classes
    shapes.update(
        {
            box + "shared_fcs.0.weight": (fc, f * det.roi_size**2),
            box + "shared_fcs.0.bias": (fc,),
            box + "shared_fcs.1.weight": (fc, fc),
            box + "shared_fcs.1.bias": (fc,),
            box + "fc_cls.weight": (n + 1, fc),
            box + "fc_cls.bias": (n + 1,),
            box + "fc_reg.weight": (4 * n, fc),
            box + "fc_reg.bias": (4 * n,),
        }
    )
    return shapes


GAIN = {"rpn_cls": 0.7, "rpn_reg": 0.1, "fc_cls": 0.4, "fc_reg": 0.5}  # output spread per layer


def head_state_dict(trunk: MDEQConfig, det: DetectorConfig, seed: int = 0) -> dict[str, Tensor]:
    """Random neck/head weights, N(0, gain^2 / fan_in) (biases N(0, 0.01))."""
    gen = torch.Generator().manual_seed(seed + 100)
    out = {}
    for key, shape in head_shapes(trunk, det).items():
        if key.endswith(".bias"):
            out[key] = torch.randn(shape, generator=gen) * 0.1
            continue
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        w = torch.randn(shape, generator=gen)
        output = next((name for name in GAIN if name in key), None)
        if output:  # the output layers read ReLU features (all >= 0): zero-mean rows, or one class / one
            w = w - w.flatten(1).mean(1).view(-1, *([1] * (w.dim() - 1)))  # direction would win everywhere
        out[key] = w * (GAIN.get(output or "", 1.4) / fan_in**0.5)
    return out


def detector_checkpoint(
    trunk: MDEQConfig, det: DetectorConfig, path: Path, seed: int = 0, extra: dict[str, Tensor] | None = None
) -> tuple[Path, dict[str, Tensor], torch.nn.Module]:
    """Write an MMDetection checkpoint (meta, state_dict, optimizer) of the detector: the trunk under
    ``backbone.*`` with weight norm as g/v pairs, the heads beside it. Returns (path, head tensors, the reference
    trunk model holding the folded weights)."""
    sd, ref = published_state_dict(trunk, seed=seed, copies=False, head=False, loss=False)
    # StreamDEQ's mmdet MDEQNet calls its solver directly: no deq.func* copies of the cell.
    backbone = {"backbone." + k[len("model.") :]: v for k, v in sd.items() if not k.startswith("model.deq.")}
    heads = head_state_dict(trunk, det, seed)
    obj = {
        "meta": {"mmdet_version": "2.10.0", "epoch": 7, "CLASSES": [f"c{i}" for i in range(det.num_classes)]},
        "state_dict": {**backbone, **heads, **(extra or {})},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.9}]},
    }
    torch.save(obj, path)
    return path, heads, ref
