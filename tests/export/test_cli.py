"""``python -m export``: exports from each kind of source, and one-line errors with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export.__main__ import main
from export.checkpoint import save_checkpoint
from export.config import get_config
from export.mdeq import build_model
from tests.export.published_layout import published_state_dict, save_layout

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--height", "64", "--width", "128"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_missing_checkpoint_subprocess(tmp_path) -> None:
    """The real entry point: exit 2, one line on stderr, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "export", "--config", "tiny", "--checkpoint", str(tmp_path / "none.pt")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "checkpoint not found" in lines[0]
    assert "--random-init" in lines[0] and "make train" in lines[0]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--height", "100", "--width", "128"], "multiples of 32"),
        (["--formats", "onnx,tflite"], "unknown --formats tflite"),
        (["--heads", "seg,depth"], "unknown --heads depth"),
        (["--batch", "0"], "--batch must be >= 1"),
    ],
)
def test_bad_arguments(capsys, tmp_path, extra, needle) -> None:
    assert main(["--config", "tiny", "--random-init", "--out", str(tmp_path / "e"), *extra]) == 2
    assert needle in _error_line(capsys)
    assert not (tmp_path / "e").exists()


def test_plan_without_tensorrt(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["--config", "tiny", "--random-init", "--formats", "onnx,plan", "--out", str(tmp_path / "e")]) == 2
    line = _error_line(capsys)
    assert "TensorRT is not installed" in line and ".onnx" in line and ".pt2" in line


def test_unreadable_checkpoint(capsys, tmp_path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert main(["--config", "tiny", "--checkpoint", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "e")]) == 2
    assert "cannot read checkpoint" in _error_line(capsys)


def test_random_init_export(capsys, tmp_path) -> None:
    out = tmp_path / "engines"
    assert main(["--config", "tiny", "--random-init", *SMALL, "--heads", "seg,pose", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "deq_cell.onnx:" in text and "parity" in text and "wrote" in text
    man = json.loads((out / "manifest.json").read_text())
    assert set(man["engines"]) == {"injection", "deq_cell", "head_seg", "head_pose"}
    assert man["engines"]["head_pose"]["outputs"][0]["name"] == "heatmaps"
    assert man["command"].startswith("python -m export --config tiny --random-init")


def test_export_from_own_checkpoint(capsys, tmp_path) -> None:
    model = build_model(get_config("tiny"), seed=5)
    ckpt = save_checkpoint(model, tmp_path / "tiny.pt", {"step": 1})
    out = tmp_path / "engines"
    assert main(["--checkpoint", str(ckpt), *SMALL, "--out", str(out)]) == 0
    assert "deqstream-ckpt/1" in capsys.readouterr().out
    _check_injection_weights(out, model)


def test_export_from_published_checkpoint(capsys, tmp_path) -> None:
    sd, ref = published_state_dict(get_config("tiny"))
    torch.save(sd, tmp_path / "pub.pth")
    out = tmp_path / "engines"
    assert main(["--config", "tiny", "--checkpoint", str(tmp_path / "pub.pth"), *SMALL, "--out", str(out)]) == 0
    assert "published MDEQ checkpoint" in capsys.readouterr().out
    _check_injection_weights(out, ref)


def test_published_checkpoint_for_wrong_config(capsys, tmp_path) -> None:
    sd, _ = published_state_dict(get_config("tiny"), copies=False)
    torch.save(sd, tmp_path / "pub.pth")
    args = ["--config", "small-seg", "--checkpoint", str(tmp_path / "pub.pth"), *SMALL, "--out", str(tmp_path / "e")]
    assert main(args) == 2
    assert "does not fit config 'small-seg'" in _error_line(capsys)


def _check_injection_weights(out: Path, model: torch.nn.Module) -> None:
    """The exported injection computes this model's x (so the right weights were exported)."""
    import onnxruntime as ort

    frame = torch.randint(0, 256, (1, 64, 128, 3), dtype=torch.uint8)
    sess = ort.InferenceSession(str(out / "injection.onnx"), providers=["CPUExecutionProvider"])
    (x,) = sess.run(None, {"frame": frame.numpy()})
    with torch.no_grad():
        ref = model.eval().injection(frame)
    assert float((ref - torch.from_numpy(x)).abs().max() / ref.abs().max()) < 1e-5


def test_help_mentions_every_option(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in (
        "--config",
        "--checkpoint",
        "--random-init",
        "--formats",
        "--precision",
        "--heads",
        "--out",
        "--allow-random-head",
    ):
        assert opt in text


@pytest.mark.parametrize("kind", ["checkpoint_tar", "dataparallel"])
def test_export_from_reference_training_layouts(capsys, tmp_path, kind) -> None:
    """checkpoint.pth.tar and module.-prefixed FullModel files export; one line says what was ignored."""
    sd, ref = published_state_dict(get_config("tiny"))
    ckpt = save_layout(sd, tmp_path / "checkpoint.pth.tar", kind)
    out = tmp_path / "engines"
    assert main(["--config", "tiny", "--checkpoint", str(ckpt), *SMALL, "--out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "ignored training-only entries" in line]
    assert len(lines) == 1 and "loss.criterion.weight (7,)" in lines[0]
    if kind == "checkpoint_tar":
        assert "epoch, best_mIoU" in lines[0] and "optimizer" in lines[0] and "lr_scheduler" in lines[0]
    _check_injection_weights(out, ref)


def test_small_cls_exports_its_classification_head(capsys, tmp_path) -> None:
    sd, _ = published_state_dict(get_config("small-cls"), copies=False)
    ckpt = save_layout(sd, tmp_path / "checkpoint.pth.tar", "checkpoint_tar", task="cls")
    out = tmp_path / "engines"
    assert (
        main(["--config", "small-cls", "--checkpoint", str(ckpt), "--height", "64", "--width", "64", "--out", str(out)])
        == 0
    )
    assert "ignored training-only entries: epoch, model, perf, optimizer, lr_scheduler" in capsys.readouterr().out
    man = json.loads((out / "manifest.json").read_text())
    assert set(man["engines"]) == {"injection", "deq_cell", "head_cls"}
    assert man["engines"]["head_cls"]["outputs"][0] == {"name": "logits", "shape": [1, 1000], "dtype": "float32"}
    assert man["random_heads"] == [] and man["config"]["test_solve"]["threshold"] == 26


def test_trunk_only_checkpoint_needs_allow_random_head(capsys, tmp_path) -> None:
    sd, _ = published_state_dict(get_config("tiny"), head=False)
    torch.save(sd, tmp_path / "trunk.pth")
    args = ["--config", "tiny", "--checkpoint", str(tmp_path / "trunk.pth"), *SMALL, "--out", str(tmp_path / "e")]
    assert main(args) == 2
    line = _error_line(capsys)
    assert "head_seg: weights not in the checkpoint" in line and "--allow-random-head" in line
    assert not (tmp_path / "e").exists()
    assert main([*args, "--allow-random-head"]) == 0
    man = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert man["random_heads"] == ["head_seg"] and man["allow_random_head"] is True
    assert "--allow-random-head" in man["command"]


def test_auto_formats_says_why_in_one_line(monkeypatch) -> None:
    """`--formats auto` (the default): ONNX everywhere, a .plan too only where TensorRT imports and a GPU is seen."""
    import types

    from export.__main__ import auto_formats

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert auto_formats() == (
        ["onnx"],
        "formats: onnx (no .plan: TensorRT is not installed; pip install '.[tensorrt]' on a GPU machine)",
    )
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.9.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_formats() == (["onnx"], "formats: onnx (no .plan: TensorRT is installed but no CUDA GPU is visible)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _i=0: "NVIDIA H100")
    assert auto_formats() == (["onnx", "plan"], "formats: onnx,plan (TensorRT 10.9.0 on NVIDIA H100)")


def test_default_export_is_onnx_here_and_adds_the_flownet(capsys, tmp_path, monkeypatch) -> None:
    """What `make export` runs on a machine without TensorRT: every engine, the FlowNet included, as ONNX."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "engines"
    args = ["--checkpoint", str(ROOT / "checkpoints/tiny_sur.pt"), *SMALL, "--out", str(out)]
    assert main([*args, "--flownet", str(ROOT / "checkpoints/flownet_tiny.pt")]) == 0
    assert "formats: onnx (no .plan: TensorRT is not installed" in capsys.readouterr().out
    man = json.loads((out / "manifest.json").read_text())
    assert set(man["engines"]) == {"injection", "deq_cell", "head_seg", "flownet"}
    assert all(set(e["files"]) == {"onnx"} for e in man["engines"].values())
