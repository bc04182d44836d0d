"""``runtime.run --carry-history``: Anderson's and Broyden's history carried from frame to frame in stream mode.

Reference: the float64 eager cell driven frame by frame by ``ReferenceBroyden(carry=True)`` (the standard good
Broyden of ``test_broyden_safe``, continuing one iteration across the frames), each frame's answer f of its last
point, carried into the next frame. The runtime's per-frame residual must follow it, and differ from the same run
with the history started afresh every frame (what the reference without carry gives)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.run import main
from tests.runtime.conftest import H, W, contract, decode_clip, moving_frames, write_clip
from tests.runtime.test_broyden_safe import ReferenceBroyden

FRAMES = 6


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, Path]:
    """A tiny MDEQ contracting slowly (acceleration matters), its bundle and a moving clip."""
    from export.bundle import export_bundle
    from export.config import get_config
    from export.mdeq import build_model

    model = contract(build_model(get_config("tiny"), seed=0), conv1=3e-3, gn2=5.0).eval()
    root = tmp_path_factory.mktemp("carry")
    export_bundle(model, root / "engines", H, W, batch=1, formats=("onnx",))
    return model, root / "engines", write_clip(root / "clip.mp4", moving_frames(FRAMES))


def _run(bundle: Path, clip: Path, out: Path, *extra: str) -> list[dict]:
    rc = main(["--engine", str(bundle / "deq_cell.onnx"), str(clip), "--out", str(out), "--no-video", "--no-progress",
               "--no-reset", "--device", "cpu", "--threads", "1", "--mode", "stream", *extra])  # fmt: skip
    assert rc == 0
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]


def reference(model: torch.nn.Module, frames: np.ndarray, evals: int, carry: bool) -> list[float]:
    """Per frame, the relative residual of the last point evaluated (the record's ``residual`` under f_last)."""
    m = model.double()
    shapes = m.state_shapes(1, H, W)
    sizes = [int(np.prod(s)) for s in shapes]
    solver, z, out = ReferenceBroyden(carry=carry), torch.zeros(sum(sizes), dtype=torch.float64), []
    with torch.no_grad():
        for frame in frames:
            x = m.injection(torch.from_numpy(frame)[None]).double()

            def f(v: torch.Tensor, x: torch.Tensor = x) -> torch.Tensor:
                parts = [t.view(s) for t, s in zip(v.split(sizes), shapes)]
                return torch.cat([t.flatten() for t in m.fullstage(*parts, x)])

            last = solver.solve(f, z, evals)[-1]
            z = f(last)
            out.append(float((z - last).norm() / z.norm()))
    model.float()
    return out


def test_carried_broyden_follows_the_reference(slow, tmp_path) -> None:
    model, bundle, clip = slow
    frames = decode_clip(clip)
    args = ("--solver", "broyden", "--returns", "f_last", "--iters", "1")
    carried = _run(bundle, clip, tmp_path / "c", *args, "--carry-history")
    fresh = _run(bundle, clip, tmp_path / "f", *args)
    for got, want in ((carried, reference(model, frames, 2, True)), (fresh, reference(model, frames, 2, False))):
        assert [r["evaluations"] for r in got] == [2] * FRAMES
        np.testing.assert_allclose([r["residual"] for r in got], want, rtol=1e-3)
    # what the test tells apart: from frame 1 on, the carried history changes every frame's answer
    assert all(c["residual"] < 0.8 * f["residual"] for c, f in zip(carried[1:], fresh[1:]))


def reference_anderson(maps: list, x0: torch.Tensor, m: int, evals: int) -> list[list[torch.Tensor]]:
    """Carried type-II Anderson, bordered form (test_anderson_safe's formulation): one list of points and f-values
    across the maps, each next point mixed from the last m + 1; each map's start is f of the previous map's last
    point. The points evaluated, per map."""
    xs: list[torch.Tensor] = []
    fs: list[torch.Tensor] = []
    out, x = [], x0.double()
    for f in maps:
        points = []
        for k in range(evals):
            points.append(x)
            xs.append(x)
            fs.append(f(x))
            if k + 1 == evals:
                break
            n = min(len(xs), m + 1)
            G = torch.stack(fs[-n:]) - torch.stack(xs[-n:])
            H = torch.zeros(n + 1, n + 1, dtype=torch.float64)
            H[0, 1:] = H[1:, 0] = 1
            H[1:, 1:] = G @ G.T
            rhs = torch.zeros(n + 1, dtype=torch.float64)
            rhs[0] = 1
            x = torch.linalg.solve(H, rhs)[1:] @ torch.stack(fs[-n:])
        out.append(points)
        x = fs[-1]
    return out


def test_carried_anderson_matches_the_reference() -> None:
    """Four nearby maps (a stream's frames), 3 evaluations each, the history carried: the same points as the
    carried reference (no ridge, so the two formulations agree; the safeguard never fires on this contraction)."""
    from runtime.solvers import anderson, flat_workspace
    from tests.runtime.test_anderson_safe import Recorder, tanh_map

    base = tanh_map(50, 0.9, 21)
    g = torch.Generator().manual_seed(22)
    shifts = [0.02 * torch.randn(50, generator=g, dtype=torch.float64) for _ in range(4)]
    maps = [lambda z, s=s: base(z) + s for s in shifts]
    want = reference_anderson(maps, torch.zeros(50), 3, 3)
    x = torch.zeros(50, dtype=torch.float64)
    ws = flat_workspace(x, 3)
    ws.m = 3
    for f, points in zip(maps, want):
        rec = Recorder(f)
        z, _ = anderson(rec, x.clone(), 3, None, work=torch.zeros_like(x), ws=ws, returns="f_last", carry=True,
                        lam=1e-14, reg=0.0)  # fmt: skip
        for a, (b, _) in zip(points, rec.pairs):
            assert float((a - b).norm()) <= 1e-9 * float(a.norm())
        fresh = Recorder(f)
        anderson(fresh, x.clone(), 3, None, work=torch.zeros_like(x), returns="f_last", lam=1e-14, reg=0.0)
        if f is not maps[0]:  # carrying changes the second point of every later frame
            assert float((fresh.pairs[1][0] - rec.pairs[1][0]).norm()) > 1e-6 * float(rec.pairs[1][0].norm())
        x = z.clone()


def test_carry_needs_an_accelerated_solver(slow, tmp_path, capsys) -> None:
    _, bundle, clip = slow
    rc = main(["--engine", str(bundle / "deq_cell.onnx"), str(clip), "--out", str(tmp_path / "x"), "--no-video",
               "--no-progress", "--solver", "fixed_point", "--carry-history"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "carrying the solver history" in err[0], err
    assert not (tmp_path / "x").exists()
