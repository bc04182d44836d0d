"""The policy interface: what a mode sees of a frame, what it asks the loop to do, what it learns.

Why a module of its own: every mode (``runtime.modes``, ``runtime.propagation``,
``runtime.interp``) implements :class:`Policy`, and ``runtime.modes`` builds all of them
(``make_policy``); with the interface here, the modes import it and ``runtime.modes`` imports
the modes, and no two modules import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class FrameInfo:
    """What a policy may look at before the frame runs (no pixels: those are on the device)."""

    index: int
    time: float | None = None
    key_frame: bool = False
    side: dict[str, Any] = field(default_factory=dict)  # e.g. codec motion vectors


# warp(state views of one stream, each (C, H, W), frame info) -> None, in place on the start state
WarpHook = Callable[[list[Tensor], FrameInfo], None]


@dataclass
class Plan:
    """One frame's work: start from zero or the previous state, warp it, run ``iters`` steps."""

    iters: int
    start: str = "previous"  # "zero" | "previous"
    run_cell: bool = True
    warp: WarpHook | None = None
    reason: str = ""  # why the state was reset (logged), empty otherwise
    # the engines read the frame's pixels (injection, or a FlowNet in the warp); False for frames propagated by the
    # codec's motion alone: the pipeline uploads nothing for them
    pixels: bool = True


@dataclass
class Outcome:
    """What a policy learns after the frame (feeds adaptive policies and controllers)."""

    iters: int
    residual: float
    cell_ms: float
    total_ms: float
    reset: str = ""


class Policy:
    """Base policy; subclasses override ``plan`` (and ``observe`` if they adapt)."""

    name = "base"

    def plan(self, info: FrameInfo, has_state: bool) -> Plan:
        raise NotImplementedError

    def observe(self, info: FrameInfo, outcome: Outcome) -> None:
        """Called once per frame after it ran."""

    @property
    def max_iters(self) -> int:
        """Most iterations a frame can ask for (sizes the residual trace once)."""
        return 1
