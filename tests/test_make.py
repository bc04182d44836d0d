"""The README's first command, `make demo`, end to end (export, sample clip, streaming run, overlay still) at a small
size.

`-o install` skips the pip step (the test's interpreter already has the locked set), so the
test runs offline; everything else is the Makefile's own recipe."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_writes_overlay_and_one_record_per_frame(tmp_path) -> None:
    engines, out = tmp_path / "engines", tmp_path / "demo"
    cmd = ["make", "-s", "-o", "install", "demo", f"PYTHON={sys.executable}", f"ENGINES={engines}",
           f"DEMO_OUT={out}", "HEIGHT=64", "WIDTH=128"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (engines / "manifest.json").is_file() and (engines / "deq_cell.onnx").is_file()
    # make export builds every engine the shipped models need: the FlowNet too (for --mode dff)
    assert set(json.loads((engines / "manifest.json").read_text())["engines"]) >= {"injection", "deq_cell", "flownet"}
    records = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert len(records) == 60 and [r["frame"] for r in records] == list(range(60))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 60 and (out / "overlay.mp4").stat().st_size > 0
    assert str(out / "overlay.mp4") in done.stdout
    with Image.open(out / "overlay.png") as still:  # the README's picture: the overlay's middle frame
        assert still.format == "PNG" and still.size == (128, 64)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_test_builds_the_docs_strictly_and_install_takes_the_docs_extra() -> None:
    """`make test` (CI) runs the strict docs build; `make install` installs what that build needs."""
    done = subprocess.run(["make", "-n", "test", f"PYTHON={sys.executable}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"{sys.executable} -m sphinx -W --keep-going -q -b html docs docs/_build/html" in done.stdout
    assert '-e ".[cpu,dev,fleet,docs]"' in done.stdout  # make install, the first prerequisite of make test


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_export_det_writes_the_shipped_detector_bundle_to_engines_det() -> None:
    """`make export-det`: the shipped one-stage detector checkpoint, exported with its validated score threshold."""
    done = subprocess.run(
        ["make", "-n", "-o", "install", "export-det", f"PYTHON={sys.executable}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    line = " ".join(done.stdout.replace("\\\n", " ").split())
    assert f"{sys.executable} -m export --checkpoint checkpoints/tiny_det.pt" in line and "--out engines-det" in line
    assert (ROOT / "checkpoints" / "tiny_det.pt").is_file()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_finetune_fast_reproduces_the_committed_fast_checkpoint() -> None:
    """`make finetune-fast` runs the two fine-tunes whose commands the committed checkpoint records: its own
    (stage 2) and, in its `init`, stage 1's; every option of each, with the same value, in the same stage."""
    import shlex

    from export.checkpoint import load_checkpoint

    done = subprocess.run(
        ["make", "-n", "finetune-fast", f"PYTHON={sys.executable}"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    stages = [shlex.split(c) for c in done.stdout.replace("\\\n", " ").splitlines() if "-m export.train" in c]
    _, meta = load_checkpoint(ROOT / "checkpoints" / "tiny_sur_fast.pt")
    recorded = [meta["init"]["command"], meta["command"]]
    assert len(stages) == 2
    for made, rec in zip(stages, recorded):
        opts = _options(shlex.split(rec)[3:])
        got = _options(made[made.index("export.train") + 1 :])
        for key in ("--init", "--out", "--no-progress"):  # paths and the progress bar differ, nothing else may
            opts.pop(key, None), got.pop(key, None)
        assert got == opts
    assert stages[1][stages[1].index("--init") + 1] == stages[0][stages[0].index("--out") + 1]


def _options(argv: list[str]) -> dict[str, tuple[str, ...]]:
    """--flag -> its values, from an export.train command line."""
    out: dict[str, tuple[str, ...]] = {}
    key = None
    for a in argv:
        if a.startswith("--"):
            key = a
            out[key] = ()
        elif key is not None:
            out[key] += (a,)
    return out


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_fast_interp_mixes_the_two_shipped_checkpoints_into_an_ignored_file() -> None:
    """`make fast-interp`: export.interpolate of the shipped and the fast checkpoint, written where git ignores it
    (benchmarks/results/fast_model/README.md measures that file)."""
    import shlex

    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "fast-interp", "PYTHON=python"], cwd=ROOT, capture_output=True, text=True
    )  # under `make test` the inner make would otherwise announce its directory
    assert done.returncode == 0, done.stderr
    cmd = shlex.split(done.stdout.strip())
    assert cmd[:3] == ["python", "-m", "export.interpolate"]
    assert cmd[3:5] == ["checkpoints/tiny_sur.pt", "checkpoints/tiny_sur_fast.pt"]
    out = cmd[cmd.index("--out") + 1]
    assert out == "checkpoints/tiny_sur_interp.pt" and 0 < float(cmd[cmd.index("--alpha") + 1]) < 1
    ignored = subprocess.run(["git", "check-ignore", "-q", out], cwd=ROOT)
    assert ignored.returncode == 0, f"{out} is not git-ignored"
