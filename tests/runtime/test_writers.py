"""The writer thread both sinks share: outputs land in order, and a failed write surfaces as one OutputError."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from runtime.errors import OutputError
from runtime.fleet_worker import FleetSink
from runtime.writers import PngMapWriter, Sink

PALETTE = [[0, 0, 0], [255, 0, 0]]


def _frame(i: int) -> SimpleNamespace:
    return SimpleNamespace(index=i, original=None, rgb=np.zeros((4, 6, 3), np.uint8))


def _classes(i: int) -> np.ndarray:
    return np.full((4, 6), i % 2, np.uint8)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("kind", ["sink", "fleet"])
def test_every_frame_written_in_order(tmp_path, kind: str) -> None:
    if kind == "sink":
        sink = Sink(tmp_path, 25.0, PALETTE, save_maps="png", video=False)
    else:
        sink = FleetSink(tmp_path, 25.0, PALETTE, save_maps="png", video=False, start=0)
    for i in range(5):
        sink.put({"frame": i}, _frame(i), _classes(i), None)
    sink.close()
    assert [r["frame"] for r in _records(tmp_path / "frames.jsonl")] == list(range(5))
    assert all("write" in r["latency_ms"] for r in _records(tmp_path / "frames.jsonl"))
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [f"{i:06d}.png" for i in range(5)]
    assert len(sink.write_ms) == 5


def test_a_failed_write_is_one_output_error_and_no_log(tmp_path, monkeypatch) -> None:
    def full_disk(self, index: int, classes: np.ndarray) -> None:
        if index == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(PngMapWriter, "write", full_disk)
    sink = Sink(tmp_path, 25.0, PALETTE, save_maps="png", video=False)
    with pytest.raises(OutputError, match="No space left") as err:
        for i in range(50):  # the error reaches the loop at a later put (the writer runs behind it)
            sink.put({"frame": i}, _frame(i), _classes(i), None)
            sink.thread.join(0.01)
    assert "\n" not in str(err.value)
    with pytest.raises(OutputError, match="No space left"):
        sink.close()
    assert not (tmp_path / "frames.jsonl").exists()  # the log is renamed into place only when complete
    assert not list(tmp_path.glob(".*frames*"))  # and its temporary file is gone


def test_fleet_ledger_keeps_the_complete_prefix(tmp_path, monkeypatch) -> None:
    sink = FleetSink(tmp_path, 25.0, PALETTE, save_maps="png", video=False, start=0)
    real = FleetSink._save_map

    def fail_at_3(self, index: int, full: np.ndarray) -> None:
        if index == 3:
            raise OSError(5, "Input/output error")
        real(self, index, full)

    monkeypatch.setattr(FleetSink, "_save_map", fail_at_3)
    for i in range(3):
        sink.put({"frame": i}, _frame(i), _classes(i), None)
    sink.put({"frame": 3}, _frame(3), _classes(3), None)
    with pytest.raises(OutputError, match="Input/output error"):
        sink.close()
    assert [r["frame"] for r in _records(tmp_path / "frames.jsonl")] == [0, 1, 2]  # a record only after its map
