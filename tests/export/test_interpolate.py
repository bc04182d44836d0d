"""``python -m export.interpolate``: the endpoints reproduce the sources bit for bit, the midpoint is their mean
(computed here on the raw state dicts, not through the module), and mismatched checkpoints fail in one line."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from export.checkpoint import save_checkpoint
from export.config import get_config
from export.interpolate import main
from export.mdeq import build_model


def _raw(path: Path) -> dict:
    """The file as torch wrote it (no model built), so the checks do not go through load_checkpoint."""
    return torch.load(path, weights_only=True)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny checkpoints of one config with different weights and BatchNorm-style counters."""
    d = tmp_path_factory.mktemp("ck")
    a, b = build_model(get_config("tiny"), seed=1).eval(), build_model(get_config("tiny"), seed=2).eval()
    with torch.no_grad():  # running statistics and counters that differ between the two
        for i, (m, n) in enumerate(((a, 3), (b, 7))):
            for name, buf in m.named_buffers():
                if buf.is_floating_point():
                    buf.add_(0.1 * (i + 1))
                elif "num_batches_tracked" in name:
                    buf.fill_(n)
    return (
        save_checkpoint(a, d / "a.pt", {"mode": "sur", "iters": 12, "steps": 5}),
        save_checkpoint(b, d / "b.pt", {"mode": "sur", "iters": 12, "steps": 9}),
    )


def _run(pair: tuple[Path, Path], alpha: str, out: Path) -> dict:
    assert main([str(pair[0]), str(pair[1]), "--alpha", alpha, "--out", str(out)]) == 0
    return _raw(out)


@pytest.mark.parametrize("alpha,source", [("0", 0), ("1", 1)])
def test_endpoints_reproduce_the_sources(pair, tmp_path, alpha: str, source: int) -> None:
    got = _run(pair, alpha, tmp_path / "x.pt")["state_dict"]
    want = _raw(pair[source])["state_dict"]
    ints = _raw(pair[1])["state_dict"]  # integer tensors always come from B
    assert set(got) == set(want)
    for k, v in got.items():
        ref = want[k] if v.is_floating_point() else ints[k]
        assert v.dtype == ref.dtype and torch.equal(v, ref), k


def test_midpoint_is_the_mean_and_meta_names_the_sources(pair, tmp_path) -> None:
    raw = _run(pair, "0.5", tmp_path / "mid.pt")
    a, b = _raw(pair[0])["state_dict"], _raw(pair[1])["state_dict"]
    floats = 0
    for k, v in raw["state_dict"].items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (a[k] + b[k]) / 2, rtol=0, atol=1e-7)
            floats += not torch.equal(a[k], b[k])
        else:
            assert torch.equal(v, b[k]), k
    assert floats > 0  # the fixture's two models do differ
    assert raw["config"] == _raw(pair[0])["config"]
    meta = raw["meta"]
    assert meta["interpolation"]["alpha"] == 0.5
    assert meta["interpolation"]["a"] == {"path": str(pair[0]), "sha256": _sha(pair[0])}
    assert meta["interpolation"]["b"] == {"path": str(pair[1]), "sha256": _sha(pair[1])}
    assert meta["command"].startswith("python -m export.interpolate ") and "--alpha 0.5" in meta["command"]
    assert meta["mode"] == "sur" and meta["iters"] == 12 and meta["steps"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["mid.pt"]  # atomic write: no temp file left


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_mismatched_configs_exit_2_with_one_line(pair, tmp_path, capsys) -> None:
    other = build_model(dataclasses.replace(get_config("tiny"), relax=0.5), seed=1).eval()
    odd = save_checkpoint(other, tmp_path / "odd.pt", {})
    out = tmp_path / "x.pt"
    assert main([str(pair[0]), str(odd), "--alpha", "0.5", "--out", str(out)]) == 2
    assert "configs differ" in _one_error_line(capsys) and not out.exists()


def test_mismatched_architectures_and_bad_input_exit_2(pair, tmp_path, capsys) -> None:
    wider = build_model(dataclasses.replace(get_config("tiny"), num_classes=5), seed=1).eval()
    odd = save_checkpoint(wider, tmp_path / "odd.pt", {})
    for args in (
        [str(pair[0]), str(odd), "--alpha", "0.5"],
        [str(pair[0]), str(tmp_path / "none.pt"), "--alpha", "0.5"],
        [str(pair[0]), str(pair[1]), "--alpha", "nan"],
    ):
        assert main([*args, "--out", str(tmp_path / "x.pt")]) == 2
        _one_error_line(capsys)
    assert not (tmp_path / "x.pt").exists()


def test_different_tensors_are_refused() -> None:
    from export.interpolate import interpolate_state

    a = {"w": torch.zeros(2), "n": torch.tensor(1)}
    with pytest.raises(ValueError, match="keys in one only"):
        interpolate_state(a, {"w": torch.zeros(2)}, 0.5)
    with pytest.raises(ValueError, match="w:"):
        interpolate_state(a, {"w": torch.zeros(3), "n": torch.tensor(1)}, 0.5)


def test_same_command_same_bytes(pair, tmp_path) -> None:
    """`make fast-interp` rebuilds a git-ignored checkpoint: the same sources and alpha must give the same file."""
    out = tmp_path / "x.pt"
    _run(pair, "0.3", out)
    first = _sha(out)
    _run(pair, "0.3", out)
    assert _sha(out) == first
