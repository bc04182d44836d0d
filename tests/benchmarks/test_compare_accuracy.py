"""Paired accuracy comparison: pooled mIoU, the clip bootstrap, and the CLI's checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.compare_accuracy import bootstrap_difference, main, pooled_miou
from export.metrics import miou


def _confusions(rng: np.random.Generator, clips: int, classes: int = 4) -> np.ndarray:
    conf = rng.integers(0, 50, (clips, classes, classes)) + np.eye(classes, dtype=int) * 400
    conf[:, 3, :] = 0  # class 3 absent from ground truth ...
    conf[:, :, 3] = 0  # ... and prediction: left out of the mean, as export.metrics.miou does
    return conf


def test_pooled_miou_is_export_metrics_miou() -> None:
    conf = _confusions(np.random.default_rng(0), 5)
    assert np.allclose(pooled_miou(conf), [miou(c) for c in conf])


def test_bootstrap_of_identical_results_is_zero_and_one_clip_has_no_spread() -> None:
    conf = _confusions(np.random.default_rng(1), 6)
    assert np.all(bootstrap_difference(conf, conf, 200, 0) == 0)
    better = conf.copy()
    better[:, 0, 0] += 300
    one = bootstrap_difference(better[:1], conf[:1], 50, 0)
    assert np.allclose(one, miou(better[0]) - miou(conf[0]))


def test_bootstrap_resamples_the_same_clips_for_both() -> None:
    """A clip-level effect shared by both results cancels: only the paired difference varies."""
    rng = np.random.default_rng(2)
    base = _confusions(rng, 8)
    base[::2, 0, 1] += 800  # half of the clips are much harder, for both results
    new = base.copy()
    new[:, 1, 1] += 5  # the new result is slightly and uniformly better
    boot = bootstrap_difference(new, base, 2000, 0)
    pooled = miou(new.sum(0)) - miou(base.sum(0))
    assert pooled > 0 and np.all(boot > 0) and np.percentile(boot, 2.5) <= pooled <= np.percentile(boot, 97.5)


def _result(path, conf: np.ndarray, **stamp) -> None:
    rows = {"converged": {"miou": miou(conf.sum(0)), "per_clip_confusion": conf.tolist()}}
    base_stamp = {"split": "test", "heldout_seed": 950000, "clips": len(conf), "frames": 30}
    path.write_text(json.dumps({"stamp": {**base_stamp, **stamp}, "results": {"m (onnx)": {"rows": rows}}}))


def test_cli_writes_the_table(tmp_path, capsys) -> None:
    conf = _confusions(np.random.default_rng(3), 6)
    worse = conf.copy()
    worse[:, 0, 0] -= 200
    _result(tmp_path / "new.json", worse)
    _result(tmp_path / "base.json", conf)
    args = [str(tmp_path / "new.json"), str(tmp_path / "base.json"), "--out", str(tmp_path), "--resamples", "99"]
    assert main(args) == 0
    res = json.loads((tmp_path / "accuracy_vs_base.json").read_text())
    row = res["rows"]["converged"]
    assert row["difference"] == pytest.approx(100 * (miou(worse.sum(0)) - miou(conf.sum(0))))
    out = capsys.readouterr().out
    assert row["difference"] < -0.5 and "rows within 0.5 points of the base: 0 of 1 (further below: converged)" in out


@pytest.mark.parametrize("problem", ["other clips", "no per-clip data", "not json"])
def test_cli_bad_input_is_one_line(tmp_path, capsys, problem: str) -> None:
    conf = _confusions(np.random.default_rng(4), 3)
    _result(tmp_path / "base.json", conf)
    new = tmp_path / "new.json"
    if problem == "other clips":
        _result(new, conf, heldout_seed=900000)
    elif problem == "no per-clip data":
        _result(new, conf)
        data = json.loads(new.read_text())
        del data["results"]["m (onnx)"]["rows"]["converged"]["per_clip_confusion"]
        new.write_text(json.dumps(data))
    else:
        new.write_text("{")
    assert main([str(new), str(tmp_path / "base.json"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "accuracy_vs_base.md").exists()
