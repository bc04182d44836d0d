"""Decoded frames that only the cyclic garbage collector can free, freed every few frames (issue #30).

PyAV links a frame and its side data both ways (``Frame.side_data`` keeps the container, the container and each
entry keep the frame), so every frame whose motion vectors the vector modes read is freed, with its decoder
buffers, only by a garbage collection, never when the loop drops it. CPython collects its youngest generation about
every hundred frames here, and promotes the frames still in flight to older generations, whose collections wait for
a quarter as many new objects as the process already holds (torch alone: ~185 000). Measured in scratch runs on
``benchmarks.host``'s null engines: mv n=5 on a 1280x720 H.264 clip kept 100-290 decoded frames alive through a run
of 1080, and 773 (over 1 GB) in the fourth of four runs in one process.

:class:`CycleCollector` freezes what exists when the loop starts (``gc.freeze``: long-lived, never traversed again)
and runs one full collection whenever the frames decoded since the last one hold ``budget`` bytes of pictures; it then
traverses only the run's own objects (about 700: 0.27 ms) besides freeing the frames themselves. Same measurement,
one collection every 16 frames: at most 42 frames alive, 467 MB peak against 1327-2134 MB. A process that froze
objects itself (``gc.freeze`` before forking workers, say) keeps its own freezing: the collector then only collects.
"""

from __future__ import annotations

import gc
from types import TracebackType

COLLECT_BYTES = 48 << 20  # pictures between collections, 3 bytes a pixel: 17 frames of 1280x720, 8 of 1920x1080


class CycleCollector:
    """``with CycleCollector(enabled) as c:`` around the frame loop, ``c.tick(nbytes)`` after each frame."""

    def __init__(self, enabled: bool = True, budget: int = COLLECT_BYTES) -> None:
        if budget < 1:
            raise ValueError(f"budget must be >= 1 byte, got {budget}")
        self.enabled, self.budget = enabled, budget
        self.pending = 0  # picture bytes decoded since the last collection
        self.collections = 0
        self.froze = False  # whether this collector froze (and so unfreezes) the objects alive at its start

    def __enter__(self) -> CycleCollector:
        if self.enabled and gc.get_freeze_count() == 0:  # nobody else manages freezing in this process
            gc.collect()  # garbage made before the loop (an earlier run's frames) is freed, not frozen
            gc.freeze()
            self.froze = True
        return self

    def tick(self, nbytes: int) -> None:
        """A frame of ``nbytes`` decoded bytes done: once they add up to the budget, free what only the cyclic
        collector can."""
        self.pending += nbytes
        if self.enabled and self.pending >= self.budget:
            gc.collect()
            self.pending = 0
            self.collections += 1

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self.froze:
            gc.unfreeze()  # the objects frozen at the start are the collector's again
            self.froze = False


def reads_side_data(source: object) -> bool:
    """Whether a source reads its frames' side data (a side hook: the motion-vector modes' sources)."""
    return getattr(source, "side_hook", None) is not None


__all__ = ["COLLECT_BYTES", "CycleCollector", "reads_side_data"]
