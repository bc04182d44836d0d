"""Training terms that make the cell a contraction, so plain iteration (what streaming runs) converges.

Two penalties on the Jacobian J = df/dz of the cell at a (nearly) solved state, both built from vector-Jacobian
products so no Jacobian is ever formed:

* :func:`jacobian_penalty`: Hutchinson's estimate of ||J||_F^2 / numel (Bai, Koltun & Kolter 2021). It shrinks J on
  average, but streaming converges only if the *largest* eigenvalue is below 1: a trial that drove this term to
  0.005 still left a spectral radius of 1.07 on real footage (archive/trials/README.md).
* :func:`spectral_penalty`: the growth ||J^T v|| of the dominant direction v, found by a few steps of power
  iteration on J^T (same eigenvalues as J), penalised only above a margin. This aims at the quantity that decides
  convergence, the one ``benchmarks.convergence`` reports.

The state is detached: the penalty moves the weights (and the injection, through x), not the solve. Where the
penalty is taken matters: a penalty at a state 12 plain iterations from zero sees a Jacobian the fixed point may not
have (near radius 1 those iterations are far from converged); :func:`anderson_state` solves for the fixed point itself.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def gaussian_like(state: list[Tensor], rng: np.random.Generator) -> list[Tensor]:
    """One standard Gaussian probe per state tensor, drawn from the step's rng (reproducible, resumable)."""
    return [torch.from_numpy(rng.standard_normal(s.shape).astype(np.float32)).to(s.device, s.dtype) for s in state]


def _cell_at(cell: torch.nn.Module, state: list[Tensor], x: Tensor) -> tuple[list[Tensor], tuple[Tensor, ...]]:
    z = [s.detach().requires_grad_(True) for s in state]
    return z, cell(*z, x)


def jacobian_penalty(cell: torch.nn.Module, state: list[Tensor], x: Tensor, noise: list[Tensor]) -> Tensor:
    """Hutchinson estimate of ||df/dz||_F^2 / numel at ``state`` (Bai, Koltun & Kolter 2021).

    E[||eps^T J||^2] = ||J||_F^2 for eps ~ N(0, I), so one vector-Jacobian product per step gives an unbiased
    estimate; create_graph=True lets the optimizer push the cell towards a contraction. Dividing by the state
    size keeps the weight independent of the resolution."""
    z, fz = _cell_at(cell, state, x)
    vjp = torch.autograd.grad(fz, z, grad_outputs=noise, create_graph=True)
    numel = sum(s.numel() for s in state)
    return sum(v.float().pow(2).sum() for v in vjp) / numel


def per_sample_norm(parts: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
    """The 2-norm of each batch item across all scales of a multiscale state, shape (N,)."""
    return torch.sqrt(sum(p.float().pow(2).flatten(1).sum(1) for p in parts))


def _unit(parts: list[Tensor] | tuple[Tensor, ...]) -> list[Tensor]:
    n = per_sample_norm(parts).clamp_min(1e-12)
    return [p / n.view(-1, *([1] * (p.dim() - 1))).to(p.dtype) for p in parts]


def spectral_penalty(
    cell: torch.nn.Module, state: list[Tensor], x: Tensor, start: list[Tensor], steps: int, margin: float
) -> tuple[Tensor, Tensor]:
    """mean over the batch of relu(g - margin)^2, and g, where g estimates each item's spectral radius of df/dz.

    ``steps`` vector-Jacobian products (no graph) turn ``start`` into the dominant direction v of J^T; the last
    product keeps its graph, so the optimizer lowers ||J^T v|| = g for that direction. One forward of the cell
    serves every product. Below ``margin`` the term is zero: the cell is left alone where it already contracts."""
    z, fz = _cell_at(cell, state, x)
    v = _unit(start)
    for _ in range(steps):
        v = _unit([u.detach() for u in torch.autograd.grad(fz, z, grad_outputs=v, retain_graph=True)])
    growth = per_sample_norm(torch.autograd.grad(fz, z, grad_outputs=v, create_graph=True))
    return torch.relu(growth - margin).pow(2).mean(), growth.detach()


class FlatMap:
    """The cell at one injection x as a map of one flat state vector: what ``runtime.solvers`` iterate."""

    def __init__(self, cell: torch.nn.Module, x: Tensor, shapes: Sequence[Sequence[int]]) -> None:
        self.cell, self.x = cell, x
        self.shapes = [torch.Size(s) for s in shapes]
        self.sizes = [s.numel() for s in self.shapes]
        self.numel = sum(self.sizes)

    def parts(self, z: Tensor) -> list[Tensor]:
        """The multiscale state a flat vector holds (views, no copy)."""
        return [t.view(s) for t, s in zip(torch.split(z, self.sizes), self.shapes)]

    def __call__(self, z: Tensor) -> Tensor:
        return torch.cat([t.reshape(-1) for t in self.cell(*self.parts(z), self.x)])

    def step(self, a: Tensor, b: Tensor) -> None:
        """The solvers' Step: b <- f(a)."""
        with torch.no_grad():
            b.copy_(self(a))


@torch.no_grad()
def anderson_state(
    cell: torch.nn.Module, x: Tensor, shapes: Sequence[Sequence[int]], iters: int, tol: float = 1e-3
) -> list[Tensor]:
    """The cell's fixed point at ``x``: Anderson acceleration from zero, at most ``iters`` evaluations, no graph.

    The batch is solved as one joint system (the solvers' convention), so one set of dropout masks serves the solve
    and the penalty taken at its result."""
    from runtime.solvers import anderson

    f = FlatMap(cell, x.detach(), shapes)
    z, _ = anderson(f.step, x.new_zeros(f.numel), iters, tol)
    return [t.clone() for t in f.parts(z)]


def spectral_term(
    model: torch.nn.Module,
    frames: np.ndarray,
    state: list[Tensor],
    x0: Tensor,
    rng: np.random.Generator,
    on: str,
    iters: int,
    steps: int,
    margin: float,
) -> tuple[Tensor, Tensor]:
    """:func:`spectral_penalty` where a trainer's ``--penalty-on`` asks: ``batch``: the batch's own (detached) state
    and x_0; ``camera``: the state after ``iters`` plain iterations (no graph) from a camera-effects copy of the
    batch, whose x_0 keeps its graph. Camera copies are what real footage looks like to the cell (blur, noise,
    exposure), and the synthetic batch alone let the detector's cell expand there; one helper so every task's
    trainer takes the term the same way."""
    from export.augment import camera_effects

    if on == "camera":
        cam = torch.from_numpy(camera_effects(frames, rng, p=1.0)).to(x0.device)
        x0 = model.injection(cam)
        with torch.no_grad():
            state = model.solve(cam, iters)[0]
    state = [s.detach() for s in state]
    return spectral_penalty(model.fullstage, state, x0, gaussian_like(state, rng), steps, margin)


CONTRACTION_KEYS = ("spec_reg", "spec_margin", "spec_steps", "spec_freq", "penalty_on")


def add_contraction_args(p: argparse.ArgumentParser) -> None:
    """The spectral-penalty options of the task trainers (export.train_det, export.train_pose): one definition so
    both spell, default and document them alike. ``--jac-reg-freq`` is accepted for ``--spec-freq``: export.train's
    name for the same fraction."""
    p.add_argument(
        "--spec-reg",
        type=float,
        default=0.0,
        metavar="W",
        help="add W x mean relu(g - margin)^2, g the growth of df/dz's dominant direction at a solved state "
        "(export/contraction.py, as export.train's --spec-reg): makes the cell contract so that streaming's few "
        "warm-started iterations per frame reach the fixed point; default %(default)s: off",
    )
    p.add_argument(
        "--spec-margin", type=float, default=0.7, help="growth below which --spec-reg is zero (default %(default)s)"
    )
    p.add_argument(
        "--spec-steps", type=int, default=3, help="power-iteration steps per --spec-reg term (default %(default)s)"
    )
    p.add_argument(
        "--spec-freq",
        "--jac-reg-freq",
        dest="spec_freq",
        type=float,
        default=1.0,
        metavar="P",
        help="apply --spec-reg on this fraction of steps, evenly spread (0 < P <= 1; default %(default)s)",
    )
    p.add_argument(
        "--penalty-on",
        choices=("batch", "camera"),
        default="batch",
        help="where --spec-reg is taken: batch (default): the training state after its N iterations; camera: the "
        "state after --iters plain iterations (no graph) from a camera-effects copy of the batch (export.train's "
        "option of the same name)",
    )


def check_contraction_args(a: argparse.Namespace) -> None:
    """A one-line ValueError for contraction options :func:`add_contraction_args` cannot bound by type alone."""
    if not (a.spec_reg >= 0 and math.isfinite(a.spec_reg)) or not a.spec_margin >= 0 or a.spec_steps < 1:
        raise ValueError("--spec-reg and --spec-margin must be finite numbers >= 0 and --spec-steps >= 1")
    if not 0 < a.spec_freq <= 1:
        raise ValueError(f"--spec-freq must be in (0, 1], got {a.spec_freq}")


def contraction_meta(a: argparse.Namespace) -> dict:
    """The contraction options a checkpoint's meta records (none when --spec-reg is off)."""
    return {k: getattr(a, k) for k in CONTRACTION_KEYS} if a.spec_reg > 0 else {}
