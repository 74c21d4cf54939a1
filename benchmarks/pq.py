"""Panoptic quality (PQ, SQ, RQ), following panopticapi's ``pq_compute`` exactly (it is not on PyPI).

Per image: a predicted and a ground-truth segment match when they have the same category and IoU > 0.5, the
union leaving out the prediction's pixels on ground-truth VOID; crowd ground-truth segments are never matched
nor counted as false negatives; an unmatched prediction lying more than half on VOID or on a crowd region of its
own category is not a false positive. Per category: PQ = sum(IoU of matches) / (TP + FP/2 + FN/2), SQ = mean IoU
of matches, RQ = TP / (TP + FP/2 + FN/2); overall, things and stuff are the plain means over the categories seen
(TP + FP + FN > 0), as panopticapi averages them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segrt.runtime.errors import InvalidInputError

VOID = 0
OFFSET = 256 * 256 * 256


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG (H, W, 3) RGB -> segment ids: R + 256 G + 256^2 B."""
    c = rgb.astype(np.uint32)
    return c[..., 0] + 256 * c[..., 1] + 256 * 256 * c[..., 2]


def read_panoptic_png(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InvalidInputError(f"cannot read panoptic PNG {str(path)!r}")
    return rgb2id(img[:, :, ::-1])


@dataclass
class PQStatCat:
    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0


@dataclass
class PQStat:
    per_cat: dict[int, PQStatCat] = field(default_factory=lambda: defaultdict(PQStatCat))

    def __iadd__(self, other: PQStat) -> PQStat:
        for k, s in other.per_cat.items():
            mine = self.per_cat[k]
            mine.iou, mine.tp, mine.fp, mine.fn = mine.iou + s.iou, mine.tp + s.tp, mine.fp + s.fp, mine.fn + s.fn
        return self

    def average(self, categories: Mapping[int, Mapping[str, Any]], isthing: bool | None) -> tuple[dict, dict]:
        """panopticapi's ``pq_average``: the mean over categories with TP + FP + FN > 0 (n: how many)."""
        pq = sq = rq = 0.0
        n = 0
        per_class: dict[int, dict[str, float]] = {}
        for cat_id, info in categories.items():
            if isthing is not None and bool(info["isthing"]) != isthing:
                continue
            s = self.per_cat.get(cat_id, PQStatCat())
            if s.tp + s.fp + s.fn == 0:
                per_class[cat_id] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            denom = s.tp + 0.5 * s.fp + 0.5 * s.fn
            cls = {"pq": s.iou / denom, "sq": s.iou / s.tp if s.tp else 0.0, "rq": s.tp / denom}
            per_class[cat_id] = cls
            pq, sq, rq = pq + cls["pq"], sq + cls["sq"], rq + cls["rq"]
        if n == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def _pred_areas(pan_pred: np.ndarray, pred_segms: dict[int, dict], categories: Mapping[int, Any]) -> dict[int, int]:
    """The predicted segments' areas from the PNG, with panopticapi's sanity checks (PNG and JSON agree)."""
    labels, counts = np.unique(pan_pred, return_counts=True)
    areas: dict[int, int] = {}
    for label, count in zip(labels.tolist(), counts.tolist()):
        if label == VOID:
            continue
        if label not in pred_segms:
            raise InvalidInputError(f"segment {label} is in the predicted PNG and not in its segments_info")
        if pred_segms[label]["category_id"] not in categories:
            raise InvalidInputError(f"segment {label} has unknown category_id {pred_segms[label]['category_id']}")
        areas[label] = count
    missing = set(pred_segms) - set(areas)
    if missing:
        raise InvalidInputError(f"segments {sorted(missing)} are in segments_info and not in the predicted PNG")
    return areas


def pq_image(pan_gt: np.ndarray, gt_segments: Sequence[Mapping[str, Any]], pan_pred: np.ndarray,
             pred_segments: Sequence[Mapping[str, Any]], categories: Mapping[int, Any]) -> PQStat:
    """One image's TP / FP / FN and matched IoU per category (panopticapi's ``pq_compute_single_core``).
    ``pan_*``: (H, W) segment ids; ``*_segments``: segments_info (id, category_id; ground truth: iscrowd, area)."""
    if pan_gt.shape != pan_pred.shape:
        raise InvalidInputError(f"prediction {pan_pred.shape} and ground truth {pan_gt.shape} differ in size")
    stat = PQStat()
    gt_segms = {int(s["id"]): dict(s) for s in gt_segments}
    pred_segms = {int(s["id"]): dict(s) for s in pred_segments}
    for label, area in _pred_areas(pan_pred, pred_segms, categories).items():
        pred_segms[label]["area"] = area
    for s in gt_segms.values():
        s.setdefault("area", int(np.count_nonzero(pan_gt == s["id"])))
    joint = pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64)
    labels, counts = np.unique(joint, return_counts=True)
    gt_pred = {(int(lab // OFFSET), int(lab % OFFSET)): int(c) for lab, c in zip(labels.tolist(), counts.tolist())}
    gt_matched, pred_matched = set(), set()
    for (gt_label, pred_label), inter in gt_pred.items():
        if gt_label not in gt_segms or pred_label not in pred_segms:
            continue
        gt, pred = gt_segms[gt_label], pred_segms[pred_label]
        if gt.get("iscrowd", 0) == 1 or gt["category_id"] != pred["category_id"]:
            continue
        union = pred["area"] + gt["area"] - inter - gt_pred.get((VOID, pred_label), 0)
        iou = inter / union
        if iou > 0.5:
            s = stat.per_cat[gt["category_id"]]
            s.tp, s.iou = s.tp + 1, s.iou + iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)
    crowd: dict[int, int] = {}
    for gt_label, gt in gt_segms.items():
        if gt_label in gt_matched:
            continue
        if gt.get("iscrowd", 0) == 1:
            crowd[gt["category_id"]] = gt_label
            continue
        stat.per_cat[gt["category_id"]].fn += 1
    for pred_label, pred in pred_segms.items():
        if pred_label in pred_matched:
            continue
        ignored = gt_pred.get((VOID, pred_label), 0)
        if pred["category_id"] in crowd:
            ignored += gt_pred.get((crowd[pred["category_id"]], pred_label), 0)
        if ignored / pred["area"] > 0.5:
            continue
        stat.per_cat[pred["category_id"]].fp += 1
    return stat


def summarize(stat: PQStat, categories: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """``{"All"|"Things"|"Stuff": {pq, sq, rq, n}, "per_class": {name: {pq, sq, rq}}}`` (PQ in 0..1)."""
    out: dict[str, Any] = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        out[name], per_class = stat.average(categories, isthing)
        if isthing is None:
            out["per_class"] = {categories[k]["name"]: v for k, v in per_class.items()}
    return out


# -- COCO panoptic ground truth: DIR/panoptic.json + DIR/panoptic/<stem>.png -----------------------------
@dataclass(frozen=True)
class PanopticTruth:
    """The annotations of ``panoptic.json`` by image file name, and its categories by id."""

    root: Path
    categories: dict[int, dict[str, Any]]
    annotations: dict[str, dict[str, Any]]  # image file name -> {file_name (PNG), segments_info}

    @classmethod
    def open(cls, root: Path) -> PanopticTruth:
        path = root / "panoptic.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            cats = {int(c["id"]): {"name": str(c["name"]), "isthing": int(c["isthing"])} for c in data["categories"]}
            names = {int(im["id"]): im["file_name"] for im in data["images"]}
            anns = {names[int(a["image_id"])]: a for a in data["annotations"]}
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"{path} is not COCO panoptic ground truth ({type(exc).__name__}: {exc})") from None
        return cls(root, cats, anns)

    def truth(self, image_name: str) -> tuple[np.ndarray, list[dict[str, Any]]]:
        if image_name not in self.annotations:
            raise InvalidInputError(f"{image_name} has no annotation in {self.root / 'panoptic.json'}")
        ann = self.annotations[image_name]
        return read_panoptic_png(self.root / "panoptic" / ann["file_name"]), list(ann["segments_info"])

    def category_ids(self, names: Sequence[str]) -> dict[str, int]:
        """The ground truth's category id for each predicted category name (unknown names: a typed error)."""
        by_name = {c["name"]: k for k, c in self.categories.items()}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise InvalidInputError(f"predicted categories {', '.join(map(repr, unknown))} are not in the ground "
                                    f"truth's ({', '.join(by_name)})")
        return {n: by_name[n] for n in names}


def relabel(segments: Sequence[Mapping[str, Any]], ids: Mapping[str, int]) -> list[dict[str, Any]]:
    """Predicted segments_info with the ground truth's category ids (matched by category name)."""
    return [{**s, "category_id": ids[s["category_name"]]} for s in segments]
