"""The detection task's device step between ``head_det_rpn`` and the frame's one download.

Why a stage of its own: a detector is two engines with the decoding between and after them
(runtime/det_decode.py), so the pipeline's "head, then the task's decode" needs more than a
function: the RPN engine's other outputs (the RoI levels' features, the anchors' logits and
deltas), the RoI-feature buffer bound to ``head_det_box`` and that engine's outputs, all
allocated and bound once. Per frame: proposals -> RoIAlign into the bound buffer -> the box
engine -> per-class NMS and the best ``max_per_img`` into the persistent (B, M, 6) result
``[x1, y1, x2, y2, score, class]`` in engine pixels (rows past a frame's count: zeros with
class -1, so the count travels in the same single download).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from runtime.backends import load_runner
from runtime.buffers import torch_dtype
from runtime.det_decode import DetectionDecoder, DetectSpec, content_hw
from runtime.errors import BundleError

RPN, BOX = "head_det_rpn", "head_det_box"


def detect_spec(bundle: Any) -> DetectSpec:
    """The manifest's ``detector`` entry as decode settings; a bundle without a usable one is one line."""
    entry = bundle.manifest.get("detector")
    if not isinstance(entry, dict):
        raise BundleError("manifest: a det bundle needs a 'detector' entry (export with detector heads)")
    try:
        return DetectSpec.from_dict(entry)
    except (TypeError, ValueError) as e:
        raise BundleError(f"manifest: malformed detector entry ({e})") from None


def result_shape(bundle: Any) -> tuple[int, int, int]:
    """(B, max_per_img, 6): what one frame downloads."""
    return (bundle.batch, detect_spec(bundle).max_per_img, 6)


class DetStage:
    """Buffers, the box engine and the decoder of one stream group, bound once to ``head`` (the RPN runner)."""

    def __init__(self, bundle: Any, device: torch.device, head: Any, first_out: torch.Tensor, **kw: Any) -> None:
        if BOX not in bundle.engines:
            raise BundleError(f"manifest: a det bundle needs the {BOX!r} engine")
        rpn, box = bundle.engines[RPN], bundle.engines[BOX]
        self.spec = detect_spec(bundle)
        self.decoder = DetectionDecoder(self.spec, bundle.height, bundle.width, device)
        if rpn.outputs[-1].shape[1:] != (self.decoder.num_anchors, 4):
            raise BundleError(f"manifest: {RPN} output {rpn.outputs[-1].shape} does not fit the detector's anchors")
        self.rpn_out = [first_out] + [_zeros(t, device) for t in rpn.outputs[1:]]
        for slot in (0, 1):
            for t, buf in zip(rpn.outputs, self.rpn_out):
                head.bind(t.name, buf, slot)
        self.box = load_runner(box, device, **kw)
        self.roi = _zeros(box.inputs[0], device)
        self.box_out = [_zeros(t, device) for t in box.outputs]
        self.box.bind(box.inputs[0].name, self.roi)
        for t, buf in zip(box.outputs, self.box_out):
            self.box.bind(t.name, buf)
        # per stream: the rows and columns holding the frame (--fit pad leaves black below and right of them)
        self.image_hw = torch.tensor([[bundle.height, bundle.width]] * bundle.batch, dtype=torch.float32)
        self.image_hw = self.image_hw.to(device)
        self._hw: list[tuple[int, int] | None] = [None] * bundle.batch

    def set_fitter(self, b: int, fitter: Any) -> None:
        """Stream ``b``'s frames are fitted by ``fitter``: boxes are clipped to its content, as MMDetection clips
        to the resized image, not the padded one (a device write only when it changes)."""
        hw = content_hw(fitter.scaled, fitter.offset, fitter.dst_hw)
        if self._hw[b] != hw:
            self._hw[b] = hw
            self.image_hw[b] = torch.tensor(hw, dtype=torch.float32)

    def warmup(self, stream: Any) -> None:
        self.box.run(stream)

    def run(self, stream: Any, dst: torch.Tensor, mark: Callable[[str], None] | None = None) -> None:
        """The RPN engine has run: decode, run the box engine, write the frame's detections into ``dst``. ``mark``
        (the pipeline's timer): called before and after the box engine, so that it counts as head, not decoding."""
        *feats, logits, deltas = self.rpn_out
        props = self.decoder.proposals(logits, deltas, self.image_hw)
        self.roi.copy_(self.decoder.roi_features(feats, props, self.roi.dtype))
        if mark is not None:
            mark("head_decode")
        self.box.run(stream)
        if mark is not None:
            mark("head")
        det = self.decoder.detections(props, *self.box_out[:2], self.image_hw)
        dst[..., :4].copy_(det.boxes)
        dst[..., 4].copy_(det.scores)
        dst[..., 5].copy_(det.labels)


def _zeros(spec: Any, device: torch.device) -> torch.Tensor:
    return torch.zeros(spec.shape, dtype=torch_dtype(spec.dtype), device=device)


__all__ = ["BOX", "RPN", "DetStage", "detect_spec", "result_shape"]
