"""``--mode mv-interp``: the DEQ state of the frames between two key frames interpolated from both
of them along the codec motion vectors (Jain & Gonzalez), live, with up to ``interval`` frames of
delay.

Why a module of its own: every other mode knows a frame's output when the frame arrives, so one
``Plan`` per frame drives the loop. Here a frame between key frames a and b needs b's state, so
frames are held back: the loop hands each decoded frame to :meth:`InterpPolicy.push`, which
returns the frames that can be emitted now, in frame order (key a as soon as it is solved; when
key b is solved, a+1..b-1 and then b).

Key frames, as :func:`benchmarks.propagation.interp_keys` picks them: frame 0, every
``interval``-th frame after the last key frame, and shot changes (:func:`is_cut`: a P frame coded
mostly intra). Frames without usable vectors (a codec I-frame after frame 0, vectors that span
several frames, no vectors at all) are key frames too: nothing links them to the frame before,
so neither chain can cross them (``interp_keys`` never sees such frames: the benchmark's clips
are one GOP of single-reference P frames). Every key frame is solved by the Pipeline from zero
with ``iters`` iterations (the CLI passes the manifest's f_thres).

The frames between two keys get ``interpolate_segment(key a, key b, their MV pyramids)``. A
segment that ends in a key frame not linked to its predecessor (a shot change), the tail after the
last key frame at the end of the stream, and the frames held back at Ctrl-C are propagated
forward only from key a, frame by frame along the vectors (as ``run_interp`` does). Either way
the state goes through the head engine (:meth:`Pipeline.head_only`), so every frame gets a class
map and one record.

Buffers: the last two key states live in two preallocated flat buffers (a snapshot is one device
copy, and the roles swap instead of copying back), the forward chain in a third; only
``interpolate_segment`` allocates, once per segment, outside the cell's iterations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from runtime.pipeline import BatchResult, Pipeline
from runtime.policy import FrameInfo, Plan, Policy
from runtime.propagation import StateWarper, has_motion, interpolate_segment, is_cut, pyramid_of
from runtime.sources import Frame

SHOT_CHANGE = "shot change (intra-coded frame)"  # the reason mv logs for the same frames
UNLINKED = "key frame (no vectors to the previous frame)"  # codec I-frame, no vectors, or a shot change by pixels


@dataclass
class Emission:
    """One frame ready for the writers: what ``runtime.loop._record`` needs, plus extra fields."""

    frame: Frame
    plan: Plan
    result: BatchResult
    reset: str
    latency_ms: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Held:
    """A frame waiting for the next key frame, with its MV pyramid (computed on arrival)."""

    frame: Frame
    pyramid: list[np.ndarray]


def linked(info: FrameInfo) -> bool:
    """The frame's vectors tie it to the frame before (a P frame that is not a shot change):
    only then can a chain of warps cross from one to the other."""
    return has_motion(info) and not is_cut(info)


class InterpPolicy(Policy):
    """The mv-interp key schedule (``plan``) and its delayed output (``push`` / ``flush``).

    ``plan`` alone is an ordinary policy (key frames solved from zero, other frames no cell), so
    the schedule can be inspected without engines; ``attach`` (called by the loop once the
    engines are loaded) allocates the key buffers on the pipeline's device.
    """

    name = "mv-interp"

    def __init__(self, interval: int, iters: int) -> None:
        if interval < 1:
            raise ValueError(f"key interval must be >= 1, got {interval}")
        if iters < 1:
            raise ValueError(f"key frames need >= 1 iteration, got {iters}")
        self.interval, self.iters = interval, iters
        self.since: int | None = None  # frames since the last key frame (None: no key frame yet)
        self.pipe: Pipeline | None = None
        self.held: list[_Held] = []
        self.latest = -1  # index of the latest frame pushed (for delay_frames)

    @property
    def max_iters(self) -> int:
        return self.iters

    # -- schedule ------------------------------------------------------------------------
    def plan(self, info: FrameInfo, has_state: bool = True) -> Plan:
        """Key frame (solved from zero) or a frame to hold back (no cell, no head yet)."""
        return self._schedule(info, linked(info))

    def _schedule(self, info: FrameInfo, is_linked: bool) -> Plan:
        first = self.since is None
        if first or not is_linked or self.since + 1 >= self.interval:
            self.since = 0
            return Plan(iters=self.iters, start="zero", reason=self._why(info, first, is_linked))
        self.since += 1
        return Plan(iters=0, start="previous", run_cell=False, pixels=False)

    def _why(self, info: FrameInfo, first: bool, is_linked: bool) -> str:
        """Every key frame starts from zero: why this one is a key frame (logged in its record)."""
        if first:
            return ""
        if is_cut(info):
            return SHOT_CHANGE
        if not is_linked:
            return UNLINKED
        return f"key frame (every {self.interval})"

    # -- buffers -------------------------------------------------------------------------
    def attach(self, pipeline: Pipeline, b: int) -> None:
        """Allocate the two key buffers and the forward-chain buffer (batch of one stream)."""
        if pipeline.batch != 1 or b != 0:
            raise ValueError("mv-interp runs one stream per pipeline (batch 1)")
        layout = pipeline.buf.layout
        self.pipe = pipeline
        self.flat = [torch.zeros(layout.total, dtype=layout.dtype, device=pipeline.device) for _ in range(3)]
        self.views = [layout.views(t) for t in self.flat]  # per scale (1, C, h, w)
        self.shapes = [tuple(s[2:]) for s in layout.shapes]
        self.a = 0  # flat[a] holds key a, flat[1 - a] receives key b, flat[2] is the forward chain
        self.warper = StateWarper()

    # -- delayed output ------------------------------------------------------------------
    def push(self, frame: Frame, reason: str = "") -> list[Emission]:
        """Take the next decoded frame; return the frames that can be emitted now, in order.

        ``reason``: the loop's own shot-change verdict (its reset monitor); it makes the frame a
        key frame not linked to the one before."""
        assert self.pipe is not None, "InterpPolicy.attach() was not called"
        self.latest = frame.index
        info = FrameInfo(frame.index, frame.time, frame.key_frame, frame.side)
        is_linked = linked(info) and not reason
        plan = self._schedule(info, is_linked)
        if reason:
            plan.reason = reason
        if not plan.run_cell:  # held frames are linked by construction: their vectors lead back to key a
            self.held.append(_Held(frame, self._pyramid(info)))
            return []
        key = self._solve(frame, plan, info)
        out = []
        if self.held:
            out = self._between(self._pyramid(info)) if is_linked else self._forward()
        self.a = 1 - self.a  # key b becomes key a of the next segment
        return [*out, key]

    def flush(self) -> list[Emission]:
        """End of stream or Ctrl-C: the frames held back, propagated forward from the last key."""
        return self._forward() if self.held else []

    def _pyramid(self, info: FrameInfo) -> list[np.ndarray]:
        m = info.side["motion"]
        return pyramid_of(m, self.shapes)

    def _solve(self, frame: Frame, plan: Plan, info: FrameInfo) -> Emission:
        """A key frame: solved from zero by the pipeline, its state kept as key b."""
        pipe = self.pipe
        assert pipe is not None
        t0 = time.perf_counter()
        res = pipe.run([frame.rgb], [plan], [info])
        with pipe.stream_context():  # ordered with the later warps on the pipeline's stream
            self.flat[1 - self.a].copy_(pipe.buf.state)
        ms = (time.perf_counter() - t0) * 1e3
        return Emission(frame, plan, res, plan.reason, ms, {"delay_frames": 0, "propagation": None})

    def _between(self, pyramid_b: list[np.ndarray]) -> list[Emission]:
        """The held frames from both neighbouring keys (their states all at once, then the head
        per frame); the segment's warp time is shared evenly among its frames."""
        pipe = self.pipe
        assert pipe is not None
        held, self.held = self.held, []
        t0 = time.perf_counter()
        motion: list[Any] = [None, *[h.pyramid for h in held], pyramid_b]
        with pipe.stream_context():
            seg = interpolate_segment(self.views[self.a], self.views[1 - self.a], motion)
            if pipe.stream is not None:
                pipe.stream.synchronize()  # the warps' time belongs to these frames, not the first head
        share = (time.perf_counter() - t0) * 1e3 / len(held)
        return [self._emit(h, seg[p], "bidirectional", share) for p, h in enumerate(held, start=1)]

    def _forward(self) -> list[Emission]:
        """The held frames by forward warps of key a only (no later key linked to them)."""
        pipe = self.pipe
        assert pipe is not None
        chain = self.views[2]
        sample = [v[0] for v in chain]  # (C, h, w): what StateWarper warps in place
        self.warper.ensure(sample)
        held, self.held = self.held, []
        out = []
        with pipe.stream_context():
            self.flat[2].copy_(self.flat[self.a])
            for h in held:
                t0 = time.perf_counter()
                self.warper.load(h.pyramid)
                self.warper.warp_(sample)
                out.append(self._emit(h, chain, "forward", (time.perf_counter() - t0) * 1e3))
        return out

    def _emit(self, h: _Held, state: list[torch.Tensor], how: str, warp_ms: float) -> Emission:
        """Head on one held frame's state -> its emission (delay: frames that arrived after it)."""
        pipe = self.pipe
        assert pipe is not None
        t0 = time.perf_counter()
        res = pipe.head_only(state)
        total = warp_ms + (time.perf_counter() - t0) * 1e3
        done = sum(res.stage_ms.get(k, 0.0) for k in ("head", "head_decode", "download"))
        res.stage_ms["interp"] = max(total - done, 0.0)
        extra = {"delay_frames": self.latest - h.frame.index, "propagation": how}
        return Emission(h.frame, Plan(iters=0, start="previous", run_cell=False, pixels=False), res, "", total, extra)


__all__ = ["Emission", "InterpPolicy", "linked"]
