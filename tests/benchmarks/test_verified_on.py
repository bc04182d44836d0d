"""benchmarks.verified_on: the README's table says exactly what the committed GPU check summaries say, and says
"never ran" for everything else (today: everything, since no summary is committed)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from benchmarks import gpu_check, verified_on
from benchmarks.gpu_check import Step

ROOT = Path(__file__).resolve().parents[2]

JUNIT = """<testsuites><testsuite tests="3" failures="1" errors="0" skipped="0">
<testcase classname="tests.runtime.test_tensorrt" name="test_plan_class_maps_match_onnxruntime[fp32]"/>
<testcase classname="tests.runtime.test_tensorrt" name="test_plan_class_maps_match_onnxruntime[fp16]">
<failure message="x"/></testcase>
<testcase classname="tests.runtime.test_gpu" name="test_cuda_graph_equals_plain_launches"/>
</testsuite></testsuites>"""


def _rows(md: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split(" | ") for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows[1:]}


def test_no_summary_means_nothing_ran(tmp_path, capsys):
    out = tmp_path / "v.md"
    assert verified_on.main(["--results", str(tmp_path / "none"), "--out", str(out)]) == 0
    md = out.read_text()
    assert "nothing in this repository has run on a GPU yet" in md and "TensorRT has never run" in md
    rows = _rows(md)
    assert len(rows) == len(verified_on.CHECKS) + 1
    assert all(r[-1].startswith("never ran") and r[0] == "-" for r in rows.values())
    assert "0 GPU check run(s)" in capsys.readouterr().out


def test_the_committed_table_is_current():
    """benchmarks/results/verified_on.md is what the generator makes from the committed summaries."""
    runs = verified_on.load_runs(verified_on.DEFAULT_GPU_DIR)
    assert (ROOT / "benchmarks" / "results" / "verified_on.md").read_text() == verified_on.table(runs)


def test_a_real_gpu_check_summary_fills_its_rows(tmp_path, monkeypatch):
    """A summary written by gpu_check itself (stand-in steps), plus the junit of the TensorRT tests in its archive."""
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 0.5)
    env = {"gpu": "NVIDIA H200", "driver": "580.1", "tensorrt": "10.9.0"}
    write_env = f"import json, sys; json.dump({env!r}, open(sys.argv[1], 'w'))"
    write_xml = f"import sys; open(sys.argv[1], 'w').write({JUNIT!r}); sys.exit(1)"  # pytest exits 1 on a failure
    steps = [
        Step("environment", ("python3", "-c", write_env, "{work}/environment.json"), 30, ""),
        Step("kernel-tests", ("python3", "-c", "pass"), 30, ""),
        Step("runtime-gpu-tests", ("python3", "-c", write_xml, "{work}/runtime-gpu-tests.xml"), 30, ""),
    ]
    run_dir = tmp_path / "gpu" / "2026-12-01-main"
    gpu_check.run_all(steps, run_dir, tmp_path / "work", 60)
    out = tmp_path / "v.md"
    assert verified_on.main(["--results", str(tmp_path / "gpu"), "--out", str(out)]) == 0
    rows = _rows(out.read_text())
    date = json.loads((run_dir / "summary.json").read_text())["started"][:10]
    kernel = next(v for k, v in rows.items() if k.startswith("warp kernels vs grid_sample"))
    assert kernel == ["NVIDIA H200", date, "passed"]
    runtime = next(v for k, v in rows.items() if k.startswith("runtime on CUDA"))
    assert runtime[0] == "NVIDIA H200" and runtime[2].startswith("failed: 2 passed, 1 failed")
    trt = next(v for k, v in rows.items() if k.startswith("TensorRT"))
    assert trt == ["NVIDIA H200", date, "1 passed, 1 failed"]
    bandwidth = next(v for k, v in rows.items() if k.startswith("warp kernel >="))
    assert bandwidth == ["-", "-", "never ran on a GPU"]


def test_tensorrt_skipped_everywhere_is_never_ran(tmp_path):
    run_dir = tmp_path / "gpu" / "r1"
    run_dir.mkdir(parents=True)
    summary = {"started": "2026-12-02T10:00:00Z", "environment": {"gpu": "NVIDIA H100", "tensorrt": None},
               "steps": [{"name": "kernel-tests", "status": "passed", "headline": "18 passed"}]}  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary))
    xml = JUNIT.replace('<failure message="x"/>', '<skipped message="no trt"/>').replace(
        'name="test_plan_class_maps_match_onnxruntime[fp32]"/>',
        'name="test_plan_class_maps_match_onnxruntime[fp32]"><skipped message="no trt"/></testcase>',
    )
    with tarfile.open(run_dir / "results.tar.gz", "w:gz") as tar:
        data = xml.encode()
        info = tarfile.TarInfo("runtime-gpu-tests.xml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    rows = _rows(verified_on.table(verified_on.load_runs(tmp_path / "gpu")))
    trt = next(v for k, v in rows.items() if k.startswith("TensorRT"))
    assert trt == ["-", "-", "never ran (TensorRT not installed on the GPU machines)"]
    assert next(v for k, v in rows.items() if k.startswith("warp kernels vs")) == [
        "NVIDIA H100",
        "2026-12-02",
        "passed: 18 passed",
    ]


def test_unreadable_summary_is_one_line(tmp_path, capsys):
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "summary.json").write_text("{")
    assert verified_on.main(["--results", str(tmp_path / "gpu"), "--out", str(tmp_path / "v.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a readable gpu_check summary" in err
