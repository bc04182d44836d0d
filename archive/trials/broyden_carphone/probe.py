"""One-off probe (issue #26): why safeguarded Broyden needs 0.83 x plain's evaluations on carphone, and which knob
of it would help. Per frame, cell evaluations from zero to a relative residual of 1e-4 (at most 300) for plain
iteration, Anderson, Broyden as shipped, and Broyden variants patched in here (nothing in ``runtime`` changes):

- ``beta=B``: initial inverse Jacobian -B I instead of -I (B > 1: an over-relaxed first guess);
- ``abeta=M``: B from the first secant pair, -(dx . dg) / (dg . dg), clipped to [1, M];
- ``warm=W``: W plain steps before Broyden starts (their pairs never stored);
- ``lb=L``: memory of L pairs (restart from -I when full) instead of 30; ``w2lb=L``: warm=2 and lb=L;
- ``bad=L``: type-II ("bad") Broyden, u = (dx - B^-1 dg) / (dg . dg), v = dg, memory L.

Run from the repository root (``ONLY=plain,broyden`` keeps only those of the three base rows):

    PYTHONPATH=. python archive/trials/broyden_carphone/probe.py CLIP START N [CHECKPOINT] [VARIANT=VALUE ...]
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import torch

import runtime.solvers as S
from benchmarks.convergence import TO_TOL, flat_cell, real_frames
from export.train import load_model

BUDGET = 300
KNOBS: dict[str, Any] = {"beta": 1.0, "abeta": 0.0, "bad": False}
SECANT_BETAS: list[float] = []
_matvec, _rmatvec, _pair = S._matvec, S._rmatvec, S._broyden_pair


def matvec(U, V, c, y, out, t, mask=None) -> None:  # (-B I + U^T V) y
    _matvec(U, V, c, y, out, t, mask)
    out.add_(y, alpha=1 - KNOBS["beta"])


def rmatvec(U, V, c, y, out, t, mask=None) -> None:  # (-B I + U^T V)^T y
    _rmatvec(U, V, c, y, out, t, mask)
    out.add_(y, alpha=1 - KNOBS["beta"])


def bad_pair(h: dict, i: int, masked: bool) -> None:
    U, V, c, mask = h["U"][:i], h["V"][:i], h["c"][:i], (h["mask"][:i] if masked else None)
    dx, dg, u, t = h["dx"], h["dg"], h["u"], h["t"]
    S._matvec(U, V, c, dg, u, t, mask)
    torch.sub(dx, u, out=u)
    u.div_(torch.dot(dg, dg).clamp_min(1e-30))
    h["U"][i].copy_(u)
    h["V"][i].copy_(dg)


def pair(h: dict, i: int, masked: bool) -> None:
    if KNOBS["bad"]:
        return bad_pair(h, i, masked)
    if KNOBS["abeta"] and i == 0:
        dx, dg = h["dx"], h["dg"]
        b = float(-(dx @ dg) / (dg @ dg))
        KNOBS["beta"] = min(max(b, 1.0), KNOBS["abeta"])
        SECANT_BETAS.append(round(b, 2))
    _pair(h, i, masked)


S._matvec, S._rmatvec, S._broyden_pair = matvec, rmatvec, pair


def run(cell, solver, warm: int = 0, lb: int = 30, beta: float = 1.0, abeta: float = 0.0, bad: bool = False):
    """Evaluations to TO_TOL (None: not within BUDGET)."""
    KNOBS.update(beta=beta, abeta=abeta, bad=bad)
    z0, used = torch.zeros(cell.numel), 0
    if warm:
        z0, _ = S.fixed_point(cell.step, z0, warm, ws=S.flat_workspace(z0, BUDGET))
        z0, used = z0.clone(), warm
    ws = S.flat_workspace(z0, BUDGET)
    ws.lbfgs = lb
    _, info = solver(cell.step, z0, BUDGET, TO_TOL, ws=ws, check_every=1)
    KNOBS.update(beta=1.0, abeta=0.0)
    return used + info.nstep if float(info.trace[info.nstep - 1, 0]) < TO_TOL else None


def variant(spec: str):
    k, v = spec.split("=")
    val = float(v)
    kw = {"beta": {"beta": val}, "warm": {"warm": int(val)}, "abeta": {"abeta": val}, "lb": {"lb": int(val)},
          "bad": {"bad": True, "lb": int(val)}, "w2lb": {"warm": 2, "lb": int(val)}}[k]  # fmt: skip
    return lambda c: run(c, S.broyden, **kw)


def main() -> None:
    torch.set_num_threads(1)
    clip, start, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ck = sys.argv[4] if len(sys.argv) > 4 else "checkpoints/tiny_sur.pt"
    model, _ = load_model(ck, "cpu")
    model.eval()
    variants = {"plain": lambda c: run(c, S.fixed_point), "anderson": lambda c: run(c, S.anderson),
                "broyden": lambda c: run(c, S.broyden)}  # fmt: skip
    if os.environ.get("ONLY"):
        variants = {k: v for k, v in variants.items() if k in os.environ["ONLY"].split(",")}
    variants.update({spec: variant(spec) for spec in sys.argv[5:]})
    res: dict[str, list] = {k: [] for k in variants}
    for fr in real_frames(clip, n, 256, 512, start):
        cell = flat_cell(model, fr)
        for k, f in variants.items():
            res[k].append(f(cell))
        print({k: v[-1] for k, v in res.items()}, SECANT_BETAS[-3:], flush=True)
    for k, v in res.items():
        fails = sum(x is None for x in v)
        print(f"{k:12s} median {np.median([x if x else 999 for x in v]):5.1f} fails {fails} {v}")


if __name__ == "__main__":
    main()
