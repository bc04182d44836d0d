"""UR / SUR / IL training steps, resume, and the exact checkpoint format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import export.train as export_train
from export.augment import blur, camera_effects
from export.config import get_config
from export.contraction import anderson_state, spectral_penalty
from export.mdeq import VariationalDropout2d, build_model
from export.synthetic import random_batch
from export.train import (
    Trainer,
    applies_on,
    distill_loss,
    forward_train,
    gaussian_like,
    jacobian_penalty,
    load_model,
    lr_at,
    main,
    parse_args,
    seg_loss,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints" / "tiny_sur.pt"


@pytest.mark.parametrize("mode", ["sur", "ur", "il"])
def test_steps_reduce_loss_on_fixed_batch(mode: str) -> None:
    torch.manual_seed(0)
    model = build_model(get_config("tiny"))
    # plain scenes: at 32x64 a context crop's labels are mostly unknowable, which tests the data, not the step
    frames, labels = random_batch(np.random.default_rng(1), 2, 32, 64, variant="plain")
    x, y = torch.from_numpy(frames), torch.from_numpy(labels.astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)

    def eval_loss() -> float:  # fixed iteration count, no dropout: comparable before and after
        model.eval()
        with torch.no_grad():
            loss = float(seg_loss(model(x, iters=4), y))
        model.train()
        return loss

    before = eval_loss()
    model.train()
    for _ in range(8):
        loss = seg_loss(forward_train(model, x, mode, 4, rng), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert eval_loss() < 0.8 * before


def _args(out, steps: int, crop: tuple[str, str] = ("32", "64")) -> list[str]:
    return ["--mode", "sur", "--iters", "2", "--steps", str(steps), "--batch", "2", "--crop", *crop,
            "--out", str(out), "--val-every", "2", "--val-frames", "1", "--no-progress", "--device", "cpu"]  # fmt: skip


def test_checkpoint_format_and_resume(tmp_path) -> None:
    out = tmp_path / "m.pt"
    assert main(_args(out, 3)) == 0
    obj = torch.load(out, weights_only=False)
    assert set(obj) == {"format", "config", "state_dict", "meta"}
    assert obj["format"] == "deqstream-ckpt/1"
    assert obj["config"] == get_config("tiny").to_dict()
    for key in ("mode", "iters", "steps", "wall_time_s", "machine", "command", "val_miou"):
        assert key in obj["meta"], key
    assert obj["meta"]["steps"] == 3 and obj["meta"]["mode"] == "sur"
    first = {k: v.clone() for k, v in obj["state_dict"].items()}

    assert main([*_args(out, 5), "--resume"]) == 0  # continues at step 3, does not restart
    obj2 = torch.load(out, weights_only=False)
    assert obj2["meta"]["steps"] == 5
    steps = [json.loads(line)["step"] for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert steps.count(2) == 1 and 4 in steps and 5 in steps
    assert any(not torch.equal(first[k], obj2["state_dict"][k]) for k in first)

    model, meta = load_model(out)
    model.eval()
    frame = torch.from_numpy(random_batch(np.random.default_rng(2), 1, 32, 64)[0])
    ref = build_model(get_config("tiny"))
    ref.load_state_dict(obj2["state_dict"])
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(frame, iters=2), ref(frame, iters=2))

    assert main(_args(out, 3)) == 0  # a fresh run to the same path starts a fresh log
    steps = [json.loads(line)["step"] for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert steps.count(2) == 1 and max(steps) == 3


def test_bad_input_is_one_line(tmp_path, capsys) -> None:
    assert main(_args(tmp_path / "x.pt", 1, ("30", "60"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err


# --------------------------------------------------------------------------- Jacobian regularisation
def _tiny_state(frame_hw: tuple[int, int] = (32, 32)) -> tuple[torch.nn.Module, list[torch.Tensor], torch.Tensor]:
    """The tiny cell at a 32x32 frame (1920 state elements), a few iterations in, in float64."""
    model = build_model(get_config("tiny")).double().eval()
    frame = torch.from_numpy(random_batch(np.random.default_rng(3), 1, *frame_hw, variant="plain")[0])
    with torch.no_grad():
        state, x = model.solve(frame, 3)
    return model.fullstage, state, x


def test_jacobian_penalty_matches_explicit_jacobian() -> None:
    cell, state, x = _tiny_state()
    shapes, sizes = [s.shape for s in state], [s.numel() for s in state]
    numel = sum(sizes)

    def flat_f(z: torch.Tensor) -> torch.Tensor:
        parts = [t.view(sh) for t, sh in zip(torch.split(z, sizes), shapes)]
        return torch.cat([t.reshape(-1) for t in cell(*parts, x.detach())])

    z0 = torch.cat([s.reshape(-1) for s in state])
    jac = torch.autograd.functional.jacobian(flat_f, z0, vectorize=True)  # independent: the full matrix
    assert jac.shape == (numel, numel)
    rng = np.random.default_rng(0)
    draws = []
    for i in range(64):
        noise = gaussian_like(state, rng)
        got = jacobian_penalty(cell, state, x.detach(), noise)
        eps = torch.cat([n.reshape(-1) for n in noise])
        if i < 3:  # exact for a given probe: ||eps^T J||^2 / numel
            torch.testing.assert_close(got.double(), (eps @ jac).pow(2).sum() / numel, rtol=1e-6, atol=0)
        draws.append(float(got.detach()))
    frob = float(jac.pow(2).sum() / numel)
    assert np.mean(draws) == pytest.approx(frob, rel=0.15)  # unbiased: the mean of 64 probes is near ||J||_F^2


def test_penalty_is_differentiable_in_the_weights() -> None:
    cell, state, x = _tiny_state()
    pen = jacobian_penalty(cell, state, x.detach(), gaussian_like(state, np.random.default_rng(1)))
    grads = torch.autograd.grad(pen, [p for p in cell.parameters() if p.requires_grad], allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)


def _trainer(tmp_path, *extra: str) -> Trainer:
    a = parse_args(["--out", str(tmp_path / "m.pt"), "--crop", "32", "64", "--batch", "2", "--iters", "2",
                    "--val-frames", "1", "--device", "cpu", *extra])  # fmt: skip
    return Trainer(a, "test")


def test_loss_includes_weighted_jacobian_term(tmp_path) -> None:
    off, on = _trainer(tmp_path), _trainer(tmp_path, "--jac-reg", "0.5")
    torch.manual_seed(0)
    loss_off, parts_off = off.batch_loss()
    torch.manual_seed(0)
    loss_on, parts_on = on.batch_loss()
    assert "jac" not in parts_off and parts_on["jac"] > 0
    assert parts_on["seg"] == pytest.approx(parts_off["seg"], rel=1e-6)
    assert float(loss_on) == pytest.approx(parts_off["seg"] + 0.5 * parts_on["jac"], rel=1e-5)
    half = [applies_on(i, 0.5) for i in range(10)]
    assert sum(half) == 5 and all(applies_on(i, 1.0) for i in range(10))
    out = tmp_path / "j.pt"
    assert main([*_args(out, 2), "--jac-reg", "0.1"]) == 0
    assert torch.load(out, weights_only=False)["meta"]["jac_reg"] == 0.1


def test_jac_reg_zero_is_the_plain_training_step(tmp_path) -> None:
    trainer = _trainer(tmp_path, "--jac-reg", "0")
    ref = build_model(get_config("tiny"))  # the recipe written out by hand: same init, batch, rng and optimizer
    ref.load_state_dict(trainer.model.state_dict())
    ref.train()
    opt = torch.optim.AdamW(ref.parameters(), lr=lr_at(2e-3, 0.0), weight_decay=1e-4)
    rng = np.random.default_rng([0, 0])
    frames, labels = random_batch(rng, 2, 32, 64, variant="context")
    torch.manual_seed(5)
    loss = seg_loss(
        forward_train(ref, torch.from_numpy(frames), "sur", 2, rng), torch.from_numpy(labels.astype(np.int64))
    )
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 2.0)
    opt.step()
    torch.manual_seed(5)
    trainer.model.train()
    assert trainer.train_step() == pytest.approx(float(loss), rel=1e-6)
    for (name, got), want in zip(trainer.model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(got, want, msg=name)


@pytest.mark.parametrize("bad", [["--jac-reg", "-1"], ["--jac-reg-freq", "0"], ["--jac-reg-freq", "1.5"]])
def test_bad_jac_options_are_one_line(tmp_path, capsys, bad: list[str]) -> None:
    assert main([*_args(tmp_path / "x.pt", 1), *bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --jac-reg") and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ spectral penalty, fine-tune, camera effects
def test_spectral_growth_matches_the_largest_eigenvalue_of_the_explicit_jacobian() -> None:
    cell, state, x = _tiny_state()
    shapes, sizes = [s.shape for s in state], [s.numel() for s in state]

    def flat_f(z: torch.Tensor) -> torch.Tensor:
        parts = [t.view(sh) for t, sh in zip(torch.split(z, sizes), shapes)]
        return torch.cat([t.reshape(-1) for t in cell(*parts, x.detach())])

    jac = torch.autograd.functional.jacobian(flat_f, torch.cat([s.reshape(-1) for s in state]), vectorize=True)
    radius = float(torch.linalg.eigvals(jac).abs().max())  # independent: the eigenvalues of the full matrix
    start = gaussian_like(state, np.random.default_rng(0))
    pen, growth = spectral_penalty(cell, state, x.detach(), start, steps=200, margin=0.0)
    assert float(growth[0]) == pytest.approx(radius, rel=0.03)
    assert float(pen) == pytest.approx(float(growth[0]) ** 2, rel=1e-6)
    above, _ = spectral_penalty(cell, state, x.detach(), start, steps=200, margin=radius + 0.1)
    assert float(above) == 0.0  # below the margin the cell is left alone
    grads = torch.autograd.grad(pen, [p for p in cell.parameters() if p.requires_grad], allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)


def test_spectral_penalty_is_per_batch_item() -> None:
    cell, state, x = _tiny_state()
    two = [torch.cat([s, 2 * s]) for s in state]
    x2 = torch.cat([x, x]).detach()
    start = gaussian_like(two, np.random.default_rng(0))
    _, both = spectral_penalty(cell, two, x2, start, steps=50, margin=0.0)
    _, second = spectral_penalty(cell, [s[1:] for s in two], x2[1:], [s[1:] for s in start], steps=50, margin=0.0)
    assert both.shape == (2,) and float(both[1]) == pytest.approx(float(second[0]), rel=1e-6)


def test_spec_reg_and_augment_enter_the_loss_and_the_meta(tmp_path) -> None:
    on = _trainer(tmp_path, "--spec-reg", "2", "--spec-margin", "0", "--augment")
    loss, parts = on.batch_loss()
    assert parts["spec"] > 0 and parts["growth"] > 0
    assert float(loss) == pytest.approx(parts["seg"] + 2 * parts["spec"], rel=1e-5)
    out = tmp_path / "s.pt"
    assert main([*_args(out, 2), "--spec-reg", "0.5", "--augment"]) == 0
    meta = torch.load(out, weights_only=False)["meta"]
    assert meta["spec_reg"] == 0.5 and meta["augment"] is True


def test_init_starts_from_the_checkpoint_weights(tmp_path) -> None:
    base = tmp_path / "base.pt"
    assert main(_args(base, 2)) == 0
    tuned = _trainer(tmp_path, "--init", str(base))
    saved, _ = load_model(base)
    for (name, got), want in zip(tuned.model.state_dict().items(), saved.state_dict().values()):
        torch.testing.assert_close(got, want, msg=name)
    assert tuned.meta(0.5)["init"]["path"] == str(base) and tuned.meta(0.5)["init"]["steps"] == 2


def test_init_of_another_config_is_one_line(tmp_path, capsys) -> None:
    base = tmp_path / "base.pt"
    assert main(_args(base, 1)) == 0
    assert main([*_args(tmp_path / "x.pt", 1), "--init", str(base), "--variant", "plain"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "scenes" in err and len(err.strip().splitlines()) == 1


def test_camera_effects_keep_shape_and_are_reproducible() -> None:
    frames, _ = random_batch(np.random.default_rng(1), 4, 32, 64, variant="plain")
    a = camera_effects(frames, np.random.default_rng(7), p=1.0)
    b = camera_effects(frames, np.random.default_rng(7), p=1.0)
    assert a.shape == frames.shape and a.dtype == np.uint8 and np.array_equal(a, b)
    assert all(not np.array_equal(x, y) for x, y in zip(a, frames))
    assert np.array_equal(camera_effects(frames, np.random.default_rng(7), p=0.0), frames)


def test_blur_matches_a_dense_gaussian_filter() -> None:
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.uniform(0, 255, (3, 20, 24)).astype(np.float32))
    got = blur(img, 1.3)
    # independent: the 2-D Gaussian as one dense (2r+1)^2 kernel over a replicate-padded image
    r = int(np.ceil(3 * 1.3))
    t = np.arange(-r, r + 1)
    k2 = np.exp(-0.5 * (t[:, None] ** 2 + t[None, :] ** 2) / 1.3**2)
    k2 /= k2.sum()
    pad = np.pad(img.numpy(), ((0, 0), (r, r), (r, r)), mode="edge")
    want = np.zeros_like(img.numpy())
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            want += k2[dy, dx] * pad[:, dy : dy + 20, dx : dx + 24]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("bad", [["--spec-reg", "-1"], ["--spec-margin", "-0.1"], ["--spec-steps", "0"]])
def test_bad_spec_options_are_one_line(tmp_path, capsys, bad: list[str]) -> None:
    assert main([*_args(tmp_path / "x.pt", 1), *bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --spec-reg") and len(err.strip().splitlines()) == 1


def test_anderson_state_is_the_plain_limit() -> None:
    """Anderson's state (a few dozen evaluations) equals the limit of many plain iterations, per scale (the shipped
    cell, which contracts on synthetic frames; a freshly initialised one has no attracting fixed point)."""
    model = load_model(SHIPPED)[0].double().eval()
    frame = torch.from_numpy(random_batch(np.random.default_rng(3), 1, 32, 64)[0])
    with torch.no_grad():
        x = model.injection(frame)
    shapes = model.state_shapes(1, 32, 64)
    fast = anderson_state(model.fullstage, x, shapes, 80, tol=1e-10)
    with torch.no_grad():
        slow = [torch.zeros(s, dtype=x.dtype) for s in shapes]
        for _ in range(200):
            slow = list(model.fullstage(*slow, x))
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_penalty_solver_anderson_takes_the_term_at_the_fixed_point(tmp_path, monkeypatch) -> None:
    tr = _trainer(tmp_path, "--spec-reg", "1", "--spec-margin", "0", "--penalty-on", "camera",
                  "--penalty-solver", "anderson", "--iters", "12", "--init", str(SHIPPED))  # fmt: skip
    seen: list[tuple[list[torch.Tensor], torch.Tensor]] = []
    real = export_train.spectral_penalty
    spy = lambda c, st, x, *r: seen.append((st, x)) or real(c, st, x, *r)  # noqa: E731
    monkeypatch.setattr(export_train, "spectral_penalty", spy)
    tr.model.eval()  # no dropout: the fixed point below is the same map's
    _, parts = tr.batch_loss()
    assert parts["spec"] > 0 and tr.meta(0.5)["penalty_solver"] == "anderson"
    ((state, x),) = seen
    with torch.no_grad():
        moved = tr.model.fullstage(*state, x)
    num = sum(float((m - s).pow(2).sum()) for m, s in zip(moved, state))
    den = sum(float(m.pow(2).sum()) for m in moved)
    assert (num / den) ** 0.5 < 1e-3


def test_penalty_solver_needs_camera_states(tmp_path, capsys) -> None:
    assert main([*_args(tmp_path / "x.pt", 1), "--spec-reg", "1", "--penalty-solver", "anderson"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--penalty-on camera" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- distillation from a frozen model
def test_distill_loss_is_the_mean_per_pixel_kl() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 3, 4, generator=gen), torch.randn(2, 5, 3, 4, generator=gen)
    p, q = torch.softmax(t.double(), 1), torch.softmax(s.double(), 1)  # independent: the definition, in float64
    want = (p * (p.log() - q.log())).sum(1).mean()
    torch.testing.assert_close(distill_loss(s, t).double(), want, rtol=1e-5, atol=0)
    assert float(distill_loss(t, t)) == pytest.approx(0.0, abs=1e-6)


def test_distill_matches_the_frozen_teacher_after_the_same_iterations(tmp_path, monkeypatch) -> None:
    tr = _trainer(tmp_path, "--iters", "6", "--init", str(SHIPPED), "--distill", str(SHIPPED), "--distill-weight", "3")
    teacher = tr.teacher
    assert all(not p.requires_grad for p in teacher.parameters())
    drops = [m for m in teacher.modules() if isinstance(m, VariationalDropout2d)]
    norms = [m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert drops and norms and not any(m.training for m in drops) and all(m.training for m in norms)
    drawn: list[int] = []
    real = export_train.unroll_length
    monkeypatch.setattr(export_train, "unroll_length", lambda *a: drawn.append(real(*a)) or drawn[-1])
    seen: list[int] = []
    forward = teacher.forward
    monkeypatch.setattr(teacher, "forward", lambda x, iters=None: seen.append(iters) or forward(x, iters=iters))
    before = {k: v.clone() for k, v in teacher.named_parameters()}
    tr.model.train()
    loss, parts = tr.batch_loss()
    assert seen == drawn and len(drawn) == 1 and parts["distill"] > 0
    assert float(loss) == pytest.approx(parts["seg"] + 3 * parts["distill"], rel=1e-5)
    tr.train_step()
    for k, v in teacher.named_parameters():
        torch.testing.assert_close(v, before[k], msg=k)
    assert tr.meta(0.5)["distill"] == str(SHIPPED) and tr.meta(0.5)["distill_weight"] == 3.0


def test_distill_iters_fixes_the_teachers_iterations(tmp_path, monkeypatch) -> None:
    tr = _trainer(tmp_path, "--iters", "3", "--distill", str(SHIPPED), "--distill-iters", "7")
    seen: list[int] = []
    forward = tr.teacher.forward
    monkeypatch.setattr(tr.teacher, "forward", lambda x, iters=None: seen.append(iters) or forward(x, iters=iters))
    for _ in range(2):
        tr.batch_loss()
    assert seen == [7, 7] and tr.meta(0.5)["distill_iters"] == 7


def test_bad_distill_is_one_line(tmp_path, capsys) -> None:
    base = tmp_path / "base.pt"
    assert main([*_args(base, 1), "--variant", "plain"]) == 0
    assert main([*_args(tmp_path / "x.pt", 1), "--distill", str(base)]) == 2
    assert main([*_args(tmp_path / "x.pt", 1), "--distill", str(SHIPPED), "--distill-weight", "-1"]) == 2
    assert main([*_args(tmp_path / "x.pt", 1), "--distill", str(SHIPPED), "--distill-iters", "-1"]) == 2
    errs = capsys.readouterr().err.strip().splitlines()
    assert (
        len(errs) == 3
        and errs[2].startswith("error: --distill-weight")
        and "scenes" in errs[0]
        and errs[1].startswith("error: --distill-weight")
    )


# --------------------------------------------------------------------------- moving average of the weights
def test_ema_averages_the_weights_and_is_what_is_saved(tmp_path) -> None:
    tr = _trainer(tmp_path, "--ema", "0.5")
    before = {k: v.clone() for k, v in tr.model.named_parameters()}
    tr.model.train()
    tr.train_step()  # step 0: the ramp gives d = min(0.5, 1 / 10) = 0.1
    for name, e in tr.ema.named_parameters():
        live = dict(tr.model.named_parameters())[name]
        torch.testing.assert_close(e, 0.1 * before[name] + 0.9 * live.detach(), msg=name)
    for e, b in zip(tr.ema.buffers(), tr.model.buffers()):
        torch.testing.assert_close(e, b)
    assert any(not torch.equal(e, p) for e, p in zip(tr.ema.parameters(), tr.model.parameters()))
    tr.save(0.5)
    saved = torch.load(tr.out, weights_only=False)
    side = torch.load(tr.sidecar, weights_only=False)
    for k, v in tr.ema.state_dict().items():
        torch.testing.assert_close(saved["state_dict"][k], v, msg=k)
    for k, v in tr.model.state_dict().items():
        torch.testing.assert_close(side["live"][k], v, msg=k)
    assert saved["meta"]["ema"] == 0.5

    again = _trainer(tmp_path, "--ema", "0.5", "--resume")
    again.resume()
    for k, v in tr.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[k], v, msg=k)
    for k, v in tr.ema.state_dict().items():
        torch.testing.assert_close(again.ema.state_dict()[k], v, msg=k)


def test_bad_ema_is_one_line(tmp_path, capsys) -> None:
    assert main([*_args(tmp_path / "x.pt", 1), "--ema", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --ema") and len(err.strip().splitlines()) == 1


def test_relax_trains_the_relaxed_cell_and_a_fine_tune_keeps_it(tmp_path) -> None:
    base = tmp_path / "base.pt"
    assert main(_args(base, 1)) == 0
    relaxed = tmp_path / "r.pt"
    assert main([*_args(relaxed, 1), "--init", str(base), "--relax", "0.8"]) == 0
    assert load_model(relaxed)[0].fullstage.relax == 0.8
    again = _trainer(tmp_path, "--init", str(relaxed))  # no --relax: the init checkpoint's
    assert again.model.fullstage.relax == 0.8 and again.cfg.relax == 0.8
    assert _trainer(tmp_path, "--init", str(relaxed), "--relax", "1").model.fullstage.relax == 1.0


def test_bad_relax_is_one_line(tmp_path, capsys) -> None:
    out = tmp_path / "r.pt"
    assert main([*_args(out, 1), "--relax", "0.8"]) == 0
    assert main([*_args(out, 1), "--resume"]) == 2  # resumed without the run's --relax
    err = capsys.readouterr().err
    assert err.startswith("error:") and "relax" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        parse_args(["--out", str(out), "--relax", "0"])
    assert "--relax must be in (0, 1]" in capsys.readouterr().err
