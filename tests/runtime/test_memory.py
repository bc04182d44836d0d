"""Memory stays flat over 10 000 frames (tiny 32x64 engine, in-memory source).

Per-frame statistics are bounded (runtime.stats.Samples keeps at most 4096 values each, full by
frame 4096), so from frame 5000 on nothing may grow: 5000 frames x 0.2 KB (1 MB) is the bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.memory import rss_mb
from runtime.loop import RunConfig, run
from runtime.sources import ArraySource
from tests.runtime.conftest import contract, moving_frames

WARM = 5_000
ROOT = Path(__file__).resolve().parents[2]


def measure(out: str) -> dict:
    """Run 10 000 frames and sample the RSS at frame WARM and at the last frame (what the test checks)."""
    from export.bundle import export_bundle
    from export.config import get_config
    from export.mdeq import build_model

    tmp_path = Path(out)
    bundle = tmp_path / "b32"
    export_bundle(contract(build_model(get_config("tiny"))), bundle, 32, 64)
    clip = moving_frames(16, 32, 64)
    samples: dict[int, float] = {}
    n = 10_000

    def frames():
        for i in range(n):
            if i in (WARM, n - 1):
                samples[i] = rss_mb()
            yield clip[i % len(clip)]

    summary = run(
        RunConfig(
            engine=bundle / "deq_cell.onnx",
            sources=[ArraySource(frames())],
            out=tmp_path / "o",
            mode="stream",
            iters=2,
            save_maps="none",
            video=False,
            progress=False,
        )
    )
    lines = sum(1 for _ in open(tmp_path / "o" / "frames.jsonl"))
    return {
        "n": n,
        "frames": summary["frames"],
        "lines": lines,
        "warm": samples[WARM],
        "last": samples[n - 1],
        "latency_mean": summary["latency_ms"]["mean"],
    }


@pytest.mark.slow
def test_rss_flat_over_10000_frames(tmp_path):
    # in a process of its own: threads and allocator state that earlier tests leave behind are not ours to measure
    code = f"import json; from tests.runtime.test_memory import measure; print(json.dumps(measure({str(tmp_path)!r})))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    n = got["n"]
    assert got["frames"] == n and got["lines"] == n
    growth = got["last"] - got["warm"]
    print(f"RSS {got['warm']:.1f} MB at frame {WARM}, {got['last']:.1f} MB at frame {n - 1}: +{growth:.2f} MB")
    per_frame_kb = growth * 1024 / (n - 1 - WARM)
    assert per_frame_kb < 0.2, f"RSS grew {growth:.2f} MB over {n - 1 - WARM} frames ({per_frame_kb:.2f} KB/frame)"
    assert np.isfinite(got["latency_mean"])
