"""An ``--engine`` file that does not exist: one line naming the engines that do exist and the command that builds
the asked kind (the command is checked against the text a newcomer would type, written out here by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.bundle import missing_engine_message, open_bundle
from runtime.errors import BundleError
from runtime.run import main

COMMAND = (
    "python -m export --config tiny --checkpoint checkpoints/tiny_sur.pt --height 256 --width 512 --formats auto "
    "--flownet checkpoints/flownet_tiny.pt --out engines"
)


def _onnx_folder(root: Path, command: str | None = COMMAND) -> Path:
    """A folder as `make export` leaves it on a machine without TensorRT (the files' contents are never read)."""
    root.mkdir()
    for name in ("injection", "deq_cell", "head_seg", "flownet"):
        (root / f"{name}.onnx").write_bytes(b"onnx")
    if command is not None:
        (root / "manifest.json").write_text(json.dumps({"format": "deqstream-bundle/1", "command": command}))
    return root


def test_plan_asked_where_only_onnx_was_built(tmp_path) -> None:
    root = _onnx_folder(tmp_path / "engines")
    line = missing_engine_message(root / "deq_cell.plan")
    assert line == (
        f"engine file {root}/deq_cell.plan does not exist; {root}/ holds deq_cell.onnx, flownet.onnx, head_seg.onnx, "
        "injection.onnx; build the plan engines with: python -m export --config tiny --checkpoint "
        "checkpoints/tiny_sur.pt --height 256 --width 512 --flownet checkpoints/flownet_tiny.pt --formats onnx,plan "
        f"--out {root} (needs TensorRT and a CUDA GPU)"
    )


def test_pt2_keeps_the_formats_the_bundle_had(tmp_path) -> None:
    root = _onnx_folder(tmp_path / "engines", COMMAND.replace("--formats auto", "--formats plan,onnx"))
    line = missing_engine_message(root / "deq_cell.pt2")
    assert line.endswith("--flownet checkpoints/flownet_tiny.pt --formats onnx,pt2,plan " + f"--out {root}"), line


@pytest.mark.parametrize(
    ("make", "asked", "expected"),
    [
        (True, "deq_cell.onnx", "holds no engines; build the onnx engines with: make export ENGINES={root}"),
        (False, "deq_cell.plan", "holds no engines; build the plan engines with: make export ENGINES={root} "
         "FORMATS=onnx,plan (needs TensorRT and a CUDA GPU)"),
    ],
)  # fmt: skip
def test_no_bundle_there_points_at_make_export(tmp_path, make, asked, expected) -> None:
    root = tmp_path / "engines"
    if make:
        root.mkdir()
    line = missing_engine_message(root / asked)
    assert line == f"engine file {root}/{asked} does not exist; {root}/ " + expected.format(root=root)


def test_folder_without_manifest_also_gets_make_export(tmp_path) -> None:
    root = _onnx_folder(tmp_path / "engines", command=None)
    line = missing_engine_message(root / "deq_cell.plan")
    assert "holds deq_cell.onnx, flownet.onnx" in line and line.endswith(
        f"make export ENGINES={root} FORMATS=onnx,plan (needs TensorRT and a CUDA GPU)"
    )


def test_open_bundle_and_the_cli_say_it_in_one_line(tmp_path, capsys) -> None:
    root = _onnx_folder(tmp_path / "engines")
    with pytest.raises(BundleError, match="holds deq_cell.onnx.*--formats onnx,plan"):
        open_bundle(root / "deq_cell.plan")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    rc = main(["--engine", str(root / "deq_cell.plan"), str(clip), "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: engine file"), err
    assert "--formats onnx,plan" in err[0] and "Traceback" not in err[0]
