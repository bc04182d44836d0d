"""The warp launcher's host side on a CPU: validate once per launch signature, reuse the packed arguments.

CPU tensors are routed through the CUDA path (``_on_gpu`` patched) with ``loader.prepare`` replaced by a recorder, so
the real checks, signature, cache and argument packing run; only the kernel launch itself is fake.
"""

from __future__ import annotations

import pytest
import torch

from kernels import loader, warp


class FakeLoader:
    """Records every ``prepare`` (what would be packed) and every launch of a prepared plan."""

    def __init__(self) -> None:
        self.prepared: list[tuple] = []
        self.launches: list[tuple] = []

    def prepare(self, name, grid, block, args, device_index, backend=None):
        self.prepared.append((name, grid, block, list(args)))
        entry = len(self.prepared) - 1
        return lambda stream: self.launches.append((entry, stream))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeLoader:
    f = FakeLoader()
    monkeypatch.setattr(warp, "_on_gpu", lambda t: True)
    monkeypatch.setattr(warp, "_stream_handle", lambda device: 7)
    monkeypatch.setattr(warp.loader, "prepare", f.prepare)
    monkeypatch.delenv("DEQSTREAM_KERNEL_BACKEND", raising=False)
    warp.clear_plans()
    yield f
    warp.clear_plans()


def tensors(c: int = 64, h: int = 12, w: int = 20, dtype: torch.dtype = torch.float16, nhwc: bool = True):
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    feat = torch.rand(1, c, h, w).to(dtype).contiguous(memory_format=fmt)
    disp = torch.zeros(1, 2, h, w)
    return feat, disp, torch.empty_like(feat)


def test_validated_and_packed_once_per_signature(fake, monkeypatch):
    calls = {"n": 0}
    real = warp._check_feat

    def counting(t, what):
        calls["n"] += 1
        return real(t, what)

    monkeypatch.setattr(warp, "_check_feat", counting)
    feat, disp, out = tensors()
    for _ in range(5):
        assert warp.warp(feat, disp, out=out) is out
    assert calls["n"] == 1 and len(fake.prepared) == 1
    assert fake.launches == [(0, 7)] * 5
    assert warp.stats == {"hits": 4, "misses": 1}
    name, grid, block, args = fake.prepared[0]
    assert name == "warp_nhwc_f16_v8" and block == (256, 1, 1)
    ptrs = [a.value for a in args[:4]]
    assert ptrs == [feat.data_ptr(), disp.data_ptr(), 0, out.data_ptr()]  # no scale: a null pointer
    assert [(a.kind, a.value) for a in args[4:]] == [("i32", 1), ("i32", 64), ("i32", 12), ("i32", 20)]


def test_anything_that_changes_the_checks_is_a_new_signature(fake):
    feat, disp, out = tensors()
    warp.warp(feat, disp, out=out)
    warp.warp(feat, disp, out=out.as_strided(out.shape, out.stride()))  # same address, shape, strides: same launch
    assert len(fake.prepared) == 1
    other = torch.empty_like(out)
    warp.warp(feat, disp, out=other)  # another output buffer
    f32, d32, o32 = tensors(dtype=torch.float32)
    warp.warp(f32, d32, out=o32)  # another dtype
    fn, dn, on = tensors(nhwc=False)
    warp.warp(fn, dn, out=on, cpt=4)  # another layout and chunk
    warp.warp(fn, dn, out=on, cpt=8)
    names = [p[0] for p in fake.prepared]
    assert names == ["warp_nhwc_f16_v8", "warp_nhwc_f16_v8", "warp_nhwc_f32_v4", "warp_nchw_f16", "warp_nchw_f16"]
    assert fake.prepared[-1][3][-1].value == 8 and fake.prepared[-2][3][-1].value == 4  # cpt is packed last


def test_invalid_launches_are_refused_every_time(fake):
    feat, disp, _ = tensors()
    for _ in range(2):
        with pytest.raises(ValueError, match="must not overlap"):
            warp.warp(feat, disp, out=feat)
    with pytest.raises(ValueError, match="shape"):
        warp.warp(feat, disp[:, :, :5], out=torch.empty_like(feat))
    assert fake.prepared == [] and warp.stats["misses"] == 0


def test_interp_weights_are_part_of_the_signature(fake):
    a, da, out = tensors()
    b = torch.rand_like(a)
    db = torch.zeros_like(da)
    for _ in range(2):
        for p in range(1, 4):
            warp.warp_interp(a, da, b, db, (4 - p) / 4, p / 4, out=out)
    assert len(fake.prepared) == 3 and len(fake.launches) == 6
    assert [p[3][-3].value for p in fake.prepared] == [0.75, 0.5, 0.25]
    assert fake.prepared[0][0] == "interp_nhwc_f16_v8"


def test_cache_is_bounded(fake, monkeypatch):
    monkeypatch.setattr(warp, "PLAN_CACHE_SIZE", 2)
    bufs = [tensors() for _ in range(3)]
    for feat, disp, out in bufs:
        warp.warp(feat, disp, out=out)
    assert len(warp._PLANS) == 2
    feat, disp, out = bufs[0]  # evicted first: prepared again
    warp.warp(feat, disp, out=out)
    assert len(fake.prepared) == 4


def test_planes_of_2_31_elements_are_refused(fake):
    """The kernels index inside an H*W plane with 32-bit ints: such a plane is refused, never launched."""
    feat = torch.empty(1, 1, 65536, 32768, device="meta")  # 2^31 elements, no memory
    disp = torch.empty(1, 2, 65536, 32768, device="meta")
    with pytest.raises(ValueError, match="32-bit in-plane indexing"):
        warp.warp(feat, disp, out=torch.empty_like(feat))
    ok = torch.empty(1, 1, 65535, 32768, device="meta")  # just below
    assert warp._check_feat(ok, "feat") == "nchw"
    assert fake.prepared == []


def test_empty_grids_prepare_nothing():
    assert loader.prepare("warp_nchw_f32", (0, 1, 1), (256, 1, 1), [], 0) is loader._no_op


def test_bandwidth_benchmark_reports_kernel_and_host_separately():
    """The row printed and stored by benchmarks.warp_bandwidth keeps kernel GB/s and host us/call apart."""
    from benchmarks import warp_bandwidth as wb

    calls = []
    us = wb.host_us(lambda: calls.append(1), calls=20, before=lambda: calls.append(0))
    assert calls.count(1) == 20 and calls.count(0) == 20 and 0 < us < 1e4
    row = {"op": "warp", "dtype": "fp16", "layout": "nhwc", "cpt": None, "median_ms": 0.031, "gbps": 4354.8,
           "fraction_of_copy": 0.9, "copy_gbps": 4838.7, "timing": "cuda-graph", "host_us_per_call": 6.5,
           "host_us_uncached": 31.2, "speedup_vs_grid_sample": 12.0}  # fmt: skip
    line = wb.format_row(row)
    assert "kernel 0.031 ms  4354.8 GB/s = 90% of copy" in line and "cuda-graph" in line
    assert "host 6.5 us/call cached, 31.2 uncached" in line
