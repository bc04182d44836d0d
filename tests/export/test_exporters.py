"""Exported engines vs PyTorch: ONNX Runtime and AOTInductor outputs, the iterated cell,
fp16 graphs, atomic bundles, and the TensorRT builder against a fake ``tensorrt`` module."""

from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import export.bundle as bundle_mod
import export.tf32 as tf32_mod
from export.bundle import export_bundle
from export.config import get_config
from export.mdeq import ClassMapHead, build_model
from export.onnx_export import OPSET, ParityError, ort_session
from export.tf32 import exact_fp32, set_tf32, tf32_enabled

H, W = 64, 128


@pytest.fixture(scope="module")
def model():
    return build_model(get_config("tiny"), seed=0).eval()


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "engines"
    export_bundle(model, out, H, W, heads=("seg", "pose"))
    return out


@pytest.fixture(scope="module")
def bundle16(model, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("h") / "engines"
    return out, export_bundle(model, out, H, W, precision="fp16")


def _frame(seed: int, batch: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, H, W, 3), dtype=torch.uint8, generator=gen)


def _rel(ref: torch.Tensor, got: np.ndarray) -> float:
    return float((ref - torch.from_numpy(got)).abs().max() / ref.abs().max())


def _run(path: Path, feeds: dict[str, torch.Tensor]) -> list[np.ndarray]:
    return ort_session(path).run(None, {k: v.numpy() for k, v in feeds.items()})


def test_onnx_graphs_have_the_contract_names_and_opset(bundle) -> None:
    expect = {
        "injection": (["frame"], ["x"]),
        "deq_cell": (["z0", "z1", "z2", "z3", "x"], ["f0", "f1", "f2", "f3"]),
        "head_seg": (["z0", "z1", "z2", "z3"], ["classes"]),
        "head_pose": (["z0", "z1", "z2", "z3"], ["heatmaps"]),
    }
    for name, (ins, outs) in expect.items():
        m = onnx.load(str(bundle / f"{name}.onnx"))
        onnx.checker.check_model(m)
        assert [i.name for i in m.graph.input] == ins and [o.name for o in m.graph.output] == outs
        assert next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == OPSET
    frame_type = onnx.load(str(bundle / "injection.onnx")).graph.input[0].type.tensor_type
    assert frame_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in frame_type.shape.dim] == [1, H, W, 3]


def test_onnx_injection_cell_heads_match_pytorch(model, bundle) -> None:
    frame = _frame(11)
    with torch.no_grad():
        z, x = model.solve(frame, iters=3)
        x_ref = model.injection(frame)
        f_ref = model.fullstage(*z, x)
        cls_ref = ClassMapHead(model.head, (H, W))(*z)
        pose = bundle_mod._pose_module(model, "cpu")[0]
        pose_ref = pose(*z)
    (x_onnx,) = _run(bundle / "injection.onnx", {"frame": frame})
    assert _rel(x_ref, x_onnx) < 1e-5
    feeds = {f"z{i}": t for i, t in enumerate(z)}
    f_onnx = _run(bundle / "deq_cell.onnx", {**feeds, "x": x})
    assert max(_rel(r, g) for r, g in zip(f_ref, f_onnx)) < 1e-5
    (cls_onnx,) = _run(bundle / "head_seg.onnx", feeds)
    assert cls_onnx.dtype == np.uint8 and cls_onnx.shape == (1, H, W)
    assert (cls_onnx != cls_ref.numpy()).mean() <= 1e-3
    (heat,) = _run(bundle / "head_pose.onnx", feeds)
    assert heat.shape == (1, 17, H // 4, W // 4) and _rel(pose_ref, heat) < 1e-5


def test_onnx_cell_iterated_20_times_matches_pytorch(model, bundle) -> None:
    frame = _frame(12)
    with torch.no_grad():
        z_ref, _ = model.solve(frame, iters=20)
    (x,) = _run(bundle / "injection.onnx", {"frame": frame})
    sess = ort_session(bundle / "deq_cell.onnx")
    z = [np.zeros(s, np.float32) for s in model.state_shapes(1, H, W)]
    for _ in range(20):
        z = sess.run(None, {**{f"z{i}": t for i, t in enumerate(z)}, "x": x})
    for ref, got in zip(z_ref, z):
        assert _rel(ref, got) < 1e-3


def test_batch_two_bundle(model, tmp_path) -> None:
    man = export_bundle(model, tmp_path / "b2", 32, 64, batch=2)
    assert man["state"][0]["shape"] == [2, 16, 8, 16]
    frame = torch.randint(0, 256, (2, 32, 64, 3), dtype=torch.uint8)
    (x,) = _run(tmp_path / "b2" / "injection.onnx", {"frame": frame})
    assert _rel(model.injection(frame).detach(), x) < 1e-5


def _elem_types(model_proto: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model_proto)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name: v.type.tensor_type.elem_type for v in values}


def test_fp16_bundle_keeps_group_norm_in_fp32(model, bundle16) -> None:
    out, man = bundle16
    assert man["precision"] == "fp16" and {s["dtype"] for s in man["state"]} == {"float16"}
    assert man["engines"]["injection"]["inputs"][0]["dtype"] == "uint8"
    assert man["engines"]["head_seg"]["outputs"][0]["dtype"] == "uint8"
    cell = onnx.load(str(out / "deq_cell.onnx"))
    assert {i.type.tensor_type.elem_type for i in cell.graph.input} == {onnx.TensorProto.FLOAT16}
    types_ = _elem_types(cell)
    norms = [n for n in cell.graph.node if n.op_type in ("InstanceNormalization", "GroupNormalization")]
    assert norms and all(types_[n.input[0]] == onnx.TensorProto.FLOAT for n in norms)
    convs = [n for n in cell.graph.node if n.op_type == "Conv"]
    assert all(types_[n.output[0]] == onnx.TensorProto.FLOAT16 for n in convs)
    # The gate ran (ORT CPU has these fp16 kernels) and its numbers are in the manifest.
    parity = man["engines"]["deq_cell"]["parity"]["onnx"]
    assert "skipped" not in parity and parity["backend"] == "onnxruntime-cpu" and parity["max_rel"] < 1e-2
    assert "parity_skipped" not in man
    # The fp16 engine stays close to the fp32 model (the point of keeping GN in fp32).
    frame = _frame(14)
    with torch.no_grad():
        z, x = model.solve(frame, iters=3)
        f_ref = model.fullstage(*z, x)
    feeds = {**{f"z{i}": t.half() for i, t in enumerate(z)}, "x": x.half()}
    f16 = _run(out / "deq_cell.onnx", feeds)
    assert max(_rel(r, g.astype(np.float32)) for r, g in zip(f_ref, f16)) < 2e-2


def _ort_fails(path, feeds):
    raise RuntimeError("NOT_IMPLEMENTED : Could not find an implementation for Conv(11) node\nsecond line")


def test_fp16_gate_falls_back_to_the_onnx_reference_evaluator(model, tmp_path, monkeypatch) -> None:
    """ORT CPU failing on an fp16 graph no longer means "skipped": the reference evaluator checks it."""
    monkeypatch.setattr(bundle_mod, "run_onnx", _ort_fails)
    man = export_bundle(model, tmp_path / "e", H, W, precision="fp16")
    for name, eng in man["engines"].items():
        parity = eng["parity"]["onnx"]
        assert parity["backend"] == "onnx-reference" and "skipped" not in parity, name
        assert parity["mismatch"] < 1e-3 if "mismatch" in parity else parity["max_rel"] < 1e-2, (name, parity)
    assert "parity_skipped" not in man


def test_fp16_gate_that_cannot_run_stops_the_export_unless_asked(model, tmp_path, monkeypatch, capsys) -> None:
    from export.__main__ import main

    monkeypatch.setattr(bundle_mod, "run_onnx", _ort_fails)
    monkeypatch.setattr(bundle_mod, "_run_onnx_reference", _ort_fails)
    with pytest.raises(ParityError, match="could not be checked.*--skip-parity"):
        export_bundle(model, tmp_path / "e", H, W, precision="fp16")
    assert not (tmp_path / "e").exists()
    args = ["--config", "tiny", "--random-init", "--height", str(H), "--width", str(W), "--precision", "fp16"]
    assert main([*args, "--out", str(tmp_path / "cli")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--skip-parity" in err and not (tmp_path / "cli").exists()
    assert main([*args, "--out", str(tmp_path / "cli"), "--skip-parity"]) == 0
    man = __import__("json").loads((tmp_path / "cli" / "manifest.json").read_text())
    assert man["parity_skipped"] == ["injection.onnx", "deq_cell.onnx", "head_seg.onnx"]
    assert all(e["parity"]["onnx"]["skipped_by_user"] for e in man["engines"].values())
    assert "--skip-parity" in man["command"]


def test_aoti_cell_matches_pytorch(model, tmp_path) -> None:
    from export.aoti_export import export_pt2

    frame_t, frame_c = _frame(15), _frame(16)
    with torch.no_grad():
        z_t, x_t = model.solve(frame_t, iters=2)
        z_c, x_c = model.solve(frame_c, iters=2)
        ref = model.fullstage(*z_c, x_c)
    path = export_pt2(model.fullstage, [*z_t, x_t], tmp_path / "deq_cell.pt2")
    compiled = torch._inductor.aoti_load_package(str(path), run_single_threaded=True)
    with torch.no_grad():
        out = compiled(*z_c, x_c)
    assert len(out) == 4
    for r, g in zip(ref, out):
        assert float((r - g).abs().max() / r.abs().max()) < 1e-4


@pytest.mark.slow  # compiles 3 AOTI graphs (~60 s on 2 cores); runs in CI
def test_full_pt2_bundle(model, tmp_path) -> None:
    man = export_bundle(model, tmp_path / "p", H, W, formats=("onnx", "pt2"))
    for eng in man["engines"].values():
        assert set(eng["files"]) == {"onnx", "pt2"} and (tmp_path / "p" / eng["files"]["pt2"]).is_file()
        assert eng["device"]["pt2"] == "cpu"


def test_failed_parity_leaves_no_bundle(model, tmp_path, monkeypatch) -> None:
    out = tmp_path / "engines"
    export_bundle(model, out, H, W)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    real = bundle_mod.run_onnx

    def corrupt(path, feeds):
        outs = real(path, feeds)
        return [o + 1.0 if o.dtype == np.float32 else o for o in outs]

    monkeypatch.setattr(bundle_mod, "run_onnx", corrupt)
    with pytest.raises(ParityError, match="injection.onnx disagrees"):
        export_bundle(model, out, H, W)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # old bundle untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engines"]  # no temp dirs left
    with pytest.raises(ParityError):
        export_bundle(model, tmp_path / "fresh", H, W)
    assert not (tmp_path / "fresh").exists()


def test_does_not_replace_a_directory_that_is_not_a_bundle(model, tmp_path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not an engine bundle"):
        export_bundle(model, tmp_path / "data", H, W)
    assert (tmp_path / "data" / "keep.txt").read_text() == "x"


def test_bad_arguments_and_callers_model_untouched(tmp_path) -> None:
    model = build_model(get_config("tiny"))
    model.train()
    with pytest.raises(ValueError, match="multiples of 32"):
        export_bundle(model, tmp_path / "e", 60, W)
    with pytest.raises(ValueError, match="formats"):
        export_bundle(model, tmp_path / "e", H, W, formats=("tflite",))
    export_bundle(model, tmp_path / "e", H // 2, W // 2)
    assert model.training  # the export worked on a copy in eval mode


# --------------------------------------------------------------------------- TensorRT


def test_plan_without_tensorrt_is_one_clear_error(model, tmp_path, monkeypatch) -> None:
    from export.tensorrt_build import TensorRTUnavailable

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(TensorRTUnavailable) as err:
        export_bundle(model, tmp_path / "e", H, W, formats=("plan",))
    msg = str(err.value)
    assert "TensorRT is not installed" in msg and ".onnx" in msg and ".pt2" in msg and "\n" not in msg
    assert not (tmp_path / "e").exists()


class _Rec:
    """Records calls made on the fake TensorRT objects."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []


def _fake_trt(version: str, rec: _Rec, parse_ok: bool = True) -> types.ModuleType:
    """A stand-in for the documented TensorRT 10/11 Python API (only what build_plan may use)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major = int(version.split(".")[0])
    flags = {"TF32": "TF32"} | ({"FP16": "FP16"} if major < 11 else {})
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

    class Logger:
        WARNING = "WARNING"

        def __init__(self, level) -> None:
            rec.calls.append(("Logger", level))

    class Network:
        def __init__(self) -> None:
            self.inputs: list = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class Parser:
        def __init__(self, network, logger) -> None:
            self.network = network
            self.num_errors = 0 if parse_ok else 2

        def parse_from_file(self, path):
            rec.calls.append(("parse_from_file", Path(path).name))
            m = onnx.load(path)
            for i in m.graph.input:
                shape = tuple(d.dim_value for d in i.type.tensor_type.shape.dim)
                self.network.inputs.append(types.SimpleNamespace(name=i.name, shape=shape))
            return parse_ok

        def get_error(self, i):
            return f"node {i}: unsupported op"

    class Cache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self):
            return memoryview(self.data + b"+new")

    class Profile:
        def set_shape(self, name, mn, opt, mx) -> None:
            rec.calls.append(("set_shape", name, tuple(mn), tuple(opt), tuple(mx)))

    class Config:
        def __init__(self) -> None:
            self.cache = None

        def __setattr__(self, key, value) -> None:
            if key == "builder_optimization_level":
                rec.calls.append(("builder_optimization_level", value))
            object.__setattr__(self, key, value)

        def set_memory_pool_limit(self, pool, size) -> None:
            rec.calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag) -> None:
            rec.calls.append(("set_flag", flag))

        def clear_flag(self, flag) -> None:
            rec.calls.append(("clear_flag", flag))

        def create_timing_cache(self, data):
            rec.calls.append(("create_timing_cache", bytes(data)))
            return Cache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch) -> None:
            self.cache = cache
            rec.calls.append(("set_timing_cache", ignore_mismatch))

        def get_timing_cache(self):
            return self.cache

        def add_optimization_profile(self, profile) -> None:
            rec.calls.append(("add_optimization_profile",))

    class Builder:
        def __init__(self, logger) -> None:
            rec.calls.append(("Builder",))

        def create_network(self, flags):
            rec.calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            rec.calls.append(("build_serialized_network",))
            return memoryview(b"PLAN")

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, Parser
    return trt


@pytest.mark.parametrize("version", ["10.13.0", "11.3.0"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_trt_build_call_sequence(bundle, bundle16, tmp_path, monkeypatch, version, precision) -> None:
    from export.tensorrt_build import build_plan

    src = bundle if precision == "fp32" else bundle16[0]
    rec = _Rec()
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt(version, rec))
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    plan = build_plan(src / "deq_cell.onnx", tmp_path / "deq_cell.plan", precision, cache, 1 << 28, 4)
    assert plan.read_bytes() == b"PLAN" and cache.read_bytes() == b"old+new"
    names = [c[0] for c in rec.calls]
    assert names.index("parse_from_file") < names.index("build_serialized_network")
    assert ("create_network", 1) in rec.calls  # STRONGLY_TYPED: precision lives in the graph
    assert ("set_flag", "FP16") not in rec.calls
    assert ("set_memory_pool_limit", "WORKSPACE", 1 << 28) in rec.calls
    assert ("builder_optimization_level", 4) in rec.calls and ("create_timing_cache", b"old") in rec.calls
    shapes = {c[1]: c[2] for c in rec.calls if c[0] == "set_shape"}
    assert shapes == {s["name"]: tuple(s["shape"]) for s in _manifest_inputs(src, "deq_cell")}
    assert all(c[2] == c[3] == c[4] for c in rec.calls if c[0] == "set_shape")  # static profile
    assert (("clear_flag", "TF32") in rec.calls) == (precision == "fp32")


def _manifest_inputs(bundle: Path, engine: str) -> list[dict]:
    import json

    return json.loads((bundle / "manifest.json").read_text())["engines"][engine]["inputs"]


def test_trt10_weak_fp16_flag_and_trt11_refusal(bundle, tmp_path, monkeypatch) -> None:
    from export.tensorrt_build import TensorRTBuildError, build_plan

    onnx_path = bundle / "injection.onnx"  # fp32-typed ONNX
    rec = _Rec()
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("10.13.0", rec))
    build_plan(onnx_path, tmp_path / "i.plan", "fp16")
    assert ("set_flag", "FP16") in rec.calls and ("create_network", 0) in rec.calls
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("11.3.0", _Rec()))
    with pytest.raises(TensorRTBuildError, match="fp16-typed ONNX"):
        build_plan(onnx_path, tmp_path / "i11.plan", "fp16")
    assert not (tmp_path / "i11.plan").exists()


def test_trt_parser_errors_are_listed(bundle, tmp_path, monkeypatch) -> None:
    from export.tensorrt_build import TensorRTBuildError, build_plan

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("10.13.0", _Rec(), parse_ok=False))
    with pytest.raises(TensorRTBuildError, match="node 0: unsupported op .* node 1: unsupported op"):
        build_plan(bundle / "injection.onnx", tmp_path / "i.plan")


def test_plan_needs_a_gpu_even_with_tensorrt(model, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("10.13.0", _Rec()))
    with pytest.raises(ValueError, match="built and checked on a GPU"):
        export_bundle(model, tmp_path / "e", H, W, formats=("onnx", "plan"), device="cpu")
    assert not (tmp_path / "e").exists()


@pytest.fixture
def tf32_restored():
    """torch's TF32 flags as they were before the test (set and put back through export.tf32:
    monkeypatch cannot restore attributes that torch serves through __getattr__)."""
    saved = tf32_mod._snapshot()
    yield
    tf32_mod._restore(saved)


def test_export_turns_tf32_off_and_restores_it(model, tmp_path, monkeypatch, tf32_restored) -> None:
    """Parity references are exact fp32 during the export (TF32 would blow the 1e-3 bound on a
    GPU); the caller's TF32 settings come back afterwards."""
    seen = []
    real = bundle_mod.export_engine

    def spy(*args, **kwargs):
        seen.append(tf32_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(bundle_mod, "export_engine", spy)
    set_tf32(True)
    assert tf32_enabled() == {"conv": True, "matmul": True}
    export_bundle(model, tmp_path / "e", H, W)
    assert seen and all(s == {"conv": False, "matmul": False} for s in seen)
    assert tf32_enabled() == {"conv": True, "matmul": True}


def test_exact_fp32_restores_each_backend_to_its_own_value(tf32_restored) -> None:
    """Convolutions and matmuls come back each to its own earlier value, not to one shared flag,
    and torch's legacy cuDNN getter (AOTInductor's compile reads it) still answers inside."""
    set_tf32(False)
    torch.backends.cudnn.allow_tf32 = True
    with exact_fp32():
        assert tf32_enabled() == {"conv": False, "matmul": False}
        assert not torch.backends.cudnn.allow_tf32
    assert tf32_enabled() == {"conv": True, "matmul": False}


def test_relaxed_cell_exports_with_its_relaxation(model, tmp_path) -> None:
    relaxed = build_model(dataclasses.replace(model.cfg, relax=0.8)).eval()
    relaxed.load_state_dict(model.state_dict())
    man = export_bundle(relaxed, tmp_path / "r", H, W)
    assert man["config"]["relax"] == 0.8
    frame = _frame(13)
    with torch.no_grad():
        z, x = model.solve(frame, iters=2)
        f = model.fullstage(*z, x)
    got = _run(tmp_path / "r" / "deq_cell.onnx", {**{f"z{i}": t for i, t in enumerate(z)}, "x": x})
    for zi, fi, gi in zip(z, f, got):  # the unrelaxed PyTorch cell, mixed by hand: the engine carries the relaxation
        assert _rel(0.2 * zi + 0.8 * fi, gi) < 1e-5
