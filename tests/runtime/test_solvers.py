"""Solvers: same fixed point as many plain iterations; Anderson/Broyden need fewer steps."""

from __future__ import annotations

import pytest
import torch

from runtime.buffers import StateLayout
from runtime.bundle import TensorSpec
from runtime.solvers import SOLVERS, Workspace, anderson, broyden, fixed_point
from tests.runtime.conftest import H, W, contract, moving_frames


def linear_problem(rho: float, d: int = 120, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = rho * a / torch.linalg.eigvals(a).abs().max()
    b = torch.randn(d, generator=g, dtype=torch.float64)

    def step(zi: torch.Tensor, zo: torch.Tensor) -> None:
        torch.addmv(b, a, zi, out=zo)

    return step, torch.linalg.solve(torch.eye(d, dtype=torch.float64) - a, b)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_linear_fixed_point(name):
    step, zstar = linear_problem(0.9)
    z, info = SOLVERS[name](step, torch.zeros_like(zstar), 400, 1e-10, work=torch.zeros_like(zstar), check_every=1)
    assert info.nstep < 400
    assert info.residuals()[0] < 1e-10
    assert torch.allclose(z, zstar, rtol=0, atol=1e-7 * zstar.abs().max().item())


def test_accelerated_solvers_need_fewer_steps_on_a_slow_linear_map():
    step, zstar = linear_problem(0.99)
    steps = {}
    for name in SOLVERS:
        _, info = SOLVERS[name](step, torch.zeros_like(zstar), 500, 1e-6, work=torch.zeros_like(zstar), check_every=1)
        steps[name] = info.nstep
    assert steps["anderson"] < steps["fixed_point"] and steps["broyden"] < steps["fixed_point"], steps


def test_trace_and_lowest_step():
    step, zstar = linear_problem(0.5)
    _, info = fixed_point(step, torch.zeros_like(zstar), 12, None, work=torch.zeros_like(zstar))
    tr = [r[0] for r in info.trace_list()]
    assert len(tr) == 12 and tr[0] == pytest.approx(1.0)
    assert info.lowest_step() == 1 + min(range(12), key=tr.__getitem__)


class CellStep:
    """The PyTorch tiny cell as a ``step`` over flat state vectors (independent of the engines)."""

    def __init__(self, model: torch.nn.Module, frame: torch.Tensor) -> None:
        self.model = model
        with torch.no_grad():
            self.x = model.injection(frame)
        specs = tuple(TensorSpec(f"z{i}", s, "float32") for i, s in enumerate(model.state_shapes(1, H, W)))
        self.layout = StateLayout.from_specs(specs)
        self.calls = 0

    def __call__(self, zi: torch.Tensor, zo: torch.Tensor) -> None:
        self.calls += 1
        with torch.no_grad():
            for v, f in zip(self.layout.views(zo), self.model.fullstage(*self.layout.views(zi), self.x)):
                v.copy_(f)


def solve_steps(cell: CellStep, solver, max_iter: int, tol: float):
    d = cell.layout.total
    ws = Workspace(cell.layout, torch.device("cpu"), max_iter=max_iter)
    return solver(cell, torch.zeros(d), max_iter, tol, work=torch.zeros(d), ws=ws, check_every=1)


def test_tiny_model_solvers_reach_the_plain_fixed_point(tiny_model):
    cell = CellStep(tiny_model, torch.from_numpy(moving_frames(1)[0])[None])
    ref, info = solve_steps(cell, fixed_point, 60, 1e-6)
    assert info.residuals()[0] < 1e-6, "plain iteration must converge on the contracted model"
    for solver in (anderson, broyden):
        z, inf = solve_steps(cell, solver, 60, 1e-6)
        assert inf.residuals()[0] < 1e-6
        assert (z - ref).norm() / ref.norm() < 1e-4, solver.__name__


def test_tiny_model_accelerated_solvers_need_fewer_steps():
    """On a tiny model where plain iteration barely contracts, Anderson and Broyden reach the
    residual in fewer steps (plain iteration is capped at the budget)."""
    from export.config import get_config
    from export.mdeq import build_model

    slow = contract(build_model(get_config("tiny"), seed=0), conv1=3e-3, gn2=5.0)
    cell = CellStep(slow, torch.from_numpy(moving_frames(1)[0])[None])
    steps = {s.__name__: solve_steps(cell, s, 40, 1e-2)[1].nstep for s in (fixed_point, anderson, broyden)}
    assert steps["anderson"] < steps["fixed_point"] and steps["broyden"] < steps["fixed_point"], steps


def test_tol_checked_every_few_iterations():
    step, zstar = linear_problem(0.5)
    _, info = fixed_point(step, torch.zeros_like(zstar), 100, 1e-3, work=torch.zeros_like(zstar), check_every=5)
    assert info.nstep % 5 == 0 and info.nstep < 100


def test_fp16_state_residual_is_computed_in_fp32():
    """D = 245,760 (tiny at 256x512): an fp16 sum of squares overflows to inf; the meter must not."""
    g = torch.Generator().manual_seed(0)
    d = 245_760
    fz = (torch.randn(d, generator=g) * 1.5).half()
    z = (fz.double() + torch.randn(d, generator=g, dtype=torch.float64) * 0.075).half()
    ws = Workspace(StateLayout(((1, d),), (0,), d, torch.float16), torch.device("cpu"))
    assert ws.trace.dtype == torch.float32 and ws.acc == torch.float32
    out = torch.zeros(1)
    ws.residual(fz, z, out)
    ref = float((fz.double() - z.double()).norm() / fz.double().norm())
    assert ref == pytest.approx(0.05, rel=0.1)
    assert float(out) == pytest.approx(ref, rel=1e-4)
    zero = torch.zeros(d, dtype=torch.float16)
    ws.residual(zero, zero, out)
    assert float(out) == 0.0  # 0/clamp(0): never NaN


@pytest.mark.parametrize("name", list(SOLVERS))
def test_fp16_state_solvers_converge(name):
    """fp16 state, fp32 arithmetic: all three solvers reach an fp16-accurate fixed point (Anderson's
    solve_ex has no fp16 kernel; Broyden's updates would lose the secant condition in fp16)."""
    step64, zstar = linear_problem(0.9, d=300)

    def step(zi: torch.Tensor, zo: torch.Tensor) -> None:
        out = torch.empty(zi.shape, dtype=torch.float64)
        step64(zi.double(), out)
        zo.copy_(out)

    z0 = torch.zeros(zstar.shape, dtype=torch.float16)
    z, info = SOLVERS[name](step, z0, 200, 2e-3, work=torch.zeros_like(z0), check_every=1)
    assert z.dtype == torch.float16 and info.trace.dtype == torch.float32
    assert info.nstep < 200 and 0 < info.residuals()[0] < 2e-3
    assert float((z.double() - zstar).norm() / zstar.norm()) < 1e-2


def test_fp64_state_keeps_fp64_arithmetic():
    from runtime.solvers import acc_dtype

    assert acc_dtype(torch.float64) == torch.float64 and acc_dtype(torch.float32) == torch.float32
    assert acc_dtype(torch.float16) == torch.float32 and acc_dtype(torch.bfloat16) == torch.float32


@pytest.mark.parametrize(
    ("batch", "scales"), [(1, [(4, 8, 16), (8, 4, 8)]), (3, [(4, 8, 16), (8, 4, 8)]), (1, [(3, 5, 7), (2, 3, 3)])]
)
@pytest.mark.parametrize("stop", ["rel", "abs"])
def test_measure_matches_float64_norms(batch, scales, stop):
    """The meter's residuals against float64 norms of the same vectors, per stream: one stream whose scales fill the
    state takes whole-state norms, several streams or scales with alignment gaps between them take per-scale sums
    (the gaps hold garbage here: they are nobody's); all must give each stream's ||f(z) - z|| / ||f(z)||,
    ||f(z) - z|| and (for ``stop="abs"``) the whole state's ||f(z) - z||, step_scale applied to all three."""
    layout = StateLayout.from_specs(
        tuple(TensorSpec(f"z{i}", (batch, c, h, w), "float32") for i, (c, h, w) in enumerate(scales))
    )
    ws = Workspace(layout, torch.device("cpu"), max_iter=4, step_scale=2.0)
    assert ws.whole == (batch == 1 and layout.total == sum(b * c * h * w for b, c, h, w in layout.shapes))
    g = torch.Generator().manual_seed(batch)
    fz, z = torch.randn(layout.total, generator=g) * 9, torch.randn(layout.total, generator=g) * 9  # gaps: garbage
    for v_f, v_z in zip(layout.views(fz), layout.views(z)):
        v_f.copy_(torch.randn(v_f.shape, generator=g))
        v_z.copy_(v_f + 0.1 * torch.randn(v_z.shape, generator=g))
    ws.measure(2, fz, z, stop)
    rows = lambda flat: torch.cat([v.double().reshape(batch, -1) for v in layout.views(flat)], 1)  # noqa: E731
    d, f = rows(fz) - rows(z), rows(fz)
    torch.testing.assert_close(ws.abs_trace[2].double(), 2 * d.norm(dim=1), rtol=1e-5, atol=0)
    torch.testing.assert_close(ws.trace[2].double(), 2 * d.norm(dim=1) / f.norm(dim=1), rtol=1e-5, atol=0)
    if stop == "abs":
        assert float(ws.total) == pytest.approx(2 * float(d.norm()), rel=1e-5)
    zero = torch.zeros(layout.total)
    ws.measure(3, zero, zero, stop)  # gaps zero too: 0/clamp(0)
    assert float(ws.trace[3].max()) == 0.0 and float(ws.abs_trace[3].max()) == 0.0  # 0/clamp(0): never NaN
