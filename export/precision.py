"""Half-precision variants of the exported graphs, with normalisation kept in fp32.

GroupNorm over a few thousand fp16 values loses the variance (catastrophic
cancellation in E[x^2] - E[x]^2 and overflow past 65504), and the DEQ iterates the
cell 20+ times, so that error compounds. TensorRT 11 has no "FP16 flag" any more: it
builds what the ONNX says (strong typing), so the fp16 engine must be an fp16-typed ONNX
whose normalisations are explicitly computed in fp32. That is what this module builds.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PRECISIONS = ("fp32", "fp16")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class Fp32GroupNorm(nn.Module):
    """GroupNorm that upcasts its input, normalises in fp32, and casts back."""

    def __init__(self, gn: nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups = gn.num_groups
        self.eps = gn.eps
        self.weight = nn.Parameter(gn.weight.detach().float().clone(), requires_grad=False)
        self.bias = nn.Parameter(gn.bias.detach().float().clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        y = F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps)
        return y.to(x.dtype)


class HalfInjection(nn.Module):
    """uint8 frame -> fp16 x: the normalisation (mean/std in units of 255) runs in fp32,
    then the stem runs in fp16."""

    def __init__(self, injection: nn.Module) -> None:
        super().__init__()
        self.downsample = injection.downsample
        self.stage0 = injection.stage0
        self.register_buffer("mean", injection.mean.detach().float().clone(), persistent=False)
        self.register_buffer("inv_std", injection.inv_std.detach().float().clone(), persistent=False)

    def forward(self, frame: Tensor) -> Tensor:
        x = frame.permute(0, 3, 1, 2).to(torch.float32)
        x = ((x - self.mean) * self.inv_std).to(torch.float16)
        return self.stage0(self.downsample(x))


def _swap_group_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.GroupNorm):
            setattr(module, name, Fp32GroupNorm(child))
        else:
            _swap_group_norms(child)


def to_half(module: nn.Module) -> nn.Module:
    """A deep copy in fp16 whose GroupNorms compute in fp32 (the original is untouched)."""
    half = copy.deepcopy(module).eval()
    _swap_group_norms(half)
    keep = {id(m): (m.weight.data.clone(), m.bias.data.clone()) for m in half.modules() if isinstance(m, Fp32GroupNorm)}
    half = half.half()
    # .half() also converted the GroupNorm affine parameters; give them back their fp32 values.
    for m in half.modules():
        if isinstance(m, Fp32GroupNorm):
            m.weight.data, m.bias.data = keep[id(m)]
    return half


def to_half_injection(injection: nn.Module) -> nn.Module:
    wrapped = HalfInjection(copy.deepcopy(injection)).eval()
    wrapped.downsample.half()
    wrapped.stage0.half()
    return wrapped


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision
