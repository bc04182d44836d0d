"""export.train_det's contraction fine-tune: the spectral term (export/contraction.py's ``spectral_term``) lowers
the cell's dominant growth as an independent power iteration measures it, ``--penalty-on camera`` takes it at a
camera-effects copy's state, an ``--init`` with a head keeps it, and the options' one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.augment import camera_effects
from export.contraction import gaussian_like, spectral_penalty, spectral_term
from export.synthetic import random_det_batch
from export.train_det import build, main

BASE = "checkpoints/tiny_det.pt"  # a detector checkpoint with its head (the first stage is not in the tree)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread) -> None:
    """One torch thread (the shared CPU)."""


def radius_by_jvp(cell: torch.nn.Module, state: list[torch.Tensor], x: torch.Tensor, steps: int = 30) -> float:
    """|lambda_max| of df/dz by power iteration on J itself (forward products, torch.autograd.functional.jvp),
    independent of export.contraction's vector-Jacobian products on J^T."""
    from torch.autograd.functional import jvp

    v = [torch.ones_like(s) for s in state]
    growth = 0.0
    for _ in range(steps):
        norm = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / norm for u in v]
        v = list(jvp(lambda *z: tuple(cell(*z, x)), tuple(state), tuple(v))[1])
        growth = float(torch.sqrt(sum((u**2).sum() for u in v)))
    return growth


def test_the_spectral_term_lowers_the_dominant_growth():
    model, _ = build(BASE, 0, 0.3)
    model.eval()  # no dropout: the measured map is the one the steps change
    frames, _ = random_det_batch(np.random.default_rng(0), 1, 32, 64)
    x = torch.from_numpy(frames)

    def radius() -> float:
        with torch.no_grad():
            state, x0 = model.solve(x, 6)
        return radius_by_jvp(model.fullstage, state, x0.detach())

    before = radius()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(4):
        with torch.no_grad():
            state, _ = model.solve(x, 6)
        x0 = model.injection(x)
        spec, _ = spectral_term(model, frames, state, x0, np.random.default_rng(step), "batch", 6, 6, 0.0)
        opt.zero_grad()
        (10 * spec).backward()
        opt.step()
    assert radius() < before - 0.01


def test_camera_takes_the_term_at_a_camera_copys_state():
    model, _ = build(BASE, 0, 0.3)
    model.eval()
    frames, _ = random_det_batch(np.random.default_rng(1), 1, 32, 64)
    x = torch.from_numpy(frames)
    state, x0 = model.solve(x, 2)
    spec, growth = spectral_term(model, frames, state, x0, np.random.default_rng(5), "camera", 3, 4, 0.0)
    rng = np.random.default_rng(5)  # the same draws, by hand: camera copy, its state, then the probe
    cam = torch.from_numpy(camera_effects(frames, rng, p=1.0))
    with torch.no_grad():
        cam_state, cam_x0 = model.solve(cam, 3)
    ref, ref_growth = spectral_penalty(model.fullstage, cam_state, cam_x0, gaussian_like(cam_state, rng), 4, 0.0)
    assert torch.allclose(growth, ref_growth, rtol=1e-5) and float(spec.detach()) == pytest.approx(
        float(ref.detach()), rel=1e-5
    )
    assert not torch.allclose(
        growth, spectral_term(model, frames, state, x0, np.random.default_rng(5), "batch", 3, 4, 0.0)[1]
    )


def test_a_fine_tune_keeps_the_head_and_logs_the_term(tmp_path):
    import json

    from export.checkpoint import load_checkpoint

    out = tmp_path / "ft.pt"
    argv = ["--init", BASE, "--out", str(out), "--steps", "2", "--batch", "1", "--crop", "32", "64", "--iters", "2"]
    argv += ["--val-frames", "1", "--threads", "1", "--spec-reg", "4", "--spec-steps", "2", "--penalty-on", "camera"]
    assert main(argv) == 0
    model, meta = load_checkpoint(out)
    base, _ = load_checkpoint(BASE)
    assert meta["spec_reg"] == 4 and meta["penalty_on"] == "camera" and meta["init"]["path"] == BASE
    head = dict(model.center_head.named_parameters())
    close = [torch.allclose(p, head[k], atol=1e-2) for k, p in base.center_head.named_parameters()]
    assert all(close)  # two small steps from the shipped head, not a fresh random one
    logs = [json.loads(line) for line in (tmp_path / "ft.jsonl").read_text().splitlines()]
    assert "final_val_loss" in logs[-1]


@pytest.mark.parametrize(
    "extra,flag",
    [
        (["--spec-reg", "-1"], "--spec-reg"),
        (["--spec-steps", "0"], "--spec-steps"),
        (["--spec-freq", "0"], "--spec-freq"),
        (["--jac-reg-freq", "0"], "--spec-freq"),
    ],
)
def test_bad_contraction_options_give_one_line(tmp_path, capsys, extra, flag):
    assert main(["--out", str(tmp_path / "x.pt"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and flag in err
