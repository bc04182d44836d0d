"""One-stage (CenterNet-style) detection decoding on the device: peaks, top-K, boxes.

The head engine ``head_det_ctr`` gives per-class centre probabilities ``heatmap`` (B, C, h, w), box ``size``
(B, 2, h, w: width, height in cells) and sub-cell ``offset`` (B, 2, h, w) on a grid of ``stride`` pixels. A peak is
a cell equal to the 3x3 max-pool of its class's heatmap (CenterNet's NMS: no IoU, no loop); the best
``max_per_img`` peaks over all classes become boxes centred at ``(cell + offset) * stride`` of side
``size * stride``, clipped to the picture's content (what a ``--fit pad`` leaves), and those scoring at most
``score_thr`` are blanked. Everything is fixed-shape tensor work on the device, no host read: the result is the
same (B, M, 6) ``[x1, y1, x2, y2, score, class]`` buffer as the two-stage detector's (class -1 past a frame's
boxes), so the det task's records, ``detections.json`` and overlay apply unchanged, in one download.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from runtime.buffers import torch_dtype
from runtime.det_decode import clip_boxes, content_hw
from runtime.errors import BundleError

HEAD = "head_det_ctr"
OUTPUTS = ("heatmap", "size", "offset")


@dataclass(frozen=True)
class CenterSpec:
    """The decode settings of the manifest's ``detector`` entry (kind ``centernet``)."""

    num_classes: int
    stride: int = 4
    score_thr: float = 0.3
    max_per_img: int = 100

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> CenterSpec:
        try:
            return cls(
                int(entry["num_classes"]),
                int(entry.get("stride", 4)),
                float(entry.get("score_thr", 0.3)),
                int(entry.get("max_per_img", 100)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"manifest: malformed centernet detector entry ({e!r})") from None


def decode_centers(
    heat: Tensor,
    size: Tensor,
    offset: Tensor,
    spec: CenterSpec,
    image_hw: Tensor,
    out: Tensor | None = None,
    score_thr: float | None = None,
) -> Tensor:
    """(B, M, 6) ``[x1, y1, x2, y2, score, class]`` in engine pixels, best first, from the head's outputs;
    ``image_hw`` (B, 2) the content's rows and columns; ``score_thr`` overrides the spec's (benchmarks)."""
    b, c, h, w = heat.shape
    heat = heat.float()
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    k = min(spec.max_per_img, c * h * w)
    score, idx = peaks.reshape(b, -1).topk(k, dim=1)
    cls, cell = idx // (h * w), idx % (h * w)
    ys, xs = (cell // w).float(), (cell % w).float()
    take = cell.unsqueeze(1).expand(-1, 2, -1)
    wh = size.float().reshape(b, 2, -1).gather(2, take).clamp(min=0) * spec.stride  # a negative size: empty
    off = offset.float().reshape(b, 2, -1).gather(2, take)
    cx, cy = (xs + off[:, 0]) * spec.stride, (ys + off[:, 1]) * spec.stride
    half_w, half_h = wh[:, 0] / 2, wh[:, 1] / 2
    boxes = clip_boxes(torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1), image_hw)
    valid = score > (spec.score_thr if score_thr is None else score_thr)
    rows = torch.cat([boxes, score.unsqueeze(-1), cls.float().unsqueeze(-1)], -1)
    rows = torch.where(valid.unsqueeze(-1), rows, rows.new_tensor([0, 0, 0, 0, 0, -1]))
    if out is None:
        out = rows.new_zeros(b, spec.max_per_img, 6)
        out[..., 5] = -1
    elif k < out.shape[1]:
        out[:, k:] = out.new_tensor([0, 0, 0, 0, 0, -1])
    out[:, :k].copy_(rows)
    return out


def center_spec(bundle: Any) -> CenterSpec:
    entry = bundle.manifest.get("detector")
    if not isinstance(entry, dict):
        raise BundleError("manifest: a det bundle needs a 'detector' entry (export with detector heads)")
    return CenterSpec.from_dict(entry)


def result_shape(bundle: Any) -> tuple[int, int, int]:
    return (bundle.batch, center_spec(bundle).max_per_img, 6)


class CenterStage:
    """The head engine's size and offset buffers (the heatmap is the pipeline's head output) bound once, the
    decode into the frame's result buffer, and per stream the content size boxes are clipped to."""

    def __init__(self, bundle: Any, device: torch.device, head: Any, first_out: torch.Tensor, **kw: Any) -> None:
        eng = bundle.engines[HEAD]
        names = tuple(t.name for t in eng.outputs)
        if names != OUTPUTS:
            raise BundleError(f"manifest: {HEAD} outputs {', '.join(names)}, expected {', '.join(OUTPUTS)}")
        self.spec = center_spec(bundle)
        heat = eng.outputs[0].shape
        if heat[1] != self.spec.num_classes or heat[2] * self.spec.stride != bundle.height:
            raise BundleError(f"manifest: {HEAD} heatmap {heat} does not fit the detector entry")
        self.out = [first_out] + [
            torch.zeros(t.shape, dtype=torch_dtype(t.dtype), device=device) for t in eng.outputs[1:]
        ]
        for slot in (0, 1):
            for t, buf in zip(eng.outputs, self.out):
                head.bind(t.name, buf, slot)
        self.image_hw = torch.tensor([[bundle.height, bundle.width]] * bundle.batch, dtype=torch.float32).to(device)
        self._hw: list[tuple[int, int] | None] = [None] * bundle.batch
        self.score_thr: float | None = None  # overrides the manifest's (benchmarks.det_accuracy ranks every peak)

    def set_fitter(self, b: int, fitter: Any) -> None:
        """Stream ``b``'s boxes are clipped to its fitted content (a device write only when it changes)."""
        hw = content_hw(fitter.scaled, fitter.offset, fitter.dst_hw)
        if self._hw[b] != hw:
            self._hw[b] = hw
            self.image_hw[b] = torch.tensor(hw, dtype=torch.float32)

    def warmup(self, stream: Any) -> None:
        """Nothing to warm: no engine of its own."""

    def run(self, stream: Any, dst: torch.Tensor, mark: Any = None) -> None:
        """Decode the head's outputs into ``dst``; ``mark`` (the pipeline's timer, as DetStage takes it) is not
        needed: everything after the head engine is decoding."""
        decode_centers(*self.out, self.spec, self.image_hw, out=dst, score_thr=self.score_thr)


__all__ = ["HEAD", "OUTPUTS", "CenterSpec", "CenterStage", "center_spec", "decode_centers", "result_shape"]
