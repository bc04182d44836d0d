"""A detection bundle through ``python -m runtime.run`` (issue #27): boxes per frame against an independent reference,
``detections.json``, the stream and motion-vector modes, and a bundle without its box engine refused in one line.

The detector is a small random one in StreamDEQ's checkpoint layout (tests/export/det_layout.py, imported as
tests/export/test_detection.py does); the reference is tests/runtime/det_reference.py (heads from the checkpoint's
tensors in float64, loop NMS, matrix-form RoIAlign) on the eager model's states after the same solve iterations,
with the ``--fit resize`` geometry undone by hand (engine x -> x * source width / engine width)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export.config import DetectorConfig
from runtime.run import main
from tests.export.det_layout import detector_checkpoint
from tests.export.test_streamdeq_layouts import MINI_DET
from tests.runtime.conftest import decode_clip, moving_frames, write_clip
from tests.runtime.det_reference import RefDetections, RefSettings, match, ref_detect

# fewer proposals than StreamDEQ's 1000 (the float64 reference's RoIAlign is a loop): the decode is the same code
DET = DetectorConfig(
    name="mini-det", num_classes=5, fpn_channels=32, rpn_channels=32, fc_channels=64, rpn_pre_nms=300, rpn_proposals=150
)
H, W = 128, 192
SRC_H, SRC_W = 144, 240  # not the engine's size: the records must undo --fit resize
FRAMES = 4
SETTINGS = RefSettings(strides=(4, 8, 16, 32, 64), num_classes=5, nms_pre=300, max_proposals=150)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread) -> None:
    """One torch thread (the shared CPU)."""


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory):
    from export.detection import import_detector

    path, head_sd, _ = detector_checkpoint(MINI_DET, DET, tmp_path_factory.mktemp("det") / "epoch_7.pth")
    model, heads, _ = import_detector(path, MINI_DET, DET)
    return model, heads, head_sd


@pytest.fixture(scope="module")
def det_bundle(detector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.bundle import export_bundle

    model, heads, _ = detector
    out = tmp_path_factory.mktemp("detb") / "engines"
    man = export_bundle(model, out, H, W, detector=heads)
    assert man["task"] == "det" and set(man["engines"]) == {"injection", "deq_cell", "head_det_rpn", "head_det_box"}
    assert man["detector"]["strides"] == [4, 8, 16, 32, 64] and man["detector"]["rpn_proposals"] == 150
    assert man["classes"] == [f"class{i}" for i in range(5)]
    return out


@pytest.fixture(scope="module")
def det_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("dclip") / "clip.mp4", moving_frames(FRAMES, SRC_H, SRC_W))


def reference(model: torch.nn.Module, head_sd: dict, frames: np.ndarray, iters: int, stream: bool) -> list:
    """Per frame the reference detections in source pixels: eager solve (z = 0, or carried) + det_reference."""
    out, z = [], None
    with torch.no_grad():
        for f in frames:
            small = np.array(Image.fromarray(f).resize((W, H), Image.BILINEAR))
            state, _ = model.solve(torch.from_numpy(small)[None], iters, z if stream else None)
            z = state
            ref = ref_detect(head_sd, [t.contiguous() for t in state], SETTINGS, (float(H), float(W)))
            scale = np.array([SRC_W / W, SRC_H / H, SRC_W / W, SRC_H / H])
            out.append(RefDetections(ref.boxes * scale, ref.scores, ref.labels))
    return out


def run_cli(bundle: Path, clip: Path, out: Path, *args: str) -> list[dict]:
    argv = [str(clip), "--engine", str(bundle / "deq_cell.onnx"), "--out", str(out), "--no-progress", *args]
    assert main(argv) == 0
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]


def as_arrays(record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = record["boxes"]
    xyxy = np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in boxes], np.float64).reshape(-1, 4)
    return xyxy, np.array([b["score"] for b in boxes]), np.array([b["class"] for b in boxes], np.int64)


@pytest.mark.parametrize("mode,iters", [("frame", 4), ("stream", 2)])
def test_boxes_match_the_reference_in_source_pixels(detector, det_bundle, det_clip, tmp_path, mode, iters):
    model, _, head_sd = detector
    frames = decode_clip(det_clip)
    args = [
        "--mode",
        mode,
        "--iters",
        str(iters),
        "--solver",
        "fixed_point",
        "--no-reset",
        "--fit",
        "resize",
        "--no-video",
    ]
    records = run_cli(det_bundle, det_clip, tmp_path, *args)
    assert [r["frame"] for r in records] == list(range(len(frames)))
    want = reference(model, head_sd, frames, iters, stream=mode == "stream")
    coco = json.loads((tmp_path / "detections.json").read_text())
    for rec, ref in zip(records, want):
        boxes, scores, labels = as_arrays(rec)
        assert len(boxes) == len(ref.scores) and len(boxes) >= 5, f"frame {rec['frame']}: {len(boxes)} boxes"
        f1, worst = match(ref, boxes, scores, labels)
        assert f1 >= 0.99 and worst <= 0.5, f"frame {rec['frame']}: F1 {f1:.3f}, worst {worst:.3f} px"
        assert boxes[:, [0, 2]].max() <= SRC_W and boxes[:, [1, 3]].max() <= SRC_H
        mine = [c for c in coco if c["image_id"] == rec["frame"]]
        assert [c["category_id"] for c in mine] == labels.tolist()
        xywh = np.array([c["bbox"] for c in mine]).reshape(-1, 4)
        np.testing.assert_allclose(xywh[:, :2], boxes[:, :2])
        np.testing.assert_allclose(xywh[:, 2:], boxes[:, 2:] - boxes[:, :2], atol=0.011)
        np.testing.assert_allclose([c["score"] for c in mine], scores)
    assert len(coco) == sum(len(r["boxes"]) for r in records)
    assert not (tmp_path / "maps.npz").exists() and not (tmp_path / "maps").exists()  # no class maps for det


def test_fit_pad_clips_to_the_content_and_maps_back(detector, det_bundle, det_clip, tmp_path):
    """--fit pad: the frame scaled by 0.8 to 115 x 192 rows and columns, black below. Boxes are clipped to those 115
    rows (MMDetection clips to the resized image, not the padded one) and scaled back by 240 / 192 and 144 / 115."""
    model, _, head_sd = detector
    frames = decode_clip(det_clip)[:2]
    args = [
        "--mode",
        "frame",
        "--iters",
        "3",
        "--solver",
        "fixed_point",
        "--fit",
        "pad",
        "--no-video",
        "--max-frames",
        "2",
    ]
    records = run_cli(det_bundle, det_clip, tmp_path, *args)
    ih, iw = 115, 192
    for rec, f in zip(records, frames):
        canvas = np.zeros((H, W, 3), np.uint8)
        canvas[:ih] = np.array(Image.fromarray(f).resize((iw, ih), Image.BILINEAR))
        with torch.no_grad():
            state, _ = model.solve(torch.from_numpy(canvas)[None], 3)
        ref = ref_detect(head_sd, [t.contiguous() for t in state], SETTINGS, (float(ih), float(iw)))
        scale = np.array([SRC_W / iw, SRC_H / ih, SRC_W / iw, SRC_H / ih])
        ref = RefDetections(ref.boxes * scale, ref.scores, ref.labels)
        boxes, scores, labels = as_arrays(rec)
        assert len(boxes) == len(ref.scores) > 0
        f1, worst = match(ref, boxes, scores, labels)
        assert f1 >= 0.99 and worst <= 0.5, f"frame {rec['frame']}: F1 {f1:.3f}, worst {worst:.3f} px"
        assert boxes[:, 3].max() <= SRC_H


def test_two_streams_in_one_batch_detect_as_one_does(detector, det_bundle, det_clip, tmp_path):
    """A batch-2 det bundle on the same clip twice: each stream's boxes are the batch-1 run's (the decode's
    per-image proposals, RoIs and NMS keep the two images apart)."""
    from export.bundle import export_bundle

    model, heads, _ = detector
    export_bundle(model, tmp_path / "b2", H, W, batch=2, detector=heads)
    args = ["--mode", "stream", "--iters", "2", "--solver", "fixed_point", "--no-reset", "--no-video"]
    one = run_cli(det_bundle, det_clip, tmp_path / "one", *args)
    argv = [str(det_clip), str(det_clip), "--engine", str(tmp_path / "b2" / "deq_cell.onnx"), "--out"]
    assert main([*argv, str(tmp_path / "two"), "--no-progress", *args]) == 0
    for i in (0, 1):
        lines = (tmp_path / "two" / f"stream{i}" / "frames.jsonl").read_text().splitlines()
        two = [json.loads(line) for line in lines]
        assert len(two) == len(one) == FRAMES
        for a, b in zip(one, two):
            ref = RefDetections(*as_arrays(a))
            f1, worst = match(ref, *as_arrays(b))
            assert len(b["boxes"]) == len(a["boxes"]) and f1 >= 0.99 and worst <= 0.05
        assert json.loads((tmp_path / "two" / f"stream{i}" / "detections.json").read_text())


def test_export_heads_det_needs_a_detector_config(capsys) -> None:
    from export.__main__ import main as export_main

    assert export_main(["--config", "tiny", "--random-init", "--heads", "det", "--formats", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--heads det needs --config with detector heads: xl-det" in err


@pytest.mark.parametrize("mode", ["stream", "mv", "stream-mv", "mv-interp"])
def test_stream_and_mv_modes_write_boxes_and_an_overlay(det_bundle, det_clip, tmp_path, mode):
    seen: list[tuple[dict, np.ndarray]] = []
    from runtime.loop import RunConfig, run

    run(
        RunConfig(
            det_bundle / "deq_cell.onnx",
            [str(det_clip)],
            out=tmp_path,
            mode=mode,
            video=True,
            overlay_size="source",
            progress=False,
            on_frame=lambda rec, boxes: seen.append((rec, boxes)),
        )
    )
    records = [json.loads(line) for line in (tmp_path / "frames.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(FRAMES)) and len(seen) == FRAMES
    for rec, rows in seen:
        assert rows.shape == (len(rec["boxes"]), 6) and len(rows) > 0
        np.testing.assert_allclose(as_arrays(rec)[0], rows[:, :4], atol=0.01)
        assert (rows[:, 5] >= 0).all() and (rows[:, 2] <= SRC_W).all() and (rows[:, 3] <= SRC_H).all()
    assert decode_clip(tmp_path / "overlay.mp4").shape == (FRAMES, SRC_H, SRC_W, 3)
    assert json.loads((tmp_path / "detections.json").read_text())


def test_the_overlay_draws_the_boxes(det_bundle, tmp_path):
    """Engine-size overlay of a still grey clip: the left edge of a recorded box is drawn (in its class colour) along
    its height."""
    still = np.full((2, H, W, 3), 40, np.uint8)
    clip = write_clip(tmp_path / "still.mp4", still)
    records = run_cli(det_bundle, clip, tmp_path / "o", "--mode", "frame", "--video", "--overlay-size", "engine")
    frame = decode_clip(tmp_path / "o" / "overlay.mp4")[0].astype(int)
    boxes = as_arrays(records[0])[0]
    assert len(boxes)
    x1, y1, x2, y2 = boxes[np.argmax((boxes[:, 3] - boxes[:, 1]) * (boxes[:, 2] - boxes[:, 0]) > 200)]
    column = frame[int(y1) + 3 : int(y2) - 2, min(int(x1) + 1, W - 1)]
    assert len(column) > 4 and np.median(np.abs(column - 40).max(axis=1)) > 20


def test_draw_boxes_outlines_each_valid_box_in_its_class_colour() -> None:
    from runtime.writers import draw_boxes, palette_lut

    lut = palette_lut([(255, 0, 0), (0, 255, 0)])
    rgb = np.full((60, 80, 3), 40, np.uint8)
    rows = np.array([[20, 25, 60, 55, 0.9, 1], [0, 0, 0, 0, 0, -1]], np.float32)  # the second: padding
    out = draw_boxes(rgb, rows, lut).astype(int)
    assert tuple(out[40, 20]) == (0, 255, 0) and tuple(out[40, 60]) == (0, 255, 0)  # left and right edges
    assert tuple(out[54, 40]) == (0, 255, 0)  # bottom edge
    assert tuple(out[40, 40]) == (40, 40, 40) and tuple(out[2, 2]) == (
        40,
        40,
        40,
    )  # outline only; padding drawn nowhere
    assert (out[10:25, 20:40] != 40).any()  # the label above the box's top-left corner


def test_a_bundle_without_its_box_engine_is_one_line_and_exit_2(det_bundle, det_clip, tmp_path, capsys):
    broken = tmp_path / "engines"
    shutil.copytree(det_bundle, broken)
    (broken / "head_det_box.onnx").unlink()
    assert main([str(det_clip), "--engine", str(broken / "deq_cell.onnx"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "head_det_box.onnx" in err and "Traceback" not in err
    man = json.loads((broken / "manifest.json").read_text())
    del man["engines"]["head_det_box"]
    (broken / "manifest.json").write_text(json.dumps(man))
    assert main([str(det_clip), "--engine", str(broken / "deq_cell.onnx"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "head_det_box" in err and "Traceback" not in err


@pytest.mark.gpu
def test_cuda_pipeline_downloads_boxes_equal_to_the_cpu_ones(detector, det_bundle, tmp_path):
    """On CUDA the decoding runs on the pipeline's stream (CUDA graphs on for the cell) into a pinned (B, 100, 6)
    buffer, the only output downloaded; the boxes agree with the CPU run of the ONNX bundle (F1 at IoU 0.5)."""
    from export.bundle import export_bundle
    from runtime.bundle import open_bundle
    from runtime.modes import FrameInfo, Plan
    from runtime.pipeline import Pipeline

    model, heads, _ = detector
    export_bundle(model, tmp_path / "cuda", H, W, formats=("pt2",), device="cuda", detector=heads)
    frames = moving_frames(3, H, W)
    got = {}
    for name, engine, device in (
        ("cuda", tmp_path / "cuda" / "deq_cell.pt2", "cuda"),
        ("cpu", det_bundle / "deq_cell.onnx", "cpu"),
    ):
        pipe = Pipeline(open_bundle(engine), torch.device(device), graphs=True)
        pipe.warmup()
        plan = [Plan(iters=2, start="previous")]
        got[name] = [pipe.run([f], plan, [FrameInfo(i)]).classes[0] for i, f in enumerate(frames)]
        if device == "cuda":
            assert pipe.result_host.is_pinned() and tuple(pipe.result_host.shape) == (1, 100, 6)
    for gpu, cpu in zip(got["cuda"], got["cpu"]):
        gpu, cpu = gpu[gpu[:, 5] >= 0], cpu[cpu[:, 5] >= 0]
        ref = RefDetections(cpu[:, :4].astype(np.float64), cpu[:, 4], cpu[:, 5].astype(np.int64))
        f1, _ = match(ref, gpu[:, :4].astype(np.float64), gpu[:, 4], gpu[:, 5].astype(np.int64))
        assert len(cpu) > 0 and f1 >= 0.97
