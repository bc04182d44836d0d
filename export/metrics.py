"""Segmentation metrics: confusion matrix and mIoU (Cityscapes-style, accumulated over a set)."""

from __future__ import annotations

import numpy as np


def confusion(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore: int = 255) -> np.ndarray:
    """Confusion matrix C[gt, pred] (int64) over all pixels whose label is not ``ignore``."""
    pred = np.asarray(pred).ravel().astype(np.int64)
    label = np.asarray(label).ravel().astype(np.int64)
    if pred.shape != label.shape:
        raise ValueError(f"prediction and label sizes differ: {pred.size} vs {label.size}")
    keep = label != ignore
    idx = label[keep] * num_classes + pred[keep]
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU of each class; NaN where the class is absent from both ground truth and prediction. Also for a stack of
    confusion matrices (..., C, C): one row of IoUs per matrix (the clip bootstrap in benchmarks.compare_accuracy)."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1).astype(np.float64)
    union = conf.sum(-2) + conf.sum(-1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def miou(conf: np.ndarray) -> float:
    """Mean IoU over the classes that occur (in ground truth or prediction), in [0, 1]."""
    ious = iou_per_class(conf)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")
