"""benchmarks.host on a clip of the user's (``--inputs``): every stage measured, ratios written, bad input refused."""

from __future__ import annotations

import json
import mmap
import time
from pathlib import Path

import numpy as np
import pytest

import benchmarks.host as host
from tests.runtime.conftest import moving_frames, write_clip

av = pytest.importorskip("av", reason="PyAV is not installed (the GPU machines lack it unless carried)")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("host") / "cam.mp4", moving_frames(10, h=96, w=160))


def test_stages_of_a_users_clip(clip: Path, tmp_path: Path) -> None:
    assert host.main(["--inputs", str(clip), "--frames", "8", "--no-e2e", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "host_inputs.json").read_text())
    st = res["clips"]["cam.mp4"]["stages"]
    assert st["size"] == [160, 96] and st["frames"] == 8 and st["stream"]["codec"] == "h264"
    for k in ("codec", "codec+mv", "fit", "mv field", "planes", "device prep", "upload", "download", *host.WRITER_COLS):
        assert st[k]["n"] == 8 and st[k]["cpu_ms"] >= 0.0, k
    r = res["clips"]["cam.mp4"]["ratios"]
    assert r["mv_field_over_codec"] == pytest.approx(st["mv field"]["cpu_ms"] / st["codec"]["cpu_ms"])
    default = st["npz (engine size)"]["cpu_ms"] + st["jsonl"]["cpu_ms"] + st["download (engine size)"]["cpu_ms"]
    assert r["default_writers_over_codec"] == pytest.approx(default / st["codec"]["cpu_ms"])
    b = st["bytes_per_frame"]
    assert b["maps raw"] == host.ENGINE_HW[0] * host.ENGINE_HW[1]  # one byte per engine pixel
    assert 0 < b["maps zlib1"] < b["maps raw"] and b["npz (engine size)"] > 0
    assert "| cam.mp4 | 160x96 | h264 |" in (tmp_path / "host_inputs.md").read_text()


def test_transcode_keeps_size_codec_and_b_frames(clip: Path, tmp_path: Path) -> None:
    out = host.transcode(clip, tmp_path / "m4.mp4", "mpeg4", {"bf": "2", "qscale": "3"}, (64, 96), 9)
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        frames = list(c.decode(s))
        assert (s.codec_context.name, len(frames), frames[0].width, frames[0].height) == ("mpeg4", 9, 96, 64)
        assert any(str(f.pict_type).endswith(("B", "3")) for f in frames)  # B pictures (PyAV may give an int)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny bundle: the null backend never runs its engines, only binds their buffers."""
    from export.bundle import export_bundle
    from export.config import get_config
    from export.mdeq import build_model

    out = tmp_path_factory.mktemp("engines")
    export_bundle(build_model(get_config("tiny"), seed=0), out, 64, 128, formats=("onnx",))
    return out / "deq_cell.onnx"


def test_null_backend_runs_the_loop_without_engines(clip: Path, tmp_path: Path, engine: Path) -> None:
    got = host.end_to_end(engine, clip, 6, tmp_path, null=True)
    assert set(got) == {f"{m}, {o}" for m in ("stream k=1", "mv n=5") for o in host.OUTPUTS}
    for name, r in got.items():
        assert (
            r["frames"] == 6 and r["fps"] > 0 and r["largest_stage"] in ("decode", "field", "loop", "write", "overlay")
        ), name
    assert got["stream k=1, default + engine-size overlay (--video)"]["threads_ms"]["overlay"] > 0
    assert "overlay" not in (got["stream k=1, default outputs (engine-size NPZ maps + log)"]["threads_ms"] or {})


def test_rss_peak_sees_memory_held_during_the_block() -> None:
    with host.RssPeak() as idle:
        pass
    with host.RssPeak() as peak:
        # 64 MB of fresh pages, touched: a mapping of its own (np.ones could reuse heap memory an earlier test freed
        # and the allocator kept resident, and then the process would not grow; it failed so once in CI)
        buf = mmap.mmap(-1, 64 << 20)
        held = np.frombuffer(buf, np.uint8)
        held[:] = 1
        seen, t0 = peak.samples, time.monotonic()
        while peak.samples < seen + 2 and time.monotonic() - t0 < 10:  # a busy machine may schedule it late
            time.sleep(0.01)
        del held
        buf.close()
    if peak.mb is None:
        pytest.skip("no /proc/self/statm on this system")
    assert peak.mb >= 60 and idle.mb is not None and idle.mb < 30


def test_held_memory_runs_mv_with_the_collector_and_without(
    clip: Path, tmp_path: Path, engine: Path, monkeypatch
) -> None:
    import runtime.loop as loop

    seen = []
    real = loop.CycleCollector

    def recording(enabled: bool = True):
        seen.append(enabled)
        return real(enabled)

    monkeypatch.setattr(loop, "CycleCollector", recording)
    got = host.held_memory(engine, clip, 6, tmp_path)
    assert seen == [True, False] * host.MEMORY_ROUNDS  # in turn, as shipped first
    for k in ("collector on", "collector off"):
        assert got[k]["fps"] > 0 and len(got[k]["rounds"]) == host.MEMORY_ROUNDS
    assert loop.reads_side_data.__module__ == "runtime.cycles"  # the shipped rule is back after the measurement


def test_missing_input_is_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        host.main(["--inputs", str(tmp_path / "none.mp4"), "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("none.mp4: no such file")


def test_not_a_video_is_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    assert host.main(["--inputs", str(bad), "--no-e2e", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and err[-1].startswith("error: ")


def test_outputs_cost_is_the_median_of_each_rounds_own_ratio() -> None:
    """A burst that slows one round's run shows in that round's ratio only, not in the median of the rounds."""
    from benchmarks.host import paired_costs

    e2e = {
        "mv n=5, outputs off": {"fps_rounds": [100.0, 50.0, 110.0]},
        "mv n=5, default outputs": {"fps_rounds": [90.0, 45.0, 88.0]},
        "stream k=1, default outputs": {"fps_rounds": [1.0]},  # no outputs-off run to pair with: left out
    }
    assert paired_costs(e2e) == [("mv n=5, default outputs", 0.9, 0.8, 0.9)]


def test_mv_against_stream_is_the_median_of_each_rounds_own_ratio() -> None:
    from benchmarks.host import paired_modes

    e2e = {
        "stream k=1, outputs off": {"fps_rounds": [100.0, 50.0, 200.0]},
        "mv n=5, outputs off": {"fps_rounds": [120.0, 40.0, 300.0]},
        "mv n=5, default outputs": {"fps_rounds": [1.0, 2.0, 3.0]},  # no stream k=1 run with these outputs: left out
    }
    assert paired_modes(e2e) == [("outputs off", 1.2, 0.8, 1.5)]
