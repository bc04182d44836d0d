"""The fleet with pose and detection bundles: each stream's records (keypoints, boxes), ``detections.json`` and
overlay as ``runtime.run`` writes them for the same clip alone, and a det stream moved after its worker died
resumed without a lost or repeated record or detection.

The reference is ``runtime.run``'s own loop on the clip alone (same bundle, options and thread count), whose boxes
and keypoints tests/runtime/test_det_runtime.py and test_pose_runtime.py check against independent PyTorch
references; here the fleet's worker (in process, then on Ray) must reproduce them record for record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runtime.fleet_worker import RESTART, StreamTask, Worker
from runtime.loop import RunConfig, run
from runtime.run import main as run_main
from tests.runtime.conftest import decode_clip, moving_frames, write_clip
from tests.runtime.test_det_runtime import det_bundle, det_clip, detector  # noqa: F401 - fixtures
from tests.runtime.test_fleet import fleet, frames_in, records, untimed
from tests.runtime.test_pose_runtime import SRC_H, SRC_W, pose_bundle, pose_clip, pose_model  # noqa: F401 - fixtures

RUN_KW = dict(mode="stream", iters=2, progress=False, threads=1)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread) -> None:
    """One torch thread (the shared CPU)."""


def alone(bundle: Path, clip: Path, out: Path) -> list[dict]:
    """The reference: the clip through runtime.run's loop alone, with its own sink (and results file)."""
    run(RunConfig(engine=bundle / "deq_cell.onnx", sources=[str(clip)], out=out, video=False, **RUN_KW))
    return records(out)


def in_worker(bundle: Path, clips: list[Path], out: Path) -> list[dict]:
    """The clips through one fleet worker in this process (the actor's body, without Ray), one group each."""
    cfg = RunConfig(engine=bundle / "deq_cell.onnx", sources=[], out=None, save_maps="npz", video=True, **RUN_KW)
    worker = Worker(cfg, 0)
    results = []
    for i, clip in enumerate(clips):
        results += worker.process([StreamTask(i, str(clip), str(out / f"stream{i}"))])
    return results


def keypoints(recs: list[dict]) -> np.ndarray:
    return np.array([[[k["x"], k["y"], k["score"]] for k in r["keypoints"]] for r in recs])


def test_pose_streams_in_a_worker_equal_runtime_run(pose_bundle, pose_clip, tmp_path):  # noqa: F811
    other = write_clip(tmp_path / "other.mp4", moving_frames(5, SRC_H, SRC_W, seed=4))
    clips = [pose_clip, other]
    results = in_worker(pose_bundle, clips, tmp_path / "fleet")
    assert [r["status"] for r in results] == ["complete", "complete"]
    for i, clip in enumerate(clips):
        got = tmp_path / "fleet" / f"stream{i}"
        want = alone(pose_bundle, clip, tmp_path / f"alone{i}")
        recs = records(got)
        assert [r["frame"] for r in recs] == list(range(len(decode_clip(clip))))
        assert untimed(recs) == untimed(want)
        assert keypoints(recs).shape == (len(recs), 16, 3)  # source pixels, as runtime.run writes them
        overlay = decode_clip(got / "overlay.mp4")
        assert overlay.shape == (len(recs), SRC_H, SRC_W, 3)
        assert sorted(p.name for p in got.iterdir()) == ["frames.jsonl", "overlay.mp4", "summary.json"]


def test_det_streams_in_a_worker_equal_runtime_run_with_detections_json(det_bundle, det_clip, tmp_path):  # noqa: F811
    results = in_worker(det_bundle, [det_clip], tmp_path / "fleet")
    assert results[0]["status"] == "complete"
    got = tmp_path / "fleet" / "stream0"
    want = alone(det_bundle, det_clip, tmp_path / "alone")
    recs = records(got)
    assert untimed(recs) == untimed(want) and all(r["boxes"] for r in recs)
    mine = json.loads((got / "detections.json").read_text())
    assert mine == json.loads((tmp_path / "alone" / "detections.json").read_text())
    assert len(mine) == sum(len(r["boxes"]) for r in recs)
    assert frames_in(got / "overlay.mp4") == len(recs)
    assert not (got / "maps.npz").exists() and not list(got.glob(".*"))  # no maps, no journal left


def test_det_fleet_on_ray_resumes_a_killed_workers_stream(det_bundle, det_clip, tmp_path):  # noqa: F811
    """Worker 0's first actor dies after 2 records: its stream resumes at frame 2 from zero on a new actor; every
    frame has one record, its detections are in detections.json exactly once, the overlay has every frame."""
    pytest.importorskip("ray")
    clips = [det_clip, write_clip(tmp_path / "b.mp4", moving_frames(3, 144, 240, seed=5))]
    out = tmp_path / "fleet"
    env = {"DEQSTREAM_FLEET_KILL": "0:2"}
    eng = str(det_bundle / "deq_cell.onnx")
    r = fleet(
        "--engine",
        eng,
        *map(str, clips),
        "--workers",
        "1",
        "--mode",
        "stream",
        "--iters",
        "2",
        "--out",
        str(out),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["streams"]] == ["complete", "complete"]
    moved = [s for s in summary["streams"] if s.get("start")]
    assert len(moved) == 1 and moved[0]["start"] == 2
    for i, clip in enumerate(clips):
        folder = out / f"stream{i}"
        recs = records(folder)
        assert [x["frame"] for x in recs] == list(range(len(decode_clip(clip))))
        coco = json.loads((folder / "detections.json").read_text())
        assert [c["image_id"] for c in coco] == [x["frame"] for x in recs for _ in x["boxes"]]
        assert frames_in(folder / "overlay.mp4") == len(recs)
    m = moved[0]["index"]
    recs = records(out / f"stream{m}")
    assert recs[2]["reset"] == RESTART and recs[2]["start"] == "zero"
    argv = [str(clips[m]), "--engine", eng, "--mode", "stream", "--iters", "2", "--threads", "1", "--no-video"]
    assert run_main([*argv, "--no-progress", "--out", str(tmp_path / "alone")]) == 0  # the same options alone
    assert untimed(recs[:2]) == untimed(records(tmp_path / "alone")[:2])  # written by the worker that died
