"""GPU first contact, defect 4: what a CUDA graph capture must not do, checked here with a fake capture.

A plan asking more iterations than the solver workspace's residual trace holds used to grow the trace inside the
capture, i.e. allocate from the shared graph pool (memory that later graphs may reuse for their temporaries while
the plain solver keeps writing residuals into it). ``Pipeline._capture`` grows it first. The motion fields of the
propagation modes reach the GPU once per scale per frame; they are staged in pinned host memory (an asynchronous
copy; a pageable one makes the copy synchronous) -- checked on a GPU by the profiler's copy kind."""

from __future__ import annotations

import contextlib
import types

import numpy as np
import pytest
import torch

from runtime.bundle import open_bundle
from runtime.pipeline import Pipeline


def test_capture_grows_the_trace_before_capturing(bundle64, monkeypatch):
    pipe = Pipeline(open_bundle(bundle64 / "deq_cell.onnx"), torch.device("cpu"), max_iters=2, threads=1)
    assert pipe.ws.trace.shape[0] == 2
    seen: list[tuple[str, int, int]] = []

    @contextlib.contextmanager
    def fake_graph(graph, pool=None, stream=None):
        seen.append(("enter", id(pipe.ws.trace), pipe.ws.trace.shape[0]))
        yield
        seen.append(("exit", id(pipe.ws.trace), pipe.ws.trace.shape[0]))

    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: types.SimpleNamespace(replay=lambda: None))
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: "pool")
    pipe.stream = types.SimpleNamespace(synchronize=lambda: None)  # the capture's own sync, nothing to wait for
    entry = pipe._capture(5, 0)
    assert entry is not None and not pipe.graph_failed
    (_, enter_id, enter_rows), (_, exit_id, _) = seen
    assert enter_rows >= 5, "the trace must hold the plan's iterations before the capture starts"
    assert enter_id == exit_id, "the trace was reallocated inside the capture (from the graph pool)"
    assert entry[2].nstep == 5


@pytest.mark.gpu
def test_motion_fields_reach_the_gpu_from_pinned_memory():
    from runtime.propagation import StateWarper

    views = [torch.zeros(8, 16, 32, device="cuda"), torch.zeros(16, 8, 16, device="cuda")]
    fields = [np.random.default_rng(0).standard_normal((2, *v.shape[1:])).astype(np.float32) for v in views]
    warper = StateWarper()
    warper.ensure(views)
    warper.load(fields)  # first call: staging buffers
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        disp = warper.load(fields)
        torch.cuda.synchronize()
    copies = [e.name for e in prof.events() if "Memcpy HtoD" in e.name]
    assert copies and all("Pageable" not in c for c in copies), copies
    for d, f in zip(disp, fields):
        np.testing.assert_array_equal(d[0].cpu().numpy(), f)
