"""The detection neck and heads of StreamDEQ's ImageNet-VID detector, and their import from its checkpoints.

Written from the facts of MMDetection 2.10 as StreamDEQ vendors it (``ImageNetVID/mmdet``; no code copied): an FPN
(``neck``: 1x1 ``lateral_convs`` and 3x3 ``fpn_convs``, both mmcv ConvModules without norm or activation, so their
keys are ``.conv.weight`` / ``.conv.bias``; top-down nearest upsampling to the finer level's size; the levels past
the trunk's are ``max_pool2d(kernel 1, stride 2)`` of the last), an ``RPNHead`` (``rpn_conv`` 3x3 + ReLU, then
``rpn_cls`` and ``rpn_reg`` 1x1; sigmoid objectness) and a ``Shared2FCBBoxHead`` under ``roi_head.bbox_head``
(``shared_fcs.0/1`` with ReLU on the flattened 7x7 RoI features, ``fc_cls`` with the background last, ``fc_reg``
with four deltas per class). The module tree reproduces those names, so a checkpoint's ``neck.*``, ``rpn_head.*``
and ``roi_head.bbox_head.*`` load one to one.

Two engine graphs come out of it (export/det_export.py): the FPN + RPN convolutions (``RPNGraph``: the RoI levels'
features and every anchor's objectness logit and deltas, flattened in MMDetection's order: level, row, column,
anchor) and the box head (``BoxGraph``: class probabilities and class-specific deltas per RoI). Proposal selection,
NMS, RoIAlign and the final per-class NMS run in the runtime (runtime/det_decode.py), on the device.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.checkpoint import (
    CheckpointError,
    ImportReport,
    _fold_all,
    _mismatch_error,
    _torch_load,
    _unwrap,
    import_published_with_report,
)
from export.config import DetectorConfig, MDEQConfig
from export.mdeq import MDEQSegNet

log = logging.getLogger(__name__)

HEAD_PREFIXES = ("neck.", "rpn_head.", "roi_head.")  # what the detection heads take from a checkpoint
OTHER_HEADS = ("bbox_head.", "mask_head.")  # one-stage / mask heads of other MMDetection detectors: refused by name


class ConvModule(nn.Module):
    """mmcv's ConvModule without norm and activation: one biased conv under ``.conv``."""

    def __init__(self, cin: int, cout: int, kernel: int, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """MMDetection's FPN with ``add_extra_convs=False``: the extra levels are stride-2 max pools."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int, num_outs: int) -> None:
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError(f"FPN: num_outs {num_outs} < {len(in_channels)} input levels")
        self.num_outs = num_outs
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3, padding=1) for _ in in_channels)

    def forward(self, *inputs: Tensor) -> list[Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs


class RPNHead(nn.Module):
    """One shared 3x3 conv + ReLU, then objectness (one sigmoid logit per anchor) and four deltas per anchor."""

    def __init__(self, channels: int, feat_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.rpn_conv = nn.Conv2d(channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, num_anchors * 4, 1)

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(logits (B, N), deltas (B, N, 4)) over every level's anchors, in MMDetection's order: level, then
        row, column and anchor (the anchor varies fastest, as AnchorGenerator lays the anchors out)."""
        logits, deltas = [], []
        for x in feats:
            h = F.relu(self.rpn_conv(x))
            b = x.shape[0]
            logits.append(self.rpn_cls(h).permute(0, 2, 3, 1).reshape(b, -1))
            deltas.append(self.rpn_reg(h).permute(0, 2, 3, 1).reshape(b, -1, 4))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


class Shared2FCBBoxHead(nn.Module):
    """Two shared FC layers with ReLU on the flattened RoI features, then class scores and per-class deltas."""

    def __init__(self, channels: int, roi_size: int, fc_channels: int, num_classes: int) -> None:
        super().__init__()
        self.shared_fcs = nn.ModuleList(
            [nn.Linear(channels * roi_size * roi_size, fc_channels), nn.Linear(fc_channels, fc_channels)]
        )
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)  # background is the last class (MMDetection 2.x)
        self.fc_reg = nn.Linear(fc_channels, 4 * num_classes)

    def forward(self, roi_feats: Tensor) -> tuple[Tensor, Tensor]:
        x = roi_feats.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class RoIHead(nn.Module):
    """Holds the box head under MMDetection's name (``roi_head.bbox_head``); RoIAlign has no weights."""

    def __init__(self, bbox_head: Shared2FCBBoxHead) -> None:
        super().__init__()
        self.bbox_head = bbox_head


class DetectorHeads(nn.Module):
    """Neck, RPN and box head of a two-stage detector on an MDEQ trunk, with MMDetection's key names."""

    def __init__(self, trunk: MDEQConfig, det: DetectorConfig) -> None:
        super().__init__()
        if det.roi_levels > min(det.num_outs, trunk.num_scales):
            raise ValueError(f"roi_levels {det.roi_levels} exceeds the FPN's trunk levels ({trunk.num_scales})")
        self.trunk_cfg, self.det_cfg = trunk, det
        self.neck = FPN(tuple(trunk.channels), det.fpn_channels, det.num_outs)
        self.rpn_head = RPNHead(det.fpn_channels, det.rpn_channels, det.num_anchors)
        box = Shared2FCBBoxHead(det.fpn_channels, det.roi_size, det.fc_channels, det.num_classes)
        self.roi_head = RoIHead(box)


class RPNGraph(nn.Module):
    """Engine graph ``head_det_rpn``: z0..z3 -> the RoI levels' FPN features p0.., RPN logits and deltas."""

    def __init__(self, heads: DetectorHeads) -> None:
        super().__init__()
        self.neck, self.rpn_head = heads.neck, heads.rpn_head
        self.roi_levels = heads.det_cfg.roi_levels

    def forward(self, *z: Tensor) -> tuple[Tensor, ...]:
        feats = self.neck(*z)
        logits, deltas = self.rpn_head(feats)
        return (*feats[: self.roi_levels], logits, deltas)


class BoxGraph(nn.Module):
    """Engine graph ``head_det_box``: RoI features (R, C, 7, 7) -> class probabilities (softmax, background
    last) and class-specific deltas (R, 4 * classes)."""

    def __init__(self, heads: DetectorHeads) -> None:
        super().__init__()
        self.bbox_head = heads.roi_head.bbox_head

    def forward(self, roi_feats: Tensor) -> tuple[Tensor, Tensor]:
        logits, deltas = self.bbox_head(roi_feats)
        return logits.softmax(dim=1), deltas


# Output spread of random heads (``random_init``): objectness logits ~ N(0, 2), RPN deltas a few tenths, class
# logits around 1, box deltas around 1 (before the coder's 0.1 / 0.2 stds).
RANDOM_GAIN = {"rpn_cls": 0.7, "rpn_reg": 0.1, "fc_cls": 0.4, "fc_reg": 0.5}


@torch.no_grad()
def random_init(heads: DetectorHeads, seed: int = 0) -> DetectorHeads:
    """Seeded random weights whose outputs spread like a detector's (for measuring the decoding without trained
    weights): N(0, gain^2 / fan_in) weights, N(0, 0.01) biases; the output layers read ReLU features (all >= 0),
    so their weight rows are made zero-mean, else one class and one box direction would win everywhere."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in heads.named_parameters():
        if name.endswith(".bias"):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            continue
        w = torch.randn(p.shape, generator=gen)
        layer = next((k for k in RANDOM_GAIN if f".{k}." in f".{name}"), None)
        if layer:
            w = w - w.flatten(1).mean(1).view(-1, *([1] * (w.dim() - 1)))
        p.copy_(w * (RANDOM_GAIN.get(layer or "", 1.4) / w[0].numel() ** 0.5))
    return heads


def rpn_output_names(det: DetectorConfig) -> list[str]:
    return [f"p{i}" for i in range(det.roi_levels)] + ["rpn_logits", "rpn_deltas"]


# ------------------------------------------------------------------------------------------------ import


@dataclass
class DetectorReport:
    """What a detector import did: the trunk's report plus the heads' key counts."""

    trunk: ImportReport
    heads: dict[str, int] = field(default_factory=dict)  # top-level prefix -> keys loaded
    class_names: tuple[str, ...] = ()  # from the checkpoint's meta.CLASSES when it fits

    def summary(self) -> str:
        heads = ", ".join(f"{p}.* ({n} keys)" for p, n in self.heads.items())
        return f"{self.trunk.summary()}; took backbone.* as the trunk and {heads} as the detection heads"


def _head_state(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The checkpoint's neck / RPN / RoI-head tensors (DataParallel's ``module.`` stripped, weight norm folded)."""
    if any(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}
    heads = {k: v for k, v in sd.items() if k.startswith(HEAD_PREFIXES + OTHER_HEADS)}
    scratch = ImportReport()  # the trunk's report already counts its own folds
    return _fold_all(heads, scratch)


def load_heads(heads: DetectorHeads, given: dict[str, Tensor]) -> dict[str, int]:
    """Load ``given`` into ``heads`` strictly; CheckpointError naming the first mismatching keys otherwise."""
    expected = heads.state_dict()
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(expected) & set(given) if tuple(given[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        # _mismatch_error names the config by its ``name`` only; the detector config has one too.
        raise _mismatch_error(heads.det_cfg, missing, unexpected, wrong, expected, given)  # type: ignore[arg-type]
    heads.load_state_dict({k: v.to(expected[k].dtype) for k, v in given.items()})
    counts: dict[str, int] = {}
    for k in given:
        counts[k.split(".")[0]] = counts.get(k.split(".")[0], 0) + 1
    return counts


def _meta_classes(obj: Any, num_classes: int) -> tuple[str, ...]:
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    names = meta.get("CLASSES") if isinstance(meta, Mapping) else None
    if isinstance(names, (list, tuple)) and len(names) == num_classes and all(isinstance(n, str) for n in names):
        return tuple(names)
    return ()


def import_detector(
    path_or_obj: str | os.PathLike[str] | Mapping[str, Any], trunk: MDEQConfig, det: DetectorConfig
) -> tuple[MDEQSegNet, DetectorHeads, DetectorReport]:
    """An MMDetection checkpoint of StreamDEQ's detector (``meta``, ``state_dict``, ``optimizer``): the MDEQ trunk
    from ``backbone.*`` (weight norm folded, as ``export.checkpoint`` does) and the neck and heads from ``neck.*``,
    ``rpn_head.*`` and ``roi_head.bbox_head.*``, both strict. Training-only entries are listed in the report's one
    line; any other architecture (a ResNet backbone, a mask head, other widths) raises CheckpointError naming the
    first mismatching keys. Returns (trunk model, heads, report), both modules in eval mode.
    """
    obj: Any = _torch_load(path_or_obj) if isinstance(path_or_obj, (str, os.PathLike)) else path_or_obj
    model, trunk_report = import_published_with_report(obj, trunk)
    if isinstance(path_or_obj, (str, os.PathLike)):
        trunk_report.source = str(path_or_obj)
    trunk_report.detector_parts = []  # the trunk import set the heads aside; they are loaded below
    given = _head_state(_unwrap(obj))
    if not given:
        raise CheckpointError(
            f"checkpoint has no detection heads (no {', '.join(p + '*' for p in HEAD_PREFIXES)} keys): "
            "a trunk-only checkpoint; import it with export.checkpoint"
        )
    heads = DetectorHeads(trunk, det)
    report = DetectorReport(trunk_report, load_heads(heads, given), _meta_classes(obj, det.num_classes))
    log.info("imported %s: %s", trunk_report.source or "state dict", report.summary())
    return model.eval(), heads.eval(), report


__all__ = [
    "BoxGraph",
    "DetectorHeads",
    "DetectorReport",
    "FPN",
    "RPNGraph",
    "RPNHead",
    "Shared2FCBBoxHead",
    "import_detector",
    "load_heads",
    "random_init",
    "rpn_output_names",
]
