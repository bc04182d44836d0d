"""runtime.cycles: decoded frames held by reference cycles are freed within the collector's budget."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from runtime import loop
from runtime.cycles import CycleCollector, reads_side_data
from runtime.run import main
from tests.runtime.conftest import moving_frames, write_clip


class Cycle:
    """An object only the cyclic collector frees (it refers to itself); counts its own deaths."""

    freed = 0

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        Cycle.freed += 1


@pytest.fixture
def gc_paused():
    """No automatic collection during the test (CPython's own would free the cycles at times of its choosing)."""
    was = gc.isenabled()
    gc.disable()
    yield
    if was:
        gc.enable()


def test_pyav_frames_whose_side_data_were_read_wait_for_the_cyclic_collector(tmp_path, gc_paused):
    """The reason for the collector: PyAV links a frame and its side data both ways. If a PyAV release stops doing
    so, this fails and the collector can go."""
    import av

    clip = write_clip(tmp_path / "c.mp4", moving_frames(6))
    ids = []
    with av.open(str(clip)) as c:
        s = c.streams.video[0]
        s.codec_context.options = {"flags2": "+export_mvs"}
        for f in c.decode(s):
            if f.side_data.get("MOTION_VECTORS") is not None:
                ids.append(id(f))
    del f
    alive = lambda: sum(1 for o in gc.get_objects() if id(o) in ids)  # noqa: E731
    assert ids and alive() == len(ids)  # dropped by the code, kept by the cycle
    gc.collect()
    assert alive() == 0


def test_collector_frees_cycles_once_the_budget_is_spent_and_unfreezes(gc_paused):
    before = Cycle()
    del before  # garbage made before the loop: freed on entry, not frozen
    Cycle.freed = 0
    with CycleCollector(budget=100) as c:
        assert Cycle.freed == 1 and gc.get_freeze_count() > 0
        for _ in range(3):
            Cycle()
        c.tick(60)
        assert Cycle.freed == 1 and c.collections == 0  # under the budget: nothing run yet
        c.tick(40)
        assert Cycle.freed == 4 and c.collections == 1 and c.pending == 0
    assert gc.get_freeze_count() == 0


def test_a_process_that_froze_objects_itself_keeps_them_frozen(gc_paused):
    """Freezing is the process's when it froze first (before forking workers, say): the collector only collects."""
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        Cycle.freed = 0
        with CycleCollector(budget=1) as c:
            assert not c.froze and gc.get_freeze_count() == frozen
            Cycle()
            c.tick(1)
            assert Cycle.freed == 1
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_disabled_collector_leaves_the_collector_alone(gc_paused):
    Cycle.freed = 0
    with CycleCollector(enabled=False, budget=1) as c:
        assert gc.get_freeze_count() == 0
        Cycle()
        c.tick(10)
        assert Cycle.freed == 0 and c.collections == 0
    gc.collect()
    assert Cycle.freed == 1
    with pytest.raises(ValueError, match="budget"):
        CycleCollector(budget=0)


@pytest.mark.parametrize(("mode", "enabled"), [("mv", True), ("stream", False)])
def test_the_loop_collects_for_sources_that_read_side_data(bundle64, tmp_path, monkeypatch, mode, enabled):
    made: list[CycleCollector] = []

    class Recording(CycleCollector):
        def __init__(self, on: bool = True) -> None:
            super().__init__(on, budget=1)  # every frame
            made.append(self)

    monkeypatch.setattr(loop, "CycleCollector", Recording)
    clip = write_clip(tmp_path / "c.mp4", moving_frames(7))
    rc = main(["--engine", str(bundle64 / "deq_cell.onnx"), str(clip), "--mode", mode, "--out", str(tmp_path / "o")])
    assert rc == 0 and len(made) == 1 and made[0].enabled is enabled
    assert made[0].collections == (7 if enabled else 0) and gc.get_freeze_count() == 0


def test_reads_side_data_is_the_side_hook():
    class Hooked:
        side_hook = staticmethod(lambda f, i: {})

    assert reads_side_data(Hooked()) and not reads_side_data(object()) and not reads_side_data(Path("x"))
