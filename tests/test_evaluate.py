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


class _Labels:
    """A stand-in semantic model: its label map is fixed, whatever the image."""

    def __init__(self, label_map: np.ndarray, classes: tuple[str, ...]) -> None:
        from types import SimpleNamespace

        self.label_map = label_map
        self.manifest = SimpleNamespace(num_classes=len(classes), classes=classes)

    def __call__(self, image: np.ndarray) -> object:
        from types import SimpleNamespace

        return SimpleNamespace(label_map=self.label_map)


def test_the_semantic_evaluator_scores_rows_and_their_agreement(tmp_path: Path) -> None:
    import cv2

    from segrt.benchmarks.eval_run import Dataset, Tolerances, table
    from segrt.runtime.tasks import task_for

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    truth = np.zeros((4, 4), np.uint8)
    truth[:, 2:] = 1
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((4, 4, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "labels" / "a.png"), truth)
    ds = Dataset.open(tmp_path)
    ev = task_for("semantic").evaluator(ds, Tolerances(min_pixel_agreement=0.9))
    good, off = _Labels(truth, ("bg", "fg")), _Labels(np.zeros_like(truth), ("bg", "fg"))
    ref_state, off_state = ev.start(good), ev.start(off)
    ref = ev.step(ref_state, good, np.zeros((4, 4, 3), np.uint8), ds.images[0], None)
    ev.step(off_state, off, np.zeros((4, 4, 3), np.uint8), ds.images[0], ref)
    assert ev.accuracy(ref_state, good)["miou"] == 1.0
    assert ev.accuracy(off_state, off)["pixel_accuracy"] == 0.5
    agreement, passed = ev.agreement(off_state)
    assert agreement == {"pixel_agreement": 0.5, "min_image_pixel_agreement": 0.5} and not passed
    row = {"label": "b", "device": "cpu", "backend": "x", "reference": False, "mean_ms": 1.0,
           "accuracy": ev.accuracy(off_state, off), "agreement": agreement, "passed": passed}
    text = table({"task": "semantic", "rows": [row], "images": 1, "data": str(tmp_path),
                  "tolerances": Tolerances().__dict__})
    assert "| mIoU | pixel acc |" in text and "50.0000% pixels FAIL" in text


def test_each_evaluator_refuses_data_without_its_ground_truth(tmp_path: Path) -> None:
    from segrt.benchmarks.eval_run import Dataset, Tolerances
    from segrt.runtime.tasks import task_for

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"")  # listed, never read
    ds = Dataset.open(tmp_path)
    with pytest.raises(InvalidInputError, match="instance bundles are scored against .*annotations.json"):
        task_for("instance").evaluator(ds, Tolerances())
    with pytest.raises(InvalidInputError, match="semantic bundles are scored against .*labels"):
        task_for("semantic").evaluator(Dataset(ds.root, ds.images, None, tmp_path / "a.json", {}), Tolerances())
    with pytest.raises(InvalidInputError, match="SAM has no such metric"):
        task_for("sam").evaluator(ds, Tolerances())
