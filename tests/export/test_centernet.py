"""The one-stage detector's PyTorch side: synthetic boxes (rng-neutral, tight around each object's visible pixels in
the class map), CenterNet targets that the runtime's decode turns back into the same boxes, the focal loss by hand,
and ``python -m export.train_det`` -> ``python -m export`` giving a centernet det bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from export.centernet import focal_loss, make_targets
from export.synthetic import (
    CAR,
    PERSON,
    SIGN,
    random_det_batch,
    random_frame,
    random_frame_boxes,
    render_clip_with_meta,
)
from runtime.center_decode import CenterSpec, decode_centers

DET = (CAR, PERSON, SIGN)  # detection class i is synthetic class DET[i]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread) -> None:
    """One torch thread (the shared CPU)."""


def test_boxes_change_no_frame_and_are_tight_around_their_class_pixels():
    frames, labels, _, meta = render_clip_with_meta(950_003, 5, 128, 256, boxes=True)
    same, same_labels, _, plain = render_clip_with_meta(950_003, 5, 128, 256)
    assert np.array_equal(frames, same) and np.array_equal(labels, same_labels) and "boxes" not in plain
    assert meta["det_classes"] == ["car", "person", "sign"]
    n = 0
    for lab, rows in zip(labels, meta["boxes"]):
        covered = np.zeros(lab.shape + (3,), bool)
        for x1, y1, x2, y2, c in np.array(rows, np.float32).reshape(-1, 5):
            x1, y1, x2, y2, c = int(x1), int(y1), int(x2), int(y2), int(c)
            inside = lab[y1:y2, x1:x2] == DET[c]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()  # tight
            covered[y1:y2, x1:x2, c] = True
            n += 1
        for c, cls in enumerate(DET):  # every object pixel is in a box of its class (bar slivers under 24 px)
            pixels = lab == cls
            assert (covered[..., c] & pixels).sum() >= 0.97 * pixels.sum() - 24
    assert n >= 10


def test_random_frame_is_unchanged_and_flipped_boxes_stay_on_their_objects():
    f1, l1 = random_frame(np.random.default_rng(4), 64, 128)
    f2, l2, boxes = random_frame_boxes(np.random.default_rng(4), 64, 128)
    assert np.array_equal(f1, f2) and np.array_equal(l1, l2) and boxes.shape[1] == 5
    frames, batch_boxes = random_det_batch(np.random.default_rng(5), 6, 64, 128)
    rng, flips, n = np.random.default_rng(5), 0, 0  # the same draws: each frame's class map, flipped as the frame
    for frame, rows in zip(frames, batch_boxes):
        f, lab, _ = random_frame_boxes(rng, 64, 128)
        if rng.random() < 0.5:
            f, lab, flips = f[:, ::-1], lab[:, ::-1], flips + 1
        assert np.array_equal(frame, f)
        for x1, y1, x2, y2, c in rows.astype(int):
            inside = lab[y1:y2, x1:x2] == DET[c]
            assert inside[:, 0].any() and inside[:, -1].any() and inside[0].any() and inside[-1].any()
            n += 1
    assert 0 < flips < 6 and n > 0


def test_targets_decode_back_to_their_boxes():
    boxes = np.array([[10, 20, 50, 44, 0], [70.5, 8, 90, 60, 1], [100, 30, 120, 62, 0]], np.float32)
    stride, h, w = 4, 16, 32
    t = make_targets([boxes], 3, h, w, stride)
    assert t.heat.max() == 1 and int((t.heat == 1).sum()) == 3
    size, offset = torch.zeros(1, 2, h * w), torch.zeros(1, 2, h * w)  # a perfect head: targets at the centres
    size[0, :, t.index[0]] = t.size[0].T
    offset[0, :, t.index[0]] = t.offset[0].T
    spec = CenterSpec(num_classes=3, stride=stride, score_thr=0.99, max_per_img=10)
    hw = torch.tensor([[h * stride, w * stride]], dtype=torch.float32)
    out = decode_centers(t.heat, size.view(1, 2, h, w), offset.view(1, 2, h, w), spec, hw).numpy()[0]
    got = out[out[:, 5] >= 0]
    got = got[np.lexsort((got[:, 0], got[:, 5]))]
    want = boxes[np.lexsort((boxes[:, 0], boxes[:, 4]))]
    np.testing.assert_allclose(got[:, :4], want[:, :4], atol=1e-4)
    assert got[:, 5].tolist() == want[:, 4].tolist()


def test_focal_loss_by_hand():
    target = torch.tensor([[[[1.0, 0.0]]]])
    logits = torch.zeros(1, 1, 1, 2)  # p = 0.5 at both
    # positive: -log(0.5) * 0.5^2; negative (target 0): -log(0.5) * 0.5^2 * 1^4; one centre
    assert float(focal_loss(logits, target)) == pytest.approx(2 * np.log(2) * 0.25, rel=1e-5)
    near = torch.tensor([[[[1.0, 0.5]]]])  # a negative near a centre weighs (1 - 0.5)^4 as much
    assert float(focal_loss(logits, near)) == pytest.approx(np.log(2) * 0.25 * (1 + 0.0625), rel=1e-5)


def test_train_det_then_export_gives_a_centernet_bundle(tmp_path, capsys):
    from export.__main__ import main as export_main
    from export.checkpoint import load_checkpoint
    from export.train_det import main as train_main

    ckpt = tmp_path / "det.pt"
    argv = ["--out", str(ckpt), "--steps", "2", "--batch", "1", "--crop", "64", "128", "--iters", "2"]
    assert train_main([*argv, "--val-frames", "1", "--threads", "1", "--score-thr", "0.25"]) == 0
    model, meta = load_checkpoint(ckpt)
    assert meta["mode"] == "sur" and meta["steps"] == 2 and model.center_head.det_cfg.score_thr == 0.25
    assert (tmp_path / "det.jsonl").is_file()
    out = tmp_path / "engines"
    argv = ["--checkpoint", str(ckpt), "--height", "64", "--width", "128", "--det-score-thr", "0.4", "--out", str(out)]
    assert export_main(argv) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["task"] == "det" and man["detector"]["kind"] == "centernet" and "head_det_ctr" in man["engines"]
    assert man["detector"]["score_thr"] == 0.4 and man["classes"] == ["car", "person", "sign"]  # the flag's
    capsys.readouterr()
    assert train_main(["--out", str(tmp_path / "x.pt"), "--trunk-lr-scale", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:")
