"""Run the real warp.cu per-thread bodies on the CPU (tests/kernels/host_harness.cu) against the float64 reference.

Why: the build machines have nvcc but no GPU. Compiling the kernel source for the host checks its indexing (NCHW
planes, NHWC vectors), tap/weight arithmetic, border handling, fp16 conversion, scale and fusion modes before any GPU
run; test_warp_gpu.py then covers the launch path and the thread mapping.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from kernels import build, reference

HERE = Path(__file__).resolve().parent
TOL = {"f32": 1e-5, "f16": 1e-2}
NP_DTYPE = {"f32": np.float32, "f16": np.float16}

pytestmark = pytest.mark.skipif(build.find_nvcc() is None, reason="nvcc is not installed")


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("harness") / "host_harness"
    cmd = [build.find_nvcc(), "-O2", "-std=c++17", "-arch=sm_75", f"-I{build.KERNEL_DIR}"]
    proc = subprocess.run([*cmd, str(HERE / "host_harness.cu"), "-o", str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return exe


def case(seed: int, n: int, c: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    feat = rng.random((n, c, h, w))
    disp = (rng.random((n, 2, h, w)) * 2 - 1) * 5.0
    disp[:, :, 0] += 3.0 * h  # first row samples fully outside
    disp[:, 0, :, 1] = np.round(disp[:, 0, :, 1])  # integer x displacements: weight-0 taps at the right border
    return feat, disp.astype(np.float32)


def run_harness(exe: Path, tmp: Path, layout: str, dtype: str, vec: int, mode: int, arrays: dict, shape, cpt: int,
                wa: float = 0.0, wb: float = 0.0) -> np.ndarray:  # fmt: skip
    n, c, h, w = shape
    for name, arr in arrays.items():
        if arr.ndim == 4 and arr.shape[1] == c and name != "da" and name != "db":
            arr = arr.astype(NP_DTYPE[dtype])
            if layout == "nhwc":
                arr = arr.transpose(0, 2, 3, 1)
        np.ascontiguousarray(arr).tofile(tmp / f"{name}.bin")
    has_scale = int("scale" in arrays)
    args = [str(exe), str(tmp), layout, dtype, str(vec), str(mode), str(has_scale), str(n), str(c), str(h), str(w)]
    proc = subprocess.run([*args, str(cpt), repr(wa), repr(wb)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = np.fromfile(tmp / "out.bin", dtype=NP_DTYPE[dtype])
    if layout == "nhwc":
        return out.reshape(n, h, w, c).transpose(0, 3, 1, 2).astype(np.float64)
    return out.reshape(n, c, h, w).astype(np.float64)


def ref(feat: np.ndarray, disp: np.ndarray, dtype: str, scale: np.ndarray | None = None) -> torch.Tensor:
    f = torch.from_numpy(feat.astype(NP_DTYPE[dtype]).astype(np.float64))
    s = None if scale is None else torch.from_numpy(scale.astype(NP_DTYPE[dtype]).astype(np.float64))
    return reference.warp(f, torch.from_numpy(disp).double(), s)


VARIANTS = [("nchw", "f32", 1), ("nchw", "f16", 1), ("nhwc", "f32", 1), ("nhwc", "f32", 4), ("nhwc", "f16", 1),
            ("nhwc", "f16", 8)]  # fmt: skip


@pytest.mark.parametrize("layout,dtype,vec", VARIANTS)
@pytest.mark.parametrize("with_scale", [False, True])
def test_warp_body(harness: Path, tmp_path: Path, layout: str, dtype: str, vec: int, with_scale: bool) -> None:
    shape = (2, 72, 9, 13)  # 72 channels: > 32 lanes x V for V=1, a partial last chunk for cpt=5
    feat, disp = case(1, *shape)
    arrays = {"a": feat, "da": disp}
    scale = np.random.default_rng(2).random(shape) + 0.5 if with_scale else None
    if with_scale:
        arrays["scale"] = scale
    got = run_harness(harness, tmp_path, layout, dtype, vec, 0, arrays, shape, cpt=5)
    err = np.abs(got - ref(feat, disp, dtype, scale).numpy()).max()
    assert err <= TOL[dtype], err


@pytest.mark.parametrize("layout,dtype,vec", [("nchw", "f32", 1), ("nhwc", "f32", 4), ("nhwc", "f16", 8)])
@pytest.mark.parametrize("mode", ["weighted", "max", "avg"])
def test_interp_body(harness: Path, tmp_path: Path, layout: str, dtype: str, vec: int, mode: str) -> None:
    shape = (1, 64, 8, 11)
    a, da = case(3, *shape)
    b, db = case(4, *shape)
    code, wa, wb = {"weighted": (1, 0.6, 0.4), "avg": (1, 0.5, 0.5), "max": (2, 0.0, 0.0)}[mode]
    got = run_harness(harness, tmp_path, layout, dtype, vec, code, {"a": a, "da": da, "b": b, "db": db}, shape, 7,
                      wa, wb)  # fmt: skip
    want = reference.fuse(ref(a, da, dtype), ref(b, db, dtype), 0.6, 0.4, mode).numpy()
    assert np.abs(got - want).max() <= TOL[dtype]


def test_absurd_displacements_give_zeros(harness: Path, tmp_path: Path) -> None:
    shape = (1, 4, 5, 6)
    feat = np.random.default_rng(5).random(shape)
    disp = np.full((1, 2, 5, 6), 3.0e9, np.float32)
    disp[0, :, 0, 0] = -3.0e9
    disp[0, :, 1, 1] = np.nan
    got = run_harness(harness, tmp_path, "nchw", "f32", 1, 0, {"a": feat, "da": disp}, shape, cpt=4)
    assert not got.any()
