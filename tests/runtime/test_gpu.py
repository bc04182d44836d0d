"""GPU-only: no host-device copy and no allocation in the iteration loop; CUDA graphs == plain."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.buffers import StateLayout
from runtime.bundle import open_bundle
from runtime.modes import FrameInfo, Plan
from runtime.pipeline import Pipeline
from runtime.solvers import SOLVERS, Workspace, fixed_point
from tests.runtime.conftest import H, W, moving_frames

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_bundle(tiny_model, tmp_path_factory):
    """A .pt2 bundle compiled for CUDA (AOTInductor is part of torch, so no extra package)."""
    from export.bundle import export_bundle

    out = tmp_path_factory.mktemp("cuda_bundle") / "engines"
    export_bundle(tiny_model, out, H, W, formats=("pt2",), device="cuda")
    return open_bundle(out / "deq_cell.pt2")


def frames_through(pipe: Pipeline, frames: np.ndarray, iters: int) -> tuple[list[np.ndarray], list[float]]:
    maps, res = [], []
    for i, f in enumerate(frames):
        r = pipe.run([f], [Plan(iters=iters, start="previous")], [FrameInfo(i)])
        maps.append(r.classes[0])
        res.append(r.residuals[0])
    return maps, res


def test_cuda_graph_equals_plain_launches(cuda_bundle):
    frames = moving_frames(6)
    plain = Pipeline(cuda_bundle, torch.device("cuda"), graphs=False)
    graph = Pipeline(cuda_bundle, torch.device("cuda"), graphs=True)
    m0, r0 = frames_through(plain, frames, 3)
    m1, r1 = frames_through(graph, frames, 3)
    assert graph.graphs, "no CUDA graph was captured"
    for a, b in zip(m0, m1):
        assert (a != b).mean() < 1e-3
    np.testing.assert_allclose(r0, r1, rtol=1e-3, atol=1e-5)


def test_no_allocation_and_no_host_copy_in_the_iteration_loop(cuda_bundle):
    pipe = Pipeline(cuda_bundle, torch.device("cuda"), graphs=True)
    frames = moving_frames(4)
    frames_through(pipe, frames[:3], 4)  # warm-up, capture
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        with torch.cuda.stream(pipe.stream):
            for _ in range(3):
                info, used_graph = pipe.solve(4)
        torch.cuda.synchronize()
    after = torch.cuda.memory_stats()
    assert used_graph
    assert after["allocation.all.allocated"] == before["allocation.all.allocated"]
    assert after["segment.all.allocated"] == before["segment.all.allocated"]
    copies = [e.name for e in prof.events() if "Memcpy" in e.name and ("HtoD" in e.name or "DtoH" in e.name)]
    assert not copies, copies


def test_plain_loop_allocates_no_new_device_memory(cuda_bundle):
    """Without graphs the backend may reuse cached blocks, but never grows device memory."""
    pipe = Pipeline(cuda_bundle, torch.device("cuda"), graphs=False)
    frames_through(pipe, moving_frames(2), 4)
    torch.cuda.synchronize()
    reserved = torch.cuda.memory_reserved()
    segments = torch.cuda.memory_stats()["segment.all.allocated"]
    with torch.cuda.stream(pipe.stream):
        for _ in range(5):
            pipe.solve(4)
    torch.cuda.synchronize()
    assert torch.cuda.memory_reserved() == reserved
    assert torch.cuda.memory_stats()["segment.all.allocated"] == segments


def test_onnxruntime_cuda_iobinding(tmp_path_factory, tiny_model):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    from export.bundle import export_bundle

    out = tmp_path_factory.mktemp("ort_cuda") / "engines"
    export_bundle(tiny_model, out, H, W, formats=("onnx",))
    b = open_bundle(out / "deq_cell.onnx")
    frames = moving_frames(3)
    m_gpu, _ = frames_through(Pipeline(b, torch.device("cuda")), frames, 2)
    m_cpu, _ = frames_through(Pipeline(b, torch.device("cpu")), frames, 2)
    for a, c in zip(m_gpu, m_cpu):
        assert (a != c).mean() < 1e-3


def _fp16_linear_step(d: int, seed: int = 0):
    """z -> a*z + b elementwise on CUDA in fp16 state (|a| < 0.6: a contraction), with its exact fixed point."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    a = torch.rand(d, device="cuda", generator=g) * 1.2 - 0.6
    b = torch.randn(d, device="cuda", generator=g) * 2

    def step(zi: torch.Tensor, zo: torch.Tensor) -> None:
        zo.copy_(torch.addcmul(b, a, zi.float()))  # allocates a temporary: fine outside the solver's own buffers

    return step, b / (1 - a)


def test_fp16_state_residual_on_cuda_matches_fp64():
    """D = 245,760 fp16 state on the GPU: the residual meter sums in fp32 (an fp16 sum overflowed to inf)."""
    d = 245_760
    step, zstar = _fp16_linear_step(d)
    for name, solver in SOLVERS.items():
        z0 = torch.zeros(d, device="cuda", dtype=torch.float16)
        z, info = solver(step, z0, 60, 1e-3, work=torch.zeros_like(z0), check_every=1)
        assert z.dtype == torch.float16 and info.trace.dtype == torch.float32, name
        r = info.residuals()[0]
        assert 0 < r < 1e-3 and np.isfinite(r), (name, r)
        assert float((z.double() - zstar.double()).norm() / zstar.double().norm()) < 1e-2, name


def test_fp16_fixed_point_captures_into_a_cuda_graph_without_allocating():
    d = 245_760
    step, _ = _fp16_linear_step(d, seed=1)
    z0 = torch.zeros(d, device="cuda", dtype=torch.float16)
    work = torch.zeros_like(z0)
    _, ref = fixed_point(step, z0.clone(), 4, None, work=work.clone())
    expect = ref.trace[:4, 0].tolist()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    ws = Workspace(StateLayout(((1, d),), (0,), d, torch.float16), torch.device("cuda"), max_iter=4)
    with torch.cuda.stream(side):
        fixed_point(step, z0, 4, None, work=work, ws=ws)  # warm up outside capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    z0.zero_()
    with torch.cuda.graph(g):
        _, info = fixed_point(step, z0, 4, None, work=work, ws=ws)
    z0.zero_()
    torch.cuda.synchronize()
    segments = torch.cuda.memory_stats()["segment.all.allocated"]
    g.replay()
    torch.cuda.synchronize()
    assert torch.cuda.memory_stats()["segment.all.allocated"] == segments
    np.testing.assert_allclose(info.trace[:4, 0].tolist(), expect, rtol=1e-3)
