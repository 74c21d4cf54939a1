"""Accuracy against ground truth and agreement between bundles. NumPy + pycocotools; no torch.

Semantic: a confusion matrix over all images (pixels labelled 255 are ignored), then per-class IoU
and their mean over the classes present in the ground truth or the predictions. Instance: COCO box
and mask AP through pycocotools' ``COCOeval``, the reference implementation everyone reports.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from segrt.runtime.errors import InvalidInputError
from segrt.runtime.matching import box_iou, mask_iou, match_instances

__all__ = ["box_iou", "coco_evaluate", "confusion", "iou_summary", "mask_iou", "match_instances"]

IGNORE = 255
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def confusion(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """``num_classes`` x ``num_classes`` counts, rows = truth, columns = prediction; 255 is skipped."""
    if pred.shape != truth.shape:
        raise InvalidInputError(f"prediction is {pred.shape[1]}x{pred.shape[0]} but ground truth is "
                                f"{truth.shape[1]}x{truth.shape[0]}")
    keep = truth != IGNORE
    t, p = truth[keep].astype(np.int64), pred[keep].astype(np.int64)
    if t.size and t.max() >= num_classes:
        raise InvalidInputError(f"ground truth holds class id {int(t.max())}; the model has {num_classes} classes "
                                f"(use 255 for pixels to ignore)")
    p = np.minimum(p, num_classes - 1)
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_summary(conf: np.ndarray, names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Per-class IoU (None where a class is in neither truth nor prediction), mIoU and pixel accuracy."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    per_class = {str(n): (float(tp[i] / union[i]) if union[i] > 0 else None) for i, n in enumerate(names)}
    present = [v for v in per_class.values() if v is not None]
    total = conf.sum()
    return {
        "miou": float(np.mean(present)) if present else 0.0,
        "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
        "per_class_iou": per_class,
        "pixels": int(total),
    }


def load_coco(path: Path) -> Any:
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"{path} is not a COCO annotation file ({type(exc).__name__}: {exc})") from None


def coco_evaluate(annotations: Path, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Box and mask AP of COCO ``results`` against ``annotations`` (zero detections gives AP 0)."""
    from pycocotools.cocoeval import COCOeval

    gt = load_coco(annotations)
    out: dict[str, Any] = {"detections": len(results)}
    for iou_type in ("bbox", "segm"):
        key = "box" if iou_type == "bbox" else "mask"
        if not results:
            out[key] = dict.fromkeys(COCO_STATS, 0.0)
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes([dict(r) for r in results])
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[key] = {name: max(float(v), 0.0) for name, v in zip(COCO_STATS, ev.stats[:6])}
    return out
