"""Bounded timing statistics (runtime.stats.Samples) against the plain list computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.stats import Samples, describe, summarize


def test_samples_equal_the_list_statistics_while_they_fit() -> None:
    rng = np.random.default_rng(0)
    values = [float(v) for v in rng.gamma(2.0, 3.0, 1000)] + [math.nan, math.inf]
    s = Samples(capacity=4096)
    s.extend(values)
    got, want = describe(s), describe(values)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-9), k


def test_samples_stay_bounded_and_exact_where_they_can() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(10.0, 2.0, 50_000)
    s = Samples(capacity=2048)
    for v in values:
        s.append(float(v))
    d = describe(s)
    assert len(s._kept) == 2048 and d["count"] == 50_000
    assert d["mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert d["std"] == pytest.approx(values.std(), rel=1e-6)
    assert (d["min"], d["max"]) == (values.min(), values.max())
    assert d["median"] == pytest.approx(np.median(values), abs=0.15)  # a 2048-value sample of N(10, 2)
    assert d["p99"] == pytest.approx(np.percentile(values, 99), abs=0.4)
    summary = summarize(s, wall_s=10.0, gpu_ms=s)
    assert summary["frames"] == 50_000 and summary["total_gpu_compute_s"] == pytest.approx(values.sum() / 1e3)
