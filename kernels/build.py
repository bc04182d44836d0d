"""Compile kernels/warp.cu into a multi-architecture fatbin (``python -m kernels.build``, used by ``make kernels``).

Why a prebuilt fatbin: the kernels are loaded at run time with cuda-python (no compiler needed on the target), and
one fatbin carries SASS for every GPU generation we deploy to plus PTX for newer ones, so the driver never has to
JIT-compile on the hot path. The build is skipped when the source, the flags and the nvcc version are unchanged
(a stamp file next to the fatbin records their hash). Without nvcc we print one line and exit 0: CPU-only machines
never run the kernels.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
SOURCE = KERNEL_DIR / "warp.cu"
BUILD_DIR = KERNEL_DIR / "build"
FATBIN = BUILD_DIR / "warp.fatbin"
STAMP = BUILD_DIR / "warp.fatbin.json"

# SASS for Turing, Ampere (A100, consumer), Ada, Hopper; PTX of the newest so later GPUs can JIT.
SASS_ARCHS = (75, 80, 86, 89, 90)
PTX_ARCH = 90
NVCC_FLAGS = ("-O3", "-std=c++17", "-lineinfo")

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX, KIND_ELF = 1, 2


class BuildError(RuntimeError):
    """nvcc failed or produced something unusable."""


@dataclass(frozen=True)
class FatbinEntry:
    """One image inside a fatbin: kind is "sass" or "ptx", arch is e.g. 90 for sm_90/compute_90."""

    kind: str
    arch: int
    size: int


def parse_fatbin(data: bytes) -> list[FatbinEntry]:
    """List the images in a fatbin, so tests and the loader can check which architectures it covers.

    Layout (CUDA's fatbinary container): a 16-byte header (magic u32, version u16, header size u16, payload size
    u64), then entries, each with a header whose u16 at offset 0 is the kind (1 PTX, 2 ELF), u32 at 4 the header
    size, u64 at 8 the payload size and u32 at 28 the SM number.
    """
    if len(data) < 16:
        raise BuildError("fatbin is too short")
    magic, _version, header_size, payload_size = struct.unpack_from("<IHHQ", data, 0)
    if magic != FATBIN_MAGIC:
        raise BuildError(f"not a fatbin (magic {magic:#x}, expected {FATBIN_MAGIC:#x})")
    end = min(len(data), header_size + payload_size)
    entries, off = [], header_size
    while off + 32 <= end:
        kind, _, entry_header, entry_size = struct.unpack_from("<HHIQ", data, off)
        (arch,) = struct.unpack_from("<I", data, off + 28)
        if kind not in (KIND_PTX, KIND_ELF) or entry_header < 32:
            raise BuildError(f"unexpected fatbin entry kind {kind} at offset {off}")
        entries.append(FatbinEntry("ptx" if kind == KIND_PTX else "sass", arch, entry_size))
        off += entry_header + entry_size
    return entries


def find_nvcc() -> str | None:
    """nvcc from $CUDA_HOME/bin, then PATH."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").is_file():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def supported_archs(nvcc: str) -> set[int]:
    """Virtual architectures this nvcc accepts (``--list-gpu-arch``), e.g. {75, 80, ...}."""
    out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=False).stdout
    return {int(tok.split("_")[1]) for tok in out.split() if tok.startswith("compute_") and tok[8:].isdigit()}


def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
    return out.strip().splitlines()[-1] if out.strip() else "unknown"


def gencode_flags(sass: tuple[int, ...], ptx: int | None) -> list[str]:
    """-gencode pairs: SASS for each arch; the PTX arch also embeds compute_XX for JIT on newer GPUs."""
    flags = []
    for arch in sass:
        codes = f"[sm_{arch},compute_{arch}]" if arch == ptx else f"sm_{arch}"
        flags.append(f"-gencode=arch=compute_{arch},code={codes}")
    if ptx is not None and ptx not in sass:
        flags.append(f"-gencode=arch=compute_{ptx},code=compute_{ptx}")
    return flags


def up_to_date(out: Path, key: str, quiet: bool) -> bool:
    """``out`` exists and its stamp records ``key`` (same source, flags and compiler): nothing to build."""
    if out.is_file() and read_stamp(out.with_name(out.name + ".json")).get("key") == key:
        if not quiet:
            print(f"kernels.build: {out} is up to date")
        return True
    return False


def build_key(source: Path, flags: list[str], version: str) -> str:
    """Hash of everything that changes the output: the source bytes, the flags, the compiler version."""
    h = hashlib.sha256(source.read_bytes())
    h.update("\0".join(flags).encode())
    h.update(version.encode())
    return h.hexdigest()


def source_hash(source: Path = SOURCE) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def read_stamp(stamp: Path = STAMP) -> dict:
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return {}


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def compile_fatbin(nvcc: str, source: Path, flags: list[str]) -> bytes:
    """Run nvcc into a temporary file and return the fatbin bytes (raise BuildError with nvcc's stderr)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.fatbin"
        cmd = [nvcc, "-fatbin", *flags, str(source), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BuildError(f"nvcc failed ({proc.returncode}):\n{proc.stderr.strip()}")
        return out.read_bytes()


def build(force: bool = False, out: Path = FATBIN, source: Path = SOURCE, quiet: bool = False) -> Path | None:
    """Build the fatbin if stale; return its path, or None when nvcc is not installed."""
    nvcc = find_nvcc()
    if nvcc is None:
        return None
    available = supported_archs(nvcc)
    sass = tuple(a for a in SASS_ARCHS if a in available)
    dropped = sorted(set(SASS_ARCHS) - set(sass))
    if dropped and not quiet:
        print(f"kernels.build: this nvcc lacks sm_{', sm_'.join(map(str, dropped))}; skipping them", file=sys.stderr)
    ptx = PTX_ARCH if PTX_ARCH in available else (max(sass) if sass else None)
    flags = [*NVCC_FLAGS, *gencode_flags(sass, ptx)]
    version = nvcc_version(nvcc)
    key = build_key(source, flags, version)
    stamp = out.with_name(out.name + ".json")
    if not force and up_to_date(out, key, quiet):
        return out
    t0 = time.perf_counter()
    data = compile_fatbin(nvcc, source, flags)
    seconds = time.perf_counter() - t0
    entries = parse_fatbin(data)
    _write_atomic(out, data)
    info = {
        "key": key,
        "source_sha256": source_hash(source),
        "nvcc": version,
        "flags": flags,
        "images": [f"{e.kind}:{e.arch}" for e in entries],
        "build_seconds": round(seconds, 2),
    }
    _write_atomic(stamp, (json.dumps(info, indent=2) + "\n").encode())
    if not quiet:
        images = ", ".join(info["images"])
        print(f"kernels.build: wrote {out} ({len(data)} bytes, {images}) in {seconds:.1f} s")
    return out


HOST_SOURCE = KERNEL_DIR / "mvhost.c"
HOST_LIB = BUILD_DIR / "libmvhost.so"
# -ffp-contract=off: no fused multiply-adds, so the C field rounds exactly as its numpy twin does; -O3: gcc 12
# vectorises the field fit's row loops only there (SSE2 divisions round as the scalar ones do: same results)
HOST_FLAGS = ("-O3", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off")


def find_cc() -> str | None:
    """The C compiler for the host library: $CC, then cc, then gcc."""
    cc = os.environ.get("CC")
    return shutil.which(cc) if cc else shutil.which("cc") or shutil.which("gcc")


def build_host(
    force: bool = False, out: Path = HOST_LIB, source: Path = HOST_SOURCE, quiet: bool = False
) -> Path | None:
    """Build the host C library (``kernels/mvhost.c``, the motion-vector field) if stale; None without a C compiler
    (the runtime then keeps its numpy code)."""
    cc = find_cc()
    if cc is None:
        return None
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    flags = list(HOST_FLAGS)
    key = build_key(source, flags, version.strip().splitlines()[0] if version.strip() else "unknown")
    stamp = out.with_name(out.name + ".json")
    if not force and up_to_date(out, key, quiet):
        return out
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_out = Path(tmp) / out.name
        proc = subprocess.run(
            [cc, *flags, str(source), "-o", str(tmp_out), "-lm"], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise BuildError(f"{Path(cc).name} failed ({proc.returncode}):\n{proc.stderr.strip()}")
        _write_atomic(out, tmp_out.read_bytes())
    info = {"key": key, "source_sha256": source_hash(source), "cc": cc, "flags": flags}
    _write_atomic(stamp, (json.dumps(info, indent=2) + "\n").encode())
    if not quiet:
        print(f"kernels.build: wrote {out} in {time.perf_counter() - t0:.1f} s")
    return out


def arch_problem(data: bytes, major: int, minor: int) -> str | None:
    """None when the fatbin runs on an sm_<major><minor> GPU (SASS of the same major at or below it, or PTX at or
    below it to JIT), else one line with what it has."""
    cc = major * 10 + minor
    entries = parse_fatbin(data)
    if any(e.kind == "sass" and e.arch // 10 == major and e.arch <= cc for e in entries):
        return None
    if any(e.kind == "ptx" and e.arch <= cc for e in entries):
        return None
    have = ", ".join(f"{e.kind}:{e.arch}" for e in entries)
    return f"warp.fatbin has no code for sm_{cc} (it has {have}); rebuild with kernels/build.py"


def check(arch: int = PTX_ARCH, out: Path = FATBIN, source: Path | None = None) -> str:
    """Check a prebuilt (carried) fatbin without nvcc: it exists, was built from this ``warp.cu`` and has code for
    sm_<arch>. Returns a one-line summary; raises BuildError with one line otherwise. Why: the GPU machines get the
    fatbin built here; rebuilding there would cost their minutes (and their nvcc's version string differs from ours,
    which ``build`` would read as stale)."""
    source = source or SOURCE

    if not out.is_file():
        raise BuildError(f"{out} is missing: run `python -m kernels.build` where nvcc is, then carry kernels/build")
    stamp = read_stamp(out.with_name(out.name + ".json"))
    if stamp.get("source_sha256") != source_hash(source):
        raise BuildError(f"{out} was not built from this {source.name} (stamp missing or stale): rebuild it")
    data = out.read_bytes()
    problem = arch_problem(data, arch // 10, arch % 10)
    if problem:
        raise BuildError(problem)
    images = ", ".join(f"{e.kind}:{e.arch}" for e in parse_fatbin(data))
    return f"kernels.build: {out} is current and runs on sm_{arch} ({images}; nvcc {stamp.get('nvcc', '?')})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kernels.build",
        description="Compile kernels/warp.cu to kernels/build/warp.fatbin (SASS sm_75..sm_90 + PTX compute_90) and "
        "kernels/mvhost.c to kernels/build/libmvhost.so (the motion-vector field's host code). "
        "Skips the build when nothing changed; exits 0 with a message when nvcc is not installed.",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the stamp says it is up to date")
    parser.add_argument("--out", type=Path, default=FATBIN, help=f"output fatbin (default {FATBIN})")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    parser.add_argument(
        "--check", action="store_true", help="build nothing: check that the fatbin is current and runs on --arch"
    )
    parser.add_argument(
        "--arch", type=int, default=PTX_ARCH, help=f"with --check: the SM, e.g. 90 (default {PTX_ARCH})"
    )
    args = parser.parse_args(argv)
    if args.check:
        try:
            print(check(args.arch, args.out))
        except (BuildError, OSError) as exc:
            print(f"kernels.build: error: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        path = build(force=args.force, out=args.out, quiet=args.quiet)
        host = build_host(force=args.force, quiet=args.quiet)
    except (BuildError, OSError) as exc:
        print(f"kernels.build: error: {exc}", file=sys.stderr)
        return 1
    if path is None:
        print("kernels.build: nvcc not found (set CUDA_HOME or PATH); skipping the CUDA kernel build", file=sys.stderr)
    if host is None:
        print("kernels.build: no C compiler (cc, gcc or $CC); the motion-vector field stays in numpy", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
