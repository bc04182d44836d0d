"""benchmarks.gpu_check: time-boxed steps, results brought back after every step, and the readers of what they wrote.

The steps themselves need a GPU; here they are stand-in commands, and the junit reader is checked against a real
pytest run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from benchmarks import gpu_check
from benchmarks.gpu_check import Outcome, Step

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]
WRITE = "import sys; open(sys.argv[1], 'w').write('x'); print('hello')"


def test_steps_run_in_order_within_the_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 0.5)
    steps = [
        Step("writes", (PY, "-c", WRITE, "{work}/a.txt"), 30, "a"),
        Step("fails", (PY, "-c", "raise SystemExit(3)"), 30, "b"),
        Step("hangs", (PY, "-c", "import time; time.sleep(60)"), 60, "c"),
        Step("late", (PY, "-c", "pass"), 30, "d"),
    ]  # fmt: skip
    out, work = tmp_path / "out", tmp_path / "work"
    t0 = time.monotonic()
    said: list[str] = []
    got = gpu_check.run_all(steps, out, work, budget_s=4.0, say=said.append)
    assert time.monotonic() - t0 < 15  # the hanging step was cut at the budget, not at its 60 s
    assert [(o.name, o.status) for o in got] == [
        ("writes", "passed"), ("fails", "failed"), ("hangs", "timed out"), ("late", "not run")]  # fmt: skip
    assert got[1].rc == 3
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "results.tar.gz", "summary.json", "summary.md"]
    log = (out / "log.txt").read_text()
    assert "hello" in log and "===== fails: exit 3" in log and "hangs: timed out" in log
    with tarfile.open(out / "results.tar.gz") as tar:
        assert tar.getnames() == ["a.txt"]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["passed", "failed", "timed out", "not run"]
    md = (out / "summary.md").read_text()
    assert "| late | not run |" in md and "budget spent" in md
    assert any("hangs timed out" in line for line in said)


def test_a_missing_program_is_a_failed_step_not_a_crash(tmp_path):
    got = gpu_check.run_all([Step("nope", ("no-such-program-xyz",), 5, "")], tmp_path / "o", tmp_path / "w", 30)
    assert got[0].status == "failed" and got[0].headline.startswith("cannot start")


def test_junit_counts_read_a_real_pytest_run(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "def test_a(): pass\n"
        "def test_b(): pass\n"
        "def test_c(): assert False\n"
        "@pytest.mark.skip(reason='no')\n"
        "def test_d(): pass\n"
    )
    xml = tmp_path / "r.xml"
    subprocess.run(
        [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_x.py"), f"--junitxml={xml}"],
        cwd=tmp_path,
        capture_output=True,
    )
    assert gpu_check.junit_counts(xml) == {"passed": 2, "failed": 1, "skipped": 1}
    assert gpu_check.junit_counts(tmp_path / "missing.xml") is None


def test_all_skipped_tests_are_not_a_pass(tmp_path):
    suite = '<testsuite tests="3" failures="0" errors="0" skipped="3"/>'
    (tmp_path / "t.xml").write_text(f"<testsuites>{suite}</testsuites>")
    res = Outcome("t", "passed", rc=0)
    gpu_check.headline(res, tmp_path)
    assert res.status == "skipped" and res.headline == "0 passed, 0 failed, 3 skipped"


def test_result_readers(tmp_path):
    res = Outcome("warp-bandwidth", "passed", rc=0)
    gpu_check.headline(res, tmp_path)
    assert res.status == "no results"
    rows = [
        {"op": "warp", "dtype": "fp32", "fraction_of_copy": 0.55},
        {"op": "warp", "dtype": "fp32", "fraction_of_copy": 0.71},
        {"op": "interp", "dtype": "fp32", "fraction_of_copy": 0.99},
        {"op": "warp", "dtype": "fp16", "fraction_of_copy": 0.62},
    ]
    (tmp_path / "warp_bandwidth.json").write_text(json.dumps({"results": rows}))
    res = Outcome("warp-bandwidth", "passed", rc=0)
    gpu_check.headline(res, tmp_path)
    assert res.status == "passed"
    assert res.headline == "warp fp16 62% of copy (PASS), warp fp32 71% of copy (PASS)"
    (tmp_path / "fps").mkdir()
    check = {"case": "small-seg 1024x2048 fp16", "backend": "aoti", "check": "x", "value": 1.5, "limit": "<= 2"}
    acc = [{**check, "pass": True}, {**check, "value": 2.5, "pass": False}]
    (tmp_path / "fps" / "fps_h200.json").write_text(json.dumps({"acceptance": acc}))
    res = Outcome("fps-small-seg", "timed out")
    gpu_check.headline(res, tmp_path)
    assert res.headline == "timed out; aoti x = 1.5 (<= 2: PASS); aoti x = 2.5 (<= 2: FAIL)"


def test_cli_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--steps", "kernels,magic"])
    assert "unknown step(s) magic" in capsys.readouterr().err
    for out, work in (("w/o", "w"), ("o", "o/w")):
        with pytest.raises(SystemExit):
            gpu_check.main(["--out", str(tmp_path / out), "--work", str(tmp_path / work)])
        assert "must not lie inside each other" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.main(["--help"])
    assert "fps-small-seg" in capsys.readouterr().out


def test_install_wheels_without_wheels_checks_pyav(tmp_path, capfd):
    assert gpu_check.install_wheels(tmp_path / "none", tmp_path / "site") == 0  # PyAV is installed here
    out = capfd.readouterr().out
    assert "no wheels in" in out and "PyAV" in out
    assert not (tmp_path / "site").exists()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state


SPAWN = (
    "import subprocess, sys, time; p = subprocess.Popen(['sleep', '60']); "
    "open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(60)"
)


def test_a_timeout_kills_the_steps_children_too(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 0.5)
    step = Step("spawns", (PY, "-c", SPAWN, "{work}/pid"), 2, "")
    got = gpu_check.run_all([step], tmp_path / "o", tmp_path / "w", budget_s=30)
    assert got[0].status == "timed out"
    pid = int((tmp_path / "w" / "pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)


def test_a_new_run_starts_from_an_empty_work_folder(tmp_path, monkeypatch):
    work, out = tmp_path / "w", tmp_path / "o"
    gpu_check.run_all([Step("a", (PY, "-c", WRITE, "{work}/old.txt"), 30, "")], out, work, 30)
    (work / ".fps.json.x1.tmp.json").write_text("{")  # what a killed atomic writer leaves
    gpu_check.run_all([Step("b", (PY, "-c", WRITE, "{work}/new.txt"), 30, "")], out, work, 30)
    assert sorted(p.name for p in work.iterdir()) == [".gpu_check", "new.txt"]
    (work / ".half.json.x2.tmp.json").write_text("{")
    gpu_check.write_outputs([], [], out, work, 30)
    with tarfile.open(out / "results.tar.gz") as tar:
        assert tar.getnames() == ["new.txt"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(SystemExit, match="not made by gpu_check"):
        gpu_check.run_all([], out, foreign, 30)
    assert (foreign / "keep.txt").exists()


def test_failed_criteria_and_pytest_usage_errors_show(tmp_path):
    rows = [{"op": "warp", "dtype": "fp16", "fraction_of_copy": 0.41}]
    (tmp_path / "warp_bandwidth.json").write_text(json.dumps({"results": rows}))
    res = Outcome("warp-bandwidth", "passed", rc=0)
    gpu_check.headline(res, tmp_path)
    assert res.status == "criteria failed" and res.headline == "warp fp16 41% of copy (FAIL)"
    (tmp_path / "t.xml").write_text(
        '<testsuites><testsuite tests="0" failures="0" errors="0" skipped="0"/></testsuites>'
    )
    res = Outcome("t", "failed", rc=4)
    gpu_check.headline(res, tmp_path)
    assert res.headline.endswith("(pytest exit 4)")


def test_the_real_steps_name_valid_arguments():
    from benchmarks import fps, warp_bandwidth

    s = fps.settings_from_args(fps.build_parser().parse_args(gpu_check.FPS_ARGS))
    assert s.configs == ["small-seg"] and s.resolutions == [(1024, 2048)]
    assert s.pairs == [("eager", "fp32"), ("aoti", "fp16")] and not s.scale_batches
    a = warp_bandwidth.parse_args([])
    assert (a.channels, a.height, a.width) == (256, 256, 512)  # the #6 bandwidth case
    a = fps.settings_from_args(fps.build_parser().parse_args(gpu_check.SPEED_POINT_ARGS))
    assert a.configs == ["tiny"] and a.pairs == [("eager", "fp32"), ("aoti", "fp16")]
    for step in gpu_check.STEPS:
        if "pytest" in step.argv:
            paths = [p for p in step.argv if p.startswith("tests")]
            assert paths and all((ROOT / p).exists() for p in paths)
    for steps in gpu_check.PLANS.values():
        for step in steps:
            if "pytest" in step.argv:
                paths = [p for p in step.argv if p.startswith("tests")]
                assert paths and all((ROOT / p).exists() for p in paths), step.name


# The order #29 asks for: environment -> kernels vs grid_sample -> the runtime's GPU tests -> warp bandwidth -> one
# AOTInductor speed point, after the carried wheels; the fatbin is carried and only checked. Written out here,
# independently of the module.
MAIN_ORDER = ["wheels", "environment", "kernels", "kernel-tests", "runtime-gpu-tests", "warp-bandwidth",
              "aoti-speed-point"]  # fmt: skip


def test_plans_are_in_information_order_and_fit_their_budgets():
    assert [s.name for s in gpu_check.PLANS["main"]] == MAIN_ORDER
    assert [s.name for s in gpu_check.PLANS["speed"]][-2:] == ["fps-small-seg", "bench-gpu-tests"]
    assert gpu_check.BUDGETS == {"main": 420, "speed": 540, "tasks": 420} and gpu_check.DEFAULT_BUDGET_S == 420
    assert [s.name for s in gpu_check.PLANS["tasks"]][-3:] == ["export-det", "export-pose", "fps-tasks"]
    for name, steps in gpu_check.PLANS.items():
        assert sum(s.timeout_s for s in steps) <= gpu_check.BUDGETS[name], name
        assert gpu_check.BUDGETS[name] + gpu_check.CALL_MARGIN_S <= 600, name  # one device call (10 min at most)
        assert all(s.timeout_s >= gpu_check.MIN_STEP_S for s in steps), name
    main = {s.name: s for s in gpu_check.PLANS["main"]}
    assert "tests/runtime" in main["runtime-gpu-tests"].argv  # CUDA graphs == plain launches, no copy in the loop
    assert main["kernels"].argv[-3:] == ("--check", "--arch", "90")  # the carried fatbin, never rebuilt there
    assert "small-seg" not in " ".join(main["aoti-speed-point"].argv)  # the cold 1024x2048 compiles are plan speed


def test_plan_prints_steps_limits_and_the_device_call_without_running(tmp_path, capsys, monkeypatch):
    out = tmp_path / "never"
    assert gpu_check.main(["--plan", "--out", str(out), "--work", str(tmp_path / "w")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "plan main (budget 420 s):"
    end = next(i for i, line in enumerate(lines) if line.startswith("  total"))
    names = [line.split()[1] for line in lines[1:end]]
    limits = [int(line.split()[2]) for line in lines[1:end]]
    assert names == MAIN_ORDER
    assert lines[end].startswith(f"  total {sum(limits)} s of 420 s (fits)") and sum(limits) <= 420
    call = "\n".join(lines[end + 1 :])
    assert 'command:   python3 -m benchmarks.gpu_check --out "$OUT"\n' in call
    assert 'carry:     [".whl", "kernels/build"]' in call and "timeout_s: 480" in call
    assert "travels: working tree " in call and "of 67.1 MB" in call
    assert not out.exists() and not (tmp_path / "w").exists()
    assert gpu_check.main(["--plan", "--plan-name", "speed"]) == 0
    speed = capsys.readouterr().out
    assert "fps-small-seg" in speed and "kernel-tests" not in speed and "--plan-name speed" in speed
    assert "timeout_s: 600" in speed
    with pytest.raises(SystemExit):
        gpu_check.main(["--plan", "--steps", "fps-small-seg"])  # not a step of the main plan
    assert "unknown step(s) fps-small-seg in plan main" in capsys.readouterr().err


def test_travel_counts_the_tree_and_each_carried_path(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("/.whl/\n")
    (tmp_path / "a.txt").write_bytes(b"x" * 1000)
    (tmp_path / ".whl").mkdir()
    (tmp_path / ".whl" / "w.whl").write_bytes(b"y" * 3000)
    assert gpu_check.tree_bytes(tmp_path) == 1000 + len("/.whl/\n")
    text, fits, missing = gpu_check.travel_text(tmp_path, (".whl", "kernels/build"))
    assert fits and missing == ["kernels/build"] and ".whl 0.0 MB" in text and "kernels/build MISSING" in text
    monkeypatch.setattr(gpu_check, "TRAVEL_LIMIT_BYTES", 2000)
    text, fits, missing = gpu_check.travel_text(tmp_path, (".whl",))
    assert not fits and not missing and "OVER the limit" in text
    assert "NOT READY: missing kernels/build; what travels is over the limit" in gpu_check.call_text(
        "main", 420, tmp_path
    )


def test_speed_point_headline(tmp_path):
    (tmp_path / "fps_point").mkdir()
    rows = [
        {"backend": "eager", "precision": "fp32", "measure": "device", "mode": "stream", "iters": 1, "fps": 410.0},
        {"backend": "aoti", "precision": "fp16", "measure": "device", "mode": "stream", "iters": 1, "fps": 1234.5},
        {"backend": "aoti", "precision": "fp16", "measure": "e2e", "mode": "stream", "iters": 1, "fps": 900.0},
    ]
    (tmp_path / "fps_point" / "fps_h100.json").write_text(json.dumps({"rows": rows}))
    res = Outcome("aoti-speed-point", "passed", rc=0)
    gpu_check.headline(res, tmp_path)
    assert res.status == "passed" and res.headline == "eager fp32 k=1 410 fps, aoti fp16 k=1 1.23e+03 fps"


def test_task_plan_exports_the_shipped_task_checkpoints_and_measures_their_decoding():
    """Plan tasks: the committed det and pose checkpoints exported as .pt2 on the GPU, then the FPS benchmark on
    exactly those bundles, on CUDA; its CLI accepts the arguments."""
    from benchmarks import fps

    steps = {s.name: s for s in gpu_check.PLANS["tasks"]}
    for name, ckpt in (("export-det", "checkpoints/tiny_det.pt"), ("export-pose", "checkpoints/tiny_pose.pt")):
        argv = steps[name].argv
        assert argv[argv.index("--checkpoint") + 1] == ckpt and (ROOT / ckpt).is_file()
        assert argv[argv.index("--formats") + 1] == "pt2" and argv[argv.index("--device") + 1] == "cuda"
    argv = list(steps["fps-tasks"].argv)
    bundles = argv[argv.index("--engine") + 1 : argv.index("--engine") + 3]
    assert bundles == ["{work}/engines-det/deq_cell.pt2", "{work}/engines-pose/deq_cell.pt2"]
    a = fps.build_parser().parse_args(argv[argv.index("benchmarks.fps") + 1 :])
    assert a.device == "cuda" and len(a.engine) == 2


def test_decode_headline_reads_the_device_rows_of_each_task(tmp_path):
    (tmp_path / "fps_tasks").mkdir()
    rows = [
        {"task": "det", "backend": "aoti", "measure": "device", "mode": "stream", "k": 1, "latency_ms": 4.0,
         "head_decode_ms": 0.5},
        {"task": "det", "backend": "aoti", "measure": "e2e", "mode": "stream", "k": 1, "latency_ms": 9.0,
         "head_decode_ms": 0.6},
        {"task": "pose", "backend": "aoti", "measure": "device", "mode": "frame", "k": 20, "latency_ms": 30.0,
         "head_decode_ms": 0.2},
        {"task": "pose", "backend": "aoti", "measure": "device", "mode": "stream", "k": 1, "latency_ms": 3.0,
         "head_decode_ms": 0.125},
    ]  # fmt: skip
    (tmp_path / "fps_tasks" / "fps_h100_det_pose.json").write_text(json.dumps({"head_decode": rows}))
    res = Outcome("fps-tasks", "passed", rc=0)
    gpu_check.headline(res, tmp_path)
    assert res.headline == "det aoti k=1 4 ms, decode 0.5 ms, pose aoti k=1 3 ms, decode 0.125 ms"
    empty = Outcome("fps-tasks", "passed", rc=0)
    gpu_check.headline(empty, tmp_path / "nothing")
    assert empty.status == "no results"


def test_runs_as_a_module_without_make():
    proc = subprocess.run(
        [PY, "-m", "benchmarks.gpu_check", "--plan"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "total" in proc.stdout


def test_environment_step_record_and_summary(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 0.5)
    env = {"gpu": "NVIDIA H200", "driver": "580.1", "torch": "2.11.0", "cuda_core": "0.4", "pyav": "16.0"}
    write = f"import json, sys; json.dump({env!r}, open(sys.argv[1], 'w'))"
    step = Step("environment", (PY, "-c", write, "{work}/environment.json"), 30, "env")
    got = gpu_check.run_all([step], tmp_path / "o", tmp_path / "w", 30, plan="speed")
    assert got[0].headline.startswith("NVIDIA H200, driver 580.1, torch 2.11.0, cuda-runtime None, cuda-core 0.4")
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["plan"] == "speed" and summary["environment"]["gpu"] == "NVIDIA H200"
    assert summary["planned"] == [{"name": "environment", "timeout_s": 30, "why": "env"}]
    assert summary["started"].endswith("Z")


def test_record_environment_here(tmp_path, capfd):
    """The real environment step on this machine: versions recorded; no GPU -> exit 1 (later steps will skip)."""
    import torch

    path = tmp_path / "env" / "environment.json"
    rc = gpu_check.record_environment(path)
    env = json.loads(path.read_text())
    assert env["torch"] == torch.__version__ and {"cuda_core", "cuda_bindings", "pyav", "tensorrt"} <= set(env)
    assert rc == (0 if torch.cuda.is_available() else 1) and (env["gpu"] is None) == (rc == 1)
    text, details = gpu_check.environment_headline(path)
    assert text.startswith(("no GPU", str(env["gpu"]))) and details["environment"] == env


# --------------------------------------------------------------------------- the rehearsal (benchmarks.gpu_rehearse)
def test_device_view_links_only_the_devices_distributions(tmp_path):
    from benchmarks import gpu_rehearse

    linked = gpu_rehearse.device_view(tmp_path / "view", keep=frozenset({"numpy"}))
    assert linked == ["numpy"]
    names = {p.name for p in (tmp_path / "view").iterdir()}
    assert "numpy" in names and any(n.startswith("numpy-") and n.endswith(".dist-info") for n in names)
    assert not names & {"torch", "av", "ray"}
    assert all((tmp_path / "view" / n).is_symlink() for n in names)
    # the device image's list: PyAV and Ray are what it lacks, torch and ONNX Runtime (CPU) are there
    assert {"torch", "onnxruntime", "pytest", "cuda-core", "pip"} <= gpu_rehearse.DEVICE_PACKAGES
    assert not {"av", "ray", "tensorrt", "onnxruntime-gpu", "deqstream"} & gpu_rehearse.DEVICE_PACKAGES


@pytest.mark.parametrize(
    "name, fits",
    [
        ("av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl", True),  # abi3 from 3.11 on: fine on 3.12
        ("av-18.1.0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
        ("x-1.0-py3-none-any.whl", True),
        ("x-1.0-cp311-cp311-manylinux_2_28_x86_64.whl", False),  # this machine's Python, not the device's
        ("x-1.0-cp312-cp312-macosx_11_0_arm64.whl", False),
        ("x-1.0-cp313-abi3-manylinux_2_28_x86_64.whl", False),
        ("not-a-wheel.whl", False),
    ],
)
def test_carried_wheels_must_fit_the_devices_python(name, fits):
    from benchmarks.gpu_rehearse import wheel_fits_device

    assert wheel_fits_device(name) is fits


def test_check_wheels_names_what_would_stop_the_install(tmp_path):
    from benchmarks.gpu_rehearse import check_wheels

    assert not check_wheels(tmp_path).ok and "make gpu-wheels" in check_wheels(tmp_path).result
    (tmp_path / "av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl").write_bytes(b"")
    assert check_wheels(tmp_path).ok
    (tmp_path / "av-17.0.0-cp311-abi3-manylinux_2_28_x86_64.whl").write_bytes(b"")
    got = check_wheels(tmp_path)
    assert not got.ok and "two versions of av" in got.result
    (tmp_path / "av-17.0.0-cp311-abi3-manylinux_2_28_x86_64.whl").unlink()
    (tmp_path / "x-1.0-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    got = check_wheels(tmp_path)
    assert not got.ok and "x-1.0-cp311-cp311" in got.result


def test_collect_counts_tests_and_catches_a_module_level_import(tmp_path):
    """The rehearsal's collection check against real pytest runs: a module importing a missing package at module
    level is a collection error (what stopped the device's runtime step), an importorskip is not."""
    from benchmarks.gpu_rehearse import collect

    good = tmp_path / "test_good.py"
    good.write_text(
        "import pytest\nav = pytest.importorskip('no_such_pkg_xyz')\n@pytest.mark.gpu\ndef test_a(): pass\n"
    )
    (tmp_path / "test_gpu.py").write_text("import pytest\n@pytest.mark.gpu\ndef test_b(): pass\ndef test_c(): pass\n")
    env = dict(os.environ)
    n, problem = collect(Path(PY), env, "gpu", [str(tmp_path)])
    assert (n, problem) == (1, "")
    (tmp_path / "test_bad.py").write_text("import no_such_pkg_xyz\n")
    n, problem = collect(Path(PY), env, "gpu", [str(tmp_path)])
    assert problem.startswith("collection failed") and "1 error" in problem


def test_judge_reads_each_steps_rehearsal(tmp_path):
    from benchmarks.gpu_rehearse import judge

    step = Step("kernel-tests", (PY, "-m", "pytest"), 60, "")
    suite = '<testsuite tests="35" failures="0" errors="0" skipped="35"/>'
    (tmp_path / "kernel-tests.xml").write_text(f"<testsuites>{suite}</testsuites>")
    got = judge(step, Outcome("kernel-tests", "passed", rc=0), tmp_path, tmp_path / "site")
    assert got.ok and got.device == "would run 35 tests" and got.result == "0 passed, 35 skipped, 0 failed"
    suite = '<testsuite tests="35" failures="1" errors="0" skipped="34"/>'
    (tmp_path / "kernel-tests.xml").write_text(f"<testsuites>{suite}</testsuites>")
    assert not judge(step, Outcome("kernel-tests", "failed", rc=1), tmp_path, tmp_path / "site").ok
    env_step = Step("environment", (PY,), 15, "")
    assert not judge(env_step, Outcome("environment", "failed", rc=1), tmp_path, tmp_path / "site").ok
    (tmp_path / "environment.json").write_text(json.dumps({"gpu": None, "torch": "2.13.0+cpu", "pyav": "18.1.0"}))
    got = judge(env_step, Outcome("environment", "failed", rc=1), tmp_path, tmp_path / "site")
    assert got.ok and "PyAV 18.1.0" in got.result  # no GPU here: exit 1 is what the step says then
    help_step = Step("warp-bandwidth", (PY,), 45, "")
    assert judge(help_step, Outcome("warp-bandwidth", "passed", rc=0), tmp_path, tmp_path).device == "would run"
    cases = (
        '<testcase classname="" name="tests.runtime.test_fleet"><skipped message="collection skipped">'
        "('t.py', 21, \"Skipped: could not import 'ray'\")</skipped></testcase>"
        '<testcase classname="t" name="a"><skipped message="needs an NVIDIA GPU (no CUDA)"/></testcase>'
    )
    (tmp_path / "kernel-tests.xml").write_text(
        f'<testsuites><testsuite tests="2" failures="0" errors="0" skipped="2">{cases}</testsuite></testsuites>'
    )
    got = judge(step, Outcome("kernel-tests", "passed", rc=0), tmp_path, tmp_path)
    assert got.ok and got.result == "0 passed, 2 skipped, 0 failed (other skips: could not import 'ray')"
    got = judge(step, Outcome("kernel-tests", "passed", rc=0), tmp_path, tmp_path, collected=(9, 2))
    assert got.device == "would run 7 tests (2 more skip: no TensorRT)"  # the collection's count, not junit's


def test_rehearsal_never_empties_a_folder_it_did_not_make(tmp_path):
    from benchmarks.gpu_rehearse import rehearse

    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(SystemExit, match="not made by the rehearsal"):
        rehearse([], tmp_path, 420, {}, tmp_path, gpu_check.travel_text)
    assert (tmp_path / "keep.txt").exists()
