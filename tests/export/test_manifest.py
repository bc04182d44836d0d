"""manifest.json: contents match the engine files (names, shapes, dtypes, hashes) and
validation catches broken bundles."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest
import torch

from export.bundle import export_bundle
from export.checkpoint import config_from_dict
from export.config import get_config
from export.manifest import (
    FORMAT,
    REQUIRED_KEYS,
    ManifestError,
    load_bundle_manifest,
    read_manifest,
    validate_manifest,
    write_manifest,
)
from export.mdeq import build_model

H, W = 64, 128
ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.UINT8: "uint8"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, dict, torch.nn.Module]:
    model = build_model(get_config("tiny"), seed=0)
    out = tmp_path_factory.mktemp("m") / "engines"
    returned = export_bundle(model, out, H, W, heads=("seg", "pose"), command="python -m export --test")
    return out, returned, model


def _io(path: Path) -> tuple[list[dict], list[dict]]:
    g = onnx.load(str(path)).graph

    def spec(v) -> dict:
        t = v.type.tensor_type
        return {"name": v.name, "shape": [d.dim_value for d in t.shape.dim], "dtype": ONNX_DTYPES[t.elem_type]}

    return [spec(v) for v in g.input], [spec(v) for v in g.output]


def test_manifest_on_disk_equals_returned(bundle) -> None:
    out, returned, _ = bundle
    assert json.loads((out / "manifest.json").read_text()) == returned
    assert load_bundle_manifest(out) == returned


def test_top_level_fields(bundle) -> None:
    _, man, model = bundle
    cfg = model.cfg
    assert set(REQUIRED_KEYS) <= set(man) and man["format"] == FORMAT
    assert (man["height"], man["width"], man["batch"], man["task"]) == (H, W, 1, "seg")
    assert man["strides"] == [4, 8, 16, 32] and man["f_thres"] == cfg.f_thres and man["precision"] == "fp32"
    assert [s["shape"] for s in man["state"]] == [list(s) for s in model.state_shapes(1, H, W)]
    assert [s["name"] for s in man["state"]] == ["z0", "z1", "z2", "z3"]
    assert man["classes"] == list(cfg.class_names) and man["palette"] == [list(c) for c in cfg.palette]
    assert man["normalization"] == {"input": "uint8 RGB NHWC", "mean": list(cfg.mean), "std": list(cfg.std)}
    assert config_from_dict(man["config"]) == cfg
    assert man["command"] == "python -m export --test"
    assert man["versions"]["torch"] == torch.__version__ and man["versions"]["onnx"] == onnx.__version__
    assert set(man["versions"]) == {"torch", "onnx", "onnxruntime", "tensorrt", "cuda", "gpu", "compute_capability"}


def test_engine_specs_match_the_files(bundle) -> None:
    out, man, _ = bundle
    assert set(man["engines"]) == {"injection", "deq_cell", "head_seg", "head_pose"}
    for name, eng in man["engines"].items():
        fname = eng["files"]["onnx"]
        assert fname == f"{name}.onnx"
        assert eng["sha256"][fname] == hashlib.sha256((out / fname).read_bytes()).hexdigest()
        ins, outs = _io(out / fname)
        assert eng["inputs"] == ins and eng["outputs"] == outs
        assert eng["device"]["onnx"] == "cpu"
        assert eng["parity"]["onnx"]["max_rel"] < 1e-3
    assert man["engines"]["deq_cell"]["inputs"][:4] == man["state"]
    assert man["engines"]["head_seg"]["outputs"] == [{"name": "classes", "shape": [1, H, W], "dtype": "uint8"}]
    assert "mismatch" in man["engines"]["head_seg"]["parity"]["onnx"]
    assert "randomly initialised" in man["engines"]["head_pose"]["notes"][0]


def test_validation_catches_tampering(bundle, tmp_path) -> None:
    out, man, _ = bundle
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in out.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    validate_manifest(read_manifest(copy), copy)
    good = (copy / "deq_cell.onnx").read_bytes()
    data = bytearray(good)
    data[-1] ^= 1
    (copy / "deq_cell.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="deq_cell.onnx does not match its sha256"):
        load_bundle_manifest(copy)
    (copy / "deq_cell.onnx").write_bytes(good)
    (copy / "head_seg.onnx").unlink()
    with pytest.raises(ManifestError, match="head_seg.onnx is missing"):
        validate_manifest(
            {**man, "engines": {k: man["engines"][k] for k in ("injection", "deq_cell", "head_seg")}}, copy
        )


def test_validation_catches_structure(bundle, tmp_path) -> None:
    _, man, _ = bundle
    with pytest.raises(ManifestError, match="lacks keys: state"):
        validate_manifest({k: v for k, v in man.items() if k != "state"})
    with pytest.raises(ManifestError, match="no 'deq_cell' engine"):
        validate_manifest({**man, "engines": {"injection": man["engines"]["injection"]}})
    bad = json.loads(json.dumps(man))
    bad["engines"]["injection"]["files"]["pt2"] = "injection.onnx"
    with pytest.raises(ManifestError, match="does not fit kind 'pt2'"):
        validate_manifest(bad)
    with pytest.raises(ManifestError, match="no manifest.json"):
        read_manifest(tmp_path)
    write_manifest({**man, "format": "other/9"}, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # atomic write left no temp file
    with pytest.raises(ManifestError, match="expected 'deqstream-bundle/1'"):
        read_manifest(tmp_path)


def test_one_contract_for_exporter_and_runtime(bundle, tmp_path) -> None:
    """Both sides read the same definition: a key the exporter requires, the runtime requires too."""
    import export.manifest as em
    import runtime.bundle as rb
    import runtime.manifest as rm
    from runtime.errors import BundleError

    for name in ("FORMAT", "MANIFEST_NAME", "REQUIRED_KEYS", "ManifestError", "read_manifest", "sha256_file"):
        assert getattr(em, name) is getattr(rm, name), name
    assert rb.read_manifest is rm.read_manifest and rb.sha256_file is rm.sha256_file
    out, man, _ = bundle
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in out.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    assert rb.open_bundle(copy / "deq_cell.onnx").height == H
    write_manifest({k: v for k, v in man.items() if k != "versions"}, copy)
    with pytest.raises(ManifestError, match="lacks keys: versions") as e:
        rb.open_bundle(copy / "deq_cell.onnx")
    assert isinstance(e.value, BundleError) and isinstance(e.value, ValueError)
