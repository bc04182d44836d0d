"""Policies, the budget controller, the reset monitor and the trtexec-style statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.modes import (
    Budgeted,
    FrameInfo,
    FramePolicy,
    Outcome,
    ResetMonitor,
    StreamPolicy,
    frame_change,
    make_policy,
)
from runtime.stats import describe, format_summary, percentile, summarize


def test_frame_and_stream_plans():
    assert FramePolicy(20).plan(FrameInfo(5), True).start == "zero"
    s = StreamPolicy(2, reset_iters=8)
    first, later = s.plan(FrameInfo(0), False), s.plan(FrameInfo(1), True)
    assert (first.start, first.iters) == ("zero", 8) and (later.start, later.iters) == ("previous", 2)
    with pytest.raises(ValueError, match="unknown mode"):
        make_policy("nope", 2)


def test_budget_controller_tracks_the_cost_model():
    """Simulated frames cost rest + iters * per_iter ms: the controller settles on the largest
    count that fits the budget (independent arithmetic: floor((budget - rest) / per_iter))."""
    rest, per_iter, budget = 3.0, 1.5, 12.0
    pol = Budgeted(StreamPolicy(2), budget, min_iters=1, max_iters=20)
    chosen = []
    for i in range(40):
        plan = pol.plan(FrameInfo(i), i > 0)
        cell = plan.iters * per_iter
        pol.observe(FrameInfo(i), Outcome(plan.iters, 0.1, cell, rest + cell))
        chosen.append(plan.iters)
    assert chosen[-1] == math.floor((budget - rest) / per_iter)
    assert rest + chosen[-1] * per_iter <= budget


def test_reset_monitor():
    m = ResetMonitor(jump=4.0)
    for r in (0.05, 0.06, 0.05, 0.055):
        assert m.after(r, warm=True) == ""
        m.accept(r, warm=True)
    assert "shot change" in m.after(0.5, warm=True)
    assert "divergence" in m.after(float("nan"), warm=True)
    assert m.before(FrameInfo(3, key_frame=True), 80.0).startswith("key frame")
    assert m.before(FrameInfo(3, key_frame=False), None) == ""
    g = ResetMonitor(jump=100.0, grow_frames=3, grow_limit=0.2)
    reasons = []
    for r in (0.1, 0.3, 0.6, 0.9, 1.2):
        reasons.append(g.after(r, warm=True))
        g.accept(r, warm=True)
    assert any("grew" in x for x in reasons)


def test_divergence_needs_a_residual_worse_than_a_start_from_zero():
    """The bikes.mp4 residuals of stream k = 1 before its two false "divergence" resets (0.44 -> 0.54 over fast
    motion) are no divergence by default; the same growth past 1.0 (worse than starting from zero) is."""

    def reasons(trace: list[float]) -> list[str]:
        m = ResetMonitor(jump=100.0)
        out = []
        for r in trace:
            out.append(m.after(r, warm=True))
            m.accept(r, warm=True)
        return out

    assert not any(reasons([0.44, 0.46, 0.47, 0.49, 0.50, 0.505, 0.515, 0.54]))
    got = reasons([0.8, 0.9, 1.05, 1.2, 1.4])
    assert got[-1].startswith("divergence (residual grew 3 frames")


def test_reset_monitor_sees_cuts_coded_as_p_frames():
    """Frame differences measured on our benchmark clips: 3-13 within a shot, 48-67 at a cut (a P frame)."""
    m = ResetMonitor()
    changes = [5.0, 4.0, 5.0, 6.0, 5.0, 48.0, 8.0, 9.0, 8.0]
    got = [m.before(FrameInfo(i + 1), c) for i, c in enumerate(changes)]
    assert [bool(r) for r in got] == [False] * 5 + [True] + [False] * 3
    assert got[5].startswith("shot change (frame difference 48")
    m.clear()  # a reset drops the residual statistics, not the video's motion
    assert m.before(FrameInfo(20), 60.0).startswith("shot change")
    calm = ResetMonitor()
    assert [calm.before(FrameInfo(i), 2.0) for i in range(3)] == ["", "", ""]
    assert calm.before(FrameInfo(3), 19.0) == ""  # over 4x the mean, but under the floor of 20
    fast = ResetMonitor()
    rises = [fast.before(FrameInfo(i), c) for i, c in enumerate([2.0, 2.0, 2.0, 2.0, 30.0, 30.0, 30.0, 30.0])]
    assert sum(bool(r) for r in rises) == 1  # a lasting rise (a fast pan) fires once
    quick = ResetMonitor()  # a cut stays out of the mean, so a second cut three frames later is seen too
    fired = [bool(quick.before(FrameInfo(i), c)) for i, c in enumerate([5.0, 5.0, 5.0, 5.0, 50.0, 6.0, 5.0, 30.0, 6.0])]
    assert [i for i, f in enumerate(fired) if f] == [4, 7]


@pytest.mark.parametrize("seed", [910003, 910011, 910031, 910001])  # cuts at 15, 20 (a fast plain clip), 13; none
def test_reset_monitor_on_generated_clips(seed):
    """Every cut of the scene generator, and only the cuts, fire the pixel rule."""
    from export.synthetic import render_clip_with_meta

    frames, _, _, meta = render_clip_with_meta(seed, 24, 256, 512, variant="plain")
    m = ResetMonitor()
    fired = {t for t in range(1, len(frames)) if m.before(FrameInfo(t), frame_change(frames[t - 1], frames[t]))}
    assert fired == set(meta["cuts"])


def test_stats_against_numpy():
    rng = np.random.default_rng(0)
    v = rng.gamma(2.0, 3.0, size=997).tolist()
    d = describe(v)
    assert d["mean"] == pytest.approx(np.mean(v)) and d["median"] == pytest.approx(np.median(v))
    assert d["std"] == pytest.approx(np.std(v))
    for p in (90, 95, 99):  # nearest rank == numpy's "inverted_cdf"
        assert percentile(v, p) == pytest.approx(np.percentile(v, p, method="inverted_cdf"))
    s = summarize(v, wall_s=2.0, gpu_ms=[1.0] * 10)
    assert s["throughput_fps"] == pytest.approx(997 / 2.0)
    assert s["warnings"] == []  # CV is judged on GPU compute time when present (here 0)
    noisy = summarize(v, wall_s=2.0)
    assert noisy["warnings"] and "coefficient of variation" in noisy["warnings"][0]
    text = format_summary(noisy)
    assert "Throughput" in text and "percentile(99%)" in text and "[W]" in text
    assert summarize([5.0, 5.05, 4.95], 1.0)["warnings"] == []
