"""runtime/det_decode.py against the independent reference in tests/runtime/det_reference.py: anchors, delta
decoding, NMS (exact, including long suppression chains), multi-level RoIAlign (exact adaptive grid; the capped
approximation measured), and the fixed-shape outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.det_decode import (
    DetectionDecoder,
    DetectSpec,
    batched_nms,
    clip_boxes,
    decode_deltas,
    greedy_keep,
    grid_anchors,
    level_shapes,
    overlaps,
    roi_align,
    roi_level,
)
from tests.runtime.det_reference import ref_anchors, ref_decode, ref_level, ref_nms, ref_roi_align

SPEC = DetectSpec(strides=(4, 8, 16, 32, 64), num_classes=5)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread) -> None:
    """One torch thread (the shared CPU)."""


def _boxes(n: int, seed: int, extent: float = 120.0, size: float = 40.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * extent
    wh = torch.rand(n, 2, generator=g) * size + 1.0
    return torch.cat([xy, xy + wh], dim=1)


def test_anchors_follow_the_generators_layout() -> None:
    """Level, row, column, ratio order; side stride * scale; centred on stride * (x, y); the max-pooled level's
    size is ceil(half)."""
    h, w = 96, 160
    assert level_shapes(h, w, SPEC.strides) == [(24, 40), (12, 20), (6, 10), (3, 5), (2, 3)]
    got = grid_anchors(SPEC, h, w).double().numpy()
    want = np.concatenate(
        [
            ref_anchors(lh, lw, s, SPEC.anchor_scales, SPEC.anchor_ratios)
            for (lh, lw), s in zip(level_shapes(h, w, SPEC.strides), SPEC.strides)
        ]
    )
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_deltas_decode_with_the_size_clamp_and_the_image_clip() -> None:
    refs = _boxes(200, 0)
    g = torch.Generator().manual_seed(1)
    deltas = torch.randn(200, 4, generator=g) * 3.0  # many dw/dh past |log(16/1000)| = 4.14 after the stds
    stds = (0.1, 0.1, 0.2, 0.2)
    hw = torch.tensor([[90.0, 130.0]])
    got = clip_boxes(decode_deltas(refs, deltas, (0.0,) * 4, stds, SPEC.max_ratio)[None], hw)[0]
    want = ref_decode(refs.double().numpy(), deltas.double().numpy(), stds, (90.0, 130.0))
    np.testing.assert_allclose(got.double().numpy(), want, atol=1e-3)
    big = torch.tensor([[0.0, 0.0, 50.0, 0.0]])  # dw 50 would overflow exp; clamped to 1000/16
    out = decode_deltas(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), big, (0.0,) * 4, (1.0,) * 4, SPEC.max_ratio)
    assert out[0, 2] - out[0, 0] == pytest.approx(10 * 1000 / 16, rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_equals_the_greedy_loop(seed: int) -> None:
    """Groups never suppress each other; invalid candidates neither survive nor suppress."""
    groups, k = 3, 300
    boxes = torch.stack([_boxes(k, seed * 10 + g) for g in range(groups)])
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(groups, k, generator=gen)
    valid = torch.rand(groups, k, generator=gen) > 0.2
    keep = batched_nms(boxes, scores, valid, 0.5)
    for g in range(groups):
        idx = np.nonzero(valid[g].numpy())[0]
        want = set(idx[ref_nms(boxes[g, idx].double().numpy(), scores[g, idx].double().numpy(), 0.5)].tolist())
        assert set(np.nonzero(keep[g].numpy())[0].tolist()) == want


def test_nms_follows_a_long_suppression_chain() -> None:
    """Boxes in a row, each overlapping the next above the threshold, scores falling: greedy keeps every other
    one, which the fixed point only reaches after as many rounds as the chain is long."""
    n = 40
    x = torch.arange(n, dtype=torch.float32) * 2.0
    boxes = torch.stack([x, torch.zeros(n), x + 10.0, torch.full((n,), 10.0)], dim=1)[None]
    scores = torch.linspace(1.0, 0.5, n)[None]
    keep = batched_nms(boxes, scores, torch.ones(1, n, dtype=torch.bool), 0.5)
    want = ref_nms(boxes[0].double().numpy(), scores[0].double().numpy(), 0.5)
    assert sorted(np.nonzero(keep[0].numpy())[0].tolist()) == sorted(want)
    sup = overlaps(boxes, 0.5) & torch.ones(n, n, dtype=torch.bool).triu(1)
    _, rounds = greedy_keep(sup, torch.ones(1, n, dtype=torch.bool))
    assert rounds >= n // 4  # a chain this long really needs many rounds; the check stops it at its end


def test_empty_boxes_never_overlap() -> None:
    """Two zero-area boxes (clipped at the border) do not suppress each other (mmcv: inter > iou * union)."""
    boxes = torch.tensor([[[0.0, 5.0, 0.0, 9.0], [0.0, 5.0, 0.0, 9.0]]])
    keep = batched_nms(boxes, torch.tensor([[0.9, 0.8]]), torch.ones(1, 2, dtype=torch.bool), 0.5)
    assert keep.all()


def _roi_case(seed: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Two images, four levels of features, boxes of every kind: small, large, thin, partly outside, empty."""
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(2, 6, 48 // s, 64 // s, generator=g) for s in (1, 2, 4, 8)]
    boxes = torch.cat(
        [
            _boxes(30, seed, extent=200, size=60),
            _boxes(10, seed + 1, extent=150, size=200),
            torch.tensor([[3.0, 10.0, 250.0, 14.0], [-20.0, -8.0, 30.0, 25.0], [200.0, 150.0, 270.0, 200.0]]),
            torch.tensor([[5.0, 5.0, 5.0, 5.0], [250.0, 180.0, 256.0, 192.0]]),
        ]
    )
    boxes = torch.stack([boxes, boxes.flip(0)])
    return feats, boxes, roi_level(boxes, 56.0, 4)


def test_roi_align_equals_the_separable_reference() -> None:
    """Exact adaptive grid per RoI (mmcv aligned RoIAlign, sampling ratio 0), every level, both images."""
    feats, boxes, levels = _roi_case(0)
    strides = (4, 8, 16, 32)
    got = roi_align(feats, boxes, levels, strides).view(2, boxes.shape[1], 6, 7, 7)
    for b in range(2):
        for r in range(boxes.shape[1]):
            box = boxes[b, r].double().numpy()
            lv = ref_level(box, 56.0, 4)
            assert lv == int(levels[b, r])
            want = ref_roi_align(feats[lv][b].double().numpy(), box, strides[lv])
            np.testing.assert_allclose(got[b, r].double().numpy(), want, atol=1e-4, err_msg=f"roi {b},{r}")


def test_roi_align_cap_is_exact_up_to_its_grid_and_approximate_past_it() -> None:
    feats, boxes, levels = _roi_case(1)
    strides = (4, 8, 16, 32)
    exact = roi_align(feats, boxes, levels, strides)
    flat = boxes.reshape(-1, 4) / torch.tensor(strides, dtype=torch.float32)[levels.reshape(-1)][:, None]
    grid = torch.ceil(torch.maximum(flat[:, 2] - flat[:, 0], flat[:, 3] - flat[:, 1]) / 7).long()
    capped = roi_align(feats, boxes, levels, strides, max_grid=int(grid.max()))
    torch.testing.assert_close(capped, exact)
    small = roi_align(feats, boxes, levels, strides, max_grid=2)
    diff = (small - exact).abs().flatten(1).amax(1)
    assert torch.all(diff[grid <= 2] < 1e-5) and torch.any(diff[grid > 2] > 1e-3)


def test_fixed_shapes_and_padding() -> None:
    """Fewer kept candidates than rows: the rest are invalid zero rows; detections carry a count and -1 labels."""
    spec = DetectSpec(strides=(4, 8, 16, 32, 64), num_classes=3, rpn_proposals=50, rpn_pre_nms=20, max_per_img=7)
    dec = DetectionDecoder(spec, 64, 64)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, dec.num_anchors, generator=g)
    deltas = torch.randn(2, dec.num_anchors, 4, generator=g) * 0.1
    props = dec.proposals(logits, deltas, torch.tensor([[64.0, 64.0], [40.0, 64.0]]))
    assert props.boxes.shape == (2, 50, 4) and props.valid.shape == (2, 50)
    n = props.valid.sum(1)
    assert torch.all(n <= 20 + 20 + 20 + 12 + 3)  # levels of 768, 192, 48, 12, 3 anchors, top 20 each
    assert torch.all(props.boxes[1, :, 3] <= 40.0)  # the second image's content is 40 rows high
    for b in range(2):
        assert props.valid[b, : n[b]].all() and not props.valid[b, n[b] :].any()
        assert torch.all(props.scores[b, 1 : n[b]] <= props.scores[b, : n[b] - 1])  # best first
    p = props.valid.shape[1]
    feats = [torch.randn(2, 4, 64 // s, 64 // s, generator=g) for s in (4, 8, 16, 32)]
    rf = dec.roi_features(feats, props)
    assert rf.shape == (2 * p, 4, 7, 7)
    scores = torch.softmax(torch.randn(2 * p, 4, generator=g) * 3, dim=1)
    det = dec.detections(props, scores, torch.randn(2 * p, 12, generator=g))
    assert det.boxes.shape == (2, 7, 4) and det.labels.dtype == torch.int64
    for b in range(2):
        c = int(det.count[b])
        assert (det.labels[b, c:] == -1).all() and (det.scores[b, c:] == 0).all() and (det.labels[b, :c] >= 0).all()
        assert (det.scores[b, :c] > spec.score_thr).all()


def test_spec_from_a_manifest_entry() -> None:
    entry = {"name": "x", "strides": [4, 8, 16, 32, 64], "anchor_ratios": [0.5, 1.0, 2.0], "fpn_channels": 256}
    spec = DetectSpec.from_dict(entry)
    assert spec.strides == (4, 8, 16, 32, 64) and spec.anchor_ratios == (0.5, 1.0, 2.0)
    with pytest.raises(ValueError, match="strides"):
        DetectSpec.from_dict({"num_classes": 3})


@pytest.mark.gpu
def test_decoding_on_the_gpu_equals_the_cpu() -> None:
    """The same decode on CUDA tensors (where the runtime runs it): same proposals, RoI features and detections."""
    spec = DetectSpec(strides=(4, 8, 16, 32, 64), num_classes=4, rpn_proposals=300, max_per_img=50)
    g = torch.Generator().manual_seed(3)
    h, w = 128, 192
    cpu = DetectionDecoder(spec, h, w)
    logits = torch.randn(1, cpu.num_anchors, generator=g) * 2
    deltas = torch.randn(1, cpu.num_anchors, 4, generator=g) * 0.3
    feats = [torch.randn(1, 8, h // s, w // s, generator=g) for s in (4, 8, 16, 32)]
    results = []
    for device in ("cpu", "cuda"):
        dec = DetectionDecoder(spec, h, w, device)
        props = dec.proposals(logits.to(device), deltas.to(device), (120, 180))
        rf = dec.roi_features([f.to(device) for f in feats], props)
        n = rf.shape[0]
        scores = torch.softmax(rf.flatten(1)[:, :5] * 4, dim=1)
        det = dec.detections(props, scores, rf.flatten(1)[:, 5:21] * 0.5, (120, 180))
        results.append([t.cpu() for t in (*props, rf, *det)])
    for a, b in zip(*results):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
        else:
            assert torch.equal(a, b)
    assert n == 300


@pytest.mark.parametrize("mode", ["resize", "pad", "crop"])
def test_boxes_go_back_to_the_source_frame(mode: str) -> None:
    """Through runtime.sources.Fitter's geometry: a box of the source frame, mapped into the engine picture as the
    fitted pixels are, comes back; the clip limit is the picture's content."""
    from runtime.det_decode import content_hw, unfit_boxes
    from runtime.sources import Fitter

    src, dst = (144, 176), (128, 192)
    fit = Fitter(src, dst, mode)
    (ih, iw), (oy, ox) = fit.scaled, fit.offset
    box = torch.tensor([[30.0, 20.0, 150.0, 100.0]])
    engine = box * torch.tensor([iw / 176, ih / 144, iw / 176, ih / 144]) - torch.tensor([ox, oy, ox, oy])
    torch.testing.assert_close(unfit_boxes(engine, fit.scaled, fit.offset, src), box)
    hw = content_hw(fit.scaled, fit.offset, dst)
    assert hw == {"resize": (128, 192), "pad": (128, 156), "crop": (128, 192)}[mode]
    frame = fit.fit(np.full((*src, 3), 255, np.uint8))
    assert frame[: hw[0], : hw[1]].min() == 255 and frame[hw[0] :, :].sum() + frame[:, hw[1] :].sum() == 0
    outside = unfit_boxes(torch.tensor([[-500.0, -500.0, 5000.0, 5000.0]]), fit.scaled, fit.offset, src)
    assert outside.tolist() == [[0.0, 0.0, 176.0, 144.0]]
