"""Metrics with hand-checked answers: ground truth against itself, and known corruptions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segrt.benchmarks import synth
from segrt.benchmarks.evaluate import box_iou, coco_evaluate, confusion, iou_summary, mask_iou, match_instances
from segrt.runtime.errors import InvalidInputError


def test_ground_truth_against_itself_is_perfect() -> None:
    scenes = list(synth.iter_scenes(synth.SynthConfig(count=5, size=(64, 96))))
    conf = sum(confusion(s.labels, s.labels, 4) for s in scenes)
    summary = iou_summary(conf, synth.CLASSES)
    assert summary["miou"] == 1.0 and summary["pixel_accuracy"] == 1.0
    assert summary["pixels"] == sum(int((s.labels != 255).sum()) for s in scenes)


def test_a_known_corruption_gives_the_known_iou() -> None:
    truth = np.zeros((10, 10), np.uint8)
    truth[:, 5:] = 1  # 50 pixels of each class
    pred = truth.copy()
    pred[0, 5:] = 0  # 5 class-1 pixels called background
    summary = iou_summary(confusion(pred, truth, 2), ("bg", "fg"))
    assert summary["per_class_iou"]["fg"] == pytest.approx(45 / 50)
    assert summary["per_class_iou"]["bg"] == pytest.approx(50 / 55)
    assert summary["miou"] == pytest.approx((45 / 50 + 50 / 55) / 2)
    assert summary["pixel_accuracy"] == pytest.approx(0.95)


def test_ignored_pixels_do_not_count_and_absent_classes_are_not_averaged() -> None:
    truth = np.array([[0, 0, 255, 255]], np.uint8)
    pred = np.array([[0, 0, 2, 1]], np.uint8)
    summary = iou_summary(confusion(pred, truth, 3), ("a", "b", "c"))
    assert summary["miou"] == 1.0 and summary["per_class_iou"]["b"] is None and summary["pixels"] == 2


def test_a_class_id_beyond_the_model_is_a_typed_error() -> None:
    with pytest.raises(InvalidInputError, match="class id 7"):
        confusion(np.zeros((2, 2), np.uint8), np.full((2, 2), 7, np.uint8), 3)
    with pytest.raises(InvalidInputError, match="ground truth"):
        confusion(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8), 3)


def _as_results(coco: dict, keep=lambda ann: True) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
             "bbox": a["bbox"], "score": 1.0} for a in coco["annotations"] if not a["iscrowd"] and keep(a)]


def test_coco_ground_truth_as_detections_scores_ap_one_and_a_dropped_class_scores_zero(tmp_path: Path) -> None:
    root = synth.write_dataset(tmp_path / "d", synth.SynthConfig(count=10, size=(96, 96), seed=5))
    coco = json.loads((root / "annotations.json").read_text())
    perfect = coco_evaluate(root / "annotations.json", _as_results(coco))
    assert perfect["mask"]["AP"] == pytest.approx(1.0) and perfect["box"]["AP"] == pytest.approx(1.0)
    # Dropping every "cutout" detection: that class scores 0, the other two 1, so AP = 2/3.
    partial = coco_evaluate(root / "annotations.json", _as_results(coco, lambda a: a["category_id"] != 3))
    assert partial["mask"]["AP"] == pytest.approx(2 / 3, abs=1e-6)
    assert coco_evaluate(root / "annotations.json", [])["mask"]["AP"] == 0.0


def test_pairwise_ious_and_matching() -> None:
    a = np.zeros((2, 8, 8), bool)
    a[0, :4, :4] = True
    a[1, 4:, 4:] = True
    b = a[::-1].copy()
    b[0, 4:, 4:6] = False  # 8 of 16 pixels left
    assert np.allclose(mask_iou(a, b), [[0, 1], [0.5, 0]])
    assert box_iou(np.array([[0, 0, 2, 2]], float), np.array([[1, 0, 3, 2]], float))[0, 0] == pytest.approx(1 / 3)
    pairs = match_instances(np.array([1, 1]), a, np.array([1, 1]), b)
    assert pairs == [(0, 1, 1.0), (1, 0, 0.5)]
    assert match_instances(np.array([1, 2]), a, np.array([1, 2]), b) == []  # overlapping pairs differ in label
