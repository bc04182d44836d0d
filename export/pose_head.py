"""The keypoint heatmap head a pose checkpoint brings: MMPose's ``TopdownHeatmapSimpleHead`` on the MDEQ branches.

StreamDEQ's pose models are MMPose (0.x) top-down models with the MDEQ trunk as ``backbone`` and the head as
``keypoint_head``. The layout accepted here is the HRNet one (MMPose's HRNet configs: ``num_deconv_layers=0``, a
1x1 ``final_conv_kernel``), read from the weights themselves:

- ``keypoint_head.final_layer.weight`` / ``.bias`` (J, C, k, k): one convolution to J heatmaps; or
  ``keypoint_head.final_layer.{0,1,3,4,...,3n}.*``: n (conv with bias, BatchNorm, ReLU) blocks
  (``extra.num_conv_layers``) before it;
- C = the stride-4 branch's channels: the head reads that branch alone (``in_index=0``); C = the sum of all
  branches' channels: they are bilinearly resized to the stride-4 grid and concatenated first
  (``input_transform='resize_concat'``, "after fusing the coarser branches"), ``align_corners`` as the config says
  (MMPose's default False; the checkpoint does not record it).

Deconvolution layers (``keypoint_head.deconv_layers.*``, the Simple-Baselines head on a stride-32 trunk) would put
the heatmaps finer than stride 4, which the bundle's ``head_pose`` contract does not allow; they are refused by name.
The heatmaps are (B, J, H/4, W/4), decoded by ``runtime.pose_decode``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PREFIX = "keypoint_head."  # MMPose 0.x TopDown: the head's keys in the detector's state dict
BN_MOMENTUM = 0.1


class PoseLayoutError(ValueError):
    """Head weights that are not the accepted layout (one line naming the first offending keys)."""


@dataclass(frozen=True)
class KeypointLayout:
    """What the head's weights say about it (see the module docstring)."""

    joints: int
    concat: bool  # resize_concat of every branch (True) or the stride-4 branch alone
    conv_kernels: tuple[int, ...] = ()  # kernel sizes of the conv-BN-ReLU blocks before the final conv
    final_kernel: int = 1
    align_corners: bool = False  # of the resize_concat upsampling


class KeypointHead(nn.Module):
    """Branches z0..z3 -> (B, J, H/4, W/4) heatmaps, with MMPose's parameter names (``final_layer``)."""

    def __init__(self, channels: Sequence[int], layout: KeypointLayout) -> None:
        super().__init__()
        self.layout = layout
        cin = sum(channels) if layout.concat else channels[0]
        layers: list[nn.Module] = []
        for k in layout.conv_kernels:
            layers += [nn.Conv2d(cin, cin, k, 1, (k - 1) // 2), nn.BatchNorm2d(cin, momentum=BN_MOMENTUM), nn.ReLU()]
        k = layout.final_kernel
        layers.append(nn.Conv2d(cin, layout.joints, k, 1, (k - 1) // 2))
        self.final_layer = layers[0] if len(layers) == 1 else nn.Sequential(*layers)

    def forward(self, *z: Tensor) -> Tensor:
        y = z[0]
        if self.layout.concat:
            size, ac = z[0].shape[-2:], self.layout.align_corners
            ups = [F.interpolate(zi, size=size, mode="bilinear", align_corners=ac) for zi in z[1:]]
            y = torch.cat([y, *ups], 1)
        return self.final_layer(y)


def split_head(sd: Mapping[str, Tensor], prefix: str = PREFIX) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(the other keys, the head's keys without ``prefix``)."""
    head = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return {k: v for k, v in sd.items() if not k.startswith(prefix)}, head


def _convs(head: Mapping[str, Tensor], prefix: str) -> list[tuple[int, Tensor]]:
    """(index, weight) of the 4-D weights in a Sequential ``final_layer``, in order."""
    found = []
    for k, v in head.items():
        m = re.fullmatch(r"final_layer\.(\d+)\.weight", k)
        if m and v.dim() == 4:
            found.append((int(m.group(1)), v))
    if not found:
        shown = ", ".join(sorted(prefix + k for k in head)[:3]) or "none"
        raise PoseLayoutError(f"no {prefix}final_layer weight among the head's keys (first: {shown})")
    return sorted(found, key=lambda t: t[0])


def infer_layout(
    head: Mapping[str, Tensor], channels: Sequence[int], prefix: str = PREFIX, align_corners: bool = False
) -> KeypointLayout:
    """The layout the head's weights (keys without ``prefix``) describe, for a trunk of ``channels``."""
    deconv = sorted(k for k in head if k.startswith("deconv_layers."))
    if deconv:
        raise PoseLayoutError(
            f"{prefix}{deconv[0]}: deconvolution layers put the heatmaps finer than stride 4; "
            "head_pose takes the HRNet layout (num_deconv_layers=0)"
        )
    if isinstance(head.get("final_layer.weight"), Tensor):
        convs = [(0, head["final_layer.weight"])]
    else:
        convs = _convs(head, prefix)
    final = convs[-1][1]
    joints, cin = int(final.shape[0]), int(final.shape[1])
    fits = {channels[0]: False, sum(channels): True}
    if cin not in fits:
        name = prefix + ("final_layer.weight" if len(convs) == 1 else f"final_layer.{convs[-1][0]}.weight")
        raise PoseLayoutError(
            f"{name} {tuple(final.shape)}: {cin} input channels fit neither the stride-4 branch ({channels[0]}) "
            f"nor all branches concatenated ({sum(channels)})"
        )
    kernels = tuple(int(w.shape[-1]) for _, w in convs[:-1])
    return KeypointLayout(joints, fits[cin], kernels, int(final.shape[-1]), align_corners)


def check_fit(head: nn.Module, given: Mapping[str, Tensor], prefix: str = PREFIX) -> None:
    """PoseLayoutError naming the first missing / unexpected / wrongly shaped keys, else nothing."""
    want = {k: v for k, v in head.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(want) - set(given))
    unexpected = sorted(k for k in set(given) - set(want) if not k.endswith("num_batches_tracked"))
    wrong = sorted(k for k in set(want) & set(given) if tuple(want[k].shape) != tuple(given[k].shape))
    parts = []
    if missing:
        parts.append(f"missing {len(missing)}: " + ", ".join(prefix + k for k in missing[:3]))
    if unexpected:
        parts.append(f"unexpected {len(unexpected)}: " + ", ".join(prefix + k for k in unexpected[:3]))
    if wrong:
        shown = ", ".join(
            f"{prefix}{k} checkpoint {tuple(given[k].shape)} vs head {tuple(want[k].shape)}" for k in wrong[:3]
        )
        parts.append(f"wrong shape {len(wrong)}: {shown}")
    if parts:
        raise PoseLayoutError("pose head does not fit: " + "; ".join(parts))


def head_from_state(
    head: Mapping[str, Tensor], channels: Sequence[int], prefix: str = PREFIX, align_corners: bool = False
) -> KeypointHead:
    """A :class:`KeypointHead` carrying ``head``'s weights (keys without ``prefix``), in eval mode."""
    module = KeypointHead(channels, infer_layout(head, channels, prefix, align_corners))
    check_fit(module, head, prefix)
    module.load_state_dict(dict(head), strict=False)  # num_batches_tracked may be absent (old BatchNorm)
    return module.eval()


__all__ = ["PREFIX", "KeypointHead", "KeypointLayout", "PoseLayoutError", "head_from_state", "infer_layout"]
