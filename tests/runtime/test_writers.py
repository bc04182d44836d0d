"""The writer thread both sinks share: outputs land in order, and a failed write surfaces as one OutputError."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from runtime.errors import OutputError
from runtime.fleet_worker import FleetSink
from runtime.writers import PngMapWriter, PreviousRun, Sink, prepare_out_dir, read_maps

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


def test_overlay_runs_on_its_own_thread_and_lands_complete(tmp_path) -> None:
    import av

    sink = Sink(tmp_path, 25.0, PALETTE, save_maps="npz", video=True)
    assert sink.video_lane is not None and sink.video_lane.thread is not sink.thread
    frames = [SimpleNamespace(index=i, original=None, rgb=np.full((16, 24, 3), 10 * i, np.uint8)) for i in range(6)]
    for i, f in enumerate(frames):
        sink.put({"frame": i}, f, np.full((16, 24), i % 2, np.uint8), None)
    sink.close()
    with av.open(str(tmp_path / "overlay.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 6
    assert len(sink.overlay_ms) == 6 and len(sink.write_ms) == 6
    maps = read_maps(tmp_path / "maps.npz")
    assert [int(maps[i][0, 0]) for i in range(6)] == [i % 2 for i in range(6)]


def test_a_failed_overlay_is_one_output_error_and_no_files(tmp_path, monkeypatch) -> None:
    from runtime.writers import OverlayWriter

    def broken(self, rgb, classes, label="") -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(OverlayWriter, "write", broken)
    sink = Sink(tmp_path, 25.0, PALETTE, save_maps="png", video=True)
    with pytest.raises(OutputError, match="No space left"):  # reaches the loop at a later put
        for i in range(50):
            sink.put({"frame": i}, _frame(i), _classes(i), None)
            sink.thread.join(0.01)
    with pytest.raises(OutputError, match="No space left"):
        sink.close()
    assert not (tmp_path / "frames.jsonl").exists() and not (tmp_path / "overlay.mp4").exists()


@pytest.mark.parametrize("alpha", [0.5, 0.3, 0.75])
def test_overlay_blend_equals_the_16_bit_formula(alpha: float) -> None:
    from runtime.writers import overlay, palette_lut

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    classes = rng.integers(0, 20, (33, 47), dtype=np.uint8)
    lut = palette_lut([(255, 255, 255), (1, 3, 255), (0, 0, 0)])
    a = int(round(alpha * 256))
    want = ((rgb.astype(np.uint16) * (256 - a) + lut[classes].astype(np.uint16) * a) >> 8).astype(np.uint8)
    np.testing.assert_array_equal(overlay(rgb, classes, lut, alpha), want)
    # the input frame is not modified
    np.testing.assert_array_equal(rgb, np.random.default_rng(1).integers(0, 256, (33, 47, 3), dtype=np.uint8))


@pytest.mark.parametrize(("src", "fit"), [((270, 481), "resize"), ((720, 1280), "pad"), ((144, 176), "crop")])
def test_unfit_equals_the_fancy_index(src, fit) -> None:
    from runtime.sources import Fitter

    f = Fitter(src, (64, 128), fit)
    classes = np.random.default_rng(2).integers(0, 7, (64, 128), dtype=np.uint8)
    np.testing.assert_array_equal(f.unfit(classes), classes[f.rows[:, None], f.cols[None, :]])


def test_overlay_at_the_engine_size_shows_the_engine_frame(tmp_path) -> None:
    import av

    from runtime.sources import Fitter

    sink = Sink(tmp_path, 25.0, PALETTE, save_maps="none", video=True, overlay_size="engine")
    fitter = Fitter((40, 60), (16, 24))
    for i in range(3):
        frame = SimpleNamespace(index=i, original=np.zeros((40, 60, 3), np.uint8), rgb=np.zeros((16, 24, 3), np.uint8))
        sink.put({"frame": i}, frame, np.ones((16, 24), np.uint8), fitter)
    sink.close()
    with av.open(str(tmp_path / "overlay.mp4")) as c:
        got = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(got) == 3 and got[0].shape == (16, 24, 3)
    assert abs(int(got[0][8, 12, 0]) - 128) <= 6  # class 1 (255, 0, 0) at alpha 0.5 over black
    with pytest.raises(ValueError, match="overlay size"):
        Sink(tmp_path / "x", 25.0, PALETTE, overlay_size="half")


@pytest.mark.parametrize("fit", ["resize", "pad", "crop"])
def test_engine_size_maps_read_back_at_the_source_size(tmp_path, fit: str) -> None:
    """The default NPZ keeps the maps as the engines made them, with the fit geometry (a source that changes size
    mid-stream included): ``read_maps`` gives exactly what ``--maps-size source`` writes (``Fitter.unfit`` at
    write time), and ``size="engine"`` the maps as made."""
    from runtime.sources import Fitter

    rng = np.random.default_rng(0)
    sizes = [(50, 90)] * 3 + [(40, 40)] * 2
    maps = [rng.integers(0, 5, (32, 64), dtype=np.uint8) for _ in sizes]
    for size in ("engine", "source"):
        (tmp_path / size).mkdir()
        sink = Sink(tmp_path / size, 25.0, PALETTE, save_maps="npz", video=False, maps_size=size)
        for i, (hw, m) in enumerate(zip(sizes, maps)):
            sink.put({"frame": i}, _frame(i), m, Fitter(hw, (32, 64), fit))
        sink.close()
    want = read_maps(tmp_path / "source" / "maps.npz")
    got = read_maps(tmp_path / "engine" / "maps.npz")
    assert [m.shape for m in want.values()] == sizes
    assert sorted(got) == sorted(want) and all(np.array_equal(got[i], want[i]) for i in want)
    assert all(
        np.array_equal(m, Fitter(hw, (32, 64), fit).unfit(maps[i]))
        for i, (hw, m) in enumerate(zip(sizes, got.values()))
    )
    as_made = read_maps(tmp_path / "engine" / "maps.npz", "engine")
    assert all(np.array_equal(as_made[i], maps[i]) for i in range(len(maps)))


def _runs_reference(a: np.ndarray) -> list[tuple[int, int]]:
    """(value, length) of every maximal run of the flattened array, split into runs of at most 256 (plain Python)."""
    out: list[tuple[int, int]] = []
    for v in a.reshape(-1).tolist():
        if out and out[-1][0] == v and out[-1][1] < 256:
            out[-1] = (v, out[-1][1] + 1)
        else:
            out.append((v, 1))
    return out


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize(
    "case", ["noise", "flat", "long rows", "one pixel", "empty", "runs of 255-257", "regions"]
)  # fmt: skip
def test_rle8_pairs_equal_a_plain_run_count_and_decode_back(case: str, backend: str, monkeypatch) -> None:
    """The maps' coding (C, and the numpy code used without the library) against a run count in plain Python; the
    reader's decoding gives the map back."""
    from kernels import mvhost
    from runtime.writers import rle8_decode

    if backend == "c" and not mvhost.available():
        pytest.skip("the C host library is not built (python -m kernels.build)")
    monkeypatch.setenv("DEQSTREAM_MV_HOST", backend)
    mvhost.reset()
    rng = np.random.default_rng(1)
    a = {
        "noise": rng.integers(0, 3, (64, 96), np.uint8),
        "flat": np.full((256, 512), 7, np.uint8),
        "long rows": np.repeat(np.arange(5, dtype=np.uint8), 1000).reshape(5, 1000),
        "one pixel": np.array([[200]], np.uint8),
        "empty": np.zeros((0, 4), np.uint8),
        "runs of 255-257": np.concatenate([np.full(n, n % 2, np.uint8) for n in (255, 256, 257, 1, 513)])[None],
        "regions": (np.add.outer(np.arange(120), np.arange(160)) // 37).astype(np.uint8) % 7,
    }[case]
    try:
        pairs = mvhost.rle8(a)
    finally:
        mvhost.reset()
    assert pairs.dtype == np.uint8 and len(pairs) % 2 == 0
    assert list(zip(pairs[0::2].tolist(), (pairs[1::2].astype(int) + 1).tolist())) == _runs_reference(a)
    assert np.array_equal(rle8_decode(pairs, a.shape), a)
    with pytest.raises(TypeError):
        mvhost.rle8(a.astype(np.int64))


def test_npz_maps_come_back_across_chunks_with_wide_labels_and_the_old_layout(tmp_path) -> None:
    """More maps than one chunk holds, a size change inside a chunk, int64 labels within a byte (coded) and beyond it
    (an array entry of its own): read_maps gives every map back, in frame order; an NPZ of plain per-frame arrays
    (the fleet's, or written before the coding) reads as before."""
    from runtime.writers import CHUNK, NpzMapWriter, read_maps

    rng = np.random.default_rng(2)
    maps = {i: rng.integers(0, 4, (8, 12) if i < 70 else (6, 10), dtype=np.uint8) for i in range(CHUNK + 20)}
    maps[3] = maps[3].astype(np.int64)
    maps[5] = rng.integers(0, 1000, (8, 12))
    w = NpzMapWriter(tmp_path / "maps.npz")
    for i, m in maps.items():
        w.write(i, m)
    w.close()
    got = read_maps(tmp_path / "maps.npz", "engine")
    assert list(got) == list(maps)
    assert all(np.array_equal(got[i], maps[i]) for i in maps)
    with np.load(tmp_path / "maps.npz") as z:
        assert sorted(k for k in z.files if k.startswith("index_")) == ["index_000000", f"index_{CHUNK + 1:06d}"]
        assert "frame_000005" in z.files and "frame_000003" not in z.files
    np.savez(tmp_path / "old.npz", **{f"frame_{i:06d}": maps[i] for i in (2, 0, 1)})
    old = read_maps(tmp_path / "old.npz")
    assert list(old) == [0, 1, 2] and all(np.array_equal(old[i], maps[i]) for i in old)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _earlier_run(out: Path) -> dict[str, bytes]:
    """A batched run's outputs and a user's own file, as an earlier run and its user left them."""
    (out / "maps").mkdir(parents=True)
    (out / "maps" / "000000.png").write_bytes(b"png")
    (out / "summary.json").write_text("{}")
    (out / "stream1").mkdir()
    (out / "stream1" / "frames.jsonl").write_text('{"frame": 0}\n')
    (out / "notes.txt").write_text("mine")
    return _tree(out)


def _visible(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and ".previous-run-" not in str(p)}


def test_an_earlier_run_is_set_aside_and_restored_when_this_run_fails(tmp_path):
    out = tmp_path / "o"
    before = _earlier_run(out)
    previous = PreviousRun(out)
    assert sorted(map(str, previous.names)) == ["maps", "stream1/frames.jsonl", "summary.json"]
    assert _visible(out) == {"notes.txt"}  # the run starts in a folder holding only the user's file
    (out / "maps").mkdir()  # what the failed run wrote before it failed: maps renamed into place one by one, ...
    (out / "maps" / "000007.png").write_bytes(b"new")
    (out / "overlay.mp4").write_bytes(b"new")  # ... a stream's outputs published, a batched run's new folder
    (out / "stream0").mkdir()
    (out / "stream0" / "frames.jsonl").write_text("new")
    previous.restore()
    assert _tree(out) == before  # the folder as it was: none of the failed run's files
    assert sorted(p.name for p in out.iterdir()) == ["maps", "notes.txt", "stream1", "summary.json"]


def test_an_earlier_run_is_deleted_once_this_run_has_written(tmp_path):
    out = tmp_path / "o"
    _earlier_run(out)
    previous = PreviousRun(out)
    (out / "summary.json").write_text('{"new": 1}')
    previous.drop()
    assert _tree(out) == {"notes.txt": b"mine", "summary.json": b'{"new": 1}'}
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "summary.json"]  # no emptied stream1/ either


def test_outputs_set_aside_by_a_killed_run_come_back_at_the_next_start(tmp_path):
    out = tmp_path / "o"
    before = _earlier_run(out)
    PreviousRun(out)  # never restored nor dropped: the process died ...
    (out / "summary.json").write_text("killed")  # ... after publishing one file of its own
    again = PreviousRun(out)  # the earlier outputs whose names were free are back, then set aside again
    assert sorted(map(str, again.names)) == ["maps", "stream1/frames.jsonl", "summary.json"]
    again.restore()
    assert _tree(out) == {**before, "summary.json": b"killed"}
    assert not list(out.rglob(".previous-run-*"))


def test_a_failure_while_setting_aside_puts_everything_back(tmp_path, monkeypatch):
    out = tmp_path / "o"
    before = _earlier_run(out)
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise PermissionError("busy")
        real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(PermissionError):
        PreviousRun(out)
    monkeypatch.setattr(os, "replace", real)
    assert _tree(out) == before and not list(out.rglob(".previous-run-*"))


def test_an_output_path_that_is_a_file_says_so(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        prepare_out_dir(f)
    assert f.read_text() == "x"
