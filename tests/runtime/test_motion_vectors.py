"""Codec motion vectors -> feature-grid displacement: known sub-pixel translation, sign, gridding, B-frame warning."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernels import reference
from runtime import motion_vectors as mv
from runtime.encode import VideoWriter

av = pytest.importorskip("av", reason="PyAV is not installed (the GPU machines lack it unless carried)")

H, W, FRAMES = 128, 256, 6
VX, VY = 2.5, 1.25  # content motion per frame, pixels (right, down)

pytestmark = pytest.mark.skipif("libx264" not in av.codecs_available, reason="PyAV build without libx264")


def texture(seed: int = 0, margin: int = 48) -> torch.Tensor:
    """Smooth random RGB texture (bicubic-upsampled noise at several scales), values in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    h, w = H + 2 * margin, W + 2 * margin
    t = torch.zeros(1, 3, h, w)
    for cell, amp in ((16, 1.0), (8, 1.0), (4, 0.5)):
        noise = torch.rand(1, 3, h // cell + 2, w // cell + 2, generator=g)
        t += amp * F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=True)
    return (t - t.min()) / (t.max() - t.min())


def render(tex: torch.Tensor, t: int, margin: int = 48) -> np.ndarray:
    """Frame t: the texture translated by t*(VX, VY) px, resampled bilinearly (sub-pixel exact)."""
    th, tw = tex.shape[2:]
    xs = torch.arange(W, dtype=torch.float64) + margin - VX * t
    ys = torch.arange(H, dtype=torch.float64) + margin - VY * t
    gx, gy = 2 * xs / (tw - 1) - 1, 2 * ys / (th - 1) - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)[None].float()
    img = F.grid_sample(tex, grid, mode="bilinear", align_corners=True)[0]
    return (img.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)


def encode(path: Path, frames: list[np.ndarray], options: dict[str, str]) -> Path:
    """libx264 at 10 fps through the runtime's encoder, with the codec options under test (B-frames, references)."""
    with VideoWriter(path, 10, {"crf": "12", "g": "100", "sc_threshold": "0", "preset": "medium", **options}) as out:
        for f in frames:
            out.write(f)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    tex = texture()
    frames = [render(tex, t) for t in range(FRAMES)]
    path = encode(tmp_path_factory.mktemp("mv") / "pan.mp4", frames, {"bf": "0", "refs": "1"})
    return path, frames


def decode(path: Path, stride: int) -> list[tuple[np.ndarray, mv.MotionField]]:
    with mv.MotionVectorDecoder(path, stride=stride) as dec:
        return list(dec)


@pytest.mark.parametrize("stride", [4, 16])
def test_known_translation(clip, stride: int) -> None:
    path, _ = clip
    with warnings.catch_warnings():
        warnings.simplefilter("error", mv.MultiFrameMotionWarning)  # a bf=0 refs=1 stream must not warn
        out = decode(path, stride)
    assert len(out) == FRAMES
    assert out[0][1].is_key and out[0][1].pict_type == "I" and not out[0][1].valid.any()
    want = np.array([-VX, -VY]) / stride  # cur(p) = prev(p - v): backward displacement is minus the motion
    errs = []
    for rgb, f in out[1:]:
        assert rgb.shape == (H, W, 3) and f.pict_type == "P" and not f.is_key
        assert f.disp.shape == (2, H // stride, W // stride) and f.disp.dtype == np.float32
        b = max(1, 16 // stride)  # ignore a macroblock-wide border, where content enters the frame
        inner = f.disp[:, b:-b, b:-b]
        assert f.valid[b:-b, b:-b].mean() > 0.9
        err = np.abs(inner - want[:, None, None])[:, f.valid[b:-b, b:-b]]
        errs.append(err)
        assert err.max() <= 0.25, f"frame {f.index}: max error {err.max():.3f} feature px"
    allerr = np.concatenate(errs, axis=1) * stride
    print(f"\nstride {stride}: MV error vs truth: mean {allerr.mean():.3f} px, max {allerr.max():.3f} px")
    assert allerr.mean() < 0.15  # quarter-pel motion search should find the true sub-pixel shift almost everywhere


def test_field_reconstructs_next_frame(clip) -> None:
    path, _ = clip
    stride = 4
    out = decode(path, stride)
    gains = []
    for (prev, _), (cur, f) in zip(out[:-1], out[1:]):

        def pooled(img: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(img).permute(2, 0, 1)[None].double() / 255
            return F.avg_pool2d(t, stride)

        p, c = pooled(prev), pooled(cur)
        warped = reference.warp(p, torch.from_numpy(f.disp)[None].double())
        inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
        err_warp = (warped - c)[inner].pow(2).mean().item()
        err_none = (p - c)[inner].pow(2).mean().item()
        gains.append(err_none / err_warp)
        assert err_warp < 0.25 * err_none
    print(f"\nwarp MSE reduction on the stride-4 grid: {np.round(gains, 1).tolist()}x")


def brute_force_field(vectors: np.ndarray, h: int, w: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel rasterisation of the source=-1 blocks, then a per-cell mean over covered pixels."""
    sx, sy, cnt = np.zeros((h, w)), np.zeros((h, w)), np.zeros((h, w))
    for v in vectors:
        if v["source"] != -1:
            continue
        x0, y0 = v["dst_x"] - v["w"] // 2, v["dst_y"] - v["h"] // 2
        ys, xs = slice(max(0, y0), max(0, y0 + v["h"])), slice(max(0, x0), max(0, x0 + v["w"]))
        sx[ys, xs] += v["motion_x"] / v["motion_scale"]
        sy[ys, xs] += v["motion_y"] / v["motion_scale"]
        cnt[ys, xs] += 1
    gh, gw = h // stride, w // stride

    def cells(a: np.ndarray) -> np.ndarray:
        return a.reshape(gh, stride, gw, stride).sum(axis=(1, 3))

    c = cells(cnt)
    disp = np.zeros((2, gh, gw))
    disp[0] = np.where(c > 0, cells(sx) / np.maximum(c, 1), 0) / stride
    disp[1] = np.where(c > 0, cells(sy) / np.maximum(c, 1), 0) / stride
    return disp, c / stride**2


def synthetic_vectors() -> np.ndarray:
    dt = np.dtype(
        [("source", "i4"), ("w", "u1"), ("h", "u1"), ("src_x", "i2"), ("src_y", "i2"), ("dst_x", "i2"),
         ("dst_y", "i2"), ("flags", "u8"), ("motion_x", "i4"), ("motion_y", "i4"), ("motion_scale", "u2")],
        align=True,
    )  # fmt: skip
    rows = [
        (-1, 16, 16, 0, 0, 8, 8, 0, -10, 4, 4),  # 16x16 at (0, 0): (-2.5, +1)
        (-1, 8, 8, 0, 0, 20, 4, 0, 3, -1, 4),  # 8x8 at (16, 0)
        (-1, 8, 8, 0, 0, 28, 4, 0, -7, 6, 4),  # 8x8 at (24, 0)
        (-1, 8, 8, 0, 0, 20, 12, 0, 5, 5, 2),  # 8x8 at (16, 8), half-pel scale; (24, 8) stays intra
        (1, 16, 16, 0, 0, 40, 8, 0, 99, 99, 4),  # backward vector: ignored
        (-1, 16, 16, 0, 0, 56, 24, 0, 13, -2, 4),  # 16x16 at (48, 16), right edge
    ]
    return np.array(rows, dtype=dt)


@pytest.mark.parametrize("stride", [4, 8, 16, 32])
def test_area_weighted_gridding(stride: int) -> None:
    vecs = synthetic_vectors()
    disp, cov = mv.field_from_vectors(vecs, 32, 64, stride)
    want, want_cov = brute_force_field(vecs, 32, 64, stride)
    np.testing.assert_allclose(disp, want, atol=1e-6)
    np.testing.assert_allclose(cov, want_cov, atol=1e-6)


def test_gridding_sign_and_units() -> None:
    vecs = synthetic_vectors()[:1]
    disp, cov = mv.field_from_vectors(vecs, 32, 64, 8)
    np.testing.assert_allclose(disp[:, :2, :2], np.broadcast_to(np.array([-2.5, 1.0])[:, None, None] / 8, (2, 2, 2)))
    assert cov[:2, :2].min() == 1 and cov[:, 2:].max() == 0 and not disp[:, 2:, :].any()


def test_bframe_stream_warns_and_reencode_fixes(clip, tmp_path: Path) -> None:
    _, frames = clip
    bpath = encode(tmp_path / "bframes.mp4", frames + frames[::-1], {"bf": "2", "refs": "3"})
    with pytest.warns(mv.MultiFrameMotionWarning, match="re-encode"):
        out = decode(bpath, 16)
    assert not any(f.multi_frame for _, f in out)  # resolved (tests/runtime/test_bframes.py checks how well)
    assert max(f.mean_span for _, f in out) > 1.5  # some vectors reached several frames back
    fixed = mv.reencode_for_motion_vectors(bpath, tmp_path / "fixed.mp4")
    with warnings.catch_warnings():
        warnings.simplefilter("error", mv.MultiFrameMotionWarning)
        with mv.MotionVectorDecoder(fixed, stride=16) as dec:
            assert dec.info.max_ref_frames == 1 and not dec.info.has_b_frames
            kinds = [f.pict_type for _, f in dec]
    assert kinds[0] == "I" and set(kinds[1:]) == {"P"}


def test_sps_parser_reads_reference_count(clip, tmp_path: Path) -> None:
    path, frames = clip
    with mv.MotionVectorDecoder(path) as dec:
        assert dec.info.max_ref_frames == 1
    three = encode(tmp_path / "refs3.mp4", frames[:3], {"bf": "0", "refs": "3"})
    with pytest.warns(mv.MultiFrameMotionWarning, match="max_ref_frames=3"):
        mv.MotionVectorDecoder(three).close()


def test_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such video"):
        mv.MotionVectorDecoder(tmp_path / "nope.mp4")


def test_luma_of_a_10_bit_frame_while_another_thread_converts_it(tmp_path: Path) -> None:
    """The field thread reads a frame's luma while the decode or loop thread converts the same frame to RGB. Through
    the reformatter PyAV keeps on the frame the two deadlocked inside FFmpeg's scaler (10-bit H.264, every vector
    mode); ``luma`` converts with its thread's own reformatter, and gives the same pixels."""
    import threading

    import av

    path = tmp_path / "ten.mkv"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p10le"
        rng = np.random.default_rng(0)
        for _ in range(6):
            rgb = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    for _ in range(15):
        with av.open(str(path)) as c:
            frames = list(c.decode(video=0))
        assert frames[0].format.name == "yuv420p10le"
        for f in frames:
            got: dict[str, np.ndarray] = {}
            jobs = {"y": lambda f=f: mv.luma(f), "rgb": lambda f=f: f.to_ndarray(format="rgb24")}
            ts = [
                threading.Thread(target=lambda k=k, job=job, got=got: got.setdefault(k, job()), daemon=True)
                for k, job in jobs.items()
            ]
            for t in ts:
                t.start()
            for t in ts:
                t.join(timeout=20)
            assert not any(t.is_alive() for t in ts), "deadlocked"
            np.testing.assert_array_equal(got["y"], f.to_ndarray(format="gray"))


@pytest.mark.parametrize("rotation", [0, 90, -90, 180])
def test_a_turned_video_comes_upright_with_its_motion(tmp_path: Path, rotation: int) -> None:
    """A video stored turned, with a display matrix that turns it back for viewing (as phones record portrait
    video), comes out of the runtime's video source upright: frames equal to the upright frames within the codec's
    loss, and motion fields on the upright grid whose displacement is the known motion of the upright picture."""
    from runtime.mv_source import open_mv_source
    from tests.runtime.conftest import write_clip

    tex, turn = texture(), rotation // 90
    frames = [render(tex, t) for t in range(FRAMES)]
    stored = np.stack([np.ascontiguousarray(np.rot90(f, -turn)) for f in frames])
    options = {"crf": "12", "g": "100", "sc_threshold": "0", "preset": "medium", "bf": "0", "refs": "1"}
    src = open_mv_source(write_clip(tmp_path / "turned.mp4", stored, rotation=rotation, options=options))
    got = [(rgb, side["motion"].result()) for rgb, _, _, side in src]  # every field made before close stops its thread
    src.close()
    assert src.rotation == rotation and len(got) == FRAMES
    want = np.array([-VX, -VY]) / 4  # backward displacement in stride-4 cells, as test_known_translation
    for t, ((rgb, m), ref) in enumerate(zip(got, frames)):
        assert rgb.shape == ref.shape and np.abs(rgb.astype(np.int16) - ref).mean() < 8.0, t  # 4:2:0 loss: ~4
        if t == 0:
            continue
        assert m.disp.shape == (2, H // 4, W // 4) and m.valid.shape == m.coverage.shape == (H // 4, W // 4)
        inner, valid = m.disp[:, 4:-4, 4:-4], m.valid[4:-4, 4:-4]
        assert valid.mean() > 0.9
        err = np.abs(inner - want[:, None, None])[:, valid]
        assert err.mean() < 0.1 and np.median(err) < 0.1, (t, err.mean())
