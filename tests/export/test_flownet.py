"""FlowNetS for DFF: output pyramid, scale-field init, warp and flow composition, learning."""

from __future__ import annotations

import numpy as np
import torch

from export.config import get_config
from export.flownet import FlowNetS, backward_warp
from export.train_flow import compose_flows, epe, flow_target


def test_outputs_cover_every_state_scale() -> None:
    cfg = get_config("tiny")
    net = FlowNetS(cfg).eval()
    f = torch.randint(0, 256, (2, 64, 128, 3), dtype=torch.uint8)
    out = net(f, f)
    n = cfg.num_scales
    for i, s in enumerate(cfg.strides):
        assert out[i].shape == (2, 2, 64 // s, 128 // s)
        assert out[n + i].shape == (2, cfg.channels[i], 64 // s, 128 // s)
        assert torch.allclose(out[n + i], torch.ones_like(out[n + i]))  # DFF: scale field starts at 1


def test_coarse_flows_are_pooled_and_rescaled() -> None:
    cfg = get_config("tiny")
    out = FlowNetS(cfg).eval()(*(torch.randint(0, 256, (1, 64, 128, 3), dtype=torch.uint8),) * 2)
    manual = out[0].reshape(1, 2, 4, 4, 8, 4).mean((3, 5)) / 4  # stride 16 = 4x4 cells of stride 4
    assert torch.allclose(out[2], manual, atol=1e-6)


def test_backward_warp_integer_shift_matches_slicing() -> None:
    feat = torch.randn(1, 3, 10, 12)
    flow = torch.zeros(1, 2, 10, 12)
    flow[:, 0], flow[:, 1] = 2.0, -1.0  # sample at (x + 2, y - 1)
    out = backward_warp(feat, flow)
    expect = torch.zeros_like(feat)
    expect[:, :, 1:, :-2] = feat[:, :, :-1, 2:]
    assert torch.allclose(out, expect, atol=1e-5)


def test_composed_flow_of_a_constant_motion_adds_up() -> None:
    flows = np.zeros((6, 16, 20, 2), np.float32)
    flows[..., 0], flows[..., 1] = -1.5, 0.5  # every frame: content moves (+1.5, -0.5) px
    got = compose_flows(flows, t=5, d=3)
    interior = got[3:-3, 6:-6]  # taps that stay inside the image
    assert np.allclose(interior[..., 0], -4.5, atol=1e-4) and np.allclose(interior[..., 1], 1.5, atol=1e-4)


def test_a_few_steps_reduce_the_end_point_error() -> None:
    torch.manual_seed(0)
    cfg = get_config("tiny")
    net = FlowNetS(cfg, width=0.125, levels=4)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(128.0), indexing="ij")
    base = (127 + 60 * torch.sin(xx / 5) * torch.cos(yy / 7)).clamp(0, 255)
    key = base[None, ..., None].expand(1, 64, 128, 3).to(torch.uint8).repeat(2, 1, 1, 1)
    flow = torch.zeros(2, 2, 64, 128)
    flow[:, 0] = 2.0
    cur = backward_warp(key.permute(0, 3, 1, 2).float(), flow).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    target = flow_target(flow, 4)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    first = None
    for _ in range(40):
        loss = epe(net(cur, key)[0], target)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
