"""Scene families: "context" (the benchmark's default) and "plain". The context skyline's
contract: districts of at least 280 px whose class shows only at the two coloured ends of the
plinth (warm: building, cool: vegetation), alternating classes, sky gaps between them."""

from __future__ import annotations

import numpy as np
import pytest

from export import synthetic
from export.config import SYNTH_CLASSES
from export.synthetic import (
    BUILDING,
    ROAD,
    SKY,
    VARIANTS,
    VEGETATION,
    make_scene,
    random_batch,
    random_frame,
    render_clip,
    render_clip_with_meta,
)
from export.train import main, parse_args


def test_context_is_default_deterministic_and_labels_in_range() -> None:
    assert VARIANTS == ("context", "plain")
    a = render_clip(5, 3, 64, 128)
    b = render_clip(5, 3, 64, 128, variant="context")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    frames, labels, flows = a
    assert frames.shape == (3, 64, 128, 3) and frames.dtype == np.uint8
    assert labels.max() < len(SYNTH_CLASSES)
    np.testing.assert_array_equal(flows[0], 0)
    fa, la = random_frame(np.random.default_rng(9), 32, 64)
    fb, lb = random_frame(np.random.default_rng(9), 32, 64, variant="context")
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(la, lb)


def test_plain_differs_and_meta_names_the_family() -> None:
    fc, lc, _, mc = render_clip_with_meta(11, 1, 64, 128)
    fp, lp, _, mp = render_clip_with_meta(11, 1, 64, 128, variant="plain")
    assert not np.array_equal(fc, fp) and not np.array_equal(lc, lp)
    assert mc["variant"] == "context" and mp["variant"] == "plain"


def _plinth_runs(seed: int) -> list[tuple[int, int, int, np.ndarray]]:
    """(x0, x1, class, plinth colours) of every skyline district wholly inside a world at
    reference scale, read on the canvas (sprites are drawn only at render time)."""
    scene = make_scene(np.random.default_rng(seed), 300, 2000, 1.0, variant="context")
    row = scene.ground - 2  # inside the 10 px plinth
    lab = scene.label[row]
    sky = np.r_[True, lab == SKY, True]
    edges = np.flatnonzero(np.diff(sky.astype(np.int8)))  # run starts (-1) and ends (+1), paired
    runs = []
    for x0, x1 in zip(edges[::2], edges[1::2]):
        if x0 > 0 and x1 < lab.size:  # not cut by the world's edge
            runs.append((int(x0), int(x1), int(lab[x0]), scene.color[row, x0:x1]))
    return runs


def test_context_districts_carry_their_class_only_at_the_plinth_ends() -> None:
    n = 0
    for seed in range(6):
        runs = _plinth_runs(seed)
        assert len(runs) >= 2
        for (a0, a1, ca, col), (b0, _, cb, _) in zip(runs, runs[1:] + [(None, None, None, None)]):
            assert a1 - a0 >= 280, "a district narrower than the context distance"
            assert ca in (BUILDING, VEGETATION)
            warm = col[:, 0] - col[:, 2]  # red minus blue
            for end in (col[:25], col[-25:]):
                w = end[:, 0] - end[:, 2]
                assert (w > 60).all() if ca == BUILDING else (w < -60).all()
            middle = warm[60:-60]
            assert np.abs(middle).max() < 1e-3, "the plinth between the markers is grey"
            if cb is not None:
                assert cb != ca and b0 - a1 >= 40, "districts alternate, separated by sky"
            n += 1
    assert n >= 12


def test_context_texture_is_independent_of_class(monkeypatch) -> None:
    """Window grids and foliage both appear under both classes: the texture generators are
    swapped for flat tags (1 and 2), which the canvas then shows above each district's plinth."""
    monkeypatch.setattr(synthetic, "_building", lambda rng, h, w, sc: np.full((h, w, 3), 1.0, np.float32))
    monkeypatch.setattr(synthetic, "_vegetation", lambda rng, h, w, sc: np.full((h, w, 3), 2.0, np.float32))
    seen = set()
    for seed in range(12):
        scene = make_scene(np.random.default_rng(seed), 300, 2000, 1.0, variant="context")
        for x0, x1, cls, _ in _plinth_runs(seed):
            tag = scene.color[scene.ground - 15, (x0 + x1) // 2, 0]
            seen.add((cls, float(tag)))
    assert seen == {(BUILDING, 1.0), (BUILDING, 2.0), (VEGETATION, 1.0), (VEGETATION, 2.0)}


def test_context_skyline_shows_both_classes_in_clips() -> None:
    seen: set[int] = set()
    gaps = 0
    for seed in range(4):
        _, labels, _ = render_clip(100 + seed, 1, 128, 256)
        seen |= set(np.unique(labels).tolist())
        lab = labels[0]
        road = lab == ROAD
        for col in np.nonzero(road.any(0))[0]:
            r = int(np.argmax(road[:, col]))  # first road row from the top: the ground line
            gaps += bool(r > 0 and lab[r - 1, col] == SKY)
    assert {BUILDING, VEGETATION} <= seen
    assert gaps > 0


def test_unknown_variant_train_flag_and_resume_guard(tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match="unknown scene variant"):
        render_clip(1, 1, 32, 64, variant="nope")
    with pytest.raises(ValueError, match="unknown scene variant"):
        random_batch(np.random.default_rng(0), 1, 32, 64, variant="nope")
    assert parse_args(["--out", "x.pt"]).variant == "context"
    assert parse_args(["--out", "x.pt", "--variant", "plain"]).variant == "plain"
    with pytest.raises(SystemExit):
        parse_args(["--out", "x.pt", "--variant", "nope"])
    out = tmp_path / "m.pt"
    base = [
        "--iters",
        "1",
        "--batch",
        "1",
        "--crop",
        "32",
        "64",
        "--val-frames",
        "1",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main([*base, "--steps", "1", "--variant", "plain"]) == 0
    capsys.readouterr()
    assert main([*base, "--steps", "2", "--resume"]) == 2  # context now, plain before: refused
    err = capsys.readouterr().err
    assert err.startswith("error:") and "'plain'" in err and "Traceback" not in err
