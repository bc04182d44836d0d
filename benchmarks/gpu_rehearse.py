"""Rehearse the GPU plan here (``python -m benchmarks.gpu_check --rehearse``), in an environment made like the device's.

Why: a lent GPU machine gives a session 15 minutes, its start included, and one call of the plan; a plan that stops
at collection (a test module importing PyAV, which the machine lacks), an install that reaches for a network it
does not have, or a step whose module does not import there would spend them all. The rehearsal proves, in about a
minute and without a GPU, everything that does not need one:

- a fresh virtual environment (no system site-packages) that sees only the distributions of this environment that
  the device image also has (``DEVICE_PACKAGES``, its package list as read on 2026-11-17): no PyAV, no Ray, no
  deqstream install (the steps run from the checkout, as there); torch is this machine's, without CUDA; pip
  has no index and no network (a dead proxy);
- collection of every pytest step of both plans with PyAV absent: no errors, and how many tests each would run;
- the carried wheels: each one's tags accept the device's CPython 3.12 on manylinux x86_64, and the real ``wheels``
  step installs them from ``.whl/`` alone;
- then every step of the plan in order, as the device would run it, each judged by what a machine without a GPU can
  show: the environment is recorded, the carried fatbin is checked, the GPU tests are collected and skip only for
  want of a GPU ("would run N"), the measuring modules import and parse their arguments ("would run");
- the plan's limits against its budget, the carried paths present, what travels under the tool's 64 MiB.

The rehearsal runs on this machine's Python (the device's is 3.12): this environment's compiled packages are what
it can borrow; the wheel tags are checked for 3.12 separately.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from benchmarks.gpu_steps import PY, ROOT, Outcome, Step, junit_counts, load_json, prepare_work, run_step
from benchmarks.plots import write_json, write_text

DEVICE_PYTHON = (3, 12)
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64")
DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens there: any network use fails at once
GPU_SKIP = "needs an NVIDIA GPU"
# The device image's Python packages (device notes, KINDS.md, read on 2026-11-17); names as pip normalises them.
DEVICE_PACKAGES = frozenset(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
    charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
    jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
    llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
    multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
    nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
    nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
    nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
    patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
    py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
    pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
    safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
    setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
    tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
    torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
    typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
    zipp""".split()
)


@dataclass
class Check:
    """One row of the rehearsal: what was checked, whether it holds, and what the device would do."""

    name: str
    ok: bool
    result: str
    device: str = ""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------- the device-like environment
def device_view(view: Path, keep: frozenset[str] = DEVICE_PACKAGES) -> list[str]:
    """A folder of links to this environment's installed distributions that the device also has (their top-level
    packages, modules and metadata). Returns the names linked."""
    view.mkdir(parents=True)
    linked = []
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"] or "")
        if name not in keep or not dist.files:
            continue
        tops = {f.parts[0] for f in dist.files if f.parts and f.parts[0] not in ("..", "__pycache__")}
        for top in tops:
            src, dst = Path(dist.locate_file(top)), view / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src)
        linked.append(name)
    return sorted(set(linked))


def make_device_env(folder: Path) -> tuple[Path, list[str]]:
    """A fresh virtual environment (no system site-packages, no pip of its own) whose only packages are the
    device view's; returns its python and the distributions it sees."""
    venv, view = folder / "venv", folder / "view"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    linked = device_view(view)
    py = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # addsitedir (not a bare path) so that the view's own .pth files are read, as in a real site-packages
    Path(purelib, "device_view.pth").write_text(f"import site; site.addsitedir({str(view)!r})\n")
    return py, linked


def device_env(site: Path) -> dict[str, str]:
    """The steps' environment in the rehearsal: nothing from this one's paths, no index, no network, the carried
    wheels' folder set for ``gpu_check`` (and on the path once it exists, as ``child_env`` does there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env.pop("CONDA_PREFIX", None)
    env |= {"PYTHONUNBUFFERED": "1", "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env |= {k: DEAD_PROXY for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
    env |= {"no_proxy": "", "NO_PROXY": "", "DEQSTREAM_GPU_SITE": str(site)}
    if site.is_dir():
        env["PYTHONPATH"] = str(site)
    return env


# --------------------------------------------------------------------------- checks
def wheel_fits_device(name: str) -> bool:
    """Whether a wheel file name's tags accept CPython 3.12 on one of the device's platforms (abi3 and pure-Python
    wheels included)."""
    from packaging.tags import compatible_tags, cpython_tags
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    accepted = set(cpython_tags(DEVICE_PYTHON, platforms=DEVICE_PLATFORMS))
    accepted |= set(compatible_tags(DEVICE_PYTHON, "cp312", DEVICE_PLATFORMS))
    try:
        tags = parse_wheel_filename(name)[3]
    except InvalidWheelFilename:
        return False
    return bool(set(tags) & accepted)


def check_wheels(wheels: Path) -> Check:
    found = sorted(p.name for p in wheels.glob("*.whl"))
    if not found:
        return Check("carried wheels", False, f"no wheels in {wheels.name}/ (make gpu-wheels)")
    bad = [n for n in found if not wheel_fits_device(n)]
    if bad:
        return Check("carried wheels", False, f"not for CPython 3.12 manylinux x86_64: {', '.join(bad)}")
    names = [canonical(n.split("-")[0]) for n in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return Check("carried wheels", False, f"two versions of {', '.join(twice)} (the install would stop)")
    return Check("carried wheels", True, f"{', '.join(found)}: tags fit CPython 3.12 manylinux x86_64")


def collect(py: Path, env: dict[str, str], marker: str, paths: list[str]) -> tuple[int, str]:
    """``pytest --collect-only`` of a step's selection: (tests collected, problem or "")."""
    argv = [str(py), "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", marker, *paths]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    m = re.search(r"(\d+)(?:/\d+)? tests? collected", tail[0])
    errors = re.search(r"(\d+) errors?", tail[0])
    if proc.returncode not in (0, 5) or errors or not m:
        return (int(m.group(1)) if m else 0), f"collection failed: {tail[0] or proc.stderr.strip()[-200:]}"
    return int(m.group(1)), ""


def collect_check(
    py: Path, env: dict[str, str], name: str, plan: str, marker: str, paths: list[str]
) -> tuple[Check, tuple[int, int]]:
    """Collection of one pytest step with PyAV absent, and how many of its tests need TensorRT (which the device
    lacks: they skip there too)."""
    n, problem = collect(py, env, marker, paths)
    text, trt = problem or f"{n} tests, 0 errors (PyAV absent)", 0
    if not problem and "tensorrt" in marker:
        trt, _ = collect(py, env, f"({marker}) and tensorrt", paths)
        text += f"; {trt} of them need TensorRT (skipped there: not installed)"
    return Check(f"collect {name}", not problem, text, f"plan {plan}"), (n, trt)


def _pytest_parts(step: Step) -> tuple[str, list[str]] | None:
    argv = list(step.argv)
    if "pytest" not in argv:
        return None
    marker = argv[argv.index("-m", argv.index("pytest") + 1) + 1]
    return marker, [a for a in argv if a.startswith("tests")]


def judge(step: Step, res: Outcome, work: Path, site: Path, collected: tuple[int, int] | None = None) -> Check:
    """What the step's rehearsal run shows, and what it would do on the device. ``collected``: the step's tests as
    collected with PyAV absent, and how many of them skip there for want of TensorRT (junit also counts modules
    skipped whole, e.g. for want of Ray)."""
    dev = f"runs ({step.timeout_s} s limit)"
    if step.name == "wheels":
        ok = res.status == "passed" and site.is_dir()
        return Check(step.name, ok, "installed from .whl/ alone; PyAV imports" if ok else _fail(res), dev)
    if step.name == "environment":
        env = load_json(work / "environment.json")
        ok = bool(env) and (res.rc == 0 or not env.get("gpu"))
        text = f"recorded (torch {env.get('torch')}, PyAV {env.get('pyav')}, GPU {env.get('gpu')})" if env else ""
        return Check(step.name, ok, text or _fail(res), "records the GPU and versions")
    if step.name == "kernels":
        if res.status == "passed":
            return Check(step.name, True, "carried fatbin is current, has sm_90 code", "checks it, no rebuild")
        ok = not _has_nvcc()  # without nvcc here the fatbin cannot be prepared here: say so, not a failure
        why = "not prepared: no nvcc here to build the fatbin" if ok else _fail(res)
        return Check(step.name, ok, why, "needs kernels/build carried from a machine with nvcc")
    counts = junit_counts(work / f"{step.name}.xml")
    if counts is not None:
        n = sum(counts.values())
        ok = counts["failed"] == 0 and res.rc in (0, None) and n > 0
        here = f"{counts['passed']} passed, {counts['skipped']} skipped, {counts['failed']} failed"
        other = sorted(set(skip_reasons(work / f"{step.name}.xml")) - {GPU_SKIP})
        here += f" (other skips: {'; '.join(other)})" if other else ""
        total, trt = collected or (n, 0)
        there = f"would run {total - trt} tests" + (f" ({trt} more skip: no TensorRT)" if trt else "")
        return Check(step.name, ok, here if ok else f"{here}; {_fail(res)}", there)
    ok = res.status == "passed"
    return Check(step.name, ok, "imports and parses its arguments" if ok else _fail(res), "would run" if ok else "")


def skip_reasons(path: Path) -> list[str]:
    """Each skipped test's reason in a junit file, the GPU skip shortened to ``GPU_SKIP`` (a module skipped whole
    gives its module's reason)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return []
    out = []
    for case in root.iter("testcase"):
        for skip in case.iter("skipped"):
            text = skip.get("message", "")
            if text == "collection skipped":
                text = (skip.text or "").rsplit("Skipped: ", 1)[-1].removesuffix(")")  # the repr of (path, line, why)
                text = text[:-1] if text[-1:] in ("'", '"') else text
            out.append(GPU_SKIP if GPU_SKIP in text else text[:120])
    return out


def _fail(res: Outcome) -> str:
    return f"{res.status}" + (f" (exit {res.rc})" if res.rc is not None else "") + " -- see log.txt"


def _has_nvcc() -> bool:
    from kernels.build import find_nvcc

    return find_nvcc() is not None


def rehearsal_step(step: Step, py: Path) -> Step:
    """The step as the device runs it, with the rehearsal's python; measuring modules only parse (``--help``)."""
    argv = [str(py) if a == PY else a for a in step.argv]
    if step.name in ("warp-bandwidth", "aoti-speed-point", "fps-small-seg"):
        argv.append("--help")
    return Step(step.name, tuple(argv), step.timeout_s, step.why)


# --------------------------------------------------------------------------- the rehearsal
def rehearse(
    steps: Sequence[Step],
    out: Path,
    budget_s: float,
    plans: dict[str, Sequence[Step]],
    wheels: Path,
    travel: Callable[[], tuple[str, bool, list[str]]],
    say: Callable[[str], None] = print,
) -> int:
    """Run ``steps`` here as the device would; write ``out``/rehearsal.md and .json; 0 when every check holds.
    ``plans`` (every pytest step of each is collected), ``wheels`` (the carried folder) and ``travel`` (what the call
    sends) come from ``benchmarks.gpu_check``."""
    t0 = time.monotonic()
    marker = out / ".gpu_rehearse"
    if out.exists() and any(out.iterdir()) and not marker.exists():
        raise SystemExit(f"error: {out} is not empty and was not made by the rehearsal; choose another --out")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    marker.write_text("made by benchmarks.gpu_rehearse; emptied at the start of each rehearsal\n")
    site, work, log = out / "site", out / "work", out / "log.txt"
    log.write_text("")
    checks: list[Check] = []
    py, linked = make_device_env(out / "env")
    env = device_env(site)
    say(f"gpu_rehearse: device-like environment {py} ({len(linked)} distributions of the device's list)")
    torch_cuda = _probe(py, env, "import torch; print(torch.__version__, torch.cuda.is_available())")
    checks.append(Check("environment made", "torch" in linked, f"{len(linked)} distributions; torch {torch_cuda}"))
    no_av = _probe(py, env, "import av") is None
    checks.append(Check("PyAV absent", no_av, "import av fails, as on the device" if no_av else "PyAV imports!"))
    collected: dict[str, tuple[int, int]] = {}  # step -> (tests collected, of which need TensorRT)
    for plan, plan_steps in plans.items():
        for s in plan_steps:
            parts = _pytest_parts(s)
            if parts:
                check, collected[s.name] = collect_check(py, env, s.name, plan, *parts)
                checks.append(check)
    checks.append(check_wheels(wheels))
    prepare_work(work)
    for step in steps:
        res = run_step(rehearsal_step(step, py), work, log, step.timeout_s, env=device_env(site))
        checks.append(judge(step, res, work, site, collected.get(step.name)))
        say(f"gpu_rehearse: {step.name}: {checks[-1].result}")
    total = sum(s.timeout_s for s in steps)
    checks.append(Check("budget", total <= budget_s, f"limits sum to {total} s of {budget_s:.0f} s"))
    travel, fits, missing = travel()
    unprepared = [m for m in missing if not (m == "kernels/build" and not _has_nvcc())]  # see judge: kernels
    checks.append(Check("travel", fits and not unprepared, travel.removeprefix("travels: ")))
    return report(checks, out, say, time.monotonic() - t0)


def _probe(py: Path, env: dict[str, str], code: str) -> str | None:
    proc = subprocess.run([str(py), "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return proc.stdout.strip() if proc.returncode == 0 else None


def report(checks: list[Check], out: Path, say: Callable[[str], None], seconds: float) -> int:
    lines = [
        "# GPU plan rehearsal",
        "",
        f"`python -m benchmarks.gpu_check --rehearse` on Python {sysconfig.get_python_version()} (device: 3.12), "
        f"no GPU, no network, PyAV only from the carried wheels; {seconds:.0f} s. Step output: log.txt.",
        "",
        "| check | ok | here | on the device |",
        "|---|---|---|---|",
    ]
    lines += [f"| {c.name} | {'yes' if c.ok else 'NO'} | {c.result} | {c.device} |" for c in checks]
    text = "\n".join(lines) + "\n"
    write_text(out / "rehearsal.md", text)
    write_json(out / "rehearsal.json", {"checks": [c.__dict__ for c in checks]})
    say(text)
    failed = [c.name for c in checks if not c.ok]
    say(f"gpu_rehearse: {'FAILED: ' + ', '.join(failed) if failed else 'every check holds'} ({out})")
    return 1 if failed else 0


__all__ = ["DEVICE_PACKAGES", "Check", "device_view", "rehearse", "wheel_fits_device"]
