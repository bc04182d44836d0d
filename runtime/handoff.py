"""A bounded hand-off from one producer thread to one consumer thread that wakes the consumer once per batch.

Why: ``queue.Queue`` wakes its consumer for every item, and each wake-up is a thread switch and a trip through
the GIL. With engines that cost next to nothing (the host alone, ``python -m benchmarks.host``), a writer thread
that only took records off a ``queue.Queue`` and wrote nothing cost the vector modes about a tenth of their frame
rate on two cores. Here the consumer sleeps until ``batch`` items wait (or ``linger`` seconds pass, so a slow
stream's records still land promptly), then takes them all at once.
"""

from __future__ import annotations

import collections
import threading
from typing import Any


class HandOff:
    """``put`` appends (blocking while ``maxsize`` items wait: back-pressure, not memory); ``take`` returns every
    waiting item in order, waiting for a batch, the linger time or ``close``. One producer, one consumer."""

    def __init__(self, maxsize: int = 8, batch: int = 1, linger: float = 0.05) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.items: collections.deque[Any] = collections.deque()  # append / popleft are atomic
        self.maxsize, self.batch, self.linger = max(maxsize, batch), batch, linger
        self.ready = threading.Event()  # set: a batch (or the end) waits for the consumer
        self.room = threading.Condition()  # the consumer took items: a blocked producer may go on
        self.blocked = False

    def put(self, item: Any) -> None:
        if len(self.items) >= self.maxsize:
            self._wait_for_room()
        self.items.append(item)
        if len(self.items) >= self.batch and not self.ready.is_set():
            self.ready.set()

    def _wait_for_room(self) -> None:
        with self.room:
            self.blocked = True
            self.ready.set()
            while len(self.items) >= self.maxsize:
                self.room.wait(0.1)  # bounded: a consumer that drained between the test and the wait is seen
            self.blocked = False

    def close(self, last: Any = None) -> None:
        """Hand over ``last`` (the consumer's end marker) and wake the consumer now."""
        self.items.append(last)
        self.ready.set()

    def take(self) -> list[Any]:
        """The waiting items, oldest first (at least one): once a batch waits, or the linger time passed with
        fewer, or at ``close``."""
        while True:
            self.ready.wait(self.linger)
            self.ready.clear()  # cleared before the drain: an item put after it sets it again
            if self.items:
                break
        out = []
        while self.items:
            out.append(self.items.popleft())
        if self.blocked:
            with self.room:
                self.room.notify()
        return out
