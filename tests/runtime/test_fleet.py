"""runtime.fleet on Ray: one record per decoded frame per stream, class maps equal to runtime.run alone,
a killed worker's streams resumed without a lost or repeated record, a `ray start` cluster joined with
--address, and an unreadable source that ends only its own stream."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.loop import RunConfig, run
from tests.runtime.conftest import decode_clip, moving_frames, write_clip

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("ray")

RUN_KW = dict(mode="stream", iters=2, progress=False, threads=1)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("fleet_clips")
    return [write_clip(d / f"cam{i}.mp4", moving_frames(7 + i, seed=10 + i)) for i in range(4)]


def fleet(*args: str, env: dict[str, str] | None = None, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtime.fleet", *args, "--no-progress", "--threads", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "frames.jsonl").read_text().splitlines()]


def untimed(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "latency_ms"} for r in recs]


def npz_maps(folder: Path) -> np.ndarray:
    """The maps as stored, in frame order (the fleet's per-frame arrays, runtime.run's run-length coded chunks)."""
    from runtime.writers import read_maps

    return np.stack(list(read_maps(folder / "maps.npz", "engine").values()))


def png_maps(folder: Path) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p)) for p in sorted((folder / "maps").glob("*.png"))])


def alone(engine: Path, clip: Path, out: Path, save_maps: str) -> Path:
    """The reference: the same clip through runtime.run's loop, alone, same options."""
    run(RunConfig(engine=engine, sources=[str(clip)], out=out, save_maps=save_maps, maps_size="source", **RUN_KW))
    return out


def frames_in(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_four_streams_two_workers_equal_runtime_run(bundle64, clips, tmp_path):
    eng = bundle64 / "deq_cell.onnx"
    out = tmp_path / "fleet"
    r = fleet("--engine", str(eng), *map(str, clips), "--workers", "2", "--save-maps", "npz", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr and "Traceback" not in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["streams"]] == ["complete"] * 4
    assert {s["worker"] for s in summary["streams"]} == {0, 1}  # both workers took streams
    assert len(summary["workers"]) == 2 and all(0 < w["busy_fraction"] <= 1.01 for w in summary["workers"])
    for i, clip in enumerate(clips):
        got = out / f"stream{i}"
        ref = alone(eng, clip, tmp_path / f"alone{i}", "npz")
        recs = records(got)
        assert [x["frame"] for x in recs] == list(range(len(decode_clip(clip))))  # one record per decoded frame
        assert untimed(recs) == untimed(records(ref))
        np.testing.assert_array_equal(npz_maps(got), npz_maps(ref))
        assert frames_in(got / "overlay.mp4") == len(recs)
        assert not list(got.glob(".*"))  # no journal or temp file left behind
    assert "Throughput:" in r.stdout and "busy" in r.stdout


def test_killed_worker_streams_resume_without_lost_or_repeated_records(bundle64, clips, tmp_path):
    eng = bundle64 / "deq_cell.onnx"
    out = tmp_path / "fleet"
    env = {"DEQSTREAM_FLEET_KILL": "0:3"}  # worker 0's first actor SIGKILLs itself after 3 records
    r = fleet(
        "--engine", str(eng), *map(str, clips), "--workers", "2", "--save-maps", "png", "--out", str(out), env=env
    )
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: worker 0 "), r.stderr
    summary = json.loads((out / "summary.json").read_text())
    moved = [s for s in summary["streams"] if s.get("start")]
    assert len(moved) == 1 and moved[0]["start"] == 3
    for i, clip in enumerate(clips):
        recs = records(out / f"stream{i}")
        assert [x["frame"] for x in recs] == list(range(len(decode_clip(clip)))), i
        restarts = [x["frame"] for x in recs if x["reset"] == "worker-restart"]
        assert restarts == ([3] if i == moved[0]["index"] else [])
        assert frames_in(out / f"stream{i}" / "overlay.mp4") == len(recs)  # frames before the move re-rendered
    m = moved[0]["index"]
    ref = alone(eng, clips[m], tmp_path / "alone", "png")
    got, want = png_maps(out / f"stream{m}"), png_maps(ref)
    np.testing.assert_array_equal(got[:3], want[:3])  # written by the worker that died
    assert records(out / f"stream{m}")[3]["start"] == "zero"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_start_cluster_address_and_one_unreadable_source(bundle64, clips, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00not a video\x00" * 64)
    port = _free_port()
    ray = [str(Path(sys.executable).parent / "ray")]
    start = [*ray, "start", "--head", "--port", str(port), "--num-cpus", "2", "--node-ip-address", "127.0.0.1"]
    start += ["--include-dashboard=false", "--disable-usage-stats"]
    subprocess.run(start, check=True, capture_output=True, timeout=120)
    try:
        srcs = [str(clips[0]), str(bad), str(clips[2]), str(clips[3])]
        out = tmp_path / "fleet"
        eng = str(bundle64 / "deq_cell.onnx")
        r = fleet("--address", f"127.0.0.1:{port}", "--engine", eng, *srcs, "--workers", "2", "--out", str(out))
    finally:
        subprocess.run([*ray, "stop"], capture_output=True, timeout=120)
    assert r.returncode == 3, r.stderr  # documented: some streams failed
    assert "Traceback" not in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["address"] == f"127.0.0.1:{port}"
    st = summary["streams"]
    assert [s["status"] for s in st] == ["complete", "failed", "complete", "complete"]
    assert "broken.mp4" in st[1]["source"] and "cannot open" in st[1]["reason"]
    assert "broken.mp4" in r.stderr
    for i in (0, 2, 3):
        assert [x["frame"] for x in records(out / f"stream{i}")] == list(range(len(decode_clip(clips[i]))))


def test_source_list_file_and_option_errors(bundle64, tmp_path, capsys, monkeypatch):
    from runtime import fleet as fleet_mod

    lst = tmp_path / "cams.txt"
    lst.write_text("# cameras\na.mp4\n\n  b.mp4  \n")
    assert fleet_mod.expand_sources(["@" + str(lst), "c.mp4"]) == ["a.mp4", "b.mp4", "c.mp4"]
    eng = str(bundle64 / "deq_cell.onnx")
    rc = fleet_mod.main(["--engine", eng, "@" + str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot read the source list" in err[0]
    rc = fleet_mod.main(["--engine", eng, "x.mp4", "--streams-per-worker", "2", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "batch 1" in err[0]
    monkeypatch.setattr(fleet_mod.importlib.util, "find_spec", lambda name: None)
    assert fleet_mod.main(["--engine", eng, "x.mp4"]) == 2
    assert capsys.readouterr().err.strip() == "error: runtime.fleet needs Ray: pip install 'deqstream[fleet]'"


def test_ledger_cuts_a_torn_last_record(tmp_path):
    from runtime.fleet_worker import ledger_count

    lines = [json.dumps({"frame": i}) + "\n" for i in range(3)]
    (tmp_path / "frames.jsonl").write_text("".join(lines) + '{"frame": 3, "trunc')
    assert ledger_count(tmp_path) == 3
    assert (tmp_path / "frames.jsonl").read_text() == "".join(lines)
    assert ledger_count(tmp_path / "nothing") == 0


def test_runtime_without_ray_never_imports_it():
    code = "import sys, runtime.run, runtime.loop, runtime.fleet, runtime.fleet_worker; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_live_source_resumed_from_the_present_numbers_records_on(tmp_path):
    """A live stream moved at frame 3 reads new frames (numbered 0.. by its new connection): the records go on
    at 3, 4, ... and the frames that went by in between are estimated."""
    from runtime.fleet_worker import FleetSink, ledger_count
    from runtime.sources import Frame

    out = tmp_path / "s"
    out.mkdir()
    (out / "frames.jsonl").write_text("".join(json.dumps({"frame": i}) + "\n" for i in range(3)))
    os.utime(out / "frames.jsonl", (0, os.path.getmtime(out / "frames.jsonl") - 2.0))  # died 2 s ago
    sink = FleetSink(out, 10.0, [(0, 0, 0), (255, 255, 255)], "png", False, start=3, live=True)
    for i in range(2):
        rgb = np.zeros((4, 6, 3), np.uint8)
        sink.put({"frame": i, "reset": None}, Frame(i, rgb, (4, 6)), np.full((4, 6), i, np.uint8), None)
    sink.close()
    assert ledger_count(out) == 5
    assert [r["frame"] for r in records(out)] == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in (out / "maps").iterdir()) == ["000003.png", "000004.png"]
    assert 15 <= sink.not_seen <= 25  # about 2 s at 10 fps


def test_sigterm_to_the_driver_leaves_complete_outputs(bundle64, tmp_path):
    import signal
    import time

    long = write_clip(tmp_path / "long.mp4", moving_frames(400, seed=3))
    out = tmp_path / "fleet"
    cmd = [sys.executable, "-m", "runtime.fleet", "--engine", str(bundle64 / "deq_cell.onnx"), str(long), str(long)]
    cmd += ["--workers", "1", "--save-maps", "png", "--out", str(out), "--no-progress", "--threads", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ledger = out / "stream0" / "frames.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not ledger.is_file() or len(ledger.read_text().splitlines()) < 5):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["streams"]] == ["interrupted", "interrupted"]
    recs = records(out / "stream0")
    assert 5 <= len(recs) < 400 and [r["frame"] for r in recs] == list(range(len(recs)))
    assert frames_in(out / "stream0" / "overlay.mp4") == len(recs) == len(png_maps(out / "stream0"))
    assert not (out / "stream1").exists()  # never started: nothing half-written


def test_a_cut_file_is_partial_in_the_fleet_as_in_the_cli(tmp_path) -> None:
    from runtime.fleet_worker import StreamTask, Worker

    worker = Worker.__new__(Worker)  # only _done's state: no engines, no Ray
    worker.worker_id, worker.sinks = 0, {}
    short = {"duration_s": 3.0, "covered_s": 1.2, "frames": 12, "listed": 30}
    stream = {"decode_errors": 0, "last_decode_error": None, "resets": [], "shortfall": short}
    res = worker._done(
        StreamTask(0, "cut.mp4", str(tmp_path)), {"interrupted": False, "wall_s": 1.0, "streams": [stream]}, 12
    )
    assert res["status"] == "partial" and "1.2 s of 3.0 s" in res["reason"]
    stream["shortfall"] = None
    res = worker._done(
        StreamTask(0, "cut.mp4", str(tmp_path)), {"interrupted": False, "wall_s": 1.0, "streams": [stream]}, 12
    )
    assert res["status"] == "complete"
