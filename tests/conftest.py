"""Shared fixtures and the gpu/tensorrt skips (shown in the summary thanks to -rs)."""

from __future__ import annotations

import importlib.util

import pytest


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - any failure means "no usable GPU"
        return False


def has_tensorrt() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - stub wheels raise at import
        return False
    return True


@pytest.fixture
def one_torch_thread():
    """One torch intra-op thread for the test: on a shared 2-core CPU, OpenMP spinning makes two
    threads slower than one, and the ORT sessions need the other core."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    skip_trt = pytest.mark.skip(reason="needs TensorRT (the tensorrt module does not import here)")
    gpu, trt = has_cuda(), has_tensorrt()
    for item in items:
        if "gpu" in item.keywords and not gpu:
            item.add_marker(skip_gpu)
        if "tensorrt" in item.keywords and not trt:
            item.add_marker(skip_trt)
