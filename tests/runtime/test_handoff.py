"""runtime.handoff: order, batching, linger, back-pressure and the end marker, against a consumer thread."""

from __future__ import annotations

import threading
import time

import pytest

from runtime.handoff import HandOff


def _consume(h: HandOff, got: list, takes: list) -> threading.Thread:
    def work() -> None:
        while True:
            batch = h.take()
            takes.append(len(batch))
            for item in batch:
                if item is None:
                    return
                got.append(item)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t


def test_every_item_arrives_once_in_order_across_batches() -> None:
    h, got, takes = HandOff(maxsize=12, batch=4, linger=0.01), [], []
    t = _consume(h, got, takes)
    for i in range(1000):
        h.put(i)
        if i % 97 == 0:
            time.sleep(0.003)  # let the linger hand over partial batches too
    h.close()
    t.join(5)
    assert not t.is_alive()
    assert got == list(range(1000))


def test_a_batch_wakes_the_consumer_before_the_linger_time() -> None:
    h, got, takes = HandOff(maxsize=8, batch=4, linger=30.0), [], []
    t = _consume(h, got, takes)
    for i in range(3):
        h.put(i)
    time.sleep(0.2)
    assert got == []  # fewer than a batch, and the linger is long: still waiting
    h.put(3)
    deadline = time.monotonic() + 5
    while len(got) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [0, 1, 2, 3]
    assert takes[0] == 4  # one wake-up took the whole batch
    h.close()
    t.join(5)


def test_fewer_than_a_batch_arrive_after_the_linger_time() -> None:
    h, got, takes = HandOff(maxsize=64, batch=16, linger=0.05), [], []
    t = _consume(h, got, takes)
    h.put("a")
    h.put("b")
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == ["a", "b"]
    h.close()
    t.join(5)


def test_a_full_handoff_blocks_the_producer_until_the_consumer_takes() -> None:
    h = HandOff(maxsize=3, batch=1, linger=0.01)
    for i in range(3):
        h.put(i)
    done = threading.Event()

    def produce() -> None:
        h.put(3)
        done.set()

    p = threading.Thread(target=produce, daemon=True)
    p.start()
    assert not done.wait(0.3)  # no consumer: the fourth put waits (back-pressure)
    assert h.take() == [0, 1, 2]
    assert done.wait(5)
    assert h.take() == [3]


def test_batch_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="batch"):
        HandOff(batch=0)
