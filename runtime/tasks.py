"""What a bundle's task means to the loop: which head engine runs, what is downloaded, what a frame's record,
map and overlay get.

One small object per task (``seg``, ``cls``, ``pose``, ``det``) instead of checks spread over the pipeline, the loop
and the writers. The task comes from the manifest (``Bundle.task``); each object answers four questions:

* ``result_shape`` / ``decode``: the device step between the head and the frame's one download (pose: heatmaps ->
  (B, J, 3) keypoints, so the heatmaps never leave the device); ``None``: the head's output is downloaded as is.
* ``fields``: the record fields of one stream's downloaded output (cls: top-k, pose: keypoints in source pixels).
* ``source``: that output at the input video's resolution (seg: the class map unfitted; pose: the keypoints).
* ``draw``: the overlay of that output on a picture of the same resolution (seg: the blend; pose: the skeleton;
  det: the boxes, labelled with the manifest's class ``names``).

``has_map``: the task writes class maps (seg only). ``sink_output``: the sink gets the output, not only the record
(cls draws its top-1 from the record, so a sink gets None as before).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from runtime.errors import BundleError
from runtime.manifest import TASK_HEADS

Fitter = Any  # runtime.sources.Fitter, or None for a frame already at the engine size


class Task:
    """Defaults: the head's output is downloaded as is, adds no record field, has no map and no drawing."""

    name = ""
    has_map = False
    sink_output = False

    @property
    def head(self) -> str:
        return TASK_HEADS[self.name]

    def result_shape(self, bundle: Any) -> tuple[int, ...] | None:
        return None

    def decode(self, bundle: Any, out: torch.Tensor, dst: torch.Tensor) -> None:
        raise NotImplementedError

    def fields(self, out: np.ndarray, fitter: Fitter) -> dict[str, Any]:
        return {}

    def source(self, out: np.ndarray, fitter: Fitter) -> np.ndarray:
        return out

    def draw(self, rgb: np.ndarray, out: np.ndarray, lut: np.ndarray, names: Sequence[str] = ()) -> np.ndarray:
        return rgb

    def stage(self, bundle: Any, device: torch.device, head: Any, first_out: torch.Tensor, **kw: Any) -> Any:
        """A device stage with engines of its own between the head and the download (det), or None."""
        return None

    def results(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """Entries of the run's results file (``results_name``) from one frame's record."""
        return []

    results_name: str | None = None  # a file the sink writes in --out at the end (det: detections.json)


class SegTask(Task):
    """(H, W) class maps: written as maps, unfitted to the source by nearest neighbour, blended in the overlay."""

    name, has_map, sink_output = "seg", True, True

    def source(self, out: np.ndarray, fitter: Fitter) -> np.ndarray:
        return fitter.unfit(out) if fitter is not None else out

    def draw(self, rgb: np.ndarray, out: np.ndarray, lut: np.ndarray, names: Sequence[str] = ()) -> np.ndarray:
        from runtime.writers import overlay

        return overlay(rgb, out, lut)


class ClsTask(Task):
    """(num_classes,) logits: top-1 and top-5 in the record; the overlay captions the top-1 from the record."""

    name = "cls"

    def fields(self, out: np.ndarray, fitter: Fitter) -> dict[str, Any]:
        return top_k(out)


class PoseTask(Task):
    """(J, h, w) heatmaps decoded on the device to (J, 3) engine-pixel keypoints ``[x, y, score]``; the record and
    ``on_frame`` get them in the input video's pixels (``--fit`` undone), the overlay draws the skeleton."""

    name, sink_output = "pose", True

    def stride(self, bundle: Any) -> tuple[float, float]:
        from runtime.pose_decode import heatmap_stride

        heat = bundle.engines[self.head].outputs[0].shape
        if len(heat) != 4:
            raise BundleError(f"manifest: {self.head} output {heat} is not (B, J, h, w) heatmaps")
        try:
            return heatmap_stride((bundle.height, bundle.width), heat[2:])
        except ValueError as e:
            raise BundleError(f"manifest: {self.head}: {e}") from None

    def result_shape(self, bundle: Any) -> tuple[int, ...]:
        self.stride(bundle)
        b, j = bundle.engines[self.head].outputs[0].shape[:2]
        return (b, j, 3)

    def decode(self, bundle: Any, out: torch.Tensor, dst: torch.Tensor) -> None:
        from runtime.pose_decode import decode_heatmaps

        decode_heatmaps(out, self.stride(bundle), out=dst)

    def fields(self, out: np.ndarray, fitter: Fitter) -> dict[str, Any]:
        kp = self.source(out, fitter)
        return {
            "keypoints": [
                {"x": round(float(x), 2), "y": round(float(y), 2), "score": round(float(s), 4)} for x, y, s in kp
            ]
        }

    def source(self, out: np.ndarray, fitter: Fitter) -> np.ndarray:
        from runtime.pose_decode import keypoints_to_source

        return keypoints_to_source(out, fitter) if fitter is not None else np.array(out, np.float32, copy=True)

    def draw(self, rgb: np.ndarray, out: np.ndarray, lut: np.ndarray, names: Sequence[str] = ()) -> np.ndarray:
        from runtime.pose_draw import MPII_JOINTS, MPII_LIMBS, draw_skeleton

        mpii = len(out) == len(MPII_JOINTS)  # another skeleton: its joints as dots, no bones
        return draw_skeleton(rgb, out, MPII_LIMBS if mpii else (), MPII_JOINTS if mpii else ())


class DetTask(Task):
    """Two engines (``head_det_rpn``, ``head_det_box``) with the decoding between and after them on the device
    (runtime.det_stage), or one (``head_det_ctr``, a one-stage detector: runtime.center_decode, its peaks decoded
    there), into a (B, M, 6) ``[x1, y1, x2, y2, score, class]`` buffer, class -1 past the frame's count; the record
    and ``on_frame`` get the boxes in the input video's pixels (``--fit`` undone), the overlay draws them with their
    class and score, and the sink writes them COCO-style as ``detections.json``."""

    name, sink_output, results_name = "det", True, "detections.json"

    def result_shape(self, bundle: Any) -> tuple[int, ...]:
        return _det_module(bundle).result_shape(bundle)

    def stage(self, bundle: Any, device: torch.device, head: Any, first_out: torch.Tensor, **kw: Any) -> Any:
        """The detector kind's device stage: DetStage (RPN, RoIAlign, box engine, NMS) or CenterStage (peaks)."""
        module = _det_module(bundle)
        make = module.CenterStage if module.__name__ == "runtime.center_decode" else module.DetStage
        return make(bundle, device, head, first_out, **kw)

    def fields(self, out: np.ndarray, fitter: Fitter) -> dict[str, Any]:
        keys = ("x1", "y1", "x2", "y2")
        return {
            "boxes": [
                {
                    **{k: round(float(v), 2) for k, v in zip(keys, row[:4])},
                    "class": int(row[5]),
                    "score": round(float(row[4]), 4),
                }
                for row in self.source(out, fitter)
            ]
        }

    def source(self, out: np.ndarray, fitter: Fitter) -> np.ndarray:
        """The frame's valid rows (class >= 0) with their boxes in source pixels: (n, 6)."""
        rows = np.array(out[out[:, 5] >= 0], np.float32, copy=True)
        if fitter is not None and not fitter.identity:
            from runtime.det_decode import unfit_boxes

            boxes = unfit_boxes(torch.from_numpy(rows[:, :4]), fitter.scaled, fitter.offset, fitter.src_hw)
            rows[:, :4] = boxes.numpy()
        return rows

    def draw(self, rgb: np.ndarray, out: np.ndarray, lut: np.ndarray, names: Sequence[str] = ()) -> np.ndarray:
        from runtime.writers import draw_boxes

        return draw_boxes(rgb, out, lut, names)

    def results(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """COCO's detection results format: image_id the frame index, category_id the class index (the manifest's
        ``classes`` names it), bbox [x, y, w, h] in source pixels."""
        return [
            {
                "image_id": record["frame"],
                "category_id": b["class"],
                "bbox": [b["x1"], b["y1"], round(b["x2"] - b["x1"], 2), round(b["y2"] - b["y1"], 2)],
                "score": b["score"],
            }
            for b in record.get("boxes", [])
        ]


def _det_module(bundle: Any) -> Any:
    """The decode module of a det bundle's detector kind (the manifest's ``detector.kind``)."""
    from runtime.manifest import detector_kind

    if detector_kind(bundle.manifest) == "centernet":
        from runtime import center_decode

        return center_decode
    from runtime import det_stage

    return det_stage


TASKS: dict[str, Task] = {t.name: t for t in (SegTask(), ClsTask(), PoseTask(), DetTask())}


def top_k(out: np.ndarray, k: int = 5) -> dict[str, Any]:
    """A classification head's logits -> top-1 and top-k class ids with softmax scores (frames.jsonl)."""
    z = out.astype(np.float64)
    prob = np.exp(z - z.max())
    prob /= prob.sum()
    ids = np.argsort(-z, kind="stable")[:k]
    scores = [round(float(prob[i]), 6) for i in ids]
    return {
        "top1": {"class": int(ids[0]), "score": scores[0]},
        f"top{k}": {"classes": [int(i) for i in ids], "scores": scores},
    }


__all__ = ["TASKS", "ClsTask", "DetTask", "PoseTask", "SegTask", "Task", "top_k"]
