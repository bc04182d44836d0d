"""Modes are policies: per frame they decide the start state, the iteration count, whether the
cell runs at all, and an optional warp of the state, so one loop executes every mode.

``frame`` (z = 0, N iterations) and ``stream`` (StreamDEQ: warm start from the previous
frame's state, k iterations) live here. Propagation modes (dff, mv, stream-mv) plug in by
returning a ``Plan`` with ``warp`` set (and ``run_cell=False`` on frames they only propagate);
the loop does not change. mv-interp, whose output waits for the next key frame, is the one
exception (``runtime.interp``). ``Budgeted`` wraps any policy with a latency controller.

The interface every policy implements (``FrameInfo``, ``Plan``, ``Outcome``, ``Policy``) is
:mod:`runtime.policy` (importable from here too); :func:`make_policy` here builds every mode's
policy, so this module imports the propagation modes and they import only the interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from kernels import mvhost
from runtime.policy import FrameInfo, Outcome, Plan, Policy, WarpHook
from runtime.propagation import PROPAGATION_MODES, make_propagation_policy


class FramePolicy(Policy):
    """Per-frame DEQ baseline: every frame starts from z = 0 and runs N iterations."""

    name = "frame"

    def __init__(self, iters: int) -> None:
        self.iters = iters

    def plan(self, info: FrameInfo, has_state: bool) -> Plan:
        return Plan(iters=self.iters, start="zero")

    @property
    def max_iters(self) -> int:
        return self.iters


class StreamPolicy(Policy):
    """StreamDEQ: start from the previous frame's state and run k iterations. The first frame
    (and a frame after a reset) starts from zero with ``reset_iters`` (default k, as the paper)."""

    name = "stream"

    def __init__(self, iters: int, reset_iters: int | None = None) -> None:
        self.iters = iters
        self.reset_iters = reset_iters or iters

    def plan(self, info: FrameInfo, has_state: bool) -> Plan:
        if not has_state:
            return Plan(iters=self.reset_iters, start="zero", reason="" if info.index == 0 else "no state")
        return Plan(iters=self.iters, start="previous")

    @property
    def max_iters(self) -> int:
        return max(self.iters, self.reset_iters)


class Budgeted(Policy):
    """Choose the iterations per frame so the frame latency stays under ``budget_ms``.

    Keeps running means (EMA) of the cost of one cell iteration and of everything else per
    frame, and asks for floor((budget - rest) / per_iter) iterations, clamped to
    [min_iters, max_iters]. In stream mode, frames that start from zero (first frame, resets)
    keep the wrapped policy's count.
    """

    def __init__(self, inner: Policy, budget_ms: float, min_iters: int = 1, max_iters: int = 20, ema: float = 0.2):
        self.inner, self.budget_ms = inner, budget_ms
        self.min_iters, self._max, self.ema = min_iters, max_iters, ema
        self.per_iter_ms: float | None = None
        self.rest_ms: float | None = None
        self.name = f"{inner.name}+budget"

    def choose(self) -> int:
        if self.per_iter_ms is None or self.rest_ms is None:
            return self.min_iters
        n = int((self.budget_ms - self.rest_ms) / max(self.per_iter_ms, 1e-6) + 1e-6)
        return max(self.min_iters, min(self._max, n))

    def plan(self, info: FrameInfo, has_state: bool) -> Plan:
        plan = self.inner.plan(info, has_state)
        if plan.run_cell and (plan.start == "previous" or isinstance(self.inner, FramePolicy)):
            plan.iters = self.choose()
        return plan

    def observe(self, info: FrameInfo, outcome: Outcome) -> None:
        self.inner.observe(info, outcome)
        if outcome.iters <= 0:
            return
        per, rest = outcome.cell_ms / outcome.iters, max(outcome.total_ms - outcome.cell_ms, 0.0)
        a = self.ema
        self.per_iter_ms = per if self.per_iter_ms is None else (1 - a) * self.per_iter_ms + a * per
        self.rest_ms = rest if self.rest_ms is None else (1 - a) * self.rest_ms + a * rest

    @property
    def max_iters(self) -> int:
        return max(self._max, self.inner.max_iters)


def frame_change(a: np.ndarray | None, b: np.ndarray, step: int = 8) -> float | None:
    """Mean absolute pixel difference (0..255) on a 1/``step`` subsample: cheap shot-change evidence, read
    on the host from the decoded frames before the GPU sees them (``step=1``: ``a`` and ``b`` are already the
    subsample, ``Frame.thumb``)."""
    if a is None or a.shape != b.shape:
        return None
    if step == 1:  # the loop's case: one C call that keeps the GIL (numpy's five each let it go, issue #30)
        got = mvhost.absdiff_mean(a, b)
        if got is not None:
            return got
    return float(np.abs(a[::step, ::step].astype(np.int16) - b[::step, ::step].astype(np.int16)).mean())


class ResetMonitor:
    """Decides when a stream's state must be dropped, and says why (the reason is logged).

    - divergence: a non-finite residual, or a residual that grew over ``grow_frames`` frames
      in a row to above ``grow_limit`` (1.0: the relative residual of a start from zero is exactly 1,
      so only above it is the warm state worse than none; at k = 1 on fast real footage the residual
      creeps over 0.5 while the state is fine, and the earlier limit 0.5 reset it to a residual of 1);
    - shot change, after the frame ran: the residual of a warm-started frame jumps above
      ``jump`` times its running mean (the previous state belongs to another scene);
    - shot change, before it runs, from the pixels (``frame_change``: mean absolute difference
      from the previous frame, 0..255): a codec key frame that changed by more than
      ``key_change``, or (once 3 changes were seen) any frame whose change exceeds both
      ``change_floor`` and ``change_jump`` times the running mean of the stream's changes. A
      cut stays out of that mean; a second jump right after one is taken as the video's new
      level (a fast pan starting), so a lasting rise fires once. The second catches cuts
      that encoders code as P frames (x264 with ``scenecut=0``, as our motion-vector encodes
      use), which the residual rule misses at k = 1: one iteration from a stale state moves
      little, so its step residual only grows ~3x there. On 80 generated clips (seeds 910000-39,
      both scene families) 3x finds all 12 cuts (4x missed one in a fast-moving clip) with no
      false alarm in 2308 frames: within a shot the change stays under 17, at a cut it is 42+.
    """

    def __init__(
        self,
        jump: float = 4.0,
        grow_frames: int = 3,
        grow_limit: float = 1.0,
        key_change: float = 40.0,
        change_jump: float = 3.0,
        change_floor: float = 20.0,
    ) -> None:
        self.jump, self.grow_frames, self.grow_limit, self.key_change = jump, grow_frames, grow_limit, key_change
        self.change_jump, self.change_floor = change_jump, change_floor
        self.mean: float | None = None
        self.seen = 0
        self.grew = 0
        self.last: float | None = None
        self.change_mean: float | None = None  # the video's motion, not the state's: survives clear()
        self.change_seen = 0
        self.change_jumped_last = False

    def before(self, info: FrameInfo, frame_change: float | None) -> str:
        if frame_change is None:
            return ""
        mean = self.change_mean
        jumped = mean is not None and self.change_seen >= 3
        jumped = jumped and frame_change > max(self.change_floor, self.change_jump * mean)
        if jumped and self.change_jumped_last:
            # Two jumps in a row: the video got busier (a fast pan), not a cut; that is its new level.
            jumped, self.change_mean = False, frame_change
        elif not jumped:  # a cut stays out of the mean, so a second cut soon after is still seen
            self.change_mean = frame_change if mean is None else 0.8 * mean + 0.2 * frame_change
        self.change_jumped_last = jumped
        self.change_seen += 1
        if info.key_frame and frame_change > self.key_change:
            return f"key frame with large change ({frame_change:.0f})"
        if jumped:
            return f"shot change (frame difference {frame_change:.0f} > {self.change_jump:g} x mean {mean:.1f})"
        return ""

    def after(self, residual: float, warm: bool) -> str:
        if residual != residual or residual in (float("inf"), float("-inf")):
            return "divergence (non-finite residual)"
        if not warm:
            return ""
        reason = ""
        if self.last is not None and residual > self.last and residual > self.grow_limit:
            self.grew += 1
            if self.grew >= self.grow_frames:
                reason = f"divergence (residual grew {self.grew} frames to {residual:.3g})"
        else:
            self.grew = 0
        if not reason and self.mean is not None and self.seen >= 3 and residual > self.jump * self.mean:
            reason = f"shot change (residual {residual:.3g} > {self.jump:g} x mean {self.mean:.3g})"
        return reason

    def accept(self, residual: float, warm: bool) -> None:
        """Record a frame that was kept (warm frames only feed the running mean)."""
        self.last = residual
        if warm:
            self.seen += 1
            self.mean = residual if self.mean is None else 0.8 * self.mean + 0.2 * residual

    def clear(self) -> None:
        self.mean, self.seen, self.grew, self.last = None, 0, 0, None


RESET_CAUSES = (  # reason prefix -> cause counted in the summary (the record keeps the full reason)
    ("shot change (frame difference", "shot change (pixels)"),
    ("shot change (residual", "shot change (residual)"),
    ("shot change (intra-coded", "shot change (intra-coded frame)"),
    ("key frame with large change", "shot change (key frame)"),
    ("divergence", "divergence"),
    ("key frame", "key frame"),
    ("no state", "no state"),
)


def reset_cause(reason: str) -> str:
    """The cause of a from-zero start, from its logged reason (e.g. "shot change (pixels)", "key frame")."""
    for prefix, cause in RESET_CAUSES:
        if reason.startswith(prefix):
            return cause
    return reason.split(" (")[0]


def reset_counts(resets: list[dict[str, Any]]) -> dict[str, int]:
    """Resets by cause, for the summary: ``[{"frame": 3, "reason": ...}, ...]`` -> ``{cause: count}``."""
    out: dict[str, int] = {}
    for r in resets:
        cause = reset_cause(str(r.get("reason", "")))
        out[cause] = out.get(cause, 0) + 1
    return out


def make_policy(
    mode: str,
    iters: int,
    reset_iters: int | None = None,
    budget_ms: float | None = None,
    max_iters: int = 20,
    key_interval: int = 5,
    key_start: str = "previous",
) -> Policy:
    """The CLI's ``--mode`` -> policy (extend the table for new modes)."""
    table: dict[str, Callable[[], Policy]] = {
        "frame": lambda: FramePolicy(iters),
        "stream": lambda: StreamPolicy(iters, reset_iters),
    }
    for name in PROPAGATION_MODES:
        table[name] = lambda name=name: make_propagation_policy(name, iters, key_interval, reset_iters, key_start)
    if mode not in table:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(table)}")
    policy = table[mode]()
    if budget_ms is not None:
        policy = Budgeted(policy, budget_ms, min_iters=1, max_iters=max(max_iters, iters))
    return policy


# The interface is defined in runtime.policy; these names stay importable from here.
__all__ = [
    "Budgeted",
    "FrameInfo",
    "FramePolicy",
    "Outcome",
    "Plan",
    "Policy",
    "ResetMonitor",
    "StreamPolicy",
    "WarpHook",
    "frame_change",
    "make_policy",
    "reset_cause",
    "reset_counts",
]
