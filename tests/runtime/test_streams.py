"""Several streams in one batched engine call give each stream what it gets alone; the budget
controller and in-memory sources run through the same loop."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.loop import RunConfig, run
from runtime.sources import ArraySource
from runtime.writers import read_maps
from tests.runtime.conftest import H, W, moving_frames, write_clip


@pytest.fixture(scope="module")
def bundle64_b2(tiny_model, tmp_path_factory):
    from export.bundle import export_bundle

    out = tmp_path_factory.mktemp("bundle_b2") / "engines"
    export_bundle(tiny_model, out, H, W, batch=2, formats=("onnx",))
    return out


def maps_of(out) -> np.ndarray:
    return np.stack(list(read_maps(out / "maps.npz").values()))


def test_two_streams_batched_equal_single_runs(bundle64, bundle64_b2, tmp_path):
    a = write_clip(tmp_path / "a.mp4", moving_frames(6, seed=1))
    b = write_clip(tmp_path / "b.mp4", moving_frames(4, seed=2))  # shorter: ends first
    kw = dict(mode="stream", iters=2, save_maps="npz", video=False, progress=False, reset=False)
    run(RunConfig(engine=bundle64_b2 / "deq_cell.onnx", sources=[str(a), str(b)], out=tmp_path / "ab", **kw))
    for i, clip in enumerate((a, b)):
        run(RunConfig(engine=bundle64 / "deq_cell.onnx", sources=[str(clip)], out=tmp_path / f"s{i}", **kw))
        got, want = maps_of(tmp_path / "ab" / f"stream{i}"), maps_of(tmp_path / f"s{i}")
        assert got.shape == want.shape
        assert (got != want).mean() < 1e-3
        recs = (tmp_path / "ab" / f"stream{i}" / "frames.jsonl").read_text().splitlines()
        assert len(recs) == len(want) and json.loads(recs[0])["stream"] == i


def test_budget_mode_and_array_source(bundle64, tmp_path):
    frames = moving_frames(12)
    records: list[dict] = []
    summary = run(
        RunConfig(
            engine=bundle64 / "deq_cell.onnx",
            sources=[ArraySource(list(frames))],
            out=None,
            mode="stream",
            iters=2,
            budget_ms=1e6,
            max_iters=7,
            progress=False,
            on_frame=lambda record, _classes: records.append(record),
        )
    )
    # a budget this generous lets the controller climb to max_iters once it has measurements, and stay there
    assert summary["frames"] == 12 and len(records) == 12
    iters = [r["iterations"] for r in records]
    assert iters[0] <= iters[-1] and max(iters) == 7 and iters[-3:] == [7, 7, 7], iters


def test_custom_policy_with_warp_hook_plugs_into_the_loop(bundle64, tmp_path):
    """A policy whose warp hook zeroes the carried state must reproduce frame mode exactly:
    the hook sees the start-state views of its stream and the frame's side data."""
    from runtime.modes import Plan, StreamPolicy

    calls = []

    def zero_warp(views, info):
        calls.append((info.index, [tuple(v.shape) for v in views], info.side.get("tag")))
        for v in views:
            v.mul_(0.0)

    class ZeroWarp(StreamPolicy):
        name = "zero-warp"

        def plan(self, info, has_state):
            return Plan(iters=self.iters, start="previous", warp=zero_warp)

    class Tagged(ArraySource):
        def __iter__(self):
            for rgb, ts, key, _ in super().__iter__():
                yield rgb, ts, key, {"tag": "mv"}

    frames = list(moving_frames(4))
    kw = dict(save_maps="npz", video=False, progress=False, reset=False)
    run(
        RunConfig(
            engine=bundle64 / "deq_cell.onnx",
            sources=[Tagged(frames)],
            out=tmp_path / "w",
            policy=lambda: ZeroWarp(3),
            **kw,
        )
    )
    run(
        RunConfig(
            engine=bundle64 / "deq_cell.onnx",
            sources=[ArraySource(frames)],
            out=tmp_path / "f",
            mode="frame",
            iters=3,
            **kw,
        )
    )
    assert (maps_of(tmp_path / "w") == maps_of(tmp_path / "f")).all()
    assert [c[0] for c in calls] == [0, 1, 2, 3] and all(c[2] == "mv" for c in calls)
    assert calls[0][1][0] == (16, H // 4, W // 4)


def test_on_frame_gives_each_record_and_map_in_order(bundle64, tmp_path):
    """The embedding hook sees what the writers write: same records, same maps at the source's resolution."""
    frames = list(moving_frames(5, 96, 160))  # not the engine's 64x128: maps come back at the source size
    got: list[tuple[dict, np.ndarray]] = []
    cfg = dict(iters=2, save_maps="npz", video=False, progress=False)
    run(
        RunConfig(
            engine=bundle64,
            sources=[ArraySource(frames)],
            out=tmp_path,
            on_frame=lambda r, m: got.append((r, m)),
            **cfg,
        )
    )
    assert [r["frame"] for r, _ in got] == list(range(5))
    written = list(read_maps(tmp_path / "maps.npz").values())  # engine-size maps brought to the source size
    assert all(m.shape == (96, 160) for _, m in got)
    assert all(np.array_equal(m, w) for (_, m), w in zip(got, written))
    logged = [json.loads(line) for line in (tmp_path / "frames.jsonl").read_text().splitlines()]
    assert [r["residual"] for r, _ in got] == [r["residual"] for r in logged]
    only: list[int] = []
    run(
        RunConfig(
            engine=bundle64,
            sources=[ArraySource(frames)],
            out=None,
            on_frame=lambda r, m: only.append(r["frame"]),
            **cfg,
        )
    )
    assert only == list(range(5))
