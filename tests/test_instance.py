"""Mask R-CNN: the exported graph plus segrt's resize and paste against torchvision end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segrt.runtime import InstanceSegmenter, load
from segrt.runtime.errors import ExportError, InvalidInputError, ModelFormatError
from segrt.runtime.prepost import paste_masks

from .conftest import Trained
from .test_cli import assert_one_line_error, segrt

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", range(4))
def test_paste_masks_matches_torchvision(seed: int) -> None:
    """Boxes inside and across the image border, tiny and large: identical masks. (torchvision's
    own paste raises on a box entirely outside the image; segrt gives it an empty mask.)"""
    import torch
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    rng = np.random.default_rng(seed)
    n, h, w = 24, 61, 83
    masks = rng.random((n, 1, 28, 28)).astype(np.float32)
    x0, y0 = rng.uniform(-20, w - 8, n), rng.uniform(-20, h - 8, n)
    boxes = np.stack([x0, y0, x0 + rng.uniform(24, 60, n), y0 + rng.uniform(24, 60, n)], 1).astype(np.float32)
    boxes[:4, :2] = rng.uniform(5, 50, (4, 2))
    boxes[:4, 2:] = boxes[:4, :2] + rng.uniform(0.5, 3, (4, 2))  # tiny boxes
    ref = paste_masks_in_image(torch.from_numpy(masks), torch.from_numpy(boxes), (h, w))[:, 0].numpy()
    ours = paste_masks(masks, boxes, (h, w), 0.5)
    decided = np.abs(ref - 0.5) > 1e-5  # exact float ties at the threshold may round either way
    assert np.array_equal(ours[decided], (ref > 0.5)[decided])
    assert paste_masks(masks[:0], boxes[:0], (h, w)).shape == (0, h, w)
    outside = np.array([[w + 5, 0, w + 40, 30], [-50, -50, -10, -10]], np.float32)
    assert not paste_masks(masks[:2], outside, (h, w)).any()


def test_matches_torchvision_on_real_photos_at_two_sizes(maskrcnn: Trained, photos) -> None:
    from segrt.export.verify import instance_agreement

    det = InstanceSegmenter(maskrcnn.bundle, "cpu")
    total = 0
    for name in ("astronaut", "coffee", "chelsea"):
        for image in (photos[name], photos[name][::2, ::3]):
            check = instance_agreement(maskrcnn.module, det, image)
            total += check["torch_detections"]
            assert check["match_fraction"] >= 0.95, (name, image.shape, check)
            assert check["max_unmatched_score_above_threshold"] <= 0.1, check
    assert total > 0, "the photos gave no detections at all: the comparison proved nothing"


def test_matches_torchvision_on_the_fixtures_validation_images(maskrcnn: Trained) -> None:
    from segrt.export.verify import instance_agreement
    from segrt.runtime.image import read_image

    det = InstanceSegmenter(maskrcnn.bundle, "cpu")
    checks = [instance_agreement(maskrcnn.module, det, read_image(p))
              for p in sorted((maskrcnn.val / "images").iterdir())[:8]]
    assert sum(c["torch_detections"] for c in checks) >= 8
    assert min(c["match_fraction"] for c in checks) >= 0.95, checks
    assert max(c["max_unmatched_score_above_threshold"] for c in checks) <= 0.1, checks


def test_result_shapes_thresholds_and_coco_json(maskrcnn: Trained, photos) -> None:
    from pycocotools import mask as mask_utils

    det = load(maskrcnn.bundle, "cpu", score_threshold=0.3)
    image = photos["coffee"]
    res = det(image)
    assert res.masks.shape == (len(res), *image.shape[:2]) and res.masks.dtype == bool
    assert res.boxes.shape == (len(res), 4) and np.all(np.diff(res.scores) <= 0) and np.all(res.scores >= 0.3)
    stricter = det(image, score_threshold=0.8)
    assert len(stricter) == int((res.scores >= 0.8).sum())
    # the threshold given at load is the default for every call
    assert len(res) == len(InstanceSegmenter(maskrcnn.bundle, "cpu")(image, score_threshold=0.3))
    floor = load(maskrcnn.bundle, "cpu", score_threshold=0.05)(image)
    assert len(floor) >= len(res) and (len(floor) == 0 or floor.scores.min() >= 0.05)
    coco = res.to_coco(image_id=7)
    for ann, mask in zip(coco, res.masks):
        assert ann["image_id"] == 7 and np.array_equal(mask_utils.decode(ann["segmentation"]).astype(bool), mask)
    assert json.loads(json.dumps(coco)) == coco
    assert res.overlay(image).shape == image.shape


def test_zero_detections_is_a_result(maskrcnn: Trained) -> None:
    det = InstanceSegmenter(maskrcnn.bundle, "cpu", score_threshold=1.0)
    res = det(np.full((120, 160, 3), 127, np.uint8))
    assert len(res) == 0 and res.masks.shape == (0, 120, 160) and res.to_coco(1) == []


def test_bad_input_is_typed(maskrcnn: Trained, tmp_path: Path) -> None:
    det = InstanceSegmenter(maskrcnn.bundle, "cpu")
    with pytest.raises(InvalidInputError, match="minimum side"):
        det(np.zeros((4, 900, 3), np.uint8))
    with pytest.raises(InvalidInputError, match="graph already dropped"):
        InstanceSegmenter(maskrcnn.bundle, "cpu", score_threshold=0.01)
    # a bundle whose manifest names an output the model lacks
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").symlink_to((maskrcnn.bundle / "model.onnx").resolve())
    manifest = json.loads((maskrcnn.bundle / "segrt.json").read_text())
    manifest["detection"]["masks"] = "mask_probs"
    (broken / "segrt.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFormatError, match="mask_probs"):
        InstanceSegmenter(broken, "cpu")


def test_a_checkpoint_with_another_class_count_is_named(maskrcnn: Trained, tmp_path: Path) -> None:
    from segrt.export.exporter import export_model
    from segrt.export.spec import ExportConfig

    cfg = ExportConfig("maskrcnn", "maskrcnn_resnet50_fpn", 91, weights=maskrcnn.checkpoint, min_size=128, max_size=128)
    with pytest.raises(ExportError, match="has 4 classes.*--classes 91"):
        export_model(cfg, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_segrt_run_writes_instances_and_overlay(maskrcnn: Trained, tmp_path: Path) -> None:
    import cv2
    from pycocotools.coco import COCO

    from segrt.runtime.image import read_image

    # the held-out scene with the most detections: the quick model's weights differ from machine to machine
    ref_det = InstanceSegmenter(maskrcnn.bundle, "cpu", score_threshold=0.3)
    scenes = [read_image(p) for p in sorted((maskrcnn.val / "images").iterdir())[:6]]
    photo, ref = max(((s, ref_det(s)) for s in scenes), key=lambda found: len(found[1]))
    cv2.imwrite(str(tmp_path / "scene.png"), photo[:, :, ::-1])
    proc = segrt("run", maskrcnn.bundle, "--input", tmp_path / "scene.png", "--out", tmp_path / "out",
                 "--score-threshold", "0.3")
    assert proc.returncode == 0, proc.stderr
    results = tmp_path / "out" / "scene.instances.json"
    image = json.loads((tmp_path / "out" / "scene.image.json").read_text())
    assert (image["height"], image["width"], image["file_name"]) == (*photo.shape[:2], "scene.png")
    assert len(json.loads(results.read_text())) == len(ref) > 0
    gt = COCO()  # the file as COCO tools read it: loadRes(path), the image entry written beside it
    gt.dataset = {"images": [{k: image[k] for k in ("id", "height", "width", "file_name")}], "annotations": [],
                  "categories": [{"id": i} for i in range(1, 4)]}
    gt.createIndex()
    dt = gt.loadRes(str(results))
    assert sorted(a["score"] for a in dt.dataset["annotations"]) == pytest.approx(sorted(ref.scores.tolist()))
    assert cv2.imread(str(tmp_path / "out" / "scene.overlay.jpg")).shape == photo.shape
    bad = segrt("run", maskrcnn.bundle, "--input", tmp_path / "scene.png", "--out", tmp_path / "o2",
                "--score-threshold", "0.001")
    assert_one_line_error(bad, "graph already dropped")
