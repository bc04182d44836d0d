"""Bad input -> one clear line and a non-zero exit (never a traceback); outputs are complete,
atomic and hold one record per decoded frame; Ctrl-C keeps what was processed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.run import main
from runtime.writers import read_maps
from tests.runtime.conftest import moving_frames, write_clip

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "runtime.run", *args, "--no-progress"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc != 0
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], lines[0]


def run_main(capsys, *args: str) -> tuple[int, str]:
    rc = main([*args, "--no-progress"])
    return rc, capsys.readouterr().err


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]


def test_subprocess_bad_inputs(bundle64, tmp_path):
    """The real CLI in subprocesses (run concurrently to keep the test fast)."""
    eng = str(bundle64 / "deq_cell.onnx")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    procs = {
        "missing": (cli("--engine", eng, str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o1")), "no such file"),
        "not_video": (cli("--engine", eng, str(text), "--out", str(tmp_path / "o2")), "cannot open as video"),
        "empty": (cli("--engine", eng, str(empty), "--out", str(tmp_path / "o3")), "zero frames"),
        "bad_kind": (cli("--engine", str(bundle64 / "manifest.json"), str(text)), "unknown engine suffix"),
    }
    for name, (p, needle) in procs.items():
        _, err = p.communicate(timeout=120)
        check_one_line_error(p.returncode, err, needle)
        assert name != "missing" or not (tmp_path / "o1" / "frames.jsonl").exists()


def test_missing_manifest(bundle64, tmp_path, clip64, capsys):
    b = copy_bundle(bundle64, tmp_path / "b")
    (b / "manifest.json").unlink()
    rc, err = run_main(capsys, "--engine", str(b / "deq_cell.onnx"), str(clip64), "--out", str(tmp_path / "o"))
    check_one_line_error(rc, err, "no manifest.json")


def test_corrupt_engine(bundle64, tmp_path, clip64, capsys):
    b = copy_bundle(bundle64, tmp_path / "b")
    data = bytearray((b / "deq_cell.onnx").read_bytes())
    data[100:400] = os.urandom(300)
    (b / "deq_cell.onnx").write_bytes(bytes(data))
    rc, err = run_main(capsys, "--engine", str(b / "deq_cell.onnx"), str(clip64), "--out", str(tmp_path / "o"))
    check_one_line_error(rc, err, "sha256")
    (b / "deq_cell.onnx").write_bytes(b"garbage" * 100)
    rc, err = run_main(
        capsys, "--engine", str(b / "deq_cell.onnx"), str(clip64), "--out", str(tmp_path / "o"), "--no-hash"
    )
    check_one_line_error(rc, err, "not a loadable ONNX model")


def test_engine_swapped_for_another_graph(bundle64, tmp_path, clip64, capsys):
    """Hashes updated but the cell file is really the head: caught by the I/O check."""
    b = copy_bundle(bundle64, tmp_path / "b")
    shutil.copy(b / "head_seg.onnx", b / "deq_cell.onnx")
    rc, err = run_main(
        capsys, "--engine", str(b / "deq_cell.onnx"), str(clip64), "--out", str(tmp_path / "o"), "--no-hash"
    )
    check_one_line_error(rc, err, "do not match the manifest")


def test_manifest_not_matching(bundle64, tmp_path, clip64, capsys):
    b = copy_bundle(bundle64, tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    m["state"][1]["shape"][1] += 1
    (b / "manifest.json").write_text(json.dumps(m))
    rc, err = run_main(capsys, "--engine", str(b / "deq_cell.onnx"), str(clip64), "--out", str(tmp_path / "o"))
    check_one_line_error(rc, err, "state z1")
    (b / "manifest.json").write_text("{ not json")
    rc, err = run_main(capsys, "--engine", str(b / "deq_cell.onnx"), str(clip64), "--out", str(tmp_path / "o"))
    check_one_line_error(rc, err, "not a readable JSON manifest")


def test_plan_without_tensorrt_or_gpu(bundle64, tmp_path, clip64, capsys):
    pytest.importorskip("onnx")
    from runtime.bundle import sha256_file

    b = copy_bundle(bundle64, tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    for name, eng in m["engines"].items():
        (b / f"{name}.plan").write_bytes(b"not a real plan")
        eng["files"]["plan"] = f"{name}.plan"
        eng["sha256"][f"{name}.plan"] = sha256_file(b / f"{name}.plan")
    (b / "manifest.json").write_text(json.dumps(m))
    rc, err = run_main(capsys, "--engine", str(b / "deq_cell.plan"), str(clip64), "--out", str(tmp_path / "o"))
    check_one_line_error(rc, err, ".plan")
    assert "TensorRT" in err or "GPU" in err


def test_unwritable_output(bundle64, tmp_path, clip64, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, err = run_main(capsys, "--engine", str(bundle64 / "deq_cell.onnx"), str(clip64), "--out", str(blocker / "o"))
    check_one_line_error(rc, err, "not writable")


def test_streams_must_match_engine_batch(bundle64, clip64, tmp_path, capsys):
    rc, err = run_main(
        capsys, "--engine", str(bundle64 / "deq_cell.onnx"), str(clip64), str(clip64), "--out", str(tmp_path / "o")
    )
    check_one_line_error(rc, err, "batch 1")


def test_one_record_per_decoded_frame_and_outputs(bundle64, clip64, tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["--engine", str(bundle64 / "deq_cell.onnx"), str(clip64), "--out", str(out), "--no-progress", "--video"])
    assert rc == 0
    recs = records(out)
    assert [r["frame"] for r in recs] == list(range(8))
    assert {"iterations", "residual", "timestamp", "latency_ms"} <= set(recs[0])
    assert {"decode", "upload", "injection", "cell", "head", "download", "write"} <= set(recs[0]["latency_ms"])
    with np.load(out / "maps.npz") as maps:  # the default: one NPZ (PNGs on request), its fit geometry recorded
        assert sorted(maps.files) == ["encoding", "fit", "geometry", "index_000000", "runs_000000"]  # 8 maps, coded
    assert sorted(read_maps(out / "maps.npz")) == list(range(8))
    assert not (out / "maps").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 8 and summary["latency_ms"]["count"] == 8
    import av

    with av.open(str(out / "overlay.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 8
    assert not [p for p in out.rglob(".*")], "temporary files left behind"
    assert "Throughput" in capsys.readouterr().out


def test_corrupt_and_truncated_streams(bundle64, tmp_path, capsys):
    """Matroska keeps its index up front, so a cut file still opens; a cut MP4 (index at the
    end) cannot be opened at all, which must be one clear line too."""
    mp4 = write_clip(tmp_path / "c.mp4", moving_frames(24), codec="mpeg4").read_bytes()
    cut_mp4 = tmp_path / "cut.mp4"
    cut_mp4.write_bytes(mp4[: len(mp4) * 2 // 3])
    rc, err = run_main(capsys, "--engine", str(bundle64 / "deq_cell.onnx"), str(cut_mp4), "--out", str(tmp_path / "m"))
    check_one_line_error(rc, err, "cannot open as video")
    clip = write_clip(tmp_path / "c.mkv", moving_frames(24), codec="mpeg4")
    data = clip.read_bytes()
    truncated = tmp_path / "t.mkv"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    corrupt = tmp_path / "x.mkv"
    junk = bytearray(data)
    junk[len(data) // 2 : len(data) // 2 + 600] = os.urandom(600)
    corrupt.write_bytes(bytes(junk))
    for src in (truncated, corrupt):
        out = tmp_path / f"o_{src.stem}"
        rc = main(
            [
                "--engine",
                str(bundle64 / "deq_cell.onnx"),
                str(src),
                "--out",
                str(out),
                "--no-progress",
                "--save-maps",
                "none",
                "--no-video",
            ]
        )
        err = capsys.readouterr().err
        assert rc in (0, 3) and "Traceback" not in err
        recs = records(out)
        summary = json.loads((out / "summary.json").read_text())
        assert 0 < len(recs) == summary["streams"][0]["frames"]
        assert [r["frame"] for r in recs] == list(range(len(recs)))
        if src is truncated:  # its frames stop at two thirds of the length its header gives: said, and exit 3
            assert rc == 3 and "truncated or damaged?" in err and summary["streams"][0]["shortfall"]
        elif rc == 3:
            assert "decode error" in err


def test_a_file_whose_frames_stop_short_of_its_length_says_so(bundle64, tmp_path, capsys):
    """An MP4 with its index up front (a phone's, a web video's) cut short still opens and decodes up to the cut:
    one warning with the length it claims and the time its frames cover, exit 3 (partly decodable), outputs for the
    frames that decoded. The intact file, read whole or stopped by --max-frames, gets no warning."""
    frames = moving_frames(30)
    whole = write_clip(tmp_path / "w.mp4", frames, container_options={"movflags": "faststart"})
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    base = ["--engine", str(bundle64 / "deq_cell.onnx"), "--save-maps", "none"]
    rc, err = run_main(capsys, *base, str(cut), "--out", str(tmp_path / "c"))
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())["streams"][0]
    assert rc == 3 and "Traceback" not in err
    assert "it says it lasts" in err and "truncated or damaged?" in err
    assert 0 < summary["frames"] < 30 and summary["shortfall"]["duration_s"] == 3.0
    assert summary["frames"] / 10 <= summary["shortfall"]["covered_s"] < 2.0  # packets reach past decoded frames
    for extra in ([], ["--max-frames", "5"]):
        rc, err = run_main(capsys, *base, str(whole), "--out", str(tmp_path / f"w{len(extra)}"), *extra)
        assert rc == 0 and "warning" not in err, err


def test_no_partial_files_after_a_writer_failure(bundle64, clip64, tmp_path, capsys, monkeypatch):
    from runtime import writers

    calls = {"n": 0}
    real = writers.PngMapWriter.write

    def failing(self, index, classes):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(28, "No space left on device")
        real(self, index, classes)

    monkeypatch.setattr(writers.PngMapWriter, "write", failing)
    out = tmp_path / "o"
    argv = ["--engine", str(bundle64 / "deq_cell.onnx"), str(clip64), "--out", str(out), "--save-maps", "png"]
    rc, err = run_main(capsys, *argv)
    check_one_line_error(rc, err, "No space left")
    names = {p.name for p in out.iterdir()}
    assert not names & {"frames.jsonl", "overlay.mp4", "summary.json"}
    assert not [n for n in names if n.startswith(".")], names


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_keeps_processed_frames(bundle64, tmp_path, sig):
    """Ctrl-C or SIGTERM after a few frames: valid frames.jsonl, summary.json (interrupted), an overlay
    with the same frame count, and no hidden temporary files left."""
    clip = write_clip(tmp_path / "long.mp4", moving_frames(300))
    out = tmp_path / "o"
    p = cli(
        "--engine",
        str(bundle64 / "deq_cell.onnx"),
        str(clip),
        "--out",
        str(out),
        "--mode",
        "frame",
        "--iters",
        "20",
        "--save-maps",
        "none",
        "--video",
    )
    deadline = time.time() + 60
    while time.time() < deadline and not any(out.glob(".frames.jsonl.*")):
        time.sleep(0.1)
    time.sleep(1.0)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    recs = records(out)
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < len(recs) < 300 and summary["interrupted"] and summary["frames"] == len(recs)
    import av

    with av.open(str(out / "overlay.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == len(recs)
    assert not [n.name for n in out.iterdir() if n.name.startswith(".")]


def test_sigterm_during_startup_is_one_line(bundle64, tmp_path):
    """SIGTERM before the loop runs (imports, engines loading): one line, exit 130, no traceback."""
    clip = write_clip(tmp_path / "c.mp4", moving_frames(5))
    out = tmp_path / "o"
    p = cli("--engine", str(bundle64 / "deq_cell.onnx"), str(clip), "--out", str(out))
    deadline = time.time() + 60
    while time.time() < deadline and not out.exists() and p.poll() is None:  # the run has started (handler set)
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode in (130, 0), err  # 0 only if the 5 frames finished before the signal arrived
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err


def test_image_folder_and_resize_back_to_source_size(bundle64, tmp_path, capsys):
    from PIL import Image

    frames = moving_frames(3, h=50, w=90)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:03d}.png")
    (folder / "003.png").write_bytes(b"broken")
    out = tmp_path / "o"
    rc = main(
        [
            "--engine",
            str(bundle64 / "deq_cell.onnx"),
            str(folder),
            "--out",
            str(out),
            "--no-progress",
            "--save-maps",
            "npz",
            "--fit",
            "pad",
        ]
    )
    assert rc == 3, capsys.readouterr().err
    maps = read_maps(out / "maps.npz")  # at the source size, from the engine-size maps and their geometry
    assert sorted(maps) == [0, 1, 2] and maps[0].shape == (50, 90)


def test_http_url_source(bundle64, clip64, tmp_path, capsys):
    """A URL goes through PyAV's network input (served locally; no outside network needed)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(clip64.parent))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{clip64.name}"
        out = tmp_path / "o"
        rc = main(
            [
                "--engine",
                str(bundle64 / "deq_cell.onnx"),
                url,
                "--out",
                str(out),
                "--no-progress",
                "--save-maps",
                "none",
            ]
        )
        assert rc == 0, capsys.readouterr().err
        assert len(records(out)) == 8
    finally:
        server.shutdown()


def test_outputs_line_names_what_was_written(tmp_path):
    """The line reads the folder: what is there, dot-files (a run's hidden journal) left out, per stream."""
    from runtime.run import output_names

    (tmp_path / "maps").mkdir()
    for name in ("overlay.mp4", "frames.jsonl", "summary.json", ".journal"):
        (tmp_path / name).write_text("")
    assert output_names(tmp_path, 1) == ["frames.jsonl", "maps/", "overlay.mp4", "summary.json"]
    two = tmp_path / "two"
    for i in range(2):
        (two / f"stream{i}").mkdir(parents=True)
        (two / f"stream{i}" / "frames.jsonl").write_text("")
        (two / f"stream{i}" / "maps.npz").write_text("")
    assert output_names(two, 2) == ["stream<i>/{frames.jsonl, maps.npz}", "summary.json"]


# ----------------------------------------------------------------------------- runtime.demo (`make demo`)
def decode_frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_demo_draws_a_clip_and_runs_it(bundle64, tmp_path, capsys):
    from runtime import demo

    out = tmp_path / "demo"
    assert demo.main(["--engines", str(bundle64), "--out", str(out), "--frames", "5"]) == 0
    assert "overlay video" in capsys.readouterr().out
    m = json.loads((bundle64 / "manifest.json").read_text())
    sample = decode_frames(out / "sample.mp4")
    assert sample.shape == (5, m["height"], m["width"], 3)
    drawn = demo.pattern_clip(5, m["height"], m["width"])
    assert np.abs(sample.astype(int) - drawn).mean() < 8  # the drawn frames, through a lossy codec
    assert [r["frame"] for r in records(out)] == list(range(5))
    assert (out / "overlay.mp4").is_file() and (out / "summary.json").is_file()


def test_demo_runs_a_given_clip(bundle64, clip64, tmp_path, capsys):
    from runtime import demo

    out = tmp_path / "demo"
    assert demo.main(["--engines", str(bundle64), "--out", str(out), "--clip", str(clip64)]) == 0
    assert f"sample clip: {clip64}" in capsys.readouterr().out
    assert len(records(out)) == len(decode_frames(clip64)) and not (out / "sample.mp4").exists()


def test_demo_bad_input_is_one_line(bundle64, tmp_path, capsys):
    from runtime import demo

    rc = demo.main(["--engines", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    check_one_line_error(rc, capsys.readouterr().err, "does not exist")
    rc = demo.main(["--engines", str(bundle64), "--out", str(tmp_path / "o"), "--clip", str(tmp_path / "nope.mp4")])
    check_one_line_error(rc, capsys.readouterr().err, "nope.mp4")
    with pytest.raises(SystemExit) as e:
        demo.main(["--engines", str(bundle64), "--frames", "0"])
    assert e.value.code == 2 and "--frames" in capsys.readouterr().err


def test_a_reused_out_folder_holds_only_the_last_run(bundle64, tmp_path):
    """A 10-frame png run after a 30-frame one, then an npz run without video: each leaves only its own files
    (our names only: a user's file in the folder stays)."""
    long, short = write_clip(tmp_path / "l.mp4", moving_frames(30)), write_clip(tmp_path / "s.mp4", moving_frames(10))
    out = tmp_path / "o"
    base = ["--engine", str(bundle64 / "deq_cell.onnx"), "--out", str(out), "--no-progress"]
    assert main([*base, str(long), "--save-maps", "png"]) == 0
    (out / "notes.txt").write_text("mine")
    assert main([*base, str(short), "--save-maps", "png"]) == 0
    assert len(list((out / "maps").iterdir())) == 10 and len(records(out)) == 10
    assert main([*base, str(short), "--save-maps", "npz", "--no-video"]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"maps.npz", "frames.jsonl", "summary.json", "notes.txt"}, names


def test_cli_module_imports_without_torch():
    """`python -m runtime.run` parses its arguments and installs its SIGTERM handler before torch loads (2.5 s of
    imports here, during which SIGTERM killed the process with -15 and no message)."""
    code = "import sys, runtime.run; print(sorted(m for m in ('torch', 'av', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_sigterm_inside_an_import_is_still_the_interruption(capsys):
    """A startup SIGTERM raised inside an extension's initialisation comes back as an ImportError (onnxruntime:
    'initialization failed'), which the runner reports as an EngineError: still exit 130 and 'interrupted'."""
    from runtime import run as run_cli
    from runtime.errors import EngineError, Interrupted

    def load() -> None:
        try:
            run_cli._interrupt()
        except Interrupted:
            raise EngineError("injection.onnx: onnxruntime does not import (initialization failed)") from None

    try:
        assert run_cli.guarded(load) == (130, None)
        assert capsys.readouterr().err.strip() == "error: interrupted"
    finally:
        run_cli._STOPPING.clear()

    def bad_engine() -> None:
        raise EngineError("bad engine")

    assert run_cli.guarded(bad_engine) == (2, None)
    assert capsys.readouterr().err.strip() == "error: bad engine"


def test_usage_errors_are_one_line(capsys) -> None:
    """A bad flag says so in one line, as every other error does (argparse would print the usage text first)."""
    for argv in (["--engine", "x", "--max-frames", "0", "a.mp4"], ["--engine", "x", "--mode", "bogus", "a.mp4"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("python -m runtime.run: error: ") and err.rstrip().endswith("(--help for usage)")


@pytest.mark.parametrize("mode", ["stream", "mv"])
def test_a_turned_video_runs_upright(bundle64, tmp_path, capsys, mode):
    """A phone's portrait video is stored sideways with a display matrix that turns it for viewing: the run turns
    its frames (and, in the vector modes, its motion) upright, as a player and ffmpeg do, so its maps are those of
    the upright video, at the upright size; the summary records the turn. A turn by other than quarter turns is
    processed as stored, with a one-line warning."""
    frames = moving_frames(4)
    plain = write_clip(tmp_path / "plain.mp4", frames)
    eng = str(bundle64 / "deq_cell.onnx")
    args = ["--engine", eng, "--no-progress", "--mode", mode, *(["--key-interval", "2"] if mode == "mv" else [])]
    assert main([str(plain), "--out", str(tmp_path / "plain"), *args]) == 0
    ref = read_maps(tmp_path / "plain" / "maps.npz")
    for rotation in (90, -90, 45):
        turn = rotation // 90 if rotation % 90 == 0 else 0
        stored = np.stack([np.ascontiguousarray(np.rot90(f, -turn)) for f in frames])
        clip = write_clip(tmp_path / f"turned{rotation}.mp4", stored, rotation=rotation)
        out = tmp_path / f"turned{rotation}"
        assert main([str(clip), "--out", str(out), *args]) == 0
        err = capsys.readouterr().err
        summary = json.loads((out / "summary.json").read_text())
        assert summary["streams"][0]["display_rotation"] == rotation
        notes = [line for line in err.splitlines() if "display matrix" in line]
        assert len(notes) == (0 if turn else 1), err
        got = read_maps(out / "maps.npz")
        assert got.keys() == ref.keys() and all(got[i].shape == ref[i].shape for i in ref), rotation
        # another encode of the same pictures, not the same bits: agreement over the clip, not per frame (the motion
        # field's turn is held to the known motion in test_motion_vectors.py)
        agree = np.mean([(got[i] == ref[i]).mean() for i in ref])
        assert agree > 0.9, (rotation, agree)


def test_a_failed_run_keeps_the_earlier_runs_outputs(bundle64, clip64, tmp_path, capsys):
    """A typo'd input, a text file and a clip that opens but has no decodable frame (the run fails in its loop),
    each run into the folder of a good run: one line, a non-zero exit, and the good run's outputs as they were."""
    out = tmp_path / "o"
    base = ["--engine", str(bundle64 / "deq_cell.onnx"), "--out", str(out)]
    assert run_main(capsys, *base, str(clip64))[0] == 0
    good = {p.name: p.read_bytes() for p in out.iterdir()}
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    dead = bytearray(clip64.read_bytes())  # opens (its index is intact), but no frame decodes
    start, end = dead.find(b"mdat") + 4, dead.find(b"moov") - 8
    assert 4 < start < end
    dead[start:end] = bytes(end - start)
    (tmp_path / "dead.mp4").write_bytes(bytes(dead))
    for bad, needle in (
        (tmp_path / "nope.mp4", "no such file"),
        (text, "cannot open"),
        (tmp_path / "dead.mp4", "zero"),
    ):
        rc, err = run_main(capsys, *base, str(bad))
        check_one_line_error(rc, err, needle)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == good, bad.name


def test_a_colour_space_ffmpeg_cannot_convert_is_read_as_bt601_with_a_warning(bundle64, tmp_path, capsys):
    """H.264 tagged YCgCo (matrix 8): PyAV 18 refuses to make RGB of it ("operation not supported"), which lost every
    frame ("zero frames decoded"). Now every frame runs, read as untagged video, with one warning after the run."""
    import av

    from runtime.sources import frame_rgb

    clip = write_clip(tmp_path / "ycgco.mp4", moving_frames(12), colorspace=8)
    with av.open(str(clip)) as c:
        first = next(c.decode(video=0))
    assert first.colorspace == 8
    with pytest.raises(OSError):
        first.to_ndarray(format="rgb24")
    notes: set[str] = set()
    rgb = frame_rgb(first, notes)
    first.colorspace = 2
    assert np.array_equal(rgb, first.to_ndarray(format="rgb24")) and len(notes) == 1
    for mode in ("stream", "mv"):
        rc, err = run_main(
            capsys,
            "--engine",
            str(bundle64 / "deq_cell.onnx"),
            str(clip),
            "--out",
            str(tmp_path / mode),
            "--mode",
            mode,
        )
        assert rc == 0 and "Traceback" not in err
        assert err.count("(tag 8) is one FFmpeg cannot convert to RGB: read as BT.601") == 1, err
        assert len(records(tmp_path / mode)) == 12
