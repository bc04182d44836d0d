"""Build checks: the fatbin covers every target architecture; the loader reports a missing GPU clearly."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kernels import build, loader

EXPECTED = {("sass", a) for a in build.SASS_ARCHS} | {("ptx", build.PTX_ARCH)}
ENTRY_NAMES = ("warp_nchw_f32", "warp_nchw_f16", "interp_nchw_f32", "warp_nhwc_f32_v4", "interp_nhwc_f16_v8")

needs_nvcc = pytest.mark.skipif(build.find_nvcc() is None, reason="nvcc is not installed")


@needs_nvcc
def test_build_produces_fatbin_for_every_arch(tmp_path: Path) -> None:
    out = tmp_path / "warp.fatbin"
    assert build.build(out=out, quiet=True) == out
    data = out.read_bytes()
    assert int.from_bytes(data[:4], "little") == build.FATBIN_MAGIC
    images = {(e.kind, e.arch) for e in build.parse_fatbin(data)}
    assert EXPECTED <= images, f"missing {EXPECTED - images}"
    stamp = build.read_stamp(out.with_name(out.name + ".json"))
    assert stamp["source_sha256"] == build.source_hash()
    # Unchanged source: the second call must not recompile (the file is left untouched).
    mtime = out.stat().st_mtime_ns
    build.build(out=out, quiet=True)
    assert out.stat().st_mtime_ns == mtime


@needs_nvcc
def test_cli_builds_default_fatbin_with_extern_c_names() -> None:
    proc = subprocess.run([sys.executable, "-m", "kernels.build"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    data = build.FATBIN.read_bytes()
    # SASS images are uncompressed ELF: the unmangled entry names must appear verbatim.
    for name in ENTRY_NAMES:
        assert name.encode() + b"\0" in data, name


def test_build_without_nvcc_exits_zero(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    assert build.main([]) == 0
    assert "nvcc not found" in capsys.readouterr().err


@needs_nvcc
def test_compile_error_is_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.cu"
    bad.write_text('extern "C" __global__ void k() { this is not C++; }\n')
    with pytest.raises(build.BuildError, match="nvcc failed"):
        build.build(out=tmp_path / "bad.fatbin", source=bad, quiet=True)


def test_parse_fatbin_rejects_garbage() -> None:
    with pytest.raises(build.BuildError, match="not a fatbin"):
        build.parse_fatbin(b"\x7fELF" + bytes(60))


def test_check_arch_picks_sass_or_ptx() -> None:
    if not build.FATBIN.is_file():
        pytest.skip("fatbin not built")
    data = build.FATBIN.read_bytes()
    loader.check_arch(data, 9, 0)  # sm_90 SASS
    loader.check_arch(data, 8, 7)  # Orin: sm_80 SASS is binary-compatible within major 8
    loader.check_arch(data, 12, 0)  # Blackwell consumer: JIT from compute_90 PTX
    with pytest.raises(loader.KernelUnavailable, match="no code for sm_70"):
        loader.check_arch(data, 7, 0)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a driver is present on this machine")
@pytest.mark.parametrize("backend", loader.BACKENDS)
def test_loader_reports_no_gpu(backend: str) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(loader.NoGPUError, match="no usable NVIDIA GPU"):
        loader.load(0, backend)


def test_import_does_not_touch_cuda() -> None:
    code = "import sys, kernels.warp, kernels.loader; assert 'cuda.core' not in sys.modules; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


@needs_nvcc
def test_no_kernel_spills_at_sm_90(tmp_path):
    """ptxas -v per kernel at sm_90 (H100/H200): no stack frame and no spills. interp_nhwc_f16_v8 and
    warp_nhwc_f16_v8 spilled 16 and 8 bytes before the vector unpacking and launch bounds were changed."""
    cmd = [build.find_nvcc(), *build.NVCC_FLAGS, "-arch=sm_90", "-cubin", "-Xptxas", "-v"]
    proc = subprocess.run([*cmd, str(build.SOURCE), "-o", str(tmp_path / "w.cubin")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    pattern = r"Function properties for (\w+)\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores"
    report = re.findall(pattern, proc.stderr)
    names = {name for name, _, _ in report}
    assert {"warp_nhwc_f16_v8", "interp_nhwc_f16_v8", "warp_nchw_f32"} <= names and len(names) == 12
    assert [(n, int(s), int(sp)) for n, s, sp in report if int(s) or int(sp)] == []


def test_check_reads_a_carried_fatbin_without_nvcc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """``--check`` (what the GPU plan runs instead of a rebuild) needs no nvcc: it accepts a fatbin built from this
    warp.cu with code for the asked SM and names what is wrong otherwise (missing, stale, no code for the SM)."""
    src = tmp_path / "warp.cu"
    src.write_text("// stand-in source\n")
    out = tmp_path / "warp.fatbin"
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    with pytest.raises(build.BuildError, match="is missing"):
        build.check(90, out, src)
    header = struct.pack("<IHHQ", build.FATBIN_MAGIC, 1, 16, 64)
    entry = lambda kind, arch: struct.pack("<HHIQ", kind, 0, 32, 0) + bytes(12) + struct.pack("<I", arch)  # noqa: E731
    out.write_bytes(header + entry(build.KIND_ELF, 80) + entry(build.KIND_PTX, 90))
    stamp = out.with_name(out.name + ".json")
    stamp.write_text(json.dumps({"source_sha256": "0" * 64}))
    with pytest.raises(build.BuildError, match="not built from this warp.cu"):
        build.check(90, out, src)
    stamp.write_text(json.dumps({"source_sha256": build.source_hash(src), "nvcc": "V13.0.88"}))
    assert "runs on sm_90 (sass:80, ptx:90; nvcc V13.0.88)" in build.check(90, out, src)
    with pytest.raises(build.BuildError, match="no code for sm_75"):
        build.check(75, out, src)
    monkeypatch.setattr(build, "SOURCE", src)
    assert build.main(["--check", "--arch", "75", "--out", str(out)]) == 1
    assert "no code for sm_75" in capsys.readouterr().err
