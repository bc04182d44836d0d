"""Roofline: FLOPs and bytes against hand counts, bound arithmetic from given peaks, the wrong-peak flag, which peak
is picked (precision, TF32, threads), warp rows."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from benchmarks import roofline
from export.config import get_config
from export.mdeq import build_model
from export.tf32 import tf32_enabled


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


def test_single_conv_flops_and_traffic_by_hand():
    """One 3x3 stride-2 convolution, counted by hand: 2 FLOPs per multiply-add, bytes = input + weight + output."""
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
    x = torch.zeros(2, 3, 32, 32)
    out_hw = 16 * 16  # (32 + 2 - 3) // 2 + 1 = 16
    assert roofline.count_flops(conv, [x]) == 2 * 2 * 8 * out_hw * (3 * 3 * 3)
    read, written = roofline.count_traffic(conv.to("meta"), [x.to("meta")])
    assert read == 4 * (2 * 3 * 32 * 32 + 8 * 3 * 3 * 3)
    assert written == 4 * (2 * 8 * out_hw)


def test_bound_ms_from_given_peaks():
    peaks = roofline.Peaks("fake", tflops=2.0, gbps=500.0, source="test", precision="fp32")
    assert roofline.bound_ms(4e9, 1e6, peaks) == pytest.approx(2.0)  # 4 GFLOP at 2 TFLOP/s; 1 MB takes 0.002 ms
    assert roofline.bound_ms(1e6, 1e9, peaks) == pytest.approx(2.0)  # 1 GB at 500 GB/s; the FLOPs take 0.0005 ms


def _cost(flops: float, nbytes: float) -> roofline.CellCost:
    return roofline.CellCost(int(flops), 0, int(nbytes), 0, int(nbytes), int(nbytes), 1, 64, 128, "fp32")


@pytest.mark.parametrize("measured_ms,verdict", [(0.73, "wrong peak"), (1.0, "ok"), (1.8, "ok")])
def test_ratio_below_one_is_a_wrong_peak(measured_ms, verdict):
    peaks = roofline.Peaks("fake", tflops=1.0, gbps=1000.0, source="test", precision="fp32")
    row = roofline.analyse_cell(_cost(1e9, 1e6), peaks, measured_ms)  # bound: 1 GFLOP at 1 TFLOP/s = 1 ms
    assert row["bound_ms"] == pytest.approx(1.0)
    assert row["measured_over_bound"] == pytest.approx(measured_ms)
    assert row["peak_check"] == verdict
    md = roofline.markdown([{"config": "tiny", "backend": "onnx", **row}], [])
    assert ("wrong peak" in md) == (verdict == "wrong peak")


def test_precision_picks_the_matching_table_column():
    """fp16 > TF32 > FP32 SIMT on every tensor-core GPU in the table; NVL/PCIe names match their own rows."""
    for key, *_ in roofline.KNOWN_PEAKS:
        fp16 = roofline.known_peaks(f"NVIDIA {key}", "fp16")
        tf32 = roofline.known_peaks(f"NVIDIA {key}", "fp32", tf32=True)
        fp32 = roofline.known_peaks(f"NVIDIA {key}", "fp32", tf32=False)
        assert fp16.tflops > tf32.tflops > fp32.tflops, key
        assert fp16.gbps == tf32.gbps == fp32.gbps
        assert f"table: {key} " in fp32.source and "no TF32" in fp32.source
    assert "H100 PCIe" in roofline.known_peaks("NVIDIA H100 PCIe", "fp16").source
    assert "H200 NVL" in roofline.known_peaks("NVIDIA H200 NVL", "fp16").source


def test_engines_are_held_against_the_fp32_peak_on_gpu():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for backend in ("aoti", "onnx", "tensorrt"):
        assert roofline.runs_tf32(backend, "fp32", cuda) is False  # built inside exact_fp32
    assert roofline.runs_tf32("eager", "fp32", cuda) == tf32_enabled()["conv"]
    assert roofline.runs_tf32("eager", "fp16", cuda) is False and roofline.runs_tf32("eager", "fp32", cpu) is False


def test_cpu_peak_is_the_best_probe_at_the_run_threads(monkeypatch):
    seen = []

    def fake_torch(threads, quick):
        seen.append(threads)
        return {"torch matmul": 5e10, "torch conv": 7e10}

    monkeypatch.setattr(roofline, "torch_probes", fake_torch)
    monkeypatch.setattr(roofline, "ort_probe", lambda threads, quick: {"ort conv": 6e10})
    p = roofline.device_peaks(torch.device("cpu"), "fp32", quick=True, threads=1)
    assert seen == [1] and p.tflops == pytest.approx(0.07)
    assert "1 thread" in p.source and "= torch conv" in p.source and "ort conv 60" in p.source


def test_unknown_device_has_no_table_entry_and_cpu_is_measured():
    assert roofline.known_peaks("NVIDIA GeForce GTX 1080", "fp32") is None
    before = torch.get_num_threads()
    p = roofline.device_peaks(torch.device("cpu"), "fp32", quick=True, threads=1)
    assert torch.get_num_threads() == before  # the probe's thread count does not leak into the caller
    assert p.source.startswith("measured at 1 thread") and p.tflops > 0 and p.gbps > 0
    assert "onnxruntime conv3x3" in p.source and "torch conv3x3" in p.source


def test_warp_rows_from_benchmark_json(tmp_path):
    path = tmp_path / "warp_bandwidth.json"
    rows = [{"op": "warp", "dtype": "fp16", "layout": "nhwc", "cpt": 1, "bytes": 335_000_000, "median_ms": 0.2,
             "gbps": 1675.0, "copy_gbps": 3000.0},
            {"op": "warp", "dtype": "fp16", "layout": "nhwc", "cpt": 2, "bytes": 335_000_000, "median_ms": 0.05,
             "gbps": 6700.0, "copy_gbps": 3000.0}]  # fmt: skip
    path.write_text(json.dumps({"environment": {"gpu": "NVIDIA H100 80GB HBM3"}, "results": rows}))
    out = roofline.warp_rows(path)
    assert len(out) == 2
    assert out[0]["bound_ms"] == pytest.approx(0.1)  # 335 MB at 3350 GB/s
    assert out[0]["measured_over_bound"] == pytest.approx(2.0) and out[0]["peak_check"] == "ok"
    assert out[1]["measured_over_bound"] == pytest.approx(0.5) and out[1]["peak_check"] == "wrong peak"
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
