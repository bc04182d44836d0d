"""MDEQ in PyTorch, split into the three graphs the runtime loops: injection, cell, head.

Module and parameter names follow the published MDEQ state-dict layout
(``downsample``, ``stage0``, ``fullstage.branches/fuse_layers/post_fuse_layers``,
``last_layer``) so that a published checkpoint maps onto this model key for key once
weight norm is folded (see ``export/checkpoint.py``). Weight norm itself is not used:
our models train with plain convolutions, and the exported graphs never contain it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.config import MDEQConfig

BN_MOMENTUM = 0.01


def conv3x3(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)


class VariationalDropout2d(nn.Module):
    """One Bernoulli mask per (sample, channel), shared by every iteration and pixel.

    The mask must stay fixed across the unrolled iterations of one forward, otherwise the
    cell is a different function at each step and has no fixed point; ``reset`` draws it.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.mask: Tensor | None = None

    def reset(self, like: Tensor) -> None:
        if self.training and self.p > 0:
            keep = torch.bernoulli(torch.full((like.shape[0], like.shape[1], 1, 1), 1 - self.p, device=like.device))
            self.mask = keep / (1 - self.p)
        else:
            self.mask = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.mask is None or self.mask.shape[0] != x.shape[0]:
            return x
        return x * self.mask


class BasicBlock(nn.Module):
    """Per-scale residual block: conv-GN-ReLU-conv(+injection)-GN, residual, ReLU, GN."""

    def __init__(self, channels: int, expansion: int, groups: int, dropout: float) -> None:
        super().__init__()
        inner = channels * expansion
        self.conv1 = conv3x3(channels, inner)
        self.gn1 = nn.GroupNorm(groups, inner)
        self.conv2 = conv3x3(inner, channels)
        self.gn2 = nn.GroupNorm(groups, channels)
        self.gn3 = nn.GroupNorm(groups, channels)
        self.drop = VariationalDropout2d(dropout)

    def forward(self, z: Tensor, injection: Tensor | None) -> Tensor:
        out = F.relu(self.gn1(self.conv1(z)))
        out = self.drop(self.conv2(out))
        if injection is not None:
            out = out + injection
        out = self.gn2(out)
        return self.gn3(F.relu(out + z))


class Branch(nn.Module):
    def __init__(self, channels: int, expansion: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([BasicBlock(channels, expansion, groups, dropout)])

    def forward(self, z: Tensor, injection: Tensor | None) -> Tensor:
        return self.blocks[0](z, injection)


class ConvGN(nn.Module):
    """conv + GroupNorm, named ``conv``/``gnorm`` as in the published checkpoints."""

    def __init__(self, conv: nn.Conv2d, groups: int, relu: bool = False) -> None:
        super().__init__()
        self.conv = conv
        self.gnorm = nn.GroupNorm(groups, conv.out_channels)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.gnorm(self.conv(x))
        return F.relu(x) if self.relu else x


class Upsample(nn.Module):
    """Coarse scale j to fine scale i: 1x1 conv, GN, nearest upsampling by 2^(j-i)."""

    def __init__(self, cin: int, cout: int, factor: int, groups: int) -> None:
        super().__init__()
        self.net = ConvGN(nn.Conv2d(cin, cout, 1, bias=False), groups)
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(self.net(x), scale_factor=float(self.factor), mode="nearest")


class Downsample(nn.Module):
    """Fine scale j to coarse scale i: (i-j) stride-2 3x3 convs; ReLU between, none after."""

    def __init__(self, cin: int, cout: int, steps: int, groups: int) -> None:
        super().__init__()
        layers = [ConvGN(conv3x3(cin, cin, 2), groups, relu=True) for _ in range(steps - 1)]
        layers.append(ConvGN(conv3x3(cin, cout, 2), groups))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PostFuse(nn.Module):
    def __init__(self, channels: int, groups: int, affine: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)
        self.gnorm = nn.GroupNorm(groups, channels, affine=affine)  # StreamDEQ's det/pose configs: affine off

    def forward(self, x: Tensor) -> Tensor:
        return self.gnorm(self.conv(F.relu(x)))


class MDEQCell(nn.Module):
    """f(z_0..z_{S-1}, x_0) -> next z: the one function whose fixed point is the representation.

    Exported as ``deq_cell``. Only scale 0 receives the injection; the published model feeds
    zeros to the others, which we drop from the graph (they add nothing).
    """

    def __init__(self, cfg: MDEQConfig) -> None:
        super().__init__()
        ch, g = cfg.channels, cfg.groups
        self.branches = nn.ModuleList([Branch(c, cfg.expansion, g, cfg.dropout) for c in ch])
        self.fuse_layers = nn.ModuleList()
        for i in range(len(ch)):
            row = nn.ModuleList()
            for j in range(len(ch)):
                if j > i:
                    row.append(Upsample(ch[j], ch[i], 2 ** (j - i), g))
                elif j < i:
                    row.append(Downsample(ch[j], ch[i], i - j, g))
                else:
                    row.append(nn.Identity())
            self.fuse_layers.append(row)
        self.post_fuse_layers = nn.ModuleList([PostFuse(c, max(g // 2, 1), cfg.post_gn_affine) for c in ch])
        if not 0.0 < cfg.relax <= 1.0:
            raise ValueError(f"relax must be in (0, 1], got {cfg.relax}")
        self.relax = cfg.relax

    def reset_dropout(self, z: Sequence[Tensor]) -> None:
        """Draw new variational-dropout masks (training); call once per forward solve."""
        for branch, zi in zip(self.branches, z):
            block = branch.blocks[0]
            block.drop.reset(torch.empty(zi.shape[0], block.conv2.out_channels, device=zi.device))

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        *z, x = inputs
        blocks = [br(zi, x if i == 0 else None) for i, (br, zi) in enumerate(zip(self.branches, z))]
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = blocks[i]
            for j, layer in enumerate(row):
                if j != i:
                    y = y + layer(blocks[j])
            out.append(self.post_fuse_layers[i](y))
        if self.relax != 1.0:  # same fixed points, a contracting iteration where df/dz oscillates (MDEQConfig.relax)
            out = [zi + self.relax * (fi - zi) for zi, fi in zip(z, out)]
        return tuple(out)


class Injection(nn.Module):
    """Raw uint8 RGB frame (N, H, W, 3) -> x_0. Normalisation lives in the graph so the
    runtime uploads the decoder's bytes and nothing else."""

    def __init__(self, cfg: MDEQConfig, downsample: nn.Sequential, stage0: nn.Sequential) -> None:
        super().__init__()
        self.downsample = downsample
        self.stage0 = stage0
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(cfg.std).view(1, 3, 1, 1) * 255.0), persistent=False)

    def forward(self, frame: Tensor) -> Tensor:
        x = frame.permute(0, 3, 1, 2).to(torch.float32)
        x = (x - self.mean) * self.inv_std
        return self.stage0(self.downsample(x))


class SegHead(nn.Module):
    """Multiscale z -> per-class logits at stride 4 (published ``last_layer``)."""

    def __init__(self, cfg: MDEQConfig, last_layer: nn.Sequential) -> None:
        super().__init__()
        self.last_layer = last_layer
        self.upsample_align_corners = cfg.upsample_align_corners  # of the final upsampling (ClassMapHead)

    def forward(self, *z: Tensor) -> Tensor:
        size = z[0].shape[-2:]
        ups = [z[0]] + [F.interpolate(zi, size=size, mode="bilinear", align_corners=True) for zi in z[1:]]
        return self.last_layer(torch.cat(ups, 1))


class ClassMapHead(nn.Module):
    """Head engine: z -> uint8 class map at input resolution (argmax inside the graph), so
    only H*W bytes leave the device. ``with_logits`` also returns the stride-4 logits.

    The final upsampling's ``align_corners`` is the config's ``upsample_align_corners``
    (False for the published models, as the reference's test-time ``inference``) unless given."""

    def __init__(
        self, seg: SegHead, out_hw: tuple[int, int], with_logits: bool = False, align_corners: bool | None = None
    ) -> None:
        super().__init__()
        self.seg = seg
        self.out_hw = out_hw
        self.with_logits = with_logits
        self.align_corners = seg.upsample_align_corners if align_corners is None else align_corners

    def forward(self, *z: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        logits = self.seg(*z)
        full = F.interpolate(logits, size=self.out_hw, mode="bilinear", align_corners=self.align_corners)
        classes = full.argmax(1).to(torch.uint8)
        return (classes, logits) if self.with_logits else classes


class Bottleneck(nn.Module):
    """The classification head's residual block (published ``incre_modules``): 1x1-3x3-1x1
    convs with affine-free BatchNorm, expansion 4, a 1x1 conv + BN shortcut when widths differ."""

    expansion = 4

    def __init__(self, cin: int, planes: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=0.1, affine=False)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, momentum=0.1, affine=False)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, momentum=0.1, affine=False)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout, momentum=0.1))
            if cin != cout
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


def cls_head_modules(cfg: MDEQConfig) -> tuple[nn.ModuleList, nn.ModuleList, nn.Sequential, nn.Linear]:
    """incre_modules, downsamp_modules, final_layer, classifier, named and shaped as published."""
    if len(cfg.cls_head_channels) != cfg.num_scales:
        raise ValueError(f"config {cfg.name!r}: cls_head_channels needs {cfg.num_scales} widths")
    wide = [c * Bottleneck.expansion for c in cfg.cls_head_channels]
    incre = nn.ModuleList(nn.Sequential(Bottleneck(c, h)) for c, h in zip(cfg.channels, cfg.cls_head_channels))
    down = nn.ModuleList(
        nn.Sequential(conv3x3(a, b, 2, bias=True), nn.BatchNorm2d(b, momentum=0.1), nn.ReLU(inplace=True))
        for a, b in zip(wide, wide[1:])
    )
    final = nn.Sequential(
        nn.Conv2d(wide[-1], cfg.cls_final_channels, 1),
        nn.BatchNorm2d(cfg.cls_final_channels, momentum=0.1),
        nn.ReLU(inplace=True),
    )
    return incre, down, final, nn.Linear(cfg.cls_final_channels, cfg.num_classes)


class ClsHead(nn.Module):
    """Multiscale z -> (B, num_classes) logits: widen every scale, stride-2 convs carry the finer
    scales down and add them, a final 1x1 conv, global mean pooling, a linear classifier."""

    def __init__(self, incre: nn.ModuleList, down: nn.ModuleList, final: nn.Sequential, classifier: nn.Linear) -> None:
        super().__init__()
        self.incre_modules, self.downsamp_modules = incre, down
        self.final_layer, self.classifier = final, classifier

    def forward(self, *z: Tensor) -> Tensor:
        y = self.incre_modules[0](z[0])
        for i, down in enumerate(self.downsamp_modules):
            y = self.incre_modules[i + 1](z[i + 1]) + down(y)
        y = self.final_layer(y)
        return self.classifier(y.flatten(2).mean(2))  # global average pooling (export-friendly)


class PoseHead(nn.Module):
    """Second task: Simple-Baselines-style deconvolution head on the coarsest scale, with the
    finer scales added on the way up; heatmaps at stride 4."""

    def __init__(self, cfg: MDEQConfig, joints: int = 17, width: int | None = None) -> None:
        super().__init__()
        ch = cfg.channels
        width = width or max(ch[0] * 4, 64)
        self.inp = nn.Conv2d(ch[-1], width, 1, bias=False)
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1, bias=False) for c in reversed(ch[:-1])])
        self.deconvs = nn.ModuleList(
            nn.Sequential(
                nn.ConvTranspose2d(width, width, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width, momentum=BN_MOMENTUM),
                nn.ReLU(inplace=True),
            )
            for _ in ch[:-1]
        )
        self.final = nn.Conv2d(width, joints, 1)

    def forward(self, *z: Tensor) -> Tensor:
        y = self.inp(z[-1])
        for deconv, lat, zi in zip(self.deconvs, self.lateral, reversed(z[:-1])):
            y = deconv(y) + lat(zi)
        return self.final(y)


class MDEQSegNet(nn.Module):
    """The whole model (segmentation, or classification for ``task="cls"``); its parts are
    exported separately. ``head`` maps the state to seg logits (stride 4) or class logits."""

    def __init__(self, cfg: MDEQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c0 = cfg.channels[0]
        self.downsample = nn.Sequential(
            conv3x3(3, c0, 2),
            nn.BatchNorm2d(c0, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
            conv3x3(c0, c0, 2),
            nn.BatchNorm2d(c0, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
        )
        self.stage0 = nn.Sequential(
            nn.Conv2d(c0, c0, 1, bias=False), nn.BatchNorm2d(c0, momentum=BN_MOMENTUM), nn.ReLU(inplace=True)
        )
        self.fullstage = MDEQCell(cfg)
        self.injection = Injection(cfg, self.downsample, self.stage0)
        self.head: SegHead | ClsHead
        if cfg.task == "cls":  # the published classification head, under its published names
            self.incre_modules, self.downsamp_modules, self.final_layer, self.classifier = cls_head_modules(cfg)
            self.head = ClsHead(self.incre_modules, self.downsamp_modules, self.final_layer, self.classifier)
        else:
            total = sum(cfg.channels)
            hc = cfg.head_channels or total
            self.last_layer = nn.Sequential(
                nn.Conv2d(total, hc, 1),
                nn.BatchNorm2d(hc, momentum=BN_MOMENTUM),
                nn.ReLU(inplace=True),
                nn.Conv2d(hc, cfg.num_classes, 1),
            )
            self.head = SegHead(cfg, self.last_layer)

    @property
    def cell(self) -> MDEQCell:
        return self.fullstage

    def state_shapes(self, batch: int, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """Shapes of z_0..z_{S-1} for an input of height x width (multiples of cfg.multiple)."""
        check_resolution(self.cfg, height, width)
        return [(batch, c, height // s, width // s) for c, s in zip(self.cfg.channels, self.cfg.strides)]

    def zeros_state(self, x: Tensor, height: int, width: int) -> list[Tensor]:
        return [x.new_zeros(s) for s in self.state_shapes(x.shape[0], height, width)]

    def solve(self, frame: Tensor, iters: int, z: Sequence[Tensor] | None = None) -> tuple[list[Tensor], Tensor]:
        """Unrolled fixed-point iteration: ``iters`` applications of the cell from ``z``
        (zeros when None). Returns the state and x_0. Differentiable (UR/SUR training)."""
        x = self.injection(frame)
        h, w = frame.shape[1], frame.shape[2]
        state = list(z) if z is not None else self.zeros_state(x, h, w)
        self.fullstage.reset_dropout(state)
        for _ in range(iters):
            state = list(self.fullstage(*state, x))
        return state, x

    def forward(self, frame: Tensor, iters: int | None = None, z: Sequence[Tensor] | None = None) -> Tensor:
        state, _ = self.solve(frame, iters or self.cfg.f_thres, z)
        return self.head(*state)


def check_resolution(cfg: MDEQConfig, height: int, width: int) -> None:
    """Raise a one-line error unless the resolution fits the stride pyramid."""
    m = cfg.multiple
    if height <= 0 or width <= 0 or height % m or width % m:
        raise ValueError(
            f"height and width must be positive multiples of {m} for config {cfg.name!r}, got {height}x{width}"
        )


def build_model(cfg: MDEQConfig, seed: int = 0) -> MDEQSegNet:
    """A freshly initialised model (deterministic by seed)."""
    torch.manual_seed(seed)
    return MDEQSegNet(cfg)
