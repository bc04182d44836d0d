"""The tuning rules, and the runtime's defaults held to what the committed tuning chose."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from benchmarks.tune import (
    broyden_key,
    candidate_key,
    choose_anderson,
    choose_broyden,
    choose_pixel_rule,
    choose_reset_iters,
    markdown,
    pixel_errors,
    solver_settings,
)
from runtime.modes import ResetMonitor
from runtime.solvers import (
    ANDERSON_REG,
    ANDERSON_STALL,
    BROYDEN_CAP,
    BROYDEN_GROWTH,
    BROYDEN_MEMORY,
    BROYDEN_SCALE,
    BROYDEN_SLIDE,
    anderson,
    broyden,
)

ROOT = Path(__file__).resolve().parents[2]


def test_pixel_errors_counts_against_known_cuts() -> None:
    calm = [None] + [5.0 + (t % 3) for t in range(1, 30)]
    cut = list(calm)
    cut[12] = 60.0
    pan = list(calm)
    pan[20:] = [25.0] * 10  # a lasting rise: fires once at most, then it is the video's level
    got = pixel_errors([cut, pan], [[12], []], jump=3.0, floor=20.0)
    assert (got["found"], got["missed"]) == (1, 0) and got["false_alarms"] <= 1
    high = pixel_errors([cut], [[12]], jump=3.0, floor=70.0)  # floor above the cut's change: missed
    assert (high["found"], high["missed"]) == (0, 1)


def test_choice_rules() -> None:
    rows = [{"jump": j, "floor": f, "missed": int(j >= 4), "false_alarms": int(j <= 2), "found": 1}
            for j in (2.0, 2.5, 3.0, 3.5, 4.0) for f in (10.0, 20.0)]  # fmt: skip
    chosen = choose_pixel_rule(rows)  # zero-error region: 2.5..3.5; its median setting
    assert (chosen["jump"], chosen["floor"]) == (3.0, 20.0)
    assert choose_reset_iters({1: 0.80, 2: 0.846, 4: 0.85, 8: 0.849}) == 2
    assert choose_reset_iters({1: 0.80, 2: 0.83, 4: 0.85}) == 4


def test_runtime_defaults_are_the_committed_tuning_choice() -> None:
    res = json.loads((ROOT / "benchmarks" / "results" / "tuning.json").read_text())
    assert res["stamp"]["split"] == "validation"
    defaults = inspect.signature(ResetMonitor).parameters
    chosen = res["pixel"]["chosen"]
    assert defaults["change_jump"].default == chosen["jump"]
    assert defaults["change_floor"].default == chosen["floor"]
    assert "Chosen: --reset-iters" in markdown(res)
    readme = (ROOT / "README.md").read_text()
    assert f"--reset-iters {res['reset_iters']['chosen']}" in readme


def test_anderson_rule() -> None:
    """Admissible: never more evaluations than plain (nor a failure) where plain reached the tolerance; then the
    lowest median ratio, the lowest worst ratio, the smallest ridge, the stall guard on."""
    k0, k1, k3, k1s = (candidate_key(*c) for c in ((0.0, 0), (0.1, 0), (0.3, 0), (0.1, 20)))
    per_clip = {
        "a": [
            {"plain": 40, k0: 30, k1: 32, k3: 36, k1s: 32},
            {"plain": 100, k0: 160, k1: 80, k3: 70, k1s: 80},  # the unridged solver loses to plain here
        ],
        "b": [{"plain": None, k0: None, k1: 250, k3: None, k1s: 250}],  # plain failed: not counted
    }
    cands = ((0.0, 0), (0.1, 0), (0.3, 0), (0.1, 20))
    got = choose_anderson(per_clip, cands)
    assert got["frames"] == 2 and got["table"][k0]["frames_worse_than_plain"] == 1
    assert got["table"][k1]["median_ratio"] == pytest.approx((0.8 + 0.8) / 2)
    # 0.3: median ratio (0.9 + 0.7) / 2 = 0.8 too but worst 0.9; (0.1, 20) ties (0.1, 0): the guard on wins
    assert got["chosen"] == {"reg": 0.1, "stall": 20} and got["admissible"]
    lose = {"a": [{"plain": 10, k0: 12, k1: None}]}
    got = choose_anderson(lose, ((0.0, 0), (0.1, 0)))
    assert got["chosen"] == {"reg": 0.0, "stall": 0} and not got["admissible"]  # the fewest frames worse than plain


def test_runtime_anderson_settings_are_the_committed_choice() -> None:
    res = json.loads((ROOT / "benchmarks" / "results" / "tuning_anderson.json").read_text())
    assert res["stamp"]["split"] == "validation" and "--anderson" in res["stamp"]["command"]
    chosen = res["anderson"]["choice"]["chosen"]
    assert (ANDERSON_REG, ANDERSON_STALL) == (chosen["reg"], chosen["stall"])
    params = inspect.signature(anderson).parameters
    assert (params["reg"].default, params["stall"].default) == (ANDERSON_REG, ANDERSON_STALL)


def test_broyden_rule() -> None:
    """Admissible: no failure where plain reached the tolerance and, with knobs, no clip with a higher median than
    the same factor without them; then the lowest worst clip's median over plain's, the lowest median ratio, the
    lowest worst ratio, the fewest knobs moved from off, the smallest growth factor (raw Broyden, no safeguard, ranks
    after every factor)."""
    off = {"memory": 0, "slide": False, "scale": 1.0, "cap": 0.0}
    raw, g2, g10 = (broyden_key(g) for g in (None, 2.0, 10.0))
    per_clip = {
        "a": [{"plain": 40, raw: 30, g2: 30, g10: 30}, {"plain": 100, raw: 60, g2: None, g10: 60}],
        "b": [{"plain": None, raw: None, g2: 250, g10: None}],  # plain failed: not counted
    }
    got = choose_broyden(per_clip, (None, 2.0, 10.0))
    assert got["frames"] == 2 and got["table"][g2]["fails"] == 1 and got["admissible"]
    assert got["table"][raw]["median_ratio"] == pytest.approx((0.75 + 0.6) / 2)
    assert got["table"][raw]["worst_clip_ratio"] == pytest.approx(45 / 70)
    assert got["chosen"] == {"growth": 10.0, **off}  # ties raw: the safeguard wins
    got = choose_broyden({"a": [{"plain": 40, raw: 30, g10: 32}]}, (None, 10.0))
    assert got["chosen"] == {"growth": None, **off}  # a lower median wins over the safeguard
    capped, short = {"growth": 10.0, "cap": 2.0}, {"growth": 10.0, "memory": 5}
    kc, ks = broyden_key(capped), broyden_key(short)
    assert (kc, ks) == ("growth 10, cap 2", "growth 10, memory 5")
    assert broyden_key({"growth": 10.0, "memory": 20, "slide": True}) == "growth 10, memory 20, slide"
    # clip a: the cap ties; clip b: it gains. The short memory gains far more on b, the pooled median too, but loses a
    per_clip = {
        "a": [{"plain": 40, g10: 32, kc: 32, ks: 34}],
        "b": [{"plain": 30, g10: 26, kc: 24, ks: 18}, {"plain": 30, g10: 26, kc: 24, ks: 18}],
    }
    got = choose_broyden(per_clip, (10.0, capped, short))
    assert got["table"][ks]["clips_lost"] == 1 and got["table"][kc]["clips_lost"] == 0
    assert got["table"][ks]["median_ratio"] < got["table"][kc]["median_ratio"]
    assert got["chosen"] == {**off, **capped}  # worst clip 0.8 (a) against 26 / 30 without the cap
    per_clip["b"] = [{"plain": 30, g10: 24, kc: 24, ks: 18}]  # no gain anywhere: the fewer knobs win
    assert choose_broyden(per_clip, (10.0, capped, short))["chosen"] == {"growth": 10.0, **off}


def test_runtime_broyden_growth_is_the_committed_choice() -> None:
    res = json.loads((ROOT / "benchmarks" / "results" / "tuning_broyden.json").read_text())
    assert res["stamp"]["split"] == "validation" and "--broyden" in res["stamp"]["command"]
    chosen = res["broyden"]["choice"]["chosen"]
    runtime = {"growth": BROYDEN_GROWTH, "memory": BROYDEN_MEMORY, "slide": BROYDEN_SLIDE, "scale": BROYDEN_SCALE}
    assert chosen == {**runtime, "cap": BROYDEN_CAP}
    params = inspect.signature(broyden).parameters
    assert all(params[k].default == v for k, v in chosen.items())


@pytest.mark.parametrize("solver, fn", [("anderson", anderson), ("broyden", broyden)])
def test_one_study_serves_both_solvers(solver: str, fn) -> None:
    """``--anderson`` and ``--broyden`` run one study (``solver_study``): its settings are the committed results
    file's rows, in the same order (the format is unchanged), and each is a keyword of the runtime's solver."""
    settings = solver_settings(solver)
    res = json.loads((ROOT / "benchmarks" / "results" / f"tuning_{solver}.json").read_text())
    assert list(settings) == list(res[solver]["choice"]["table"])
    params = inspect.signature(fn).parameters
    assert all(k in params for kw in settings.values() for k in kw)
    if solver == "broyden":
        assert settings[broyden_key(None)] == {"safeguard": False}  # raw Broyden: no safeguard
