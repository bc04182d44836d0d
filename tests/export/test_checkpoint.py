"""Checkpoints: our own format round trip, and import of the published MDEQ layout."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from export.checkpoint import (
    FORMAT,
    CheckpointError,
    import_published,
    import_published_with_report,
    load_any,
    load_checkpoint,
    save_checkpoint,
)
from export.config import get_config
from export.mdeq import build_model
from tests.export.published_layout import CLS_HEAD_KEYS, LAYOUTS, published_state_dict, save_layout


def _frame(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, h: int = 64, w: int = 128, iters: int = 3) -> None:
    frame = _frame(h, w)
    with torch.no_grad():
        za, _ = a.solve(frame, iters)
        zb, _ = b.solve(frame, iters)
        for x, y in zip(za, zb):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.head(*za), b.head(*zb), rtol=1e-5, atol=1e-5)


def test_own_format_round_trip(tmp_path) -> None:
    model = build_model(get_config("tiny"), seed=3).eval()
    path = save_checkpoint(model, tmp_path / "sub" / "tiny.pt", {"step": 7, "loss": 0.5})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and set(raw) == {"format", "config", "state_dict", "meta"}
    loaded, meta = load_checkpoint(path)
    assert meta == {"step": 7, "loss": 0.5}
    assert loaded.cfg == model.cfg  # lists turned back into tuples
    _same_outputs(model, loaded)
    assert [p.name for p in path.parent.iterdir()] == ["tiny.pt"]  # no temp file left


def test_load_any_detects_own_format(tmp_path) -> None:
    model = build_model(get_config("tiny"), seed=1).eval()
    save_checkpoint(model, tmp_path / "a.pt", {})
    loaded, _, what = load_any(tmp_path / "a.pt", None)
    assert FORMAT in what and loaded.cfg.name == "tiny"


def test_small_seg_published_import_matches_folded_model(tmp_path) -> None:
    cfg = get_config("small-seg")
    sd, ref = published_state_dict(cfg)
    assert any(k.endswith("weight_g") for k in sd) and any(k.startswith("model.deq.func_copy.") for k in sd)
    torch.save(sd, tmp_path / "seg.pth")
    model, report = import_published_with_report(tmp_path / "seg.pth", cfg)
    assert len(report.folded) == 3 * cfg.num_scales  # conv1, conv2 per block + post-fuse conv
    _same_outputs(ref, model)


def test_deq_func_is_used_when_fullstage_is_absent() -> None:
    cfg = get_config("tiny")
    sd, ref = published_state_dict(cfg, fullstage=False)
    assert not any(k.startswith("model.fullstage.") for k in sd)
    _same_outputs(ref, import_published(sd, cfg))


def test_small_cls_imports_trunk_and_head() -> None:
    cfg = get_config("small-cls")
    sd, ref = published_state_dict(cfg, copies=False)
    assert set(CLS_HEAD_KEYS) <= set(sd)  # the fixture lays out the published head
    assert all(tuple(sd[k].shape) == s for k, s in CLS_HEAD_KEYS.items())
    model, report = import_published_with_report(sd, cfg)
    assert report.kept_at_init == [] and model.untrained_heads == []
    frame = _frame(64, 64)
    with torch.no_grad():
        za, _ = ref.solve(frame, 2)
        zb, _ = model.solve(frame, 2)
        for x, y in zip(za, zb):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.head(*zb), ref.head(*za), rtol=1e-5, atol=1e-5)


def test_cls_trunk_only_marks_the_head_untrained() -> None:
    cfg = get_config("small-cls")
    sd, _ = published_state_dict(cfg, copies=False, head=False)
    model, report = import_published_with_report(sd, cfg)
    assert model.untrained_heads == ["head_cls"] and "classifier.weight" in report.kept_at_init
    assert "kept" in report.summary() and "classifier" in report.summary()


def test_seg_checkpoint_refused_for_a_cls_config() -> None:
    sd, _ = published_state_dict(get_config("small-seg"), copies=False)
    with pytest.raises(
        CheckpointError, match=r"does not fit config 'small-cls': unexpected 9: last_layer\.0\.bias \(480,\)"
    ):
        import_published(sd, get_config("small-cls"))


@pytest.mark.parametrize("kind", LAYOUTS)
def test_every_reference_seg_layout_imports(tmp_path, kind: str) -> None:
    """FullModel state dict (with loss.criterion.weight), checkpoint.pth.tar, module.-prefixed."""
    cfg = get_config("tiny")
    sd, ref = published_state_dict(cfg)
    assert "loss.criterion.weight" in sd
    path = save_layout(sd, tmp_path / "ckpt.pth.tar", kind)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's best_mIoU must not force a full unpickle
        model, report = import_published_with_report(path, cfg)
    assert f"loss.criterion.weight ({cfg.num_classes},)" in report.training_only
    if kind.endswith("tar"):
        assert {"epoch", "best_mIoU", "optimizer", "lr_scheduler"} <= set(report.training_only)
    line = report.summary()
    assert "\n" not in line and "ignored training-only entries: " in line and "loss.criterion.weight" in line
    _same_outputs(ref, model)


@pytest.mark.parametrize("kind", ["final", "checkpoint_tar", "dataparallel"])
def test_every_reference_cls_layout_imports(tmp_path, kind: str) -> None:
    cfg = get_config("small-cls")
    sd, ref = published_state_dict(cfg, copies=False)
    path = save_layout(sd, tmp_path / "cls.pth.tar", kind, task="cls")
    model, report = import_published_with_report(path, cfg)
    assert model.untrained_heads == []
    if kind == "checkpoint_tar":
        assert set(report.training_only) == {"epoch", "model", "perf", "optimizer", "lr_scheduler"}
    else:
        assert report.training_only == []
    frame = _frame(32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(frame, iters=2), ref(frame, iters=2), rtol=1e-5, atol=1e-5)


def test_xl_seg_published_import() -> None:
    cfg = get_config("xl-seg")
    sd, ref = published_state_dict(cfg)
    model = import_published(sd, cfg)
    del sd
    want, got = ref.state_dict(), model.state_dict()
    for k in ("fullstage.branches.3.blocks.0.conv1.weight", "fullstage.post_fuse_layers.0.conv.weight"):
        torch.testing.assert_close(got[k], want[k])
    frame = _frame(32, 64)
    with torch.no_grad():
        z0 = [t + 0.1 for t in ref.zeros_state(ref.injection(frame), 32, 64)]
        x = ref.injection(frame)
        torch.testing.assert_close(model.injection(frame), x)
        for a, b in zip(ref.fullstage(*z0, x), model.fullstage(*z0, x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_wrong_shape_is_named() -> None:
    cfg = get_config("tiny")
    sd, _ = published_state_dict(cfg, copies=False)
    key = "model.fullstage.fuse_layers.1.0.net.0.conv.weight"
    sd[key] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(CheckpointError, match=r"wrong shape.*fullstage\.fuse_layers\.1\.0\.net\.0\.conv\.weight"):
        import_published(sd, cfg)


def test_missing_key_is_named() -> None:
    cfg = get_config("tiny")
    sd, _ = published_state_dict(cfg, copies=False)
    del sd["model.fullstage.branches.2.blocks.0.gn1.weight"], sd["model.deq.func.branches.2.blocks.0.gn1.weight"]
    with pytest.raises(CheckpointError, match=r"missing 1: fullstage\.branches\.2\.blocks\.0\.gn1\.weight"):
        import_published(sd, cfg)


def test_wrong_config_fails_clearly() -> None:
    sd, _ = published_state_dict(get_config("tiny"), copies=False)
    with pytest.raises(CheckpointError, match="does not fit config 'small-seg'.*wrong shape"):
        import_published(sd, get_config("small-seg"))


def test_unexpected_key_and_lone_weight_g() -> None:
    cfg = get_config("tiny")
    sd, _ = published_state_dict(cfg, copies=False)
    sd["model.extra.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"unexpected 1: extra\.weight"):
        import_published(sd, cfg)
    del sd["model.extra.weight"], sd["model.fullstage.post_fuse_layers.0.conv.weight_v"]
    with pytest.raises(CheckpointError, match="no fullstage.post_fuse_layers.0.conv.weight_v"):
        import_published(sd, cfg)


def test_missing_or_unreadable_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_any(tmp_path / "bad.pt", get_config("tiny"))


def test_meta_is_stored_as_plain_python(tmp_path) -> None:
    import numpy as np

    model = build_model(get_config("tiny"), seed=2)
    meta = {"torch": torch.__version__, "miou": np.float64(0.5), "crop": (128, 256)}
    save_checkpoint(model, tmp_path / "a.pt", meta)
    raw = torch.load(tmp_path / "a.pt", weights_only=True)  # no pickled classes inside
    assert raw["meta"] == {"torch": str(torch.__version__), "miou": 0.5, "crop": [128, 256]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to a full unpickle
        loaded, _ = load_checkpoint(tmp_path / "a.pt")
    _same_outputs(model.eval(), loaded)


def test_relaxation_round_trips_and_old_checkpoints_are_unrelaxed(tmp_path) -> None:
    model = build_model(dataclasses.replace(get_config("tiny"), relax=0.8), seed=3).eval()
    path = save_checkpoint(model, tmp_path / "r.pt", {})
    loaded, _ = load_checkpoint(path)
    assert loaded.cfg.relax == 0.8 and loaded.fullstage.relax == 0.8
    _same_outputs(model, loaded)
    raw = torch.load(path, weights_only=True)
    del raw["config"]["relax"]  # written before the field existed
    torch.save(raw, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")[0].fullstage.relax == 1.0
