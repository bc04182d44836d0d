"""A pose checkpoint's keypoint head (export.pose_head, export.checkpoint.import_pose_with_report).

The checkpoints are laid out as MMPose 0.x saves a top-down model (``meta``, ``state_dict``, ``optimizer``; the MDEQ
trunk under ``backbone.*``, MMPose's ``TopdownHeatmapSimpleHead`` under ``keypoint_head.*``, whose Sequential
``final_layer`` is conv-BN-ReLU blocks then the final conv). The heatmaps a head must give are computed here with
functional ops straight from the checkpoint's tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from export.checkpoint import CheckpointError, import_pose_with_report, load_any
from export.onnx_export import ort_session
from tests.export.published_layout import published_state_dict
from tests.export.test_streamdeq_layouts import MINI_DET, _assert_same_trunk

J = 16  # MPII's joints
H, W = 64, 128
CH = MINI_DET.channels


def _head_keys(kind: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """MMPose key names: ``branch`` = a 1x1 conv on the stride-4 branch; ``concat`` = resize_concat of every
    branch, one 3x3 conv-BN-ReLU block, then the 1x1 conv (``extra=dict(num_conv_layers=1, num_conv_kernels=[3])``)."""
    g = torch.Generator().manual_seed(seed)
    p = "keypoint_head.final_layer."
    if kind == "branch":
        return {p + "weight": torch.randn(J, CH[0], 1, 1, generator=g), p + "bias": torch.randn(J, generator=g)}
    c = sum(CH)
    return {
        p + "0.weight": torch.randn(c, c, 3, 3, generator=g) * 0.05,
        p + "0.bias": torch.randn(c, generator=g) * 0.1,
        p + "1.weight": torch.rand(c, generator=g) + 0.5,
        p + "1.bias": torch.randn(c, generator=g) * 0.1,
        p + "1.running_mean": torch.randn(c, generator=g) * 0.1,
        p + "1.running_var": torch.rand(c, generator=g) + 0.5,
        p + "1.num_batches_tracked": torch.tensor(100),
        p + "3.weight": torch.randn(J, c, 1, 1, generator=g),
        p + "3.bias": torch.randn(J, generator=g),
    }


def _reference(head: dict[str, torch.Tensor], kind: str, z: list[torch.Tensor]) -> torch.Tensor:
    p = "keypoint_head.final_layer."
    if kind == "branch":
        return F.conv2d(z[0], head[p + "weight"], head[p + "bias"])
    size = z[0].shape[-2:]
    y = torch.cat([z[0], *(F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in z[1:])], 1)
    y = F.conv2d(y, head[p + "0.weight"], head[p + "0.bias"], padding=1)
    y = F.batch_norm(y, head[p + "1.running_mean"], head[p + "1.running_var"], head[p + "1.weight"], head[p + "1.bias"])
    return F.conv2d(F.relu(y), head[p + "3.weight"], head[p + "3.bias"])


def _mmpose_checkpoint(path: Path, head: dict[str, torch.Tensor]) -> tuple[Path, torch.nn.Module]:
    sd, ref = published_state_dict(MINI_DET, copies=False, head=False, loss=False)
    trunk = {"backbone." + k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")}
    trunk = {k: v for k, v in trunk.items() if not k.startswith("backbone.deq.")}
    obj = {"meta": {"mmpose_version": "0.17.0", "epoch": 210}, "state_dict": {**trunk, **head}, "optimizer": {}}
    torch.save(obj, path)
    return path, ref


def _states(seed: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, c, H // s, W // s, generator=g) for c, s in zip(CH, (4, 8, 16, 32))]


@pytest.mark.parametrize("kind", ["branch", "concat"])
def test_mmpose_pose_checkpoint_imports_trunk_and_head(kind: str, tmp_path: Path) -> None:
    head = _head_keys(kind)
    path, ref = _mmpose_checkpoint(tmp_path / "pose.pth", head)
    model, report = import_pose_with_report(path, MINI_DET)
    _assert_same_trunk(model, ref)
    z = _states()
    with torch.no_grad():
        got = model.pose_head(*z)
    assert got.shape == (1, J, H // 4, W // 4)
    torch.testing.assert_close(got, _reference(head, kind, z), rtol=1e-5, atol=1e-5)
    assert model.pose_head.layout.concat == (kind == "concat")
    assert {"meta", "optimizer"} <= set(report.training_only)
    assert model.untrained_heads == ["head_seg"]  # a pose checkpoint has no segmentation head


def test_load_any_recognises_a_pose_checkpoint(tmp_path: Path) -> None:
    path, _ = _mmpose_checkpoint(tmp_path / "pose.pth", _head_keys("branch"))
    model, meta, what = load_any(path, MINI_DET)
    assert "pose checkpoint (16 joints)" in what and meta["published"]
    assert model.pose_head.layout.joints == J


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"keypoint_head.deconv_layers.0.weight": torch.zeros(8, 8, 4, 4)},
            "keypoint_head.deconv_layers.0.weight: deconvolution layers",
        ),
        (
            {"keypoint_head.final_layer.weight": torch.zeros(J, 12, 1, 1)},
            "keypoint_head.final_layer.weight (16, 12, 1, 1): 12 input channels fit neither",
        ),
        ({"keypoint_head.final_layer.3.bias": None}, "missing 1: keypoint_head.final_layer.3.bias"),
        ({"keypoint_head.final_layer.1.running_var": None}, "missing 1: keypoint_head.final_layer.1.running_var"),
        (
            {"keypoint_head.final_layer.1.weight": torch.ones(7)},
            "wrong shape 1: keypoint_head.final_layer.1.weight checkpoint (7,) vs head (120,)",
        ),
    ],
)
def test_a_head_that_does_not_fit_names_its_first_keys(change: dict, message: str, tmp_path: Path) -> None:
    head = _head_keys("branch" if "final_layer.weight" in str(change) else "concat")
    for k, v in change.items():
        if v is None:
            head.pop(k)
        else:
            head[k] = v
    path, _ = _mmpose_checkpoint(tmp_path / "bad.pth", head)
    with pytest.raises(CheckpointError) as e:
        import_pose_with_report(path, MINI_DET)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_checkpoint_without_a_keypoint_head_is_not_a_pose_checkpoint(tmp_path: Path) -> None:
    path, _ = _mmpose_checkpoint(tmp_path / "trunk.pth", {})
    with pytest.raises(CheckpointError, match="no keypoint_head"):
        import_pose_with_report(path, MINI_DET)


def test_the_imported_head_exports_as_head_pose(tmp_path: Path) -> None:
    """Through the parity gate, not flagged random; the ONNX engine gives the checkpoint's heatmaps."""
    from export.bundle import export_bundle

    head = _head_keys("concat")
    path, _ = _mmpose_checkpoint(tmp_path / "pose.pth", head)
    model, _ = import_pose_with_report(path, MINI_DET)
    with pytest.raises(ValueError, match="head_seg"):
        export_bundle(model, tmp_path / "refused", H, W)  # its seg head is not in the checkpoint
    man = export_bundle(model, tmp_path / "engines", H, W, heads=["pose"])
    assert man["random_heads"] == [] and set(man["engines"]) == {"injection", "deq_cell", "head_pose"}
    entry = man["engines"]["head_pose"]
    assert entry["outputs"][0]["shape"] == [1, J, H // 4, W // 4] and entry["parity"]["onnx"]["max_rel"] < 1e-3
    z = _states(seed=9)
    session = ort_session(tmp_path / "engines" / "head_pose.onnx")
    (heat,) = session.run(None, {f"z{i}": t.numpy() for i, t in enumerate(z)})
    torch.testing.assert_close(torch.from_numpy(heat), _reference(head, "concat", z), rtol=1e-4, atol=1e-4)


def test_own_format_round_trips_a_keypoint_head(tmp_path: Path) -> None:
    """A model trained with a keypoint head saves and loads it (layout beside the weights), strictly."""
    from export.checkpoint import load_checkpoint, save_checkpoint
    from export.mdeq import build_model
    from export.pose_head import KeypointHead, KeypointLayout

    model = build_model(MINI_DET).eval()
    model.pose_head = KeypointHead(CH, KeypointLayout(J, True, (3,), 1, True)).eval()
    save_checkpoint(model, tmp_path / "own.pt", {"steps": 1})
    loaded, meta = load_checkpoint(tmp_path / "own.pt")
    assert loaded.pose_head.layout == model.pose_head.layout and meta == {"steps": 1}
    z = _states()
    with torch.no_grad():
        torch.testing.assert_close(loaded.pose_head(*z), model.pose_head(*z))


def _cli_checkpoint(path: Path, head: dict[str, torch.Tensor]) -> Path:
    """An MMPose checkpoint of the named config ``tiny`` (the CLI needs a config name)."""
    from export.config import get_config

    cfg = get_config("tiny")
    sd, _ = published_state_dict(cfg, copies=False, head=False, loss=False)
    trunk = {"backbone." + k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")}
    trunk = {k: v for k, v in trunk.items() if not k.startswith("backbone.deq.")}
    torch.save({"meta": {}, "state_dict": {**trunk, **head}}, path)
    return path


def test_cli_exports_a_pose_checkpoint_and_refuses_a_bad_one_in_one_line(tmp_path: Path, capsys) -> None:
    from export.__main__ import main
    from export.config import get_config

    c0 = get_config("tiny").channels[0]
    g = torch.Generator().manual_seed(1)
    head = {
        "keypoint_head.final_layer.weight": torch.randn(J, c0, 1, 1, generator=g),
        "keypoint_head.final_layer.bias": torch.randn(J, generator=g),
    }
    good = _cli_checkpoint(tmp_path / "pose.pth", head)
    out = tmp_path / "engines-pose"
    args = ["--config", "tiny", "--checkpoint", str(good), "--height", "64", "--width", "128", "--heads", "pose"]
    assert main([*args, "--out", str(out)]) == 0
    assert "pose checkpoint (16 joints)" in capsys.readouterr().out
    assert (out / "head_pose.onnx").is_file() and not (out / "head_seg.onnx").exists()
    bad = _cli_checkpoint(tmp_path / "bad.pth", {**head, "keypoint_head.deconv_layers.0.weight": torch.zeros(1)})
    assert main(["--config", "tiny", "--checkpoint", str(bad), "--heads", "pose", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "keypoint_head.deconv_layers.0.weight" in err and "Traceback" not in err
