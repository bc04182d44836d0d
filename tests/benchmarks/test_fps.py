"""benchmarks.fps and its parts (fps_measure, fps_tables, fps_criteria): statistics of a timed loop, derived
speed-ups and ratios, accuracy vs FPS only where both were measured, the acceptance checks, the writers, the CLI."""

from __future__ import annotations

import json
import time

import pytest
import torch

from benchmarks import fps, fps_criteria, fps_measure, plots, roofline
from runtime.stats import describe, summarize
from tests.runtime.conftest import tiny_model  # noqa: F401 - fixtures of the pose and det bundles
from tests.runtime.test_det_runtime import det_bundle, detector  # noqa: F401
from tests.runtime.test_pose_runtime import pose_bundle, pose_model  # noqa: F401


class SleepLoop(fps_measure.DeviceLoop):
    """A fake device loop whose frame costs k milliseconds of sleep plus a fixed 1 ms 'injection + head'."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.calls = 0

    def step(self, k: int, zero: bool, timer: fps_measure.StageTimer) -> None:
        timer.mark("start")
        time.sleep(0.0005)
        timer.mark("injection")
        time.sleep(0.001 * k)
        timer.mark("cell")
        time.sleep(0.0005)
        timer.mark("head")
        self.calls += 1


def test_measure_device_has_trtexec_fields_and_excludes_warmup():
    loop = SleepLoop()
    s = fps_measure.measure_device(loop, k=4, zero=False, warmup=2, frames=5)
    assert loop.calls == 7
    assert s["frames"] == 5
    for key in ("mean", "median", "p90", "p95", "p99", "cv", "min", "max"):
        assert key in s["latency_ms"]
    assert set(s["stages_ms"]) == {"injection", "cell", "head"}
    assert s["stages_ms"]["cell"]["median"] >= 4.0  # 4 ms of sleep in the cell stage
    assert s["latency_ms"]["median"] >= s["stages_ms"]["cell"]["median"]
    assert s["throughput_fps"] == pytest.approx(5 / s["wall_s"])
    assert "gpu_compute_ms" not in s and s["cv"] == s["latency_ms"]["cv"]


def test_host_overhead_is_latency_minus_gpu():
    s = fps_measure.add_host_overhead(summarize([10.0, 12.0], 0.022, [7.0, 8.0]), [10.0, 12.0], [7.0, 8.0])
    assert s["host_overhead_ms"]["mean"] == pytest.approx(3.5)
    assert s["cv"] == s["gpu_compute_ms"]["cv"]


def _row(backend: str, measure: str, mode: str, k: int, fps_value: float, cv: float = 0.01) -> dict:
    lat = 1e3 / fps_value
    summary = summarize([lat * (1 - cv), lat * (1 + cv)], 2 / fps_value, extra={"cell": [lat / 2, lat / 2]})
    summary["cv"] = summary["latency_ms"]["cv"]
    case = fps_measure.Case("tiny", 64, 128)
    return fps_measure.entry(case, backend, measure, mode, k, summary)


def fake_results(tmp_path) -> dict:
    rows = [
        _row("eager", "device", "stream", 1, 50.0),
        _row("eager", "device", "stream", 2, 40.0, cv=0.2),
        _row("eager", "device", "frame", 20, 5.0),
        _row("onnx", "device", "stream", 1, 100.0),
        _row("onnx", "device", "stream", 2, 80.0),
        _row("onnx", "device", "frame", 20, 10.0),
        _row("onnx", "e2e", "stream", 1, 135.0),
        _row("onnx", "e2e", "stream", 2, 60.0),
        _row("onnx", "e2e", "frame", 20, 9.0),
    ]
    stamp = {"command": "python -m benchmarks.fps --test", "date": "2026-11-22T00:00:00Z", "machine": "test box",
             "machine_tag": "cpu", "quick": True, "device": "cpu", "environment": {"torch": "x"}}  # fmt: skip
    scaling = {
        "resolution": [dict(_row("onnx", "device", "stream", 2, 80.0), ms_per_frame=12.5, pixels=64 * 128)],
        "batch": [dict(_row("onnx", "device", "stream", 2, 80.0), ms_per_frame=12.5, pixels=64 * 128)],
    }
    results = {"stamp": stamp, "settings": {}, "skipped": [{"backend": "tensorrt", "case": "all", "reason": "none"}],
               "rows": rows, "scaling": scaling}  # fmt: skip
    s = fps.settings_from_args(fps.build_parser().parse_args(["--quick", "--out", str(tmp_path)]))
    fps.derive_for(results, s, torch.device("cpu"))
    return results


def test_speedups_and_backend_ratios(tmp_path):
    res = fake_results(tmp_path)
    sp = {(r["backend"], r["measure"], r["k"]): r for r in res["speedups"]}
    assert sp[("eager", "device", 1)]["speedup"] == pytest.approx(10.0)
    assert sp[("eager", "device", 1)]["ideal"] == pytest.approx(20.0)
    assert sp[("eager", "device", 1)]["fraction_of_ideal"] == pytest.approx(0.5)
    assert sp[("onnx", "e2e", 2)]["speedup"] == pytest.approx(60 / 9)
    assert sp[("onnx", "device", 2)]["fraction_of_ideal"] == pytest.approx(0.8)
    ratios = {(r["mode"], r["k"]): r["ratio"] for r in res["backend_ratios"] if r["measure"] == "device"}
    assert ratios == {("stream", 1): pytest.approx(2.0), ("stream", 2): pytest.approx(2.0), ("frame", 20): 2.0}
    # the roofline rows come from the frame-N device loop: cell ms per iteration = median cell stage / N
    roof = {r["backend"]: r for r in res["roofline"]}
    assert roof["onnx"]["measured_ms"] == pytest.approx(50.0 / 20)
    assert roof["onnx"]["flops"] > 0 and roof["onnx"]["measured_over_bound"] > 0


def test_acceptance_checks(tmp_path):
    checks = {
        (c["backend"], c["check"].split(" /")[0].split(" vs")[0]): c for c in fake_results(tmp_path)["acceptance"]
    }
    stream = checks[("onnx", "e2e stream k=1 speed-up")]
    assert stream["value"] == pytest.approx(0.75) and stream["pass"] is True  # 135/9 = 15x of the ideal 20x
    eager = checks[("onnx", "cell iteration speed-up")]
    assert eager["value"] == pytest.approx(2.0) and eager["pass"] is False  # 5 ms vs 2.5 ms per iteration, < 3x
    assert ("onnx", "cell iteration") in checks and not any(b == "eager" for b, _ in checks)


def test_writers_produce_md_json_png(tmp_path):
    res = fake_results(tmp_path)
    paths = plots.write_outputs(res, tmp_path)
    for key, name in (("md", "fps_cpu_quick.md"), ("json", "fps_cpu_quick.json"), ("png", "fps_cpu_quick.png")):
        assert paths[key] == tmp_path / name and paths[key].stat().st_size > 0
    assert (tmp_path / "roofline_cpu_quick.md").is_file() and (tmp_path / "roofline_cpu_quick.json").is_file()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["md"].read_text()
    assert "python -m benchmarks.fps --test" in md and "test box" in md and "2026-11-22" in md
    assert "| tiny 64x128 fp32 | onnx | 100.00 | 80.00 | 10.00 |" in md  # device table: k=1, k=2, frame N=20
    assert "⚠" in md and "coefficient of variation" in md  # the 20 % CV row is flagged
    assert "tensorrt all: none" in md
    data = json.loads(paths["json"].read_text())
    assert data["stamp"]["command"] == "python -m benchmarks.fps --test"
    row = data["rows"][0]
    for key in ("config", "height", "width", "backend", "measure", "mode", "iters", "fps", "cell_ms_per_iter"):
        assert key in row
    for key in ("throughput_fps", "latency_ms", "stages_ms", "warnings"):
        assert key in row["summary"]
    assert {"speedups", "backend_ratios", "roofline", "scaling", "skipped"} <= set(data)
    assert not list(tmp_path.glob("*.tmp*"))  # atomic writes leave nothing behind


def write_accuracy(folder, config: str = "tiny") -> None:
    """An accuracy result at 256x512 with stream, per-frame and stream+reset rows, some with an FPS measured
    by fake_results (stream k=1,2 and frame N=20) and some without (stream k=3, per-frame k=1, stream+reset)."""
    rows = {"converged": {"miou": 0.7}, "stream k=1": {"miou": 0.6}, "stream k=2": {"miou": 0.65},
            "stream k=3": {"miou": 0.66}, "per-frame k=1": {"miou": 0.2}, "per-frame k=20": {"miou": 0.69},
            "stream+reset k=1": {"miou": 0.61}}  # fmt: skip
    meta = {"source": f"deqstream-ckpt/1 checkpoint (config '{config}')"}
    acc = {"stamp": {"height": 256, "width": 512}, "results": {"tiny_sur": {"checkpoint_meta": meta, "rows": rows}}}
    (folder / "accuracy_quick.json").write_text(json.dumps(acc))


def test_accuracy_points_only_where_both_were_measured(tmp_path):
    write_accuracy(tmp_path)
    res = fake_results(tmp_path)
    acc = json.loads((tmp_path / "accuracy_quick.json").read_text())["results"]["tiny_sur"]["rows"]
    pts = res["accuracy_vs_fps"]
    assert {(p["mode"], p["k"]) for p in pts} == {("stream", 1), ("stream", 2), ("per-frame", 20)}
    for p in pts:  # every point: its mIoU is in the accuracy file, its FPS is a measured row of the same loop
        assert acc[f"{p['mode']} k={p['k']}"]["miou"] == p["miou"]
        fps_mode = {"stream": "stream", "per-frame": "frame"}[p["mode"]]
        match = [r for r in res["rows"] if (r["backend"], r["measure"], r["mode"], r["iters"]) ==
                 (p["backend"], p["measure"], fps_mode, p["k"])]  # fmt: skip
        assert len(match) == 1 and match[0]["fps"] == p["fps"]
        assert p["accuracy_resolution"] == [256, 512] and p["fps_resolution"] == [64, 128]
    frame = {(p["backend"], p["measure"]): p["fps"] for p in pts if p["mode"] == "per-frame"}
    assert frame == {("eager", "device"): 5.0, ("onnx", "device"): 10.0, ("onnx", "e2e"): 9.0}  # frame N=20 rows
    assert sorted(res["accuracy_without_fps"]) == [
        "tiny_sur: per-frame k=1",
        "tiny_sur: stream k=3",
        "tiny_sur: stream+reset k=1",
    ]


def test_accuracy_of_another_config_is_not_paired(tmp_path):
    write_accuracy(tmp_path, config="small-seg")
    assert fake_results(tmp_path)["accuracy_vs_fps"] == []


def test_accuracy_plot_shows_measured_points_and_names_resolutions(tmp_path):
    write_accuracy(tmp_path)
    res = fake_results(tmp_path)
    shown = plots.accuracy_plot_points(res["accuracy_vs_fps"])
    assert shown and all(p in res["accuracy_vs_fps"] for p in shown)
    assert {(p["backend"], p["measure"]) for p in shown} == {("onnx", "device")}  # one backend, device loop
    labels = plots.accuracy_labels(shown)
    assert "256x512" in labels["ylabel"] and "64x128" in labels["xlabel"]
    assert "256x512" in labels["title"] and "64x128" in labels["title"] and "different resolutions" in labels["title"]
    assert plots.plot_accuracy(res, tmp_path / "acc.png").read_bytes()[:4] == b"\x89PNG"
    md = plots.markdown(res)
    assert "| tiny_sur | per-frame | 20 | 69.0 | 256x512 | accuracy_quick.json | onnx | device | 10.00 | 64x128 |" in md
    assert "No FPS measured for (not plotted): " in md and "stream+reset k=1" in md


def test_accuracy_plot_prefers_fps_at_the_accuracy_resolution():
    base = {"checkpoint": "c", "mode": "stream", "k": 1, "miou": 0.5, "source": "a.json", "backend": "onnx",
            "measure": "device", "precision": "fp32", "accuracy_resolution": [256, 512]}  # fmt: skip
    pts = [dict(base, fps=100.0, fps_resolution=[128, 256]), dict(base, fps=30.0, fps_resolution=[256, 512])]
    shown = plots.accuracy_plot_points(pts)
    assert [p["fps"] for p in shown] == [30.0]
    assert "different" not in plots.accuracy_labels(shown)["title"]


def _roof(ratio: float) -> dict:
    return {"config": "tiny", "backend": "onnx", "height": 64, "width": 128, "dtype": "fp32",
            "measured_over_bound": ratio, "peak_check": roofline.peak_check(ratio)}  # fmt: skip


@pytest.mark.parametrize("ratio,ok,verdict", [(0.73, False, "wrong peak"), (1.5, True, "pass"), (2.5, False, "FAIL")])
def test_roofline_ratio_below_one_never_passes(ratio, ok, verdict):
    (c,) = fps_criteria.acceptance({"roofline": [_roof(ratio), {**_roof(ratio), "backend": "eager"}]})
    assert c["pass"] is ok and c["verdict"] == verdict and c["value"] == ratio
    assert f"| {verdict} |" in "\n".join(plots.acceptance_lines([c], "cpu"))


def test_describe_is_the_shared_statistics():
    d = describe([1.0, 2.0, 3.0, 4.0])
    assert d["median"] == 2.5 and d["p99"] == 4.0


def test_bad_arguments_are_one_line(capsys):
    assert fps.main(["--resolutions", "100x100", "--configs", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "multiples of 32" in err[0]
    assert fps.main(["--backends", "magic"]) == 2
    with pytest.raises(SystemExit):
        fps.main(["--resolutions", "wide"])


def tiny_run(out, *args: str) -> list[str]:
    """A seconds-long CPU run of tiny at 64x128; ``args`` add to or override these (argparse keeps the last)."""
    base = ["--configs", "tiny", "--resolutions", "64x128", "--frame-n", "2", "--warmup", "0", "--frames", "2",
            "--e2e-frames", "1", "--e2e-iters", "1", "--no-scaling", "--out", str(out)]  # fmt: skip
    return base + list(args)


def test_cli_minimal_case_writes_files(tmp_path):
    argv = tiny_run(tmp_path, "--backends", "onnx,eager", "--iters", "1,2", "--frame-n", "4", "--warmup", "1",
                    "--e2e-frames", "2")  # fmt: skip
    assert fps.main(argv) == 0
    data = json.loads((tmp_path / "fps_cpu.json").read_text())
    got = {(r["backend"], r["measure"], r["mode"], r["iters"]) for r in data["rows"]}
    for b in ("onnx", "eager"):
        assert {(b, "device", "stream", 1), (b, "device", "stream", 2), (b, "device", "frame", 4)} <= got
        assert {(b, "e2e", "stream", 1), (b, "e2e", "frame", 4)} <= got
    assert all(r["fps"] > 0 for r in data["rows"])
    assert any(s["reason"].startswith("fp16") for s in data["skipped"])
    assert (tmp_path / "fps_cpu.md").is_file() and (tmp_path / "fps_cpu.png").is_file()
    # StreamDEQ's rule on the engines (default K = 1, 2, 4): K + 1 evaluations; the table orders rules by evaluations
    il = {r["iters"]: r["evaluations"] for r in data["rows"] if r["mode"] == "stream-il"}
    assert il == {1: 2, 2: 3, 4: 5} and all(r["backend"] == "onnx" for r in data["rows"] if r["mode"] == "stream-il")
    assert all(r["evaluations"] == r["iters"] for r in data["rows"] if r["mode"] != "stream-il")
    table = [(r["backend"], r["mode"], r["evaluations"]) for r in data["evaluations"] if r["backend"] == "onnx"]
    assert table == [("onnx", "stream", 1), ("onnx", "stream", 2), ("onnx", "stream-il", 2), ("onnx", "stream-il", 3),
                     ("onnx", "stream-il", 5)]  # fmt: skip
    assert "Cost in cell evaluations" in (tmp_path / "fps_cpu.md").read_text()
    assert json.loads((tmp_path / "roofline_cpu.json").read_text())["cell"]


@pytest.mark.gpu
def test_gpu_path_uses_events_and_graphs(tmp_path):
    argv = ["--configs", "tiny", "--resolutions", "256x512", "--backends", "eager,aoti", "--iters", "1,2",
            "--precision", "fp32,fp16", "--warmup", "2", "--frames", "5", "--e2e-frames", "3", "--e2e-iters", "2",
            "--no-scaling", "--out", str(tmp_path)]  # fmt: skip
    assert fps.main(argv) == 0
    data = json.loads(next(tmp_path.glob("fps_*.json")).read_text())
    assert data["stamp"]["environment"]["gpu"]
    rows = data["rows"]
    assert {r["precision"] for r in rows} == {"fp32", "fp16"}
    assert all("gpu_compute_ms" in r["summary"] and "host_overhead_ms" in r["summary"] for r in rows)
    assert any(r.get("cuda_graphs") for r in rows if r["backend"] == "aoti")
    assert all(r["peaks_source"].startswith(("table", "measured")) for r in data["roofline"])


def test_pairs_replace_backends_and_precisions():
    s = fps.settings_from_args(fps.build_parser().parse_args(["--pairs", "eager:fp32,aoti:fp16,eager:fp32"]))
    assert s.backends == ["eager", "aoti"] and s.precisions == ["fp32", "fp16"]
    assert s.pairs == [("eager", "fp32"), ("aoti", "fp16")]
    assert s.measures("aoti", "fp16") and not s.measures("aoti", "fp32") and not s.measures("eager", "fp16")
    assert fps.settings_from_args(fps.build_parser().parse_args([])).measures("onnx", "fp16")


def test_pairs_measure_only_the_listed_combinations(tmp_path, capsys):
    argv = tiny_run(tmp_path, "--pairs", "eager:fp32,onnx:fp16", "--iters", "1")
    assert fps.main(argv) == 0
    data = json.loads((tmp_path / "fps_cpu.json").read_text())
    assert {(r["backend"], r["precision"]) for r in data["rows"]} == {("eager", "fp32")}
    assert [(s["backend"], s["case"]) for s in data["skipped"]] == [("onnx", "tiny 64x128 fp16")]
    assert fps.main(["--pairs", "magic:fp32"]) == 2
    assert "unknown backend 'magic'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fps.main(["--pairs", "aoti"])


def test_partial_results_after_each_backend(tmp_path):
    argv = tiny_run(tmp_path, "--backends", "eager,onnx", "--iters", "1")
    s = fps.settings_from_args(fps.build_parser().parse_args(argv))
    snaps: list[dict] = []
    final = fps.run_benchmark(s, argv, on_partial=snaps.append)
    assert [sorted({r["backend"] for r in snap["rows"]}) for snap in snaps] == [["eager"], ["eager", "onnx"]]
    assert all(snap["partial"] and "acceptance" in snap for snap in snaps) and "partial" not in final
    assert "**partial**" in plots.markdown(snaps[0]) and "**partial**" not in plots.markdown(final)


# ------------------------------------------------------------------ pose and det bundles: the decoding in the frame


def test_pose_and_det_bundles_time_their_decoding_in_a_column_of_its_own(pose_bundle, det_bundle, tmp_path):  # noqa: F811
    """--engine with a pose and a det bundle: every row (device loop and end to end) has a positive head_decode
    stage, inside the frame time (its mean plus the head's is at most the latency's mean), and the results file
    shows it in its own column; only bundles given: the files are fps_cpu_det_pose.*."""
    engines = [str(pose_bundle / "deq_cell.onnx"), str(det_bundle / "deq_cell.onnx")]
    argv = ["--engine", *engines, "--iters", "1", "--frame-n", "2", "--il-iters", "1", "--warmup", "1", "--frames",
            "2", "--e2e-frames", "2", "--e2e-iters", "1", "--threads", "1", "--out", str(tmp_path)]  # fmt: skip
    assert fps.main(argv) == 0
    data = json.loads((tmp_path / "fps_cpu_det_pose.json").read_text())
    assert {r["task"] for r in data["rows"]} == {"pose", "det"} and all(r["backend"] == "onnx" for r in data["rows"])
    for r in data["rows"]:
        st, lat = r["summary"]["stages_ms"], r["summary"]["latency_ms"]
        assert st["head_decode"]["count"] == r["summary"]["frames"] and st["head_decode"]["median"] > 0, r["mode"]
        assert st["head"]["mean"] + st["head_decode"]["mean"] <= lat["mean"]
    dec = data["head_decode"]
    assert len(dec) == len(data["rows"]) and all(d["head_decode_ms"] > 0 and 0 < d["decode_share"] < 1 for d in dec)
    assert {(d["task"], d["measure"]) for d in dec} == {(t, m) for t in ("pose", "det") for m in ("device", "e2e")}
    md = (tmp_path / "fps_cpu_det_pose.md").read_text()
    assert "| head decode median ms |" in md and "| mini-det det 128x192 fp32 | onnx | e2e | stream | 1 |" in md
    assert not data["scaling"]["resolution"] and not data["scaling"]["batch"]  # no config measured: no scaling
    assert {r["config"] for r in data["roofline"]} == {"tiny"}  # mini-det is no config of this checkout


def test_an_engine_that_is_no_bundle_is_one_line(tmp_path, capsys):
    assert fps.main(["--engine", str(tmp_path / "nothing" / "deq_cell.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --engine") and len(err.splitlines()) == 1
