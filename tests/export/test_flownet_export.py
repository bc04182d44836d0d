"""The flownet engine: exported into an existing bundle with the parity gate, listed in the
manifest under the fixed names, readable by the runtime, and rejected cleanly when it does not fit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from export.config import get_config
from export.flownet import FlowNetS
from export.flownet_export import add_flownet, flownet_names, main, sample_pair
from export.onnx_export import run_onnx

H, W = 64, 128


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.bundle import export_bundle
    from export.mdeq import build_model

    out = tmp_path_factory.mktemp("fb") / "engines"
    export_bundle(build_model(get_config("tiny"), seed=0), out, H, W, batch=1, formats=("onnx",))
    return out


def test_flownet_added_with_parity_and_read_by_the_runtime(bundle, tmp_path):
    from runtime.bundle import open_bundle

    eng = tmp_path / "engines"
    shutil.copytree(bundle, eng)
    torch.manual_seed(0)
    net = FlowNetS(get_config("tiny"), width=0.125, levels=5).eval()
    with torch.no_grad():  # a non-trivial scale field, so the parity check has something to compare
        net.final_scale.weight.normal_(0, 0.1)
    entry = add_flownet(eng, net)
    manifest = json.loads((eng / "manifest.json").read_text())
    assert manifest["engines"]["flownet"] == entry
    ins, outs = flownet_names(4)
    assert [t["name"] for t in entry["inputs"]] == ins == ["frame", "key_frame"]
    assert [t["name"] for t in entry["outputs"]] == outs
    assert entry["inputs"][0]["shape"] == [1, H, W, 3] and entry["inputs"][0]["dtype"] == "uint8"
    assert entry["outputs"][0]["shape"] == [1, 2, H // 4, W // 4]
    assert entry["outputs"][7]["shape"] == [1, 128, H // 32, W // 32]
    assert entry["parity"]["onnx"]["max_rel"] < 1e-3
    b = open_bundle(eng / "deq_cell.onnx")  # checks every sha256, flownet included
    assert "flownet" in b.engines
    # Independent check on a pair the export never saw: ORT vs PyTorch.
    frame, key = sample_pair(1, H, W, seed=7, shift=6)
    got = run_onnx(eng / "flownet.onnx", {"frame": frame, "key_frame": key})
    with torch.no_grad():
        ref = net(frame, key)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r.numpy(), atol=1e-4 * max(1.0, float(r.abs().max())))
    assert not list(eng.glob(".flownet.tmp-*"))


def test_mismatched_flownet_leaves_the_bundle_alone(bundle, tmp_path):
    eng = tmp_path / "engines"
    shutil.copytree(bundle, eng)
    before = (eng / "manifest.json").read_bytes()
    net = FlowNetS(get_config("tiny"), width=0.125)
    net.channels = (8, 8, 8, 8)
    with pytest.raises(ValueError, match="state channels"):
        add_flownet(eng, net)
    assert (eng / "manifest.json").read_bytes() == before and not (eng / "flownet.onnx").exists()


def test_cli(bundle, tmp_path, capsys):
    eng = tmp_path / "engines"
    shutil.copytree(bundle, eng)
    assert main(["--bundle", str(eng), "--checkpoint", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no such FlowNet checkpoint" in err
    assert main(["--bundle", str(tmp_path / "nowhere"), "--identity"]) == 2
    assert "manifest.json" in capsys.readouterr().err
    assert main(["--bundle", str(eng), "--identity"]) == 0
    assert "flownet" in json.loads((eng / "manifest.json").read_text())["engines"]


def test_identity_flownet_makes_its_outputs_on_the_input_device():
    """On CUDA the zeros/ones were made on the CPU and added to a CUDA tensor; the meta device
    shows the same device mismatch on a CPU-only machine."""
    from export.flownet_export import identity_flownet

    net = identity_flownet([16, 32, 64, 128])
    frame = torch.zeros(1, H, W, 3, dtype=torch.uint8, device="meta")
    outs = net(frame, frame)
    assert {o.device.type for o in outs} == {"meta"}
    assert outs[0].shape == (1, 2, H // 4, W // 4) and outs[7].shape == (1, 128, H // 32, W // 32)
    cpu = net(torch.zeros(1, H, W, 3, dtype=torch.uint8), torch.zeros(1, H, W, 3, dtype=torch.uint8))
    assert all(float(f.abs().max()) == 0 for f in cpu[:4])
    assert all(float(s.min()) == 1 == float(s.max()) for s in cpu[4:])
