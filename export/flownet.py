"""FlowNetS-style flow network for Deep Feature Flow, sized for our MDEQ state pyramid.

Follows DFF's FlowNetS (notes/dff-motion-vectors.md §1): no correlation layer, no BatchNorm,
LeakyReLU(0.1), input = (current, key) RGB concatenated and average-pooled to half resolution,
an encoder of stride-2 convs and a decoder of 4x4/s2 deconvolutions with learned flow
upsampling, cropped to the skip tensors. Two changes fit it to MDEQ: the decoder goes one
level further, to stride 4 of the input (the grid of z_0), and the outputs are given for every
state scale, so the runtime warps z_i with ``flow_i`` and multiplies by ``scale_i`` directly:

* ``flow_i``  (B, 2, H/s_i, W/s_i): current -> key displacement in scale-i pixels (x, y), for
  the backward warp F_cur(p) = F_key(p + flow(p)) (grid_sample, align_corners=True, zeros);
* ``scale_i`` (B, C_i, H/s_i, W/s_i): DFF's scale field, initialised to exactly 1.

Widths: ``width=1`` is DFF's FlowNet (64 ... 1024 channels), 0.5 its "Half" size, and smaller
factors give the CPU-sized networks we train here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.config import MDEQConfig

BASE_WIDTHS = (64, 128, 256, 512, 512, 1024)  # conv1 .. conv6 of FlowNetS


def _conv(cin: int, cout: int, k: int, s: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2), nn.LeakyReLU(0.1, inplace=True))


def _crop(x: Tensor, like: Tensor) -> Tensor:
    return x[..., : like.shape[-2], : like.shape[-1]]


class FlowNetS(nn.Module):
    """(frame, key_frame) uint8 NHWC -> per-scale flows and scale fields (see module doc)."""

    def __init__(self, cfg: MDEQConfig, width: float = 0.125, levels: int = 5) -> None:
        super().__init__()
        if not 3 <= levels <= 6:
            raise ValueError(f"levels must be in 3..6, got {levels}")
        self.width, self.levels = width, levels
        w = [max(8, int(round(c * width))) for c in BASE_WIDTHS[:levels]]
        self.channels = tuple(cfg.channels)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        ks = (7, 5, 5, 3, 3, 3)
        enc, cin = [], 6
        for i, c in enumerate(w):
            block = [_conv(cin, c, ks[i], 2)]
            if i >= 2:  # conv3_1 .. conv6_1
                block.append(_conv(c, c, 3, 1))
            enc.append(nn.Sequential(*block))
            cin = c
        self.encoder = nn.ModuleList(enc)
        # Decoder from the coarsest level down to level 0 (conv1, stride 4 of the input).
        self.predict = nn.ModuleList()
        self.deconv = nn.ModuleList()
        self.upflow = nn.ModuleList()
        cin = w[-1]
        for lvl in range(levels - 1, 0, -1):
            self.predict.append(nn.Conv2d(cin, 2, 3, 1, 1))
            dc = w[lvl - 1] // 2 if lvl > 1 else w[0] // 2
            self.deconv.append(nn.Sequential(nn.ConvTranspose2d(cin, dc, 4, 2, 1), nn.LeakyReLU(0.1, inplace=True)))
            self.upflow.append(nn.ConvTranspose2d(2, 2, 4, 2, 1))
            cin = w[lvl - 1] + dc + 2
        self.final_flow = nn.Conv2d(cin, 2, 3, 1, 1)
        self.final_scale = nn.Conv2d(cin, sum(self.channels), 1)
        nn.init.zeros_(self.final_scale.weight)
        nn.init.ones_(self.final_scale.bias)

    def _input(self, frame: Tensor, key: Tensor) -> Tensor:
        a = frame.permute(0, 3, 1, 2).to(torch.float32) / 255.0 - self.mean
        b = key.permute(0, 3, 1, 2).to(torch.float32) / 255.0 - self.mean
        return F.avg_pool2d(torch.cat([a, b], 1), 2, 2, ceil_mode=True)

    def forward(self, frame: Tensor, key: Tensor) -> tuple[Tensor, ...]:
        feats, y = [], self._input(frame, key)
        for block in self.encoder:
            y = block(y)
            feats.append(y)
        for i, skip in enumerate(reversed(feats[:-1])):
            flow = self.predict[i](y)
            y = torch.cat([skip, _crop(self.deconv[i](y), skip), _crop(self.upflow[i](flow), skip)], 1)
        flow0 = self.final_flow(y)
        scale = self.final_scale(y)
        return self._pyramid(flow0, scale)

    def _pyramid(self, flow0: Tensor, scale: Tensor) -> tuple[Tensor, ...]:
        """Flow and scale on every state scale: average-pooled, flow divided by the factor."""
        flows, scales = [flow0], list(torch.split(scale, list(self.channels), 1))
        for i in range(1, len(self.channels)):
            f = 2**i
            flows.append(F.avg_pool2d(flow0, f, f) / f)
            scales[i] = F.avg_pool2d(scales[i], f, f)
        return (*flows, *scales)


def backward_warp(feat: Tensor, flow: Tensor) -> Tensor:
    """F_key sampled at p + flow(p): the DFF warp (grid_sample, align_corners=True, zeros).
    Differentiable; the training-side twin of kernels.reference / the CUDA kernel."""
    n, _, h, w = feat.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=feat.dtype, device=feat.device),
        torch.arange(w, dtype=feat.dtype, device=feat.device),
        indexing="ij",
    )
    gx = 2 * (xs + flow[:, 0]) / max(w - 1, 1) - 1
    gy = 2 * (ys + flow[:, 1]) / max(h - 1, 1) - 1
    return F.grid_sample(feat, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="zeros", align_corners=True)
