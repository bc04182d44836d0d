"""``--mode mv-interp`` live (runtime.interp): one record per decoded frame in frame order, the
class maps of the offline implementation (benchmarks.propagation.run_interp) and of an
independent eager reference, the one-stream restriction, Ctrl-C, and the real CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kernels import reference
from runtime.loop import RunConfig, run
from runtime.mv_source import open_mv_source
from runtime.propagation import mv_pyramid
from runtime.run import main
from runtime.sources import Source
from runtime.writers import read_maps
from tests.runtime.conftest import H, W
from tests.runtime.test_propagation import decoded, eager_classes, eager_solve, pan_frames, run_cli

ROOT = Path(__file__).resolve().parents[2]
BI, FWD = "bidirectional", "forward"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cut_clip(tmp_path_factory) -> Path:
    """12 frames, one GOP of single-reference P frames: a pan, a shot change at frame 6 (an
    inverted other scene, which x264 with scenecut=0 codes as a P frame of intra blocks), a pan."""
    from runtime.encode import EncodeOptions, encode_mp4

    frames = np.concatenate([pan_frames(6, seed=0), 255 - pan_frames(6, seed=1)])
    path = tmp_path_factory.mktemp("cut") / "cut.mp4"
    encode_mp4(path, frames, EncodeOptions(crf=12, preset="medium", gop=30))
    return path


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]


def config(engine: Path, source, out: Path, **kw) -> RunConfig:
    base = dict(mode="mv-interp", save_maps="npz", video=False, progress=False, log=lambda _m: None)
    return RunConfig(engine=engine, sources=[source], out=out, **{**base, **kw})


# ----------------------------------------------------------------------------- schedule and records
def test_every_frame_one_record_in_order_with_codec_iframes(bundle64, clip64, tmp_path):
    """clip64: I P P P I P P P. Interval 3: keys 0, 3 (interval), 4 (I-frame: no vectors to cross
    it; its content jumps, so the loop's reset monitor logs it as a shot change), 7 (interval).
    The frames between wait for the next key (delay_frames) and are then interpolated; the
    writers (PNG maps, overlay video) get every frame once."""
    _, fields = decoded(clip64)
    assert [m.pict_type for m in fields] == list("IPPPIPPP")
    out = tmp_path / "o"
    summary = run(
        config(bundle64 / "deq_cell.onnx", str(clip64), out, iters=5, key_interval=3, save_maps="png", video=True)
    )
    recs = records(out)
    assert [r["frame"] for r in recs] == list(range(8))
    assert [r["iterations"] for r in recs] == [5, 0, 0, 5, 5, 0, 0, 5]
    assert [r["delay_frames"] for r in recs] == [0, 2, 1, 0, 0, 2, 1, 0]
    assert [r["propagation"] for r in recs] == [None, BI, BI, None, None, BI, BI, None]
    assert all(r["mode"] == "mv-interp" for r in recs)
    assert [t for t, r in enumerate(recs) if r["reset"]] == [3, 4, 7]  # every from-zero start but the first
    assert recs[3]["reset"] == recs[7]["reset"] == "key frame (every 3)"
    assert recs[4]["reset"].startswith("key frame with large change")  # the loop's monitor: an I-frame, new content
    assert summary["streams"][0]["reset_causes"] == {"key frame": 2, "shot change (key frame)": 1}
    assert [r["residual"] is not None for r in recs] == [r["iterations"] > 0 for r in recs]
    assert summary["frames"] == 8 and summary["key_interval"] == 3 and summary["mode"] == "mv-interp"
    assert len(list((out / "maps").glob("*.png"))) == 8
    import av

    with av.open(str(out / "overlay.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 8


def test_max_frames_and_ctrl_c_flush_the_held_frames_forward(bundle64, cut_clip, tmp_path):
    """Frames still held back when the input ends early (--max-frames) or at Ctrl-C come out,
    propagated forward from the last key frame, before the outputs are closed."""
    engine = bundle64 / "deq_cell.onnx"
    run(config(engine, str(cut_clip), tmp_path / "max", iters=3, key_interval=8, max_frames=5))
    recs = records(tmp_path / "max")
    assert [r["frame"] for r in recs] == list(range(5))
    assert [r["propagation"] for r in recs] == [None, FWD, FWD, FWD, FWD]
    assert [r["delay_frames"] for r in recs] == [0, 3, 2, 1, 0]

    class CtrlCAfter(Source):
        """Presses Ctrl-C (calls the loop's SIGINT handler) once ``k`` frames were decoded."""

        def __init__(self, inner: Source, k: int) -> None:
            super().__init__()
            self.inner, self.k, self.name = inner, k, inner.name

        def __iter__(self):
            for i, item in enumerate(self.inner):
                if i == self.k:
                    deadline = time.time() + 30
                    while not hasattr(signal.getsignal(signal.SIGINT), "__self__") and time.time() < deadline:
                        time.sleep(0.01)  # the loop installs its handler after the decode thread starts
                    handler = signal.getsignal(signal.SIGINT)
                    if hasattr(handler, "__self__"):  # never pytest's own handler (a real KeyboardInterrupt)
                        handler(signal.SIGINT, None)
                    return
                yield item

        def close(self) -> None:
            self.inner.close()

    src = CtrlCAfter(open_mv_source(cut_clip), 5)
    summary = run(config(engine, src, tmp_path / "int", iters=3, key_interval=8))
    recs = records(tmp_path / "int")
    m = len(recs)  # the loop stops after the frame it is on: 1..5 frames, every one recorded
    assert summary["interrupted"] and summary["frames"] == m and 1 <= m <= 5
    assert [r["frame"] for r in recs] == list(range(m))
    assert [r["propagation"] for r in recs] == [None] + [FWD] * (m - 1)


# ----------------------------------------------------------------------------- correctness
def reference_maps(model, frames: np.ndarray, fields, keys: list[int], cuts: set[int], iters: int) -> list:
    """Independent of runtime.interp and interpolate_segment: eager solves of the key frames,
    chains of grid_sample warps (forward from key a by d_t, backward from key b by -d_t), the
    blend (n-p)/n a_p + p/n b_p; forward only where the next key is a cut or missing."""
    z = {k: eager_solve(model, frames[k], iters) for k in keys}
    shapes = [tuple(s.shape[2:]) for s in z[0]]
    pyr = [None] + [[torch.from_numpy(d)[None] for d in mv_pyramid(f.disp, f.coverage, shapes)] for f in fields[1:]]
    out = {}
    for a, b in zip(keys, [*keys[1:], len(frames)]):
        fwd = [z[a]]
        for t in range(a + 1, b):
            fwd.append([reference.warp(s, d) for s, d in zip(fwd[-1], pyr[t])])
        if b == len(frames) or b in cuts:
            out.update({a + p: s for p, s in enumerate(fwd)})
            continue
        back = [z[b]]
        for t in range(b, a + 1, -1):
            back.append([reference.warp(s, -d) for s, d in zip(back[-1], pyr[t])])
        back.reverse()  # back[p - 1] is the state at frame a + p (p = 1 .. n)
        n = b - a
        out[a] = z[a]
        for p in range(1, n):
            out[a + p] = [(n - p) / n * x + p / n * y for x, y in zip(fwd[p], back[p - 1])]
    return [eager_classes(model, out[t]) for t in range(len(frames))]


def test_class_maps_match_the_offline_interpolation(tiny_model, bundle64, cut_clip, tmp_path):
    """Interval 4 on the cut clip: keys 0, 4, 6 (shot change), 10. 1-3 and 7-9 interpolated,
    5 (its segment ends in the cut) and 11 (the tail) forward only. The CLI's maps equal both
    benchmarks.propagation.run_interp and the independent reference, and differ clearly from
    forward-only propagation on the interpolated frames (so interpolation really happened)."""
    from benchmarks.accuracy import Acc, TorchStepper
    from benchmarks.propagation import interp_keys, run_interp

    rc, recs, maps = run_cli(
        bundle64 / "deq_cell.onnx", cut_clip, tmp_path / "o", "--mode", "mv-interp", "--key-interval", "4"
    )
    assert rc == 0 and [r["frame"] for r in recs] == list(range(12))
    assert [r["iterations"] for r in recs] == [20, 0, 0, 0, 20, 0, 20, 0, 0, 0, 20, 0]  # the manifest's f_thres
    assert [r["propagation"] for r in recs] == [None, BI, BI, BI, None, FWD, None, BI, BI, BI, None, FWD]
    assert recs[6]["reset"] == "shot change (intra-coded frame)"
    frames, fields = decoded(cut_clip)
    assert interp_keys(fields, 4) == ([0, 4, 6, 10], {6})

    acc = Acc()  # run_interp scores its predictions against "labels": here the CLI's maps
    run_interp(TorchStepper(tiny_model), frames, maps, fields, acc, 4, 20)
    agree = [np.trace(acc.conf[t]) / acc.conf[t].sum() for t in range(12)]
    assert min(agree) >= 0.995, agree

    ref = reference_maps(tiny_model, frames, fields, [0, 4, 6, 10], {6}, 20)
    ref_agree = [(r == m).mean() for r, m in zip(ref, maps)]
    assert min(ref_agree) >= 0.995, ref_agree
    fwd = reference_maps(tiny_model, frames, fields, [0, 4, 6, 10], {4, 6, 10}, 20)  # forward-only everywhere
    assert max((f == m).mean() for t, (f, m) in enumerate(zip(fwd, maps)) if t in (2, 3, 8, 9)) < 0.97


# ----------------------------------------------------------------------------- CLI
def test_two_streams_are_refused_in_one_line(bundle64, clip64, tmp_path, capsys):
    rc = main(
        ["--engine", str(bundle64 / "deq_cell.onnx"), str(clip64), str(clip64), "--streams", "2"]
        + ["--mode", "mv-interp", "--out", str(tmp_path / "o"), "--no-progress"]
    )
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "mv-interp" in lines[0], err
    assert not (tmp_path / "o" / "frames.jsonl").exists()


def test_cli_subprocess_end_to_end(bundle64, cut_clip, tmp_path):
    """``python -m runtime.run --mode mv-interp`` writes one record and one map per frame."""
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "runtime.run", "--engine", str(bundle64 / "deq_cell.onnx"), str(cut_clip)]
    cmd += ["--mode", "mv-interp", "--key-interval", "5", "--iters", "4", "--out", str(out), "--no-progress"]
    cmd += ["--save-maps", "npz", "--no-video", "--threads", "1"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    recs = records(out)
    assert [r["frame"] for r in recs] == list(range(12))
    assert [r["iterations"] for r in recs] == [4, 0, 0, 0, 0, 4, 4, 0, 0, 0, 0, 4]  # 0, 5, 6 (cut), 11
    maps = read_maps(out / "maps.npz")
    assert sorted(maps) == list(range(12)) and maps[0].shape == (H, W)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 12 and summary["iters"] == 4 and summary["key_interval"] == 5
