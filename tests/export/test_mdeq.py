"""The PyTorch model: shapes per config, published parameter counts, the fixed point."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from export.config import CONFIGS, get_config
from export.mdeq import build_model, check_resolution


def test_unknown_config_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="tiny"):
        get_config("nope")


@pytest.mark.parametrize("name", ["small-seg", "xl-seg"])
def test_published_cell_parameter_counts(name: str) -> None:
    # notes/mdeq-streamdeq.md: f_theta has 8.72 M (SMALL) and 77.7 M (XL) trainable parameters.
    expected = {"small-seg": 8.72e6, "xl-seg": 77.7e6}[name]
    cell = build_model(CONFIGS[name]).fullstage
    n = sum(p.numel() for p in cell.parameters())
    assert abs(n - expected) / expected < 0.005


def test_state_shapes_and_head() -> None:
    cfg = get_config("tiny")
    model = build_model(cfg).eval()
    frame = torch.randint(0, 256, (2, 64, 128, 3), dtype=torch.uint8)
    with torch.no_grad():
        z, x = model.solve(frame, iters=2)
        logits = model.head(*z)
    assert [tuple(t.shape) for t in z] == model.state_shapes(2, 64, 128)
    assert x.shape == z[0].shape
    assert logits.shape == (2, cfg.num_classes, 16, 32)


def test_resolution_must_fit_the_pyramid() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        check_resolution(get_config("tiny"), 100, 128)


def test_dropout_mask_is_shared_across_iterations() -> None:
    model = build_model(get_config("tiny")).train()
    frame = torch.randint(0, 256, (2, 64, 128, 3), dtype=torch.uint8)
    x = model.injection(frame)
    z = model.zeros_state(x, 64, 128)
    model.fullstage.reset_dropout(z)
    a = model.fullstage(*z, x)
    b = model.fullstage(*z, x)
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def _relaxed(model, relax: float):
    out = build_model(dataclasses.replace(model.cfg, relax=relax)).eval()
    out.load_state_dict(model.state_dict())
    return out


def test_relaxed_cell_is_the_convex_mix_of_state_and_cell() -> None:
    model = build_model(get_config("tiny"), seed=3).eval()
    relaxed = _relaxed(model, 0.7)
    frame = torch.randint(0, 256, (1, 64, 128, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z, x = model.solve(frame, iters=3)
        f = model.fullstage(*z, x)
        g = relaxed.fullstage(*z, x)
        for zi, fi, gi in zip(z, f, g):
            torch.testing.assert_close(gi, 0.3 * zi + 0.7 * fi, rtol=1e-5, atol=1e-6)
    # So g(z) - z = 0.7 (f(z) - z): the residuals scale by relax and the fixed points are f's.
    for zi, fi, gi in zip(z, f, g):
        torch.testing.assert_close((gi - zi).norm(), 0.7 * (fi - zi).norm(), rtol=1e-4, atol=0)


@pytest.mark.parametrize("relax", [0.0, -0.5, 1.5])
def test_relax_outside_the_unit_interval_is_refused(relax: float) -> None:
    with pytest.raises(ValueError, match="relax"):
        build_model(dataclasses.replace(get_config("tiny"), relax=relax))
