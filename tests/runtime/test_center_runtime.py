"""A one-stage (CenterNet-style) det bundle through ``python -m runtime.run``: the manifest's detector kind picks
``head_det_ctr`` and its device decode; each record's boxes equal an eager reference (the model's own states after
the same iterations, the head in PyTorch, the numpy decode of tests/runtime/test_center_decode.py, ``--fit pad``
undone by hand); the propagation modes write boxes too; a bundle without its head engine is one line, exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.det_decode import content_hw
from runtime.run import main
from runtime.sources import Fitter
from tests.runtime.conftest import H, W, decode_clip, moving_frames, write_clip
from tests.runtime.test_center_decode import reference, to_source

av = pytest.importorskip("av", reason="PyAV decodes the test clip")

SRC_H, SRC_W = 80, 120  # another aspect than the engine's 64 x 128: --fit pad leaves black columns
FRAMES = 4
THR, TOP = 0.1, 20


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread) -> None:
    """One torch thread (the shared CPU)."""


@pytest.fixture(scope="module")
def center_det(tiny_model, tmp_path_factory: pytest.TempPathFactory):
    from export.bundle import export_bundle
    from export.centernet import CenterNetConfig, CenterNetHead

    torch.manual_seed(3)
    head = CenterNetHead(tiny_model.cfg, CenterNetConfig(score_thr=THR, max_per_img=TOP)).eval()
    out = tmp_path_factory.mktemp("ctr") / "engines"
    man = export_bundle(tiny_model, out, H, W, detector=head)
    assert man["task"] == "det" and set(man["engines"]) == {"injection", "deq_cell", "head_det_ctr"}
    assert man["detector"]["kind"] == "centernet" and man["classes"] == ["car", "person", "sign"]
    assert man["palette"] == [[0, 0, 142], [220, 20, 60], [220, 220, 0]]  # the scenes' car, person, sign colours
    return head, out


@pytest.fixture(scope="module")
def src_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("cclip") / "clip.mp4", moving_frames(FRAMES, SRC_H, SRC_W))


def run_cli(bundle: Path, clip: Path, out: Path, *args: str) -> list[dict]:
    argv = [str(clip), "--engine", str(bundle / "deq_cell.onnx"), "--out", str(out), "--no-progress", *args]
    assert main(argv) == 0
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]


def eager_boxes(model, head, frames: np.ndarray, iters: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per frame: (reference rows in source pixels, their engine-pixel scores) after ``iters`` carried iterations."""
    from export.centernet import CenterGraph

    fitter = Fitter((SRC_H, SRC_W), (H, W), "pad")
    hw = content_hw(fitter.scaled, fitter.offset, fitter.dst_hw)
    graph, z, out = CenterGraph(head).eval(), None, []
    with torch.no_grad():
        for f in frames:
            z, _ = model.solve(torch.from_numpy(fitter.fit(f))[None], iters, z)
            heat, size, offset = (t.numpy() for t in graph(*z))
            out.append(to_source(reference(heat, size, offset, TOP, THR, hw), fitter))
    return out


def test_records_equal_the_eager_reference_in_source_pixels(tiny_model, center_det, src_clip, tmp_path):
    head, bundle = center_det
    args = ["--mode", "stream", "--iters", "2", "--solver", "fixed_point", "--no-reset", "--fit", "pad", "--video"]
    records = run_cli(bundle, src_clip, tmp_path, *args)
    frames = decode_clip(src_clip)
    assert [r["frame"] for r in records] == list(range(len(frames)))
    for rec, ref in zip(records, eager_boxes(tiny_model, head, frames, 2)):
        got = np.array([[b["x1"], b["y1"], b["x2"], b["y2"], b["score"], b["class"]] for b in rec["boxes"]])
        assert len(ref) >= 5 and abs(len(got) - len(ref)) <= 1, (len(got), len(ref))
        # rows away from the threshold and the top-K cut cannot swap between ONNX Runtime and PyTorch
        sure = ref[(ref[:, 4] > THR + 1e-3)][: TOP - 1]
        for row in sure:
            near = np.abs(got[:, :4] - row[:4]).max(1) <= 0.02
            assert (near & (got[:, 5] == row[5])).any(), f"frame {rec['frame']}: no match for {row}"
        assert got[:, [1, 3]].max() <= SRC_H and got[:, [0, 2]].max() <= SRC_W
    coco = json.loads((tmp_path / "detections.json").read_text())
    assert len(coco) == sum(len(r["boxes"]) for r in records) and (tmp_path / "overlay.mp4").is_file()


@pytest.mark.parametrize("mode", ["stream-mv", "mv", "mv-interp"])
def test_the_propagation_modes_write_boxes(center_det, src_clip, tmp_path, mode):
    _, bundle = center_det
    interval = [] if mode == "stream-mv" else ["--key-interval", "2"]
    records = run_cli(bundle, src_clip, tmp_path, "--mode", mode, *interval, "--no-video")
    assert [r["frame"] for r in records] == list(range(FRAMES))
    assert all("boxes" in r for r in records) and sum(len(r["boxes"]) for r in records) > 0


def test_a_bundle_without_its_head_engine_is_one_line_and_exit_2(center_det, src_clip, tmp_path, capsys):
    _, bundle = center_det
    broken = tmp_path / "engines"
    shutil.copytree(bundle, broken)
    (broken / "head_det_ctr.onnx").unlink()
    assert main([str(src_clip), "--engine", str(broken / "deq_cell.onnx"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "head_det_ctr.onnx" in err and "Traceback" not in err
    man = json.loads((broken / "manifest.json").read_text())
    del man["engines"]["head_det_ctr"]
    (broken / "manifest.json").write_text(json.dumps(man))
    assert main([str(src_clip), "--engine", str(broken / "deq_cell.onnx"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "head_det_ctr" in err and "Traceback" not in err
    man["detector"]["kind"] = "yolo"
    (broken / "manifest.json").write_text(json.dumps(man))
    assert main([str(src_clip), "--engine", str(broken / "deq_cell.onnx"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown detector kind 'yolo'" in err


def test_overlay_labels_name_the_class_when_the_manifest_does():
    from runtime.writers import draw_boxes, palette_lut

    lut = palette_lut([(255, 0, 0), (0, 255, 0)])
    rgb = np.full((60, 120, 3), 40, np.uint8)
    rows = np.array([[20, 25, 60, 55, 0.9, 1]], np.float32)
    filled = [(draw_boxes(rgb, rows, lut, names)[18] == (0, 255, 0)).all(-1).sum() for names in ((), ("a", "person"))]
    assert filled[1] > filled[0] > 0  # "person 0.90" is a wider label than "1 0.90"
