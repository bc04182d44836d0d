"""Feature-propagation modes (mv, stream-mv, dff, mv-interp): warp hooks, motion pyramids, key
schedules, and the modes end to end through the runtime loop and CLI, against independent
references (array slicing, the grid_sample warp, eager PyTorch)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kernels import reference
from runtime.modes import FrameInfo
from runtime.motion_vectors import MotionField, MotionVectorDecoder
from runtime.propagation import (
    DFFPolicy,
    MVPolicy,
    StateWarper,
    StreamMVPolicy,
    interp_weights,
    interpolate_segment,
    motion_warp_hook,
    mv_pyramid,
)
from runtime.run import main
from runtime.writers import read_maps
from tests.runtime.conftest import H, W

CHANNELS = (16, 32, 64, 128)  # the tiny config's state
SHAPES = [(H // (4 * 2**i), W // (4 * 2**i)) for i in range(4)]


def field(dx: float, dy: float, shape=SHAPES[0], coverage: float = 1.0, is_key: bool = False) -> MotionField:
    disp = np.zeros((2, *shape), np.float32)
    disp[0], disp[1] = dx, dy
    cov = np.full(shape, coverage, np.float32)
    return MotionField(disp, cov > 0, cov, is_key, "I" if is_key else "P", 1, 4)


def shifted(a: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """out[y, x] = a[y + dy, x + dx], zero outside (the backward warp by an integer displacement)."""
    out = torch.zeros_like(a)
    h, w = a.shape[-2:]
    ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
    yd, xd = slice(max(0, dy), min(h, h + dy)), slice(max(0, dx), min(w, w + dx))
    out[..., ys, xs] = a[..., yd, xd]
    return out


def random_state(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(c, h, w, generator=g) for c, (h, w) in zip(CHANNELS, SHAPES)]


# ----------------------------------------------------------------------------- unit level
def test_warp_hook_moves_every_scale_by_an_integer_displacement_exactly():
    """dx=8, dy=-8 stride-4 px is (8,-8), (4,-4), (2,-2), (1,-1) px on the four scales."""
    views = random_state()
    before = [v.clone() for v in views]
    warper = StateWarper()
    motion_warp_hook(warper)(views, FrameInfo(1, side={"motion": field(8.0, -8.0)}))
    for i, (b, v) in enumerate(zip(before, views)):
        f = 2**i
        torch.testing.assert_close(v, shifted(b, 8 // f, -8 // f), atol=1e-5, rtol=0)
    bufs = [t.data_ptr() for t in warper.disp + warper.scratch]
    motion_warp_hook(warper)(views, FrameInfo(2, side={"motion": field(4.0, 0.0)}))
    assert [t.data_ptr() for t in warper.disp + warper.scratch] == bufs  # persistent, not per frame


def test_cpu_warp_reads_numpy_fields_in_place_and_copies_the_rest():
    """On a CPU device a float32 field is warped from where it lies (no copy into the buffers); a sign, another dtype,
    a strided or a read-only field go through the buffers. Every way gives the same state."""
    fields = [np.random.default_rng(i).normal(0, 2, (2, h, w)).astype(np.float32) for i, (h, w) in enumerate(SHAPES)]
    ro = [f.copy() for f in fields]
    for f in ro:
        f.flags.writeable = False
    ways = {
        "in place": (fields, 1.0),
        "read-only": (ro, 1.0),
        "float64": ([f.astype(np.float64) for f in fields], 1.0),
        "strided": ([np.repeat(f, 2, axis=2)[:, :, ::2] for f in fields], 1.0),
        "negated twice": ([-f for f in fields], -1.0),
    }
    got = {}
    for name, (fs, sign) in ways.items():
        views = random_state(3)
        warper = StateWarper()
        warper.ensure(views)
        loaded = warper.load(fs, sign)
        borrowed = [d.data_ptr() for d in loaded] == [f.ctypes.data for f in fs]
        assert borrowed == (name == "in place"), name
        assert [d.data_ptr() for d in loaded if not borrowed] == [d.data_ptr() for d in warper.disp if not borrowed]
        warper.warp_(views)
        got[name] = views
    for name, views in got.items():
        for a, b in zip(views, got["in place"]):
            torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    ref = random_state(3)
    for v, f in zip(ref, fields):  # the grid_sample reference on its own
        v.copy_(reference.warp(v[None], torch.from_numpy(f)[None])[0])
    for a, b in zip(got["in place"], ref):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_hook_leaves_the_state_alone_without_vectors():
    views = random_state(1)
    before = [v.clone() for v in views]
    hook = motion_warp_hook(StateWarper())
    hook(views, FrameInfo(0, side={"motion": field(8.0, 0.0, is_key=True)}))  # I-frame
    hook(views, FrameInfo(1))  # no side data
    assert all(torch.equal(a, b) for a, b in zip(before, views))


def test_mv_pyramid_pools_by_coverage_and_resamples_the_grid():
    disp = np.zeros((2, *SHAPES[0]), np.float32)
    cov = np.zeros(SHAPES[0], np.float32)
    disp[0, :, :8], cov[:, :8] = 6.0, 1.0  # left quarter moves, the rest is intra (no vectors)
    pyr = mv_pyramid(disp, cov, SHAPES)
    assert [p.shape[1:] for p in pyr] == SHAPES
    for i, p in enumerate(pyr):
        cols = 8 // 2**i
        np.testing.assert_allclose(p[0, :, :cols], 6.0 / 2**i)  # covered cells: the mean, in scale-i px
        assert not p[:, :, cols:].any() and not p[1].any()
    # A field on a half-size source grid: resampled, x and y scaled by the grid ratio (2).
    half = mv_pyramid(np.full((2, 8, 16), 1.5, np.float32), np.ones((8, 16), np.float32), SHAPES)
    np.testing.assert_allclose(half[0], 3.0, atol=1e-6)


def test_mv_key_schedule_interval_iframes_and_shot_changes():
    pol = MVPolicy(interval=3, iters=2, reset_iters=7)
    motions = [field(0, 0, is_key=True)] + [field(1, 0)] * 4 + [field(0, 0, coverage=0.0)] + [field(1, 0)] * 3
    plans = [pol.plan(FrameInfo(i, side={"motion": m}), i > 0) for i, m in enumerate(motions)]
    got = [(p.run_cell, p.start, p.iters if p.run_cell else 0) for p in plans]
    assert got == [
        (True, "zero", 7),  # first frame
        (False, "previous", 0),
        (False, "previous", 0),
        (True, "previous", 2),  # every 3rd: warm key frame
        (False, "previous", 0),
        (True, "zero", 7),  # intra-coded P frame: shot change, solved from zero
        (False, "previous", 0),
        (False, "previous", 0),
        (True, "previous", 2),
    ]
    zero = MVPolicy(interval=2, iters=2, reset_iters=5, key_start="zero")
    p = [zero.plan(FrameInfo(i, side={"motion": field(1, 0)}), i > 0) for i in range(3)]
    assert [(x.start, x.iters) for x in p if x.run_cell] == [("zero", 5), ("zero", 5)]
    s = StreamMVPolicy(0, reset_iters=3)
    assert (s.plan(FrameInfo(0), False).iters, s.plan(FrameInfo(1), True).run_cell) == (3, False)


def test_interp_weights_and_segment_endpoints():
    assert interp_weights(0, 4) == (1.0, 0.0) and interp_weights(4, 4) == (0.0, 1.0)
    assert interp_weights(1, 4) == (0.75, 0.25)
    with pytest.raises(ValueError):
        interp_weights(5, 4)
    a, b = [t[None] for t in random_state(2)], [t[None] for t in random_state(3)]
    n = 4
    still = [None] + [[np.zeros((2, h, w), np.float32) for h, w in SHAPES]] * n
    seg = interpolate_segment(a, b, still)
    assert len(seg) == n + 1
    assert all(torch.equal(x, y) for x, y in zip(seg[0], a)) and all(torch.equal(x, y) for x, y in zip(seg[n], b))
    for p in range(1, n):  # no motion: the plain blend (n-p)/n a + p/n b
        for s, x, y in zip(seg[p], a, b):
            torch.testing.assert_close(s, (n - p) / n * x + p / n * y, atol=1e-5, rtol=1e-5)


def test_interp_segment_follows_a_translation():
    """Key b is key a moved by n*d: every frame in between is a moved by p*d (interior)."""
    a = [random_state(4)[0][None]]
    n, d = 4, 2
    b = [shifted(a[0], -n * d, 0)]
    motion = [None] + [[np.stack([np.full(SHAPES[0], -float(d)), np.zeros(SHAPES[0])]).astype(np.float32)]] * n
    seg = interpolate_segment(a, b, motion)
    for p in range(1, n):
        want = shifted(a[0], -p * d, 0)
        torch.testing.assert_close(seg[p][0][..., n * d : -n * d], want[..., n * d : -n * d], atol=1e-5, rtol=0)


def test_dff_policy_warps_the_key_state_by_flow_and_scale():
    class FakeFlow:
        def __init__(self) -> None:
            self.keys = []

        def remember_key(self, info):
            self.keys.append(info.index)

        def flows(self, info):
            fl = [torch.zeros(1, 2, h, w) for h, w in SHAPES]
            fl[0][:, 0] = 4.0
            return fl, [torch.full((1, c, h, w), 2.0) for c, (h, w) in zip(CHANNELS, SHAPES)]

    prov = FakeFlow()
    pol = DFFPolicy(interval=3, iters=2, reset_iters=5, provider=prov)
    key = random_state(5)
    views = [k.clone() for k in key]
    p0 = pol.plan(FrameInfo(0), False)
    p0.warp(views, FrameInfo(0))
    assert p0.run_cell and prov.keys == [0]
    for t in (1, 2):
        p = pol.plan(FrameInfo(t), True)
        assert not p.run_cell
        if t == 2:  # frame 1 still held the key state (snapshot); later frames start from it, not from t-1
            views[0].add_(1.0)
        p.warp(views, FrameInfo(t))
        torch.testing.assert_close(views[0], 2.0 * shifted(key[0], 4, 0), atol=1e-5, rtol=0)
        torch.testing.assert_close(views[1], 2.0 * key[1], atol=1e-5, rtol=0)
    assert pol.plan(FrameInfo(3), True).run_cell


# ----------------------------------------------------------------------------- end to end
def pan_frames(n: int, step: int = 4, seed: int = 0) -> np.ndarray:
    """A smooth texture panning left by ``step`` px per frame (content moves, camera pans)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (H // 8 + 2, (W + step * n) // 8 + 2, 3)).astype(np.float32)
    big = torch.nn.functional.interpolate(
        torch.from_numpy(small).permute(2, 0, 1)[None], scale_factor=8, mode="bilinear"
    )
    big = big[0].permute(1, 2, 0).numpy()
    return np.stack([big[:H, step * i : step * i + W] for i in range(n)]).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pan_clip(tmp_path_factory) -> Path:
    from runtime.encode import EncodeOptions, encode_mp4

    path = tmp_path_factory.mktemp("pan") / "pan.mp4"
    encode_mp4(path, pan_frames(9), EncodeOptions(crf=12, preset="ultrafast", gop=30))
    return path


def decoded(path: Path) -> tuple[np.ndarray, list[MotionField]]:
    with MotionVectorDecoder(path, stride=4) as dec:
        items = list(dec)
    return np.stack([f for f, _ in items]), [m for _, m in items]


def run_cli(engine: Path, clip: Path, out: Path, *args: str) -> tuple[int, list[dict], np.ndarray]:
    rc = main(
        [
            "--engine",
            str(engine),
            str(clip),
            "--out",
            str(out),
            "--no-progress",
            "--save-maps",
            "npz",
            "--no-video",
            *args,
        ]
    )
    recs = [json.loads(ln) for ln in (out / "frames.jsonl").read_text().splitlines()] if rc == 0 else []
    return rc, recs, (np.stack(list(read_maps(out / "maps.npz").values())) if rc == 0 else None)


def eager_solve(model, frame: np.ndarray, iters: int) -> list[torch.Tensor]:
    with torch.no_grad():
        x = model.injection(torch.from_numpy(frame)[None])
        z = [torch.zeros(s) for s in model.state_shapes(1, H, W)]
        for _ in range(iters):
            z = list(model.fullstage(*z, x))
    return z


def eager_classes(model, z) -> np.ndarray:
    from export.mdeq import ClassMapHead

    with torch.no_grad():
        return ClassMapHead(model.head, (H, W))(*z)[0].numpy()


def test_mv_warp_of_real_features_matches_the_next_frame(tiny_model, pan_clip):
    """On a 4 px/frame pan, the codec vectors say 'one stride-4 cell' and warping frame t-1's
    stride-4 features (the injection output, shift-equivariant for multiples of 4 px) by them
    reproduces frame t's features in the interior, far better than not warping."""
    frames, fields = decoded(pan_clip)
    assert fields[0].is_key and all(not f.is_key for f in fields[1:])
    with torch.no_grad():
        x = [tiny_model.injection(torch.from_numpy(f)[None]) for f in frames]
    for t in (2, 5):
        np.testing.assert_allclose(fields[t].disp[0][fields[t].valid], 1.0, atol=0.05)
        view = [x[t - 1][0].clone()]
        motion_warp_hook(StateWarper())(view, FrameInfo(t, side={"motion": fields[t]}))
        inner = (..., slice(2, -2), slice(2, -2))
        err_warp = (view[0] - x[t][0])[inner].norm()
        err_still = (x[t - 1][0] - x[t][0])[inner].norm()
        assert err_warp < 0.1 * err_still, (t, float(err_warp), float(err_still))


def test_stream_mv_k0_is_a_pure_warp_and_mv_schedules_keys(tiny_model, bundle64, pan_clip, tmp_path):
    engine = bundle64 / "deq_cell.onnx"
    rc, recs, maps = run_cli(
        engine, pan_clip, tmp_path / "smv", "--mode", "stream-mv", "--iters", "0", "--reset-iters", "4"
    )
    assert rc == 0 and [r["frame"] for r in recs] == list(range(9))  # one record per decoded frame
    assert [r["iterations"] for r in recs] == [4] + [0] * 8
    # Independent reference: eager model, grid_sample warps of the MV pyramid, eager head.
    frames, fields = decoded(pan_clip)
    z = eager_solve(tiny_model, frames[0], 4)
    for t in range(9):
        if t:
            pyr = mv_pyramid(fields[t].disp, fields[t].coverage, [tuple(s.shape[2:]) for s in z])
            z = [reference.warp(s, torch.from_numpy(d)[None]) for s, d in zip(z, pyr)]
        assert (eager_classes(tiny_model, z) == maps[t]).mean() > 0.99, t
    rc, recs, _ = run_cli(engine, pan_clip, tmp_path / "mv", "--mode", "mv", "--key-interval", "3", "--iters", "2")
    assert rc == 0 and len(recs) == 9
    assert [r["iterations"] for r in recs] == [20, 0, 0, 2, 0, 0, 2, 0, 0]  # reset iters: the manifest's f_thres
    assert all(r["mode"] == "mv" for r in recs)


def test_dff_with_identity_flownet_reproduces_key_frame_outputs(bundle64, pan_clip, tmp_path):
    from export.flownet_export import add_flownet, identity_flownet

    eng = tmp_path / "engines"
    shutil.copytree(bundle64, eng)
    add_flownet(eng, identity_flownet(CHANNELS))
    rc, recs, maps = run_cli(
        eng / "deq_cell.onnx",
        pan_clip,
        tmp_path / "dff",
        "--mode",
        "dff",
        "--key-interval",
        "3",
        "--iters",
        "2",
        "--reset-iters",
        "3",
    )
    assert rc == 0 and [r["iterations"] for r in recs] == [3, 0, 0, 2, 0, 0, 2, 0, 0]
    for t in range(9):
        assert np.array_equal(maps[t], maps[t - t % 3]), t  # zero flow, unit scale: the key frame's map


def test_cli_rejects_bad_combinations(bundle64, clip64, tmp_path, capsys):
    eng = str(bundle64 / "deq_cell.onnx")
    rc = main(["--engine", eng, str(clip64), "--mode", "dff", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "flownet engine" in err and "Traceback" not in err
    frames = tmp_path / "frames"
    frames.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(frames / "0.png")
    rc = main(["--engine", eng, str(frames), "--mode", "mv", "--out", str(tmp_path / "o2"), "--no-progress"])
    err = capsys.readouterr().err
    # a folder of images has no motion vectors: it runs as a codec without them does (stream here: no FlowNet)
    assert rc == 0 and "a folder of images carries no motion vectors: --mode mv runs as stream" in err
    assert "(--reencode-mv runs --mode mv as asked" in err  # a hint: the flag was not given, nothing re-encoded
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert summary["mode"] == "stream" and summary["fallback"]["requested_mode"] == "mv"
    for bad, needle in (
        (["--mode", "stream", "--key-interval", "3"], "--key-interval applies"),
        (["--mode", "mv", "--iters", "0"], "--iters must be >= 1"),
        (["--mode", "mv", "--budget-ms", "30"], "--budget-ms does not apply"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["--engine", eng, str(clip64), *bad])
        assert e.value.code == 2 and needle in capsys.readouterr().err


def test_mv_mode_converts_only_the_frames_it_uploads(bundle64, pan_clip, tmp_path, monkeypatch):
    """mv's propagated frames reach no engine input: their pixels are neither converted to RGB nor fitted nor
    uploaded (issue #30), and the outputs are those of the eager decode thread (the reset monitor off: its
    thumbnail is read from the planes, the eager one from the fitted frame)."""
    import runtime.loop as loop
    from runtime.sources import Fitted

    engine = bundle64 / "deq_cell.onnx"
    args = ("--mode", "mv", "--key-interval", "3", "--iters", "2", "--no-reset")
    fitted = []
    real_get = Fitted.get
    monkeypatch.setattr(Fitted, "get", lambda self: fitted.append(1) or real_get(self))
    rc, recs, maps = run_cli(engine, pan_clip, tmp_path / "lazy", *args)
    assert rc == 0 and [r["iterations"] for r in recs] == [20, 0, 0, 2, 0, 0, 2, 0, 0]
    assert len(fitted) == 3  # the key frames only
    monkeypatch.setattr(loop, "LAZY_MODES", ())
    rc, recs_eager, maps_eager = run_cli(engine, pan_clip, tmp_path / "eager", *args)
    assert rc == 0 and len(fitted) == 3  # no lazy frames this time
    np.testing.assert_array_equal(maps, maps_eager)
    assert [r["residual"] for r in recs] == [r["residual"] for r in recs_eager]


def test_pool_matches_a_float64_reference_and_numpys_reduction():
    from runtime.propagation import _pool

    rng = np.random.default_rng(3)
    for (h, w), f in [((64, 128), 2), ((64, 128), 8), ((67, 131), 4), ((60, 100), 16), ((20, 30), 32)]:
        a = rng.normal(size=(3, h, w)).astype(np.float32)
        shape = (-(-h // f), -(-w // f))  # a cell past the edge: zero padding
        got = _pool(a, f, shape)
        pad = np.zeros((3, shape[0] * f, shape[1] * f))
        pad[:, :h, :w] = a
        want = pad.reshape(3, shape[0], f, shape[1], f).sum(axis=(2, 4))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        if min(shape) < 4:  # numpy orders a reduction to a few cells its own way
            continue
        # the same float32 sums in the same order as numpy's two-axis reduction (the pinned numpy)
        assert np.array_equal(got, pad.astype(np.float32).reshape(3, shape[0], f, shape[1], f).sum(axis=(2, 4)))
