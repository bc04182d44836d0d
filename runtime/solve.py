"""One description of how a frame's fixed point is sought: the ``Solve`` value.

Why one value: the solver, its stop rule and tolerance, which iterate comes back (and is carried
to the next frame) and how often the tolerance is checked belong together, and every mode, the
fleet and the benchmarks must run the same rule a manifest states. ``Solve`` is read from a
manifest entry (``config.test_solve`` for frames solved from zero, ``config.stream_solve`` for
warm-started frames), overridden field by field by the CLI, and handed whole to the solvers of
:mod:`runtime.solvers`, which all take the same keywords (torchdeq's shape). Torch-free, so the
CLI can build it before torch is imported.

Vocabulary (README "Streaming solves"): an *evaluation* is one run of the cell. An *iterate* is a
point f was evaluated at. ``--iters K`` counts the solver's own iterations: a plain or Anderson
step is one evaluation; a Broyden update is one evaluation too, but Broyden first evaluates the
start (its initial residual), so K updates cost K + 1 evaluations, as in StreamDEQ.

``returns`` (what the frame's answer is, and what the next frame starts from):
- ``f_last``: f of the last evaluated iterate, the newest point (plain unrolling's answer; UR/SUR).
- ``last_iterate``: the last evaluated iterate itself.
- ``lowest``: the evaluated iterate with the lowest residual, the start included (MDEQ's test time).
- ``lowest_new``: the same among the new iterates only, never the start (StreamDEQ's streaming rule).
``last`` in older manifests means ``f_last``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from runtime.errors import BundleError
from runtime.manifest import AUTO, SOLVER_NAMES

RETURNS = ("f_last", "last_iterate", "lowest", "lowest_new")
LEGACY_RETURNS = {"last": "f_last"}
STOPS = ("rel", "abs")
# What `--solver X` returns when neither the manifest's entry for that solver nor --returns says: plain iteration
# keeps its newest point; the accelerated solvers keep their lowest-residual new iterate, as StreamDEQ's do.
DEFAULT_RETURNS = {"fixed_point": "f_last", AUTO: "f_last", "anderson": "lowest_new", "broyden": "lowest_new"}
# Solvers whose iterations are updates after one evaluation of the start (K iterations = K + 1 evaluations).
UPDATE_SOLVERS = ("broyden",)
# Solvers with a history that stream mode may carry from frame to frame (Solve.carry).
CARRY_SOLVERS = ("anderson", "broyden")


class SolveError(BundleError, ValueError):
    """A solve that cannot run as described (one line; exit 2 from the CLI)."""


@dataclass(frozen=True)
class Solve:
    """Solver, stop rule, tolerance, returned (and carried) iterate, check interval.

    ``tol`` is in the unit compared: with ``stop="rel"`` the per-stream ||f(z) - z|| / ||f(z)||, with
    ``stop="abs"`` the 2-norm of f(z) - z over the whole state (every stream), unscaled. None: run every
    iteration the frame's plan asks for. ``check_every``: iterations between tolerance checks (one host sync
    each); a reference that checks every step needs 1 to stop where it stops.

    ``safeguard`` (Broyden only): reject an iterate whose residual grows past twice the best and step plainly from
    the best point (``runtime.solvers.broyden``). On for the solves we choose (``--solver broyden``, a Solve made
    in code); off for a manifest's entry, which states a reference model's own rule (StreamDEQ's streaming Broyden,
    MDEQ's test-time Broyden) and must run as that model was run, unless the entry says ``"safeguard": true``.
    ``carry`` (Anderson and Broyden): keep the solver's history from one frame to the next instead of starting it
    afresh every frame (dropped whenever a stream starts from zero).
    """

    solver: str = "fixed_point"
    tol: float | None = None
    stop: str = "rel"
    returns: str = "f_last"
    check_every: int = 4
    safeguard: bool = True
    carry: bool = False

    def __post_init__(self) -> None:
        if self.solver not in (*SOLVER_NAMES, AUTO):
            raise SolveError(f"unknown solver {self.solver!r}; choose one of {', '.join((*SOLVER_NAMES, AUTO))}")
        if self.returns in LEGACY_RETURNS:
            object.__setattr__(self, "returns", LEGACY_RETURNS[self.returns])
        if self.returns not in RETURNS:
            raise SolveError(f"unknown return rule {self.returns!r}; choose one of {', '.join(RETURNS)}")
        if self.stop not in STOPS:
            raise SolveError(f"unknown stop rule {self.stop!r}; choose one of {', '.join(STOPS)}")
        if self.tol is not None and not (self.tol > 0 and math.isfinite(self.tol)):
            raise SolveError(f"the tolerance must be a positive number, got {self.tol}")
        if self.check_every < 1:
            raise SolveError(f"check_every must be >= 1, got {self.check_every}")
        if self.solver == AUTO and self.returns != "f_last":
            raise SolveError("--solver auto switches solvers within a stream and returns f of the last iterate only")
        if self.carry and self.solver not in CARRY_SOLVERS:
            raise SolveError(f"carrying the solver history needs {' or '.join(CARRY_SOLVERS)}, not {self.solver}")

    @property
    def extra_evals(self) -> int:
        """Evaluations a frame costs beyond its iterations (Broyden's initial residual)."""
        return 1 if self.solver in UPDATE_SOLVERS else 0

    def evaluations(self, iters: int) -> int:
        """Cell evaluations of a frame that runs ``iters`` iterations (0 stays 0: no cell)."""
        return iters + self.extra_evals if iters > 0 else 0

    def iterations(self, evals: int) -> int:
        """Inverse of :meth:`evaluations` (what a frame record calls its iterations)."""
        return max(evals - self.extra_evals, 0) if evals > 0 else 0

    def with_solver(self, solver: str) -> Solve:
        """Another solver under its own rule (the manifest's rule is for the manifest's solver); same if unchanged."""
        if solver == self.solver:
            return self
        return replace(
            self, solver=solver, returns=DEFAULT_RETURNS[solver], stop="rel", tol=None, safeguard=True, carry=False
        )

    def kwargs(self) -> dict[str, Any]:
        """The keywords every solver of runtime.solvers takes, and the safeguard / carry of those that have them."""
        kw: dict[str, Any] = {"tol": self.tol, "stop": self.stop, "returns": self.returns}
        kw["check_every"] = self.check_every
        if self.solver == "broyden":
            kw["safeguard"] = self.safeguard
        if self.carry:
            kw["carry"] = True
        return kw

    def describe(self) -> dict[str, Any]:
        """As summary.json records it (with the evaluations one iteration costs). ``safeguard`` and ``carry`` appear
        where they are on (a safeguarded Broyden, a carried history), so a reference rule's record reads as before."""
        d = {**asdict(self), "extra_evaluations": self.extra_evals}
        if not (self.solver == "broyden" and self.safeguard):
            del d["safeguard"]
        if not self.carry:
            del d["carry"]
        return d


def from_entry(entry: dict[str, Any], numel: int, where: str) -> tuple[Solve, int]:
    """A manifest solve entry -> (Solve, iterations per frame).

    Entries: ``solver``, ``threshold`` (iterations), ``tol``, ``tol_kind`` ("rel" / "abs"), ``tol_scale``
    ("sqrt_numel": an abs tol is per sqrt(number of state elements), MDEQ's eps = 1e-5 * sqrt(numel), the
    default for abs entries written before the key existed; "none"), ``returns``, ``check_every``.
    """
    if not isinstance(entry, dict):
        raise SolveError(f"manifest: {where} is not an object")
    try:
        stop = str(entry.get("tol_kind", "rel"))
        tol = entry.get("tol")
        if tol is not None:
            tol = float(tol)
            if stop == "abs" and entry.get("tol_scale", "sqrt_numel") == "sqrt_numel":
                tol *= math.sqrt(numel)
        checks = entry.get("check_every")
        if checks is None:
            checks = 1 if tol is not None else 4
        solve = Solve(
            solver=str(entry.get("solver", "fixed_point")),
            tol=tol,
            stop=stop,
            returns=str(entry.get("returns", "f_last")),
            check_every=int(checks),
            safeguard=bool(entry.get("safeguard", False)),
        )
        iters = int(entry["threshold"])
    except SolveError as e:
        raise SolveError(f"manifest: {where}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise SolveError(f"manifest: {where} is malformed ({type(e).__name__}: {e})") from None
    if iters < 1:
        raise SolveError(f"manifest: {where}.threshold must be >= 1, got {iters}")
    return solve, iters


def manifest_solve(manifest: dict[str, Any], use: str, numel: int) -> tuple[Solve, int] | None:
    """The bundle's solve for ``use`` ("frame": ``config.test_solve``; "stream": ``config.stream_solve``), or None
    when the manifest has none (bundles written before the entry existed run plain iteration)."""
    key = {"frame": "test_solve", "stream": "stream_solve"}[use]
    entry = manifest.get("config", {}).get(key)
    return None if entry is None else from_entry(entry, numel, f"config.{key}")


__all__ = ["DEFAULT_RETURNS", "RETURNS", "STOPS", "Solve", "SolveError", "from_entry", "manifest_solve"]
