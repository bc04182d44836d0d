"""Choose the runtime's settings on validation clips only, by rules fixed before looking.

Two choices are made here, each on held-out clips whose seeds are disjoint from the test clips
that every reported number comes from (``benchmarks.accuracy.SPLIT_SEEDS``):

- the pixel shot-change rule of ``runtime.modes.ResetMonitor`` (``change_jump`` x the running
  mean, and ``change_floor``): swept over a grid on H.264-decoded clips of both scene families
  whose cuts are known. Rule: fewest errors (missed cuts + false alarms); among the settings tied
  at that count, the median one in (multiplier, floor) order: the middle of the working region,
  with margin on both sides (toward missed cuts and toward false alarms).
- the ``--reset-iters`` advice for streaming at k = 1: stream+reset k = 1 mIoU for each candidate.
  Rule: the smallest value within 0.5 points of the best (each iteration costs time on every cut).

``--anderson N`` instead makes a third choice, on the real validation frames (N per clip, from where
``benchmarks.convergence.REAL_SPLITS['validation']`` starts each clip): the ridge ``reg`` and the stall guard
``stall`` of the runtime's safeguarded Anderson (``runtime.solvers.ANDERSON_REG``, ``ANDERSON_STALL``), by the
evaluations from zero to a relative residual of 1e-4 against plain iteration's on the same frame. Rule: admissible
are the settings that on no frame where plain iteration reaches 1e-4 within the budget need more evaluations than
it or fail; among them the lowest median ratio to plain, then the lowest worst ratio, then the smallest ridge, then
the guard on (the safer). Results: ``tuning_anderson.{json,md}``.

``--broyden N`` likewise chooses the growth factor of the safeguarded Broyden (``runtime.solvers.BROYDEN_GROWTH``:
an iterate whose residual is above that many times the best drops the history and steps plainly from the best
point), beside raw Broyden, and its other knobs (issue #26: memory length, sliding memory, scaled initial inverse
Jacobian, step cap; ``BROYDEN_MEMORY``, ``BROYDEN_SLIDE``, ``BROYDEN_SCALE``, ``BROYDEN_CAP``), each tried at the
factor the first study chose. Rule (the aim of issue #26, 0.8 x plain's median evaluations on every clip, without a
knob losing elsewhere): admissible are the settings that never fail where plain iteration reaches 1e-4 within the
budget and, for a setting with knobs, need on no clip a higher median than the same factor without them; among them
the lowest worst clip's median over plain's median, then the lowest median ratio to plain over all frames, then the
lowest worst ratio, then the fewest knobs moved from off, then the smallest factor (the safer). (A first version of
the rule, the lowest median ratio over all frames first, chose a cap of 1.5 by 0.001, which loses on bikes.)
Results: ``tuning_broyden.{json,md}``.

The results files say what was chosen; tests hold the runtime's defaults to them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.accuracy import SPLIT_SEEDS, TorchStepper, prepare_clips, run_accuracy
from benchmarks.plots import write_text
from export.synthetic import VARIANTS
from runtime.modes import FrameInfo, ResetMonitor, frame_change

JUMPS = (2.0, 2.5, 3.0, 3.5, 4.0, 5.0)
FLOORS = (10.0, 15.0, 20.0, 30.0)
RESET_ITERS = (1, 2, 4, 8)
PIXEL_SEED = SPLIT_SEEDS["validation"] + 10_000  # 910000+: the clips the pixel rule was first tuned on
TOLERANCE = 0.005  # reset-iters: within 0.5 mIoU points of the best
# candidate (ridge relative to ||g||^2, stall guard) settings of the safeguarded Anderson
ANDERSON_CANDIDATES = tuple((reg, stall) for reg in (0.0, 0.03, 0.1) for stall in (0, 20))
ANDERSON_BUDGET = 300  # evaluations from zero; a frame not at 1e-4 by then failed
# candidate settings of the safeguarded Broyden (None: raw Broyden, no safeguard): growth factors alone, then each
# other knob (runtime.solvers.broyden's keywords) at the factor the growth-only study chose
BROYDEN_CANDIDATES: tuple[dict[str, Any] | None, ...] = (
    None,
    {"growth": 2.0},
    {"growth": 4.0},
    {"growth": 10.0},
    {"growth": 10.0, "memory": 10},
    {"growth": 10.0, "memory": 20},
    {"growth": 10.0, "memory": 20, "slide": True},
    {"growth": 10.0, "scale": 1.5},
    {"growth": 10.0, "scale": 4.0},
    {"growth": 10.0, "cap": 1.5},
    {"growth": 10.0, "cap": 2.0},
    {"growth": 10.0, "cap": 3.0},
)
# the knobs' off values (runtime.solvers' defaults before any was chosen), which a chosen setting fills in
BROYDEN_OFF: dict[str, Any] = {"memory": 0, "slide": False, "scale": 1.0, "cap": 0.0}


def pixel_clips(root: Path, n: int, frames: int, height: int, width: int) -> list[tuple[np.ndarray, list[int]]]:
    """Validation clips of both scene families through H.264 (cached): decoded frames and true cuts."""
    out = []
    for i in range(n):
        variant = VARIANTS[i % len(VARIANTS)]
        ((decoded, _, meta),) = prepare_clips(Path(root), 1, frames, height, width, PIXEL_SEED + i, variant)
        out.append((decoded, list(meta["cuts"])))
    return out


def changes_of(frames: np.ndarray) -> list[float | None]:
    return [frame_change(frames[t - 1] if t else None, frames[t]) for t in range(len(frames))]


def pixel_errors(changes: list[list[float | None]], cuts: list[list[int]], jump: float, floor: float) -> dict:
    """Cuts found, missed and false alarms of the pixel rule alone (no key-frame or residual rule)."""
    found = missed = false = 0
    for ch, cs in zip(changes, cuts):
        mon = ResetMonitor(change_jump=jump, change_floor=floor)
        fired = {t for t, c in enumerate(ch) if mon.before(FrameInfo(t, key_frame=False), c)}
        found += len(fired & set(cs))
        missed += len(set(cs) - fired)
        false += len(fired - set(cs))
    return {"jump": jump, "floor": floor, "found": found, "missed": missed, "false_alarms": false}


def choose_pixel_rule(rows: list[dict]) -> dict:
    fewest = min(r["missed"] + r["false_alarms"] for r in rows)
    tied = sorted((r for r in rows if r["missed"] + r["false_alarms"] == fewest), key=lambda r: (r["jump"], r["floor"]))
    return tied[len(tied) // 2]


def choose_reset_iters(miou: dict[int, float]) -> int:
    best = max(miou.values())
    return min(r for r, v in miou.items() if v >= best - TOLERANCE)


def tune_reset_iters(checkpoint: Path, clips: list, candidates=RESET_ITERS) -> dict[int, float]:
    """stream+reset k=1 mIoU per --reset-iters (the converged row is not needed: f_thres 1)."""
    from export.train import load_model

    model, _ = load_model(checkpoint, "cpu")
    stepper = TorchStepper(model, "cpu")
    return {r: run_accuracy(stepper, clips, ks=(1,), f_thres=1, reset_iters=r)["stream+reset k=1"]["miou"]
            for r in candidates}  # fmt: skip


def anderson_frames(n: int, height: int, width: int) -> dict[str, np.ndarray]:
    """``n`` frames of each real validation clip, from where the validation split starts it."""
    from benchmarks.convergence import REAL_SPLITS, real_frames

    return {name: real_frames(name, n, height, width, start) for name, start in REAL_SPLITS["validation"].items()}


def candidate_key(reg: float, stall: int) -> str:
    return f"reg {reg:g}, stall {stall}"


def broyden_key(cand: dict[str, Any] | float | None) -> str:
    """A Broyden setting's name in the results: ``raw``, ``growth 10``, ``growth 10, cap 2``, ``..., slide``."""
    if cand is None:
        return "raw"
    c = {"growth": cand} if isinstance(cand, float | int) else cand
    extra = [k if v is True else f"{k} {v:g}" for k, v in c.items() if k != "growth"]
    return ", ".join([f"growth {c['growth']:g}", *extra])


def broyden_setting(cand: dict[str, Any] | float | None) -> dict[str, Any]:
    """Every Broyden knob of a candidate: its growth (None: raw) and the other knobs, off where it does not set them."""
    c = {"growth": cand} if cand is None or isinstance(cand, float | int) else cand
    return {**BROYDEN_OFF, **c}


def solver_settings(solver: str) -> dict[str, dict[str, Any]]:
    """The candidates of ``--anderson`` or ``--broyden``: each setting's key in the results and its solver kwargs."""
    if solver == "anderson":
        return {candidate_key(r, st): {"reg": r, "stall": st} for r, st in ANDERSON_CANDIDATES}
    # every knob named: a candidate must not inherit the runtime's chosen defaults
    return {broyden_key(c): ({"safeguard": False} if c is None else broyden_setting(c)) for c in BROYDEN_CANDIDATES}


def solver_study(checkpoint: Path, frames: dict[str, np.ndarray], solver: str) -> dict[str, Any]:
    """Per clip and frame: plain iteration's and each of ``solver``'s settings' evaluations from zero to 1e-4 (None:
    failed); ``solver`` is ``anderson`` or ``broyden`` (``runtime.solvers``)."""
    import torch

    from benchmarks.convergence import TO_TOL, flat_cell
    from export.train import load_model
    from runtime.solvers import SOLVERS, fixed_point, flat_workspace

    model, _ = load_model(checkpoint, "cpu")
    model.eval()

    def evals(cell: Any, solve: Any, **kw: Any) -> int | None:
        z0 = torch.zeros(cell.numel)
        ws = flat_workspace(z0, ANDERSON_BUDGET, 1.0 / model.cfg.relax)
        _, info = solve(cell.step, z0, ANDERSON_BUDGET, TO_TOL, ws=ws, check_every=1, **kw)
        return info.nstep if float(info.trace[info.nstep - 1, 0]) < TO_TOL else None

    settings = solver_settings(solver)
    out: dict[str, Any] = {}
    for name, clip in frames.items():
        rows = []
        for frame in clip:
            cell = flat_cell(model, frame)
            row = {"plain": evals(cell, fixed_point)}
            row.update({key: evals(cell, SOLVERS[solver], **kw) for key, kw in settings.items()})
            rows.append(row)
        out[name] = rows
        print(f"{name}: {rows}", flush=True)
    return out


def clip_medians(per_clip: dict[str, list[dict]], key: str) -> dict[str, float]:
    """Per clip, setting ``key``'s median evaluations over the frames plain iteration solved (a failure: infinite)."""
    out = {}
    for name, rows in per_clip.items():
        got = [f[key] if f[key] is not None else float("inf") for f in rows if f["plain"] is not None]
        if got:
            out[name] = float(np.median(got))
    return out


def choose_broyden(per_clip: dict[str, list[dict]], cands=BROYDEN_CANDIDATES) -> dict[str, Any]:
    """The ``--broyden`` rule of the module docstring over every frame of every clip."""
    frames = [f for rows in per_clip.values() for f in rows if f["plain"] is not None]
    plain = clip_medians(per_clip, "plain")
    keys = {broyden_key(c) for c in cands}
    table = {}
    for c in cands:
        key, setting = broyden_key(c), broyden_setting(c)
        ratios = [(f[key] if f[key] is not None else float("inf")) / f["plain"] for f in frames]
        med = clip_medians(per_clip, key)
        bare = broyden_key(setting["growth"])  # the same factor without knobs
        base = clip_medians(per_clip, bare) if bare != key and bare in keys else med
        table[key] = {**setting, "fails": sum(1 for f in frames if f[key] is None),
                      "frames_worse_than_plain": sum(1 for r in ratios if r > 1),
                      "median_ratio": float(np.median(ratios)), "worst_ratio": float(max(ratios)),
                      "worst_clip_ratio": max(med[n] / plain[n] for n in med),
                      "clips_lost": sum(1 for n in med if med[n] > base[n])}  # fmt: skip
    admissible = [t for t in table.values() if t["fails"] == 0 and t["clips_lost"] == 0]
    pool = admissible or sorted(table.values(), key=lambda t: t["fails"])[:1]

    def rank(t: dict[str, Any]) -> tuple:
        moved = sum(t[k] != v for k, v in BROYDEN_OFF.items())
        safety = np.inf if t["growth"] is None else t["growth"]  # raw Broyden ranks after every safeguard
        return t["worst_clip_ratio"], t["median_ratio"], t["worst_ratio"], moved, safety

    best = min(pool, key=rank)
    chosen = {k: best[k] for k in ("growth", *BROYDEN_OFF)}
    return {"table": table, "frames": len(frames), "chosen": chosen, "admissible": bool(admissible)}


def broyden_markdown(res: dict) -> str:
    a = res["broyden"]
    lines = [
        "# Safeguarded Broyden's growth factor and other knobs, chosen on real validation frames",
        "",
        f"`{res['stamp']['command']}` ({res['stamp']['date']}, {res['stamp']['wall_s']} s), checkpoint "
        f"`{a['checkpoint']}` at {a['height']}x{a['width']}, {a['frames_per_clip']} frames of each clip from where the "
        f"validation split starts it ({', '.join(f'{k} {v}' for k, v in a['starts'].items())}). Evaluations from zero "
        f"until the relative residual is below 1e-4 (at most {ANDERSON_BUDGET}); raw: no safeguard; memory: pairs "
        "kept before the history restarts (slide: the oldest overwritten instead); scale: the largest beta of the "
        "initial inverse Jacobian -beta I from the first two residual norms; cap: the longest update in plain steps; "
        "rule in `benchmarks/tune.py`.",
        "",
        "| setting | fails where plain reaches it | clips with a higher median than without its knobs | worst clip's "
        "median / plain's | frames needing more than plain | median ratio to plain | worst ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, t in a["choice"]["table"].items():
        lines.append(
            f"| {key} | {t['fails']} | {t['clips_lost']} | {t['worst_clip_ratio']:.3f} | "
            f"{t['frames_worse_than_plain']} | {t['median_ratio']:.3f} | {t['worst_ratio']:.3f} |"
        )
    keys = ["plain", *a["choice"]["table"]]
    lines += ["", "Median evaluations per clip (the frames plain iteration solved):", ""]
    lines += ["| clip | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name in a["per_clip"]:
        meds = [clip_medians({name: a["per_clip"][name]}, k).get(name, float("nan")) for k in keys]
        lines.append(f"| {name} | " + " | ".join(f"{m:g}" for m in meds) + " |")
    lines += ["", "| clip | frame | " + " | ".join(keys) + " |"]
    lines.append("|---|---|" + "---|" * len(keys))
    for name, rows in a["per_clip"].items():
        for i, f in enumerate(rows):
            cells = " | ".join("fail" if f[k] is None else str(f[k]) for k in keys)
            lines.append(f"| {name} | {a['starts'][name] + i} | {cells} |")
    c = a["choice"]["chosen"]
    knobs = ", ".join(f"{k} {c[k]:g}" if not isinstance(c[k], bool) else f"{k} {c[k]}" for k in BROYDEN_OFF)
    lines += ["", f"Chosen: {broyden_key(c['growth'])}; {knobs} (`runtime.solvers.BROYDEN_GROWTH`, `BROYDEN_MEMORY`, "
              "`BROYDEN_SLIDE`, `BROYDEN_SCALE`, `BROYDEN_CAP`)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def choose_anderson(per_clip: dict[str, list[dict]], cands=ANDERSON_CANDIDATES) -> dict[str, Any]:
    """The rule of the module docstring over every frame of every clip."""
    frames = [f for rows in per_clip.values() for f in rows if f["plain"] is not None]
    table = {}
    for r, st in cands:
        key = candidate_key(r, st)
        worse = sum(1 for f in frames if f[key] is None or f[key] > f["plain"])
        ratios = [(f[key] if f[key] is not None else float("inf")) / f["plain"] for f in frames]
        table[key] = {"reg": r, "stall": st, "frames_worse_than_plain": worse,
                      "median_ratio": float(np.median(ratios)), "worst_ratio": float(max(ratios))}  # fmt: skip
    admissible = [t for t in table.values() if t["frames_worse_than_plain"] == 0]
    pool = admissible or sorted(table.values(), key=lambda t: t["frames_worse_than_plain"])[:1]
    best = min(pool, key=lambda t: (t["median_ratio"], t["worst_ratio"], t["reg"], -t["stall"]))
    chosen = {"reg": best["reg"], "stall": best["stall"]}
    return {"table": table, "frames": len(frames), "chosen": chosen, "admissible": bool(admissible)}


def anderson_markdown(res: dict) -> str:
    a = res["anderson"]
    lines = [
        "# Safeguarded Anderson's ridge and stall guard, chosen on real validation frames",
        "",
        f"`{res['stamp']['command']}` ({res['stamp']['date']}, {res['stamp']['wall_s']} s), checkpoint "
        f"`{a['checkpoint']}` at {a['height']}x{a['width']}, {a['frames_per_clip']} frames of each clip from where the "
        f"validation split starts it ({', '.join(f'{k} {v}' for k, v in a['starts'].items())}). Evaluations from zero "
        f"until the relative residual is below 1e-4 (at most {ANDERSON_BUDGET}); rule in `benchmarks/tune.py`.",
        "",
        "| setting | frames needing more than plain (or failing) | median ratio to plain | worst ratio |",
        "|---|---|---|---|",
    ]
    for key, t in a["choice"]["table"].items():
        lines.append(f"| {key} | {t['frames_worse_than_plain']} | {t['median_ratio']:.3f} | {t['worst_ratio']:.3f} |")
    lines += ["", "| clip | frame | plain | " + " | ".join(a["choice"]["table"]) + " |"]
    lines.append("|---|---|---|" + "---|" * len(a["choice"]["table"]))
    for name, rows in a["per_clip"].items():
        for i, f in enumerate(rows):
            cells = " | ".join("fail" if f[k] is None else str(f[k]) for k in ["plain", *a["choice"]["table"]])
            lines.append(f"| {name} | {a['starts'][name] + i} | {cells} |")
    c = a["choice"]["chosen"]
    lines += ["", f"Chosen: reg {c['reg']:g}, stall {c['stall']} (`runtime.solvers.ANDERSON_REG`, `ANDERSON_STALL`)."]
    return "\n".join(lines) + "\n"


def run_anderson(a: argparse.Namespace, command: str, solver: str = "anderson") -> dict[str, Any]:
    """``--anderson N`` (or ``--broyden N`` with ``solver="broyden"``): the study, the choice and the stamp."""
    from benchmarks.convergence import REAL_SPLITS

    t0 = time.time()
    n = getattr(a, solver)
    choose = choose_anderson if solver == "anderson" else choose_broyden
    per_clip = solver_study(Path(a.checkpoint), anderson_frames(n, a.height, a.width), solver)
    facts = {
        "checkpoint": a.checkpoint,
        "height": a.height,
        "width": a.width,
        "frames_per_clip": n,
        "starts": dict(REAL_SPLITS["validation"]),
        "per_clip": per_clip,
        "choice": choose(per_clip),
    }
    stamp = {"command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "wall_s": round(time.time() - t0, 1), "split": "validation"}  # fmt: skip
    return {"stamp": stamp, solver: facts}


def markdown(res: dict) -> str:
    p, r = res["pixel"], res["reset_iters"]
    lines = [
        "# Settings tuned on validation clips",
        "",
        f"`{res['stamp']['command']}` ({res['stamp']['date']}, {res['stamp']['wall_s']} s)",
        "",
        f"## Pixel shot-change rule ({p['clips']} clips, seeds {p['seeds']}, {p['frames']} frames, "
        f"{p['cuts']} cuts, {p['total_frames']} frames)",
        "",
        "| jump x mean | floor | found | missed | false alarms |",
        "|---|---|---|---|---|",
    ]
    row = "| {jump:g} | {floor:g} | {found} | {missed} | {false_alarms} |"
    lines += [row.format(**g) for g in p["grid"]]
    c = p["chosen"]
    lines += ["", "Chosen: jump {jump:g}, floor {floor:g} ({missed} missed, {false_alarms} false alarms).".format(**c)]
    if r:
        lines += ["", f"## --reset-iters at stream k=1 ({r['clips']} clips, seeds {r['seeds']}, {r['checkpoint']})", ""]
        lines += ["| reset iters | stream+reset k=1 mIoU % |", "|---|---|"]
        lines += [f"| {k} | {100 * v:.1f} |" for k, v in r["miou"].items()]
        lines += ["", f"Chosen: --reset-iters {r['chosen']} (smallest within 0.5 points of the best)."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.tune",
        description="Choose the pixel shot-change rule and the --reset-iters advice on validation clips.",
    )
    p.add_argument("--clips", type=int, default=40, help="pixel-rule clips, both scene families (default 40)")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--checkpoint", default="checkpoints/tiny_sur.pt", help="model for the --reset-iters study")
    p.add_argument("--reset-clips", type=int, default=6, help="validation clips for --reset-iters (0: skip)")
    p.add_argument("--data", default="data/tune_clips", help="cache of the pixel-rule clips")
    p.add_argument("--accuracy-data", default="data/accuracy_clips", help="cache of the accuracy benchmark's clips")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--anderson",
        type=int,
        default=0,
        metavar="N",
        help="instead: choose safeguarded Anderson's ridge and stall guard on N real validation frames per clip "
        "(tuning_anderson.*)",
    )
    p.add_argument(
        "--broyden",
        type=int,
        default=0,
        metavar="N",
        help="instead: choose safeguarded Broyden's growth factor and other knobs on N real validation frames per clip "
        "(tuning_broyden.*)",
    )
    return p.parse_args(argv)


def run(a: argparse.Namespace, command: str) -> dict[str, Any]:
    t0 = time.time()
    clips = pixel_clips(Path(a.data), a.clips, a.frames, a.height, a.width)
    changes, cuts = [changes_of(f) for f, _ in clips], [c for _, c in clips]
    grid = [pixel_errors(changes, cuts, j, f) for j in JUMPS for f in FLOORS]
    pixel = {
        "clips": a.clips,
        "seeds": f"{PIXEL_SEED}-{PIXEL_SEED + a.clips - 1}",
        "frames": a.frames,
        "cuts": sum(len(c) for c in cuts),
        "total_frames": sum(len(f) for f, _ in clips),
        "grid": grid,
        "chosen": choose_pixel_rule(grid),
    }
    reset = None
    if a.reset_clips:
        seed = SPLIT_SEEDS["validation"]
        val = prepare_clips(Path(a.accuracy_data), a.reset_clips, a.frames, a.height, a.width, seed)
        miou = tune_reset_iters(Path(a.checkpoint), val)
        reset = {"clips": a.reset_clips, "seeds": f"{seed}-{seed + a.reset_clips - 1}", "checkpoint": a.checkpoint,
                 "miou": miou, "chosen": choose_reset_iters(miou)}  # fmt: skip
    stamp = {"command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "wall_s": round(time.time() - t0, 1), "split": "validation"}  # fmt: skip
    return {"stamp": stamp, "pixel": pixel, "reset_iters": reset}


def main(argv: list[str] | None = None) -> int:
    import torch

    a = parse_args(argv)
    if min(a.clips, a.frames) < 1 or min(a.reset_clips, a.anderson, a.broyden) < 0:
        print("error: --clips and --frames must be >= 1, --reset-clips, --anderson, --broyden >= 0", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, a.threads))
    args = argv if argv is not None else sys.argv[1:]
    command = "python -m benchmarks.tune " + " ".join(shlex.quote(s) for s in args)
    out = Path(a.out)
    try:
        for solver, md in (("anderson", anderson_markdown), ("broyden", broyden_markdown)):
            if getattr(a, solver):
                res = run_anderson(a, command, solver)
                out.mkdir(parents=True, exist_ok=True)
                write_text(out / f"tuning_{solver}.json", json.dumps(res, indent=1))
                write_text(out / f"tuning_{solver}.md", md(res))
                print(md(res))
                return 0
        res = run(a, command)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "tuning.json", json.dumps(res, indent=1))
    write_text(out / "tuning.md", markdown(res))
    print(markdown(res))
    print(f"wrote {out / 'tuning.md'}, {out / 'tuning.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
