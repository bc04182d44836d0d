"""Runners: ONNX Runtime binds our buffers (outputs land in them, checked against a plain
session.run); bad engines and missing backends fail with one clear line."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from runtime.backends import load_runner
from runtime.buffers import ALIGN_BYTES, StateLayout, StreamBuffers
from runtime.bundle import EngineSpec, open_bundle
from runtime.errors import EngineError
from runtime.writers import read_maps


def test_ort_outputs_land_in_bound_buffers(bundle64):
    import onnxruntime as ort

    b = open_bundle(bundle64 / "deq_cell.onnx")
    spec = b.engines["deq_cell"]
    runner = load_runner(spec, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    ins = {t.name: torch.randn(t.shape, generator=g) for t in spec.inputs}
    outs = {t.name: torch.zeros(t.shape) for t in spec.outputs}
    for name, t in {**ins, **outs}.items():
        runner.bind(name, t)
    ptrs = {k: v.data_ptr() for k, v in outs.items()}
    runner.run()
    ref = ort.InferenceSession(str(spec.path), providers=["CPUExecutionProvider"]).run(
        [t.name for t in spec.outputs], {k: v.numpy() for k, v in ins.items()}
    )
    for t, r in zip(spec.outputs, ref):
        assert outs[t.name].data_ptr() == ptrs[t.name]
        np.testing.assert_allclose(outs[t.name].numpy(), r, rtol=1e-5, atol=1e-5)


def test_bind_rejects_wrong_shape_and_aliasing(bundle64):
    b = open_bundle(bundle64 / "deq_cell.onnx")
    spec = b.engines["deq_cell"]
    runner = load_runner(spec, torch.device("cpu"))
    with pytest.raises(EngineError, match="shape"):
        runner.bind("z0", torch.zeros(1, 2, 3, 4))
    z0 = torch.zeros(spec.inputs[0].shape)
    runner.bind("z0", z0)
    with pytest.raises(EngineError, match="share one buffer"):
        runner.bind("f0", z0)


def test_state_buffers_are_aligned_views_of_one_flat_vector(bundle64):
    b = open_bundle(bundle64 / "deq_cell.onnx")
    buf = StreamBuffers(b, torch.device("cpu"))
    for views, flat in zip(buf.zviews, buf.z):
        for v, spec in zip(views, b.state):
            assert tuple(v.shape) == spec.shape and v.is_contiguous()
            assert (v.data_ptr() - flat.data_ptr()) % ALIGN_BYTES == 0
        views[2].fill_(1.0)
        assert flat.sum().item() == views[2].numel()


def test_row_views_are_made_once_and_follow_the_current_set(bundle64):
    """The loop zeroes and warps a stream's rows through views kept per set (not made again every frame): the same
    tensors each time, the memory of the set that is current."""
    b = open_bundle(bundle64 / "deq_cell.onnx")
    buf = StreamBuffers(b, torch.device("cpu"))
    for cur in (0, 1):
        buf.current = cur
        rows = buf.row_views(0)
        assert rows is buf.row_views(0)
        for v, full in zip(rows, buf.zviews[cur]):
            assert v.data_ptr() == full.data_ptr() and v.shape == full.shape[1:]
        rows[1].fill_(2.0)
        assert buf.z[cur].sum().item() == 2.0 * rows[1].numel() and buf.z[1 - cur].abs().sum().item() == 0.0
        rows[1].zero_()


def test_fp16_state_offsets_are_256_byte_aligned():
    """An odd number of 64-element blocks would leave fp16 views only 128-byte aligned."""
    from runtime.bundle import TensorSpec

    specs = tuple(TensorSpec(f"z{i}", (1, 1, 1, n), "float16") for i, n in enumerate((64, 64 * 3, 10)))
    layout = StateLayout.from_specs(specs)
    assert all((o * 2) % ALIGN_BYTES == 0 for o in layout.offsets)
    assert layout.offsets == (0, 128, 384)


def test_bad_pt2_and_plan(tmp_path, bundle64):
    spec = open_bundle(bundle64 / "deq_cell.onnx").engines["deq_cell"]
    pt2 = tmp_path / "deq_cell.pt2"
    pt2.write_bytes(b"not a zip")
    with pytest.raises(EngineError, match="not an AOTInductor package"):
        load_runner(EngineSpec(spec.name, pt2, spec.inputs, spec.outputs), torch.device("cpu"))
    plan = tmp_path / "deq_cell.plan"
    plan.write_bytes(b"\x00" * 64)
    with pytest.raises(EngineError, match="TensorRT|GPU"):
        load_runner(EngineSpec(spec.name, plan, spec.inputs, spec.outputs), torch.device("cpu"))


@pytest.mark.slow
def test_aoti_pt2_matches_onnx(tiny_model, tmp_path):
    """The .pt2 (AOTInductor, compiled for CPU; ~1 min) and .onnx runners give the same maps."""
    from export.bundle import export_bundle
    from runtime.loop import RunConfig, run
    from runtime.sources import ArraySource
    from tests.runtime.conftest import moving_frames

    out = tmp_path / "b"
    export_bundle(tiny_model, out, 32, 64, formats=("onnx", "pt2"))
    frames = list(moving_frames(4, 32, 64))
    maps = {}
    for kind in ("onnx", "pt2"):
        run(
            RunConfig(
                engine=out / f"deq_cell.{kind}",
                sources=[ArraySource(frames)],
                out=tmp_path / kind,
                iters=2,
                save_maps="npz",
                video=False,
                progress=False,
                reset=False,
            )
        )
        maps[kind] = np.stack(list(read_maps(tmp_path / kind / "maps.npz").values()))
    assert maps["pt2"].shape == (4, 32, 64)
    assert (maps["pt2"] != maps["onnx"]).mean() < 1e-3


def _fake_trt(spec: EngineSpec, dtypes: dict[str, str]):
    """A stand-in ``tensorrt`` module with the TensorRT 10/11 calls the runner makes (tensor-name API)."""
    from enum import Enum

    mode = Enum("TensorIOMode", "INPUT OUTPUT")
    dtype = Enum("DataType", "FLOAT HALF UINT8 INT32 INT64")
    strategy = Enum("ExecutionContextAllocationStrategy", "STATIC ON_PROFILE_CHANGE USER_MANAGED")
    io = [(t, mode.INPUT) for t in spec.inputs] + [(t, mode.OUTPUT) for t in spec.outputs]
    state = types.SimpleNamespace(capturing=False, contexts=[], calls=[])

    class FakeContext:
        """Records what a CUDA graph would bake in: the addresses each enqueue ran with, and any address change
        made while a (fake) capture is open."""

        def __init__(self, strategy):
            self.strategy, self.addresses, self.memory = strategy, {}, None

        def set_tensor_address(self, name, ptr):
            state.calls.append(("set_tensor_address", self, name, state.capturing))
            self.addresses[name] = ptr
            return True

        def set_device_memory(self, ptr, size):
            self.memory = (ptr, size)

        def execute_async_v3(self, handle):
            state.calls.append(("execute", self, dict(self.addresses), state.capturing))
            return True

    class Engine:
        num_io_tensors = len(io)

        def get_tensor_name(self, i):
            return io[i][0].name

        def _find(self, name):
            return next(x for x in io if x[0].name == name)

        def get_tensor_shape(self, name):
            return list(self._find(name)[0].shape)

        def get_tensor_mode(self, name):
            return self._find(name)[1]

        def get_tensor_dtype(self, name):
            return dtype[dtypes[name]]

        def create_execution_context(self, strategy=None):
            ctx = FakeContext(strategy)
            state.contexts.append(ctx)
            return ctx

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"plan" else None

    Engine.device_memory_size_v2 = 3 * 1024
    trt = types.ModuleType("tensorrt")
    trt.Logger = type("Logger", (), {"ERROR": 1, "__init__": lambda self, level: None})
    trt.Runtime, trt.TensorIOMode, trt.DataType = Runtime, mode, dtype
    trt.ExecutionContextAllocationStrategy = strategy
    trt.state = state  # the test's handle on the recordings
    return trt


def test_plan_runner_checks_names_shapes_and_dtypes(bundle64, tmp_path, monkeypatch):
    """Through a fake tensorrt module (no TensorRT here): the plan's I/O must match the manifest, dtypes included
    (a plan built with `trtexec --fp16` keeps fp32 I/O and would otherwise misread fp16 buffers)."""
    import sys

    spec = open_bundle(bundle64 / "deq_cell.onnx").engines["deq_cell"]
    plan = tmp_path / "deq_cell.plan"
    plan.write_bytes(b"plan")
    spec = EngineSpec(spec.name, plan, spec.inputs, spec.outputs)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    from runtime.backends.trt import TrtRunner

    monkeypatch.setattr(TrtRunner, "_activation_memory", lambda self, size: _FakeCudaTensor((size,), 1 << 30))
    same = {t.name: "FLOAT" for t in (*spec.inputs, *spec.outputs)}
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt(spec, same))
    runner = load_runner(spec, torch.device("cuda"))
    assert runner.context is not None
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt(spec, {**same, "x": "HALF"}))
    with pytest.raises(EngineError, match="x is float16 in the engine, float32 in the manifest"):
        load_runner(spec, torch.device("cuda"))
    plan.write_bytes(b"junk")
    with pytest.raises(EngineError, match="cannot deserialize"):
        load_runner(spec, torch.device("cuda"))


def test_bind_and_onnx_load_check_dtypes(bundle64):
    from runtime.bundle import TensorSpec

    spec = open_bundle(bundle64 / "deq_cell.onnx").engines["deq_cell"]
    runner = load_runner(spec, torch.device("cpu"))
    x = spec.input("x")
    with pytest.raises(EngineError, match="buffer for x is torch.float16, the manifest says float32"):
        runner.bind("x", torch.zeros(x.shape, dtype=torch.float16))
    wrong = tuple(TensorSpec(t.name, t.shape, "float16") if t.name == "x" else t for t in spec.inputs)
    with pytest.raises(EngineError, match="x is float32 in the engine, float16 in the manifest"):
        load_runner(EngineSpec(spec.name, spec.path, wrong, spec.outputs), torch.device("cpu"))


def test_bundle_reads_the_cells_relaxation_and_refuses_a_bad_one(bundle64, tmp_path):
    import json
    import shutil

    from runtime.errors import BundleError

    assert open_bundle(bundle64 / "deq_cell.onnx").relax == 1.0
    copy = shutil.copytree(bundle64, tmp_path / "b")
    man = json.loads((copy / "manifest.json").read_text())
    for relax, ok in ((0.8, True), (0.0, False), (1.5, False)):
        man["config"]["relax"] = relax
        (copy / "manifest.json").write_text(json.dumps(man))
        if ok:
            assert open_bundle(copy / "deq_cell.onnx").relax == relax
        else:
            with pytest.raises(BundleError, match="relax"):
                open_bundle(copy / "deq_cell.onnx")


class _FakeCudaTensor:
    """What ``bind`` reads of a torch CUDA tensor (no GPU here): shape, dtype, contiguity, device, address."""

    def __init__(self, shape: tuple[int, ...], ptr: int) -> None:
        self.shape, self.dtype, self.device, self._ptr = shape, torch.float32, torch.device("cuda"), ptr

    def is_contiguous(self) -> bool:
        return True

    def data_ptr(self) -> int:
        return self._ptr


def test_plan_runner_sets_no_address_inside_a_cuda_graph_capture(bundle64, tmp_path, monkeypatch):
    """TensorRT fixes a context's tensor addresses when a CUDA graph captures its enqueue, so the ping-pong solve
    (slot 0: A -> B, slot 1: B -> A, alternating k times inside one capture) must not switch addresses between
    enqueues: one execution context per slot, its addresses set once at bind, and all contexts drawing their
    activation memory from one shared block (USER_MANAGED + set_device_memory)."""
    import sys

    from runtime.backends import trt as trt_backend

    spec = open_bundle(bundle64 / "deq_cell.onnx").engines["deq_cell"]
    plan = tmp_path / "deq_cell.plan"
    plan.write_bytes(b"plan")
    spec = EngineSpec(spec.name, plan, spec.inputs, spec.outputs)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fake = _fake_trt(spec, {t.name: "FLOAT" for t in (*spec.inputs, *spec.outputs)})
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    arena = _FakeCudaTensor((3 * 1024,), 1 << 30)
    monkeypatch.setattr(trt_backend.TrtRunner, "_activation_memory", lambda self, size: arena, raising=False)
    runner = load_runner(spec, torch.device("cuda"))
    n = len(spec.outputs)
    base = {slot: 1 << (20 + slot) for slot in (0, 1)}  # state set A at slot 0's base, B at slot 1's
    for slot in (0, 1):
        src, dst = base[slot], base[1 - slot]
        for i, t in enumerate(spec.inputs[:n]):
            runner.bind(t.name, _FakeCudaTensor(t.shape, src + 256 * i), slot)
        runner.bind(spec.inputs[n].name, _FakeCudaTensor(spec.inputs[n].shape, 1 << 25), slot)
        for i, t in enumerate(spec.outputs):
            runner.bind(t.name, _FakeCudaTensor(t.shape, dst + 256 * i), slot)
    want = {slot: {k: v.data_ptr() for k, v in runner.slots[slot].items()} for slot in (0, 1)}
    stream = types.SimpleNamespace(cuda_stream=7)
    for slot in (0, 1):  # warm-up enqueues outside capture, as the pipeline does
        runner.run(stream, slot)
    fake.state.calls.clear()
    fake.state.capturing = True
    for k in range(4):  # k = 4 iterations in one capture: 0, 1, 0, 1
        runner.run(stream, k % 2)
    fake.state.capturing = False
    inside = [c for c in fake.state.calls if c[3]]
    assert [c[2] for c in inside if c[0] == "set_tensor_address"] == [], "addresses changed during capture"
    enqueued = [c[2] for c in inside if c[0] == "execute"]
    assert enqueued == [want[0], want[1], want[0], want[1]]
    ran = [c[1] for c in inside if c[0] == "execute"]
    assert ran[0] is ran[2] and ran[1] is ran[3] and ran[0] is not ran[1], "one context per slot"
    memory = {id(ctx): ctx.memory for ctx in fake.state.contexts}
    assert set(memory.values()) == {(arena.data_ptr(), 3 * 1024)}, "every context shares one activation block"
    assert {ctx.strategy for ctx in fake.state.contexts} == {fake.ExecutionContextAllocationStrategy.USER_MANAGED}


def _ort_with_cuda_that_falls_back(monkeypatch, raises: bool) -> list:
    """ONNX Runtime that lists the CUDA provider (a GPU wheel) but cannot load it: the session either falls back to
    the CPU provider (``get_providers()`` says so) or, with CPU fallback disabled, fails to be created."""
    import onnxruntime as ort

    real = ort.InferenceSession
    asked: list = []

    class Session:
        def __init__(self, path, sess_options=None, providers=None):
            asked.append(providers)
            on_cuda = any("CUDA" in (p[0] if isinstance(p, tuple) else p) for p in providers or [])
            if on_cuda and raises:
                raise RuntimeError("Failed to load libonnxruntime_providers_cuda.so: libcudnn.so.9: cannot open")
            self._s = real(path, providers=["CPUExecutionProvider"])  # what loaded (the caller's options aside)

        def get_providers(self):
            return ["CPUExecutionProvider"]

        def __getattr__(self, name):
            return getattr(self._s, name)

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", Session)
    return asked


@pytest.mark.parametrize("raises", [False, True], ids=["falls-back", "fails"])
def test_ort_on_cuda_is_what_the_session_loaded(bundle64, monkeypatch, raises):
    """The provider list of the wheel (``get_available_providers``) is not what a session loaded: an onnxruntime-gpu
    built for another CUDA major falls back to the CPU provider, or fails with CPU fallback disabled. Either way the
    runner says that the CUDA provider did not load and which CUDA and cuDNN it needs; never 'not a loadable ONNX
    model' for a model that loads on the CPU, and never ``on_cuda`` for a session that runs on the CPU."""
    spec = open_bundle(bundle64 / "deq_cell.onnx").engines["deq_cell"]
    asked = _ort_with_cuda_that_falls_back(monkeypatch, raises)
    with pytest.raises(EngineError) as err:
        load_runner(spec, torch.device("cuda"))
    msg = str(err.value)
    assert "CUDA execution provider" in msg and "needs CUDA" in msg and "cuDNN" in msg, msg
    assert "not a loadable ONNX model" not in msg and "\n" not in msg
    assert asked[0][0][0] == "CUDAExecutionProvider"
