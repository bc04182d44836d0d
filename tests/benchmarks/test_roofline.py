"""Roofline: FLOPs and bytes of the cell against independent counts, peaks table, bound arithmetic, warp rows."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from benchmarks import roofline
from export.config import get_config
from export.mdeq import build_model


def analytic_conv_flops(model, batch: int, height: int, width: int) -> int:
    """Sum over the cell's convolutions of 2*Cin/groups*Cout*kh*kw*Hout*Wout*B, with the output sizes observed by
    forward hooks on a real (CPU) forward: independent of FlopCounterMode and of the meta device."""
    total = 0

    def hook(mod: nn.Conv2d, _inp, out) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        n, cout, ho, wo = out.shape
        total += 2 * (mod.in_channels // mod.groups) * cout * kh * kw * ho * wo * n

    cell = model.fullstage.eval()
    handles = [m.register_forward_hook(hook) for m in cell.modules() if isinstance(m, nn.Conv2d)]
    shapes = model.state_shapes(batch, height, width)
    z = [torch.randn(s) for s in shapes]
    with torch.no_grad():
        cell(*z, torch.randn(shapes[0]))
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("name,batch", [("tiny", 1), ("small-seg", 2)])
def test_cell_flops_match_analytic_conv_count(name, batch):
    model = build_model(get_config(name))
    cost = roofline.cell_cost(model, batch, 64, 128)
    want = analytic_conv_flops(model, batch, 64, 128)
    assert want > 0
    assert abs(cost.flops - want) / want < 0.03, (cost.flops, want)


def test_flops_scale_with_pixels_and_batch():
    model = build_model(get_config("tiny"))
    a = roofline.cell_cost(model, 1, 64, 128)
    b = roofline.cell_cost(model, 1, 128, 256)
    c = roofline.cell_cost(model, 2, 64, 128)
    assert b.flops == pytest.approx(4 * a.flops, rel=0.01)
    assert c.flops == pytest.approx(2 * a.flops, rel=1e-6)


def test_bytes_min_is_weights_plus_state_and_below_unfused():
    cfg = get_config("tiny")
    model = build_model(cfg)
    h, w = 64, 128
    cost = roofline.cell_cost(model, 1, h, w)
    weights = 4 * sum(p.numel() for p in model.fullstage.parameters())
    state = 4 * sum(c * (h // s) * (w // s) for c, s in zip(cfg.channels, cfg.strides))
    x = 4 * cfg.channels[0] * (h // 4) * (w // 4)
    assert cost.weight_bytes == weights
    assert cost.bytes_min == weights + (state + x) + state
    assert cost.bytes_unfused > cost.bytes_min  # every op re-reading activations moves more than the minimum
    half = roofline.cell_cost(model, 1, h, w, "fp16")
    assert half.state_out_bytes == cost.state_out_bytes // 2
    assert half.flops == cost.flops


def test_bound_and_measured_ratio():
    cost = roofline.CellCost(
        flops=int(2e12),
        weight_bytes=0,
        state_in_bytes=int(5e11),
        state_out_bytes=int(5e11),
        bytes_min=int(1e12),
        bytes_unfused=int(4e12),
        batch=1,
        height=64,
        width=128,
        dtype="fp32",
    )
    peaks = roofline.Peaks("fake", tflops=1.0, gbps=1000.0, source="test", precision="fp32")
    row = roofline.analyse_cell(cost, peaks, measured_ms=4000.0)
    assert row["bound_ms"] == pytest.approx(2000.0)  # compute: 2e12 / 1e12 s = 2 s > 1e12 B / 1e12 B/s = 1 s
    assert row["bound_by"] == "compute"
    assert row["bound_unfused_ms"] == pytest.approx(4000.0)  # now memory: 4e12 B at 1 TB/s
    assert row["measured_over_bound"] == pytest.approx(2.0)
    assert row["achieved_tflops"] == pytest.approx(0.5)
    assert row["achieved_gbps_min"] == pytest.approx(250.0)


@pytest.mark.parametrize(
    "name,precision,tflops,gbps",
    [
        ("NVIDIA H100 80GB HBM3", "fp16", 989.4, 3350.0),
        ("NVIDIA H100 80GB HBM3", "fp32", 494.7, 3350.0),
        ("NVIDIA H100 PCIe", "fp16", 756.0, 2000.0),
        ("NVIDIA H200", "fp16", 989.4, 4800.0),
        ("NVIDIA A100-SXM4-80GB", "fp32", 156.0, 2039.0),
    ],
)
def test_known_peaks_by_name(name, precision, tflops, gbps):
    p = roofline.known_peaks(name, precision)
    assert p is not None and p.tflops == tflops and p.gbps == gbps
    simt = roofline.known_peaks(name, "fp32", tf32=False)
    assert simt.tflops < p.tflops and simt.gbps == gbps  # FP32 without tensor cores is the slowest path


def test_unknown_device_has_no_table_entry_and_cpu_is_measured():
    assert roofline.known_peaks("NVIDIA GeForce GTX 1080", "fp32") is None
    p = roofline.device_peaks(torch.device("cpu"), "fp32", quick=True)
    assert p.source.startswith("measured") and p.tflops > 0 and p.gbps > 0


def test_warp_rows_from_benchmark_json(tmp_path):
    path = tmp_path / "warp_bandwidth.json"
    rows = [{"op": "warp", "dtype": "fp16", "layout": "nhwc", "cpt": 1, "bytes": 335_000_000, "median_ms": 0.2,
             "gbps": 1675.0, "copy_gbps": 3000.0}]  # fmt: skip
    path.write_text(json.dumps({"environment": {"gpu": "NVIDIA H100 80GB HBM3"}, "results": rows}))
    out = roofline.warp_rows(path)
    assert len(out) == 1
    assert out[0]["bound_ms"] == pytest.approx(0.1)  # 335 MB at 3350 GB/s
    assert out[0]["measured_over_bound"] == pytest.approx(2.0)
    assert roofline.warp_rows(tmp_path / "missing.json") == []


def test_markdown_lists_rows_and_says_when_warp_is_missing():
    model = build_model(get_config("tiny"))
    cost = roofline.cell_cost(model, 1, 64, 128)
    peaks = roofline.Peaks("fake", 1.0, 100.0, "test", "fp32")
    row = {"config": "tiny", "backend": "onnx", **roofline.analyse_cell(cost, peaks, 5.0)}
    md = roofline.markdown([row], [])
    assert "| tiny | 64x128 | fp32 | onnx |" in md
    assert "no benchmarks/results/warp_bandwidth.json" in md
    assert math.isfinite(row["intensity_flop_per_byte"])
