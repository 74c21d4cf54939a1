"""The synthetic scene generator: deterministic, and its ground truth is exact."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from segrt.benchmarks import synth
from segrt.runtime.errors import InvalidInputError


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    cfg = synth.SynthConfig(count=6, size=(96, 128), seed=3)
    a = _digest(synth.write_dataset(tmp_path / "a", cfg))
    b = _digest(synth.write_dataset(tmp_path / "b", cfg))
    c = _digest(synth.write_dataset(tmp_path / "c", synth.SynthConfig(count=6, size=(96, 128), seed=4)))
    assert a == b
    assert a != c


def test_an_image_regenerates_alone() -> None:
    cfg = synth.SynthConfig(count=5, size=(64, 64), seed=1, split="val")
    scenes = list(synth.iter_scenes(cfg))
    again = synth.make_scene(cfg, 3)
    assert np.array_equal(scenes[3].image, again.image) and np.array_equal(scenes[3].labels, again.labels)


def test_labels_partition_the_image_exactly() -> None:
    cfg = synth.SynthConfig(count=20, size=(128, 160), seed=0)
    for scene in synth.iter_scenes(cfg):
        visible = np.bincount(scene.instances.ravel(), minlength=len(scene.classes) + 1)
        for k, (cls, crowd) in enumerate(zip(scene.classes, scene.crowd), start=1):
            where = scene.instances == k
            expected = synth.IGNORE if crowd else cls
            assert np.all(scene.labels[where] == expected)
            assert visible[k] <= scene.areas[k - 1]  # occlusion only removes pixels
        assert np.all(scene.labels[scene.instances == 0] == 0)


def test_an_unoccluded_ellipse_has_the_area_of_an_ellipse() -> None:
    """Pixel counts match the pasted shape: an ellipse's visible area is close to pi*a*b."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        axes = (int(rng.integers(10, 40)), int(rng.integers(10, 40)))
        mask = np.zeros((128, 128), np.uint8)
        cv2.ellipse(mask, (64, 64), axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
        assert abs(mask.sum() - math.pi * axes[0] * axes[1]) / (math.pi * axes[0] * axes[1]) < 0.08


def test_coco_masks_decode_to_the_instance_map(tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils

    cfg = synth.SynthConfig(count=8, size=(96, 96), seed=2)
    root = synth.write_dataset(tmp_path / "d", cfg)
    coco = json.loads((root / "annotations.json").read_text())
    scenes = list(synth.iter_scenes(cfg))
    by_image: dict[int, list] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for info in coco["images"]:
        scene = scenes[info["id"] - 1]
        labels = cv2.imread(str(root / "labels" / info["file_name"]), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(labels, scene.labels)
        anns = by_image.get(info["id"], [])
        assert len(anns) == len(np.setdiff1d(np.unique(scene.instances), [0]))
        for ann in anns:
            m = mask_utils.decode(ann["segmentation"]).astype(bool)
            assert m.sum() == ann["area"] > 0
            ids = np.unique(scene.instances[m])
            assert len(ids) == 1 and scene.classes[ids[0] - 1] == ann["category_id"]
            assert ann["iscrowd"] == int(scene.crowd[ids[0] - 1])


def test_bad_config_is_a_typed_error() -> None:
    with pytest.raises(InvalidInputError, match="split"):
        synth.SynthConfig(split="dev")
    with pytest.raises(InvalidInputError, match="32x32"):
        synth.SynthConfig(size=(16, 16))
