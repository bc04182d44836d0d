"""StreamDEQ's checkpoint layouts import (the streaming-solve issue's item 4).

Written from StreamDEQ's code as read (ufukertenli/streamdeq-code): its Cityscapes MDEQ-Vision model (deq v2's
``MDEQNet``) has the published module names but no duplicate cell copies (no ``fullstage_copy.*``, no
``deq.func*``); ``seg_train.py`` saves ``FullModel.state_dict()`` as ``final_state.pth`` / ``best.pth`` and the
periodic ``checkpoint.pth.tar`` dict (epoch, best_mIoU, state_dict, optimizer, lr_scheduler). Its ImageNet-VID
detector is an MMDetection ``MDEQ_FasterRCNN`` whose checkpoints hold ``meta``, ``state_dict`` and ``optimizer``,
the MDEQ trunk under ``backbone.*`` (POST_GN_AFFINE false: no post-fusion GroupNorm weights) beside ``neck.*``,
``rpn_head.*`` and ``roi_head.*``. The folded weights an import must produce come from ``published_state_dict``'s
reference model (tests/export/published_layout.py), not from export/checkpoint.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from export.checkpoint import CheckpointError, canonical_state, import_published_with_report
from export.config import CONFIGS, MDEQConfig, streamdeq_solve
from tests.export.published_layout import published_state_dict, save_layout
from tests.export.test_published import MINI_SEG as PUBLISHED_MINI_SEG

MINI_SEG = dataclasses.replace(PUBLISHED_MINI_SEG, stream_solve=streamdeq_solve())
MINI_DET = dataclasses.replace(MINI_SEG, name="mini-det", post_gn_affine=False)


def streamdeq_seg_state(cfg: MDEQConfig = MINI_SEG) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """FullModel keys as StreamDEQ's seg_train saves them: no fullstage_copy / deq.* duplicates."""
    sd, ref = published_state_dict(cfg, copies=False)
    return {k: v for k, v in sd.items() if not k.startswith("model.deq.")}, ref


def _trunk(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in canonical_state(model).items() if k.startswith(("downsample.", "stage0.", "fullstage."))}


def _assert_same_trunk(got: torch.nn.Module, ref: torch.nn.Module) -> None:
    want = _trunk(ref)
    have = _trunk(got)
    assert have.keys() == want.keys()
    for k, v in want.items():
        torch.testing.assert_close(have[k], v, rtol=1e-6, atol=1e-7, msg=k)


@pytest.mark.parametrize("kind", ["final", "checkpoint_tar", "dataparallel", "dataparallel_tar"])
def test_streamdeq_segmentation_layouts_import(kind: str, tmp_path: Path) -> None:
    sd, ref = streamdeq_seg_state()
    assert not any(k.endswith("conv1.weight") for k in sd) and any(k.endswith("conv1.weight_g") for k in sd)
    path = save_layout(sd, tmp_path / "ckpt.pth", kind)
    model, report = import_published_with_report(path, MINI_SEG)
    _assert_same_trunk(model, ref)
    torch.testing.assert_close(model.head.last_layer[0].weight, ref.last_layer[0].weight)
    assert len(report.folded) == 3 * len(MINI_SEG.channels) and not report.ignored  # no duplicates to drop
    assert model.untrained_heads == []


def _mmdet_checkpoint(sd: dict[str, torch.Tensor], path: Path) -> Path:
    """The MDEQ trunk keys (model.-prefixed seg layout) rewritten as an MMDetection detector's checkpoint."""
    trunk = {"backbone." + k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")}
    heads = {
        "neck.lateral_convs.0.conv.weight": torch.zeros(256, 8, 1, 1),
        "neck.fpn_convs.0.conv.weight": torch.zeros(256, 256, 3, 3),
        "rpn_head.rpn_conv.weight": torch.zeros(256, 256, 3, 3),
        "rpn_head.rpn_cls.weight": torch.zeros(3, 256, 1, 1),
        "roi_head.bbox_head.fc_cls.weight": torch.zeros(31, 1024),
    }
    obj = {
        "meta": {"mmdet_version": "2.10.0", "epoch": 7, "CLASSES": ["airplane"] * 30},
        "state_dict": {**trunk, **heads},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.01}]},
    }
    torch.save(obj, path)
    return path


def test_streamdeq_detector_backbone_imports(tmp_path: Path) -> None:
    """The trunk under backbone.* (post-fusion GroupNorm without affine), neck and heads named and left."""
    sd, ref = published_state_dict(MINI_DET, copies=False, head=False, loss=False)
    assert not any("post_fuse_layers.0.gnorm" in k for k in sd)  # POST_GN_AFFINE false
    path = _mmdet_checkpoint({k: v for k, v in sd.items() if not k.startswith("model.deq.")}, tmp_path / "det.pth")
    model, report = import_published_with_report(path, MINI_DET)
    _assert_same_trunk(model, ref)
    assert sorted(p.split(".")[0] for p in report.detector_parts) == ["neck", "roi_head", "rpn_head"]
    assert {"meta", "optimizer"} <= set(report.training_only)
    assert "took the detector's backbone" in report.summary()
    assert model.untrained_heads == ["head_seg"]  # the exporter refuses it unless --allow-random-head


def test_detector_with_another_backbone_names_the_keys(tmp_path: Path) -> None:
    """A ResNet detector is not an MDEQ: one error naming the first mismatching keys."""
    sd = {
        "backbone.conv1.weight": torch.zeros(64, 3, 7, 7),
        "backbone.layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1),
        "neck.lateral_convs.0.conv.weight": torch.zeros(256, 256, 1, 1),
    }
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError) as e:
        import_published_with_report(tmp_path / "resnet.pth", MINI_DET)
    msg = str(e.value)
    assert "\n" not in msg and "missing" in msg and "unexpected 2: conv1.weight (64, 3, 7, 7)" in msg


def test_detector_backbone_exports_with_its_streaming_solve(tmp_path: Path) -> None:
    """Exported (ONNX parity gate included) with affine-free post-fusion GroupNorm; the streaming solve is
    StreamDEQ's Broyden rule."""
    from export.bundle import export_bundle

    sd, _ = published_state_dict(MINI_DET, copies=False, head=False, loss=False)
    path = _mmdet_checkpoint(sd, tmp_path / "det.pth")
    model, _ = import_published_with_report(path, MINI_DET)
    with pytest.raises(ValueError, match="head"):
        export_bundle(model, tmp_path / "refused", 64, 128)
    man = export_bundle(model, tmp_path / "engines", 64, 128, allow_random_head=True)
    assert man["config"]["post_gn_affine"] is False
    assert man["config"]["stream_solve"]["solver"] == "broyden"
    assert man["config"]["stream_solve"]["returns"] == "lowest_new"
    assert man["random_heads"] == ["head_seg"]


def test_xl_det_config_is_streamdeqs_detector_backbone() -> None:
    cfg = CONFIGS["xl-det"]
    assert cfg.channels == (88, 176, 352, 704) and cfg.expansion == 6 and cfg.f_thres == 26
    assert cfg.post_gn_affine is False and cfg.stream_solve == streamdeq_solve()
