"""Published MDEQ configs on the export side: what the manifest records (test-time solve, final
upsampling), the classification head exported from the checkpoint, and the refusal to export a
head whose weights the checkpoint lacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export.bundle import export_bundle
from export.checkpoint import config_from_dict, import_published, load_checkpoint, save_checkpoint
from export.config import CONFIGS, MDEQConfig, SolveSpec, get_config, reference_solve
from export.mdeq import ClassMapHead, build_model
from tests.export.published_layout import published_state_dict

H, W = 64, 64
MINI_CLS = MDEQConfig(
    name="mini-cls",
    channels=(8, 16, 32, 64),
    expansion=2,
    groups=4,
    num_classes=10,
    task="cls",
    f_thres=6,
    test_solve=reference_solve(6),
    cls_head_channels=(4, 8, 16, 32),
    cls_final_channels=64,
)
MINI_SEG = MDEQConfig(
    name="mini-seg",
    channels=(8, 16, 32, 64),
    expansion=2,
    groups=4,
    num_classes=5,
    f_thres=5,
    upsample_align_corners=False,
    test_solve=reference_solve(5),
)


@pytest.mark.parametrize(("name", "f_thres"), [("small-seg", 27), ("xl-seg", 26), ("small-cls", 26), ("xl-cls", 27)])
def test_published_configs_carry_the_reference_test_time_solve(name: str, f_thres: int) -> None:
    """F_THRES of locuslab/mdeq experiments/*.yaml; Broyden, 1e-5 absolute (x sqrt(numel)), lowest."""
    cfg = get_config(name)
    assert cfg.f_thres == f_thres
    assert cfg.test_solve == SolveSpec("broyden", threshold=f_thres, tol=1e-5, tol_kind="abs", returns="lowest")
    assert cfg.test_solve.max_iter == f_thres + 1  # f at z = 0, then F_THRES updates
    if cfg.task == "seg":
        assert cfg.upsample_align_corners is False  # the test script's inference()


def test_tiny_keeps_what_it_was_measured_with() -> None:
    cfg = get_config("tiny")
    assert cfg.upsample_align_corners is True
    assert cfg.test_solve == SolveSpec("fixed_point", threshold=cfg.f_thres) and cfg.test_solve.max_iter == 20


def test_small_cls_parameter_count() -> None:
    # notes/mdeq-streamdeq.md: the small ImageNet model has about 16.8 M trainable parameters.
    model = build_model(CONFIGS["small-cls"])
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 16.8e6) / 16.8e6 < 0.005


def test_config_round_trips_with_the_solve(tmp_path) -> None:
    d = MINI_SEG.to_dict()
    assert d["test_solve"] == {
        "solver": "broyden",
        "threshold": 5,
        "tol": 1e-5,
        "tol_kind": "abs",
        "returns": "lowest",
        "tol_scale": "sqrt_numel",
        "check_every": None,
    }
    assert config_from_dict(d) == MINI_SEG
    model = build_model(MINI_SEG)
    loaded, _ = load_checkpoint(save_checkpoint(model, tmp_path / "m.pt", {}))
    assert loaded.cfg == MINI_SEG
    old = {k: v for k, v in get_config("tiny").to_dict().items() if k not in ("test_solve", "upsample_align_corners")}
    assert config_from_dict(old) == get_config("tiny")  # checkpoints written before these fields


def test_class_map_upsampling_follows_the_config() -> None:
    """Against F.interpolate directly: align_corners=False for a published config, True for tiny."""
    gen = torch.Generator().manual_seed(0)
    for cfg in (MINI_SEG, get_config("tiny")):
        model = build_model(cfg).eval()
        z = [torch.randn(s, generator=gen) for s in model.state_shapes(1, H, W)]
        with torch.no_grad():
            low = model.head(*z)
            got = ClassMapHead(model.head, (H, W))(*z)
            for corners in (False, True):
                want = F.interpolate(low, size=(H, W), mode="bilinear", align_corners=corners).argmax(1)
                same = bool(torch.equal(got.long(), want))
                assert same == (corners == cfg.upsample_align_corners)


def test_manifest_records_solve_and_upsampling(tmp_path) -> None:
    sd, _ = published_state_dict(MINI_SEG)
    man = export_bundle(import_published(sd, MINI_SEG), tmp_path / "e", H, W)
    assert man["config"]["upsample_align_corners"] is False
    assert man["config"]["test_solve"]["solver"] == "broyden" and man["config"]["test_solve"]["threshold"] == 5
    assert man["random_heads"] == [] and man["allow_random_head"] is False
    assert set(man["engines"]) == {"injection", "deq_cell", "head_seg"}


def _onnx(path, feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v.numpy() for k, v in feeds.items()})


def test_cls_head_is_exported_from_the_checkpoint(tmp_path) -> None:
    """head_cls: z -> (1, num_classes) logits of the checkpoint's own head, at the parity tolerance."""
    sd, ref = published_state_dict(MINI_CLS, copies=False)
    model = import_published(sd, MINI_CLS)
    man = export_bundle(model, tmp_path / "e", H, W)
    head = man["engines"]["head_cls"]
    assert "head_seg" not in man["engines"]
    assert [o["name"] for o in head["outputs"]] == ["logits"] and head["outputs"][0]["shape"] == [1, 10]
    assert head["parity"]["onnx"]["max_rel"] <= 1e-3
    frame = torch.randint(0, 256, (1, H, W, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z, _ = ref.solve(frame, 3)  # the fixture's reference model: same weights, never imported
        want = ref.head(*z)
    (got,) = _onnx(tmp_path / "e" / "head_cls.onnx", {f"z{i}": t for i, t in enumerate(z)})
    assert float(np.abs(got - want.numpy()).max() / want.abs().max()) < 1e-3
    assert got.argmax() == int(want.argmax())


def test_untrained_head_is_refused_unless_allowed(tmp_path) -> None:
    sd, _ = published_state_dict(MINI_CLS, copies=False, head=False)
    model = import_published(sd, MINI_CLS)
    with pytest.raises(ValueError, match="head_cls: weights not in the checkpoint.*--allow-random-head"):
        export_bundle(model, tmp_path / "e", H, W)
    assert not (tmp_path / "e").exists()
    man = export_bundle(model, tmp_path / "e", H, W, allow_random_head=True)
    assert man["random_heads"] == ["head_cls"] and man["allow_random_head"] is True


def test_pose_head_from_a_checkpoint_is_refused(tmp_path) -> None:
    sd, _ = published_state_dict(MINI_SEG, copies=False)
    model = import_published(sd, MINI_SEG)
    with pytest.raises(ValueError, match="head_pose: weights not in the checkpoint"):
        export_bundle(model, tmp_path / "e", H, W, heads=("seg", "pose"))


def test_wrong_task_head_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="has no seg head; use --heads cls"):
        export_bundle(build_model(MINI_CLS), tmp_path / "e", H, W, heads=("seg",))
