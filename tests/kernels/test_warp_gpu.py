"""CUDA kernels vs the float64 grid_sample reference, the no-allocation out= path, and bandwidth (GPU only)."""

from __future__ import annotations

import pytest
import torch

from kernels import loader, reference, warp

pytestmark = pytest.mark.gpu

TOL = {torch.float32: 1e-5, torch.float16: 1e-2}
LAYOUTS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


def make(n: int, c: int, h: int, w: int, dtype: torch.dtype, layout: str, seed: int, spread: float = 6.0):
    """Features in [0, 1) (so fp32 round-off stays well below 1e-5), displacements reaching past the borders."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    feat = torch.rand(n, c, h, w, device="cuda", generator=g).to(dtype).contiguous(memory_format=LAYOUTS[layout])
    disp = (torch.rand(n, 2, h, w, device="cuda", generator=g) * 2 - 1) * spread
    disp[:, :, :2] += 2.5 * h  # a band sampled entirely outside the image
    return feat, disp


def ref_warp(feat: torch.Tensor, disp: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    s = None if scale is None else scale.double()
    return reference.warp(feat.double(), disp.double(), s)


def max_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.double() - want).abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("c", [64, 3])  # 64: vectorised NHWC path; 3: scalar path and partial channel chunk
def test_warp_matches_reference(dtype: torch.dtype, layout: str, c: int) -> None:
    feat, disp = make(2, c, 33, 47, dtype, layout, seed=c)
    out = warp.warp(feat, disp)
    assert out.is_contiguous(memory_format=LAYOUTS[layout])
    assert max_err(out, ref_warp(feat, disp)) <= TOL[dtype]


@pytest.mark.parametrize("backend", loader.BACKENDS)
def test_both_loader_backends(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEQSTREAM_KERNEL_BACKEND", backend)
    feat, disp = make(1, 32, 16, 24, torch.float32, "nhwc", seed=1)
    assert max_err(warp.warp(feat, disp), ref_warp(feat, disp)) <= 1e-5


@pytest.mark.parametrize("cpt", [1, 3, 8, 64])
def test_nchw_channels_per_thread(cpt: int) -> None:
    feat, disp = make(1, 20, 17, 19, torch.float32, "nchw", seed=cpt)
    assert max_err(warp.warp(feat, disp, cpt=cpt), ref_warp(feat, disp)) <= 1e-5


def test_special_fields_exact() -> None:
    feat, _ = make(1, 16, 12, 20, torch.float32, "nhwc", seed=3)
    zero = torch.zeros(1, 2, 12, 20, device="cuda")
    torch.testing.assert_close(warp.warp(feat, zero), feat, atol=0, rtol=0)
    shift = zero.clone()
    shift[:, 0], shift[:, 1] = 3.0, -2.0
    out = warp.warp(feat, shift)
    torch.testing.assert_close(out[:, :, 2:, :-3], feat[:, :, :-2, 3:], atol=0, rtol=0)
    assert out[:, :, :2].abs().max() == 0 and out[:, :, :, -3:].abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_scale_field(dtype: torch.dtype, layout: str) -> None:
    feat, disp = make(2, 24, 20, 28, dtype, layout, seed=5)
    scale = (torch.rand(feat.shape, device="cuda") + 0.5).to(dtype).contiguous(memory_format=LAYOUTS[layout])
    assert max_err(warp.warp(feat, disp, scale), ref_warp(feat, disp, scale)) <= TOL[dtype]


@pytest.mark.parametrize("mode", ["weighted", "max", "avg"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_interp(mode: str, dtype: torch.dtype, layout: str) -> None:
    a, da = make(2, 40, 18, 30, dtype, layout, seed=7)
    b, db = make(2, 40, 18, 30, dtype, layout, seed=8)
    w_prev, w_next = 3 / 5, 2 / 5
    got = warp.warp_interp(a, da, b, db, w_prev, w_next, mode)
    want = reference.fuse(ref_warp(a, da), ref_warp(b, db), w_prev, w_next, mode)
    assert max_err(got, want) <= TOL[dtype]


def test_out_path_does_not_allocate_and_uses_current_stream() -> None:
    feat, disp = make(1, 64, 32, 64, torch.float32, "nhwc", seed=9)
    out = torch.empty_like(feat)
    warp.warp(feat, disp, out=out)  # first call loads the module
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    before = torch.cuda.memory_stats()["allocation.all.allocated"]
    with torch.cuda.stream(side):
        res = warp.warp(feat, disp, out=out)
        warp.warp_interp(feat, disp, feat, disp, 0.5, 0.5, out=out)
    assert torch.cuda.memory_stats()["allocation.all.allocated"] == before
    assert res is out
    side.synchronize()
    want = reference.warp(feat.double(), disp.double())
    assert max_err(out, want) <= 1e-5


def _time_ms(fn, iters: int = 20) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_bandwidth_at_256x256x512(layout: str) -> None:
    from benchmarks.warp_bandwidth import smooth_disp

    feat, _ = make(1, 256, 256, 512, torch.float32, layout, seed=10)
    disp = smooth_disp(1, 256, 512, magnitude=4.0)  # smooth like real flow / motion vectors, up to 4 px
    out = torch.empty_like(feat)
    nbytes = 2 * feat.numel() * feat.element_size() + disp.numel() * 4  # read feat once, write out, read disp
    ms = _time_ms(lambda: warp.warp(feat, disp, out=out))
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = _time_ms(lambda: dst.copy_(src))  # a copy of the same read+write byte count
    gbs, copy_gbs = nbytes / ms / 1e6, nbytes / copy_ms / 1e6
    print(f"\nwarp {layout} fp32 256x256x512: {ms:.3f} ms, {gbs:.0f} GB/s; copy {copy_gbs:.0f} GB/s "
          f"({100 * gbs / copy_gbs:.0f}%)")  # fmt: skip
    assert gbs >= 0.6 * copy_gbs


def test_bandwidth_benchmark_times_the_kernel_alone(tmp_path) -> None:
    """Small case through the real benchmark: graph-timed kernel GB/s and host us/call as separate fields."""
    import json

    from benchmarks import warp_bandwidth

    out = tmp_path / "wb.json"
    argv = ["--channels", "64", "--height", "64", "--width", "128", "--ops", "warp", "--layouts", "nhwc"]
    assert warp_bandwidth.main([*argv, "--iters", "5", "--warmup", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert {r["dtype"] for r in rows} == {"fp32", "fp16"}
    for r in rows:
        assert r["timing"] == "cuda-graph", r
        assert r["gbps"] > 0 and r["host_us_per_call"] > 0 and r["host_us_uncached"] >= r["host_us_per_call"] * 0.5
