"""Synthetic scenes with exact ground truth, composed from real CC0 photos (scikit-image's samples).

Every image is a real photo or texture as background with objects pasted over it: ellipses and
rotated rectangles filled with real textures, and crops of real photos under random polygon masks.
Later objects occlude earlier ones; the ground truth is what stays visible. Each image is drawn
from its own generator seeded by ``(seed, split, index)``, so a dataset is the same bytes on every
machine and any image can be regenerated alone.

A dataset folder holds ``images/<stem>.png``, ``labels/<stem>.png`` (class ids, 255 = ignore) and
``annotations.json`` (COCO instances, masks as compressed RLE), the layout ``segrt eval`` reads.
Visible remnants smaller than ``min_visible`` pixels are ignored in both: 255 in the label map and
``iscrowd=1`` in COCO, so neither metric is judged on slivers no model could find.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segrt.runtime.errors import InvalidInputError
from segrt.runtime.image import write_image_atomic
from segrt.runtime.manifest import write_json_atomic
from segrt.runtime.prepost import rle_encode

CLASSES = ("background", "ellipse", "rectangle", "cutout")
IGNORE = 255
#: Real photos and textures, disjoint by role so every class has a look as well as a shape:
#: backgrounds, the textures inside ellipses, those inside rectangles, the photos cut out.
BACKGROUNDS = ("astronaut", "rocket", "camera", "moon", "hubble_deep_field", "coins")
FILLS = {1: ("grass", "gravel"), 2: ("brick", "text"), 3: ("chelsea", "cat", "coffee", "immunohistochemistry")}
SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SynthConfig:
    count: int = 200
    size: tuple[int, int] = (256, 256)  # (H, W)
    seed: int = 0
    split: str = "train"
    objects: tuple[int, int] = (2, 6)  # inclusive range per image
    scale: tuple[float, float] = (0.15, 0.45)  # object extent as a fraction of the shorter side
    min_visible: int = 48

    def __post_init__(self) -> None:
        if self.count < 1:
            raise InvalidInputError(f"count must be >= 1; got {self.count}")
        if min(self.size) < 32:
            raise InvalidInputError(f"size must be at least 32x32; got {self.size[0]}x{self.size[1]}")
        if self.split not in SPLITS:
            raise InvalidInputError(f"split must be one of {', '.join(SPLITS)}; got {self.split!r}")
        if not 1 <= self.objects[0] <= self.objects[1]:
            raise InvalidInputError(f"objects must be a range 1 <= lo <= hi; got {self.objects}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise InvalidInputError(f"scale must be a range in (0, 1]; got {self.scale}")


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    labels: np.ndarray  # (H, W) uint8 class ids, IGNORE for slivers
    instances: np.ndarray  # (H, W) int32: 0 background, k = k-th pasted object (visible part)
    classes: list[int]  # class id of object k (index k - 1)
    areas: list[int]  # full pasted area of object k before occlusion
    crowd: list[bool]  # object k's visible part is below min_visible


@functools.lru_cache(maxsize=None)
def _source(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def _crop(rng: np.random.Generator, name: str, h: int, w: int) -> np.ndarray:
    """A random crop of a source at a random scale, resized to (h, w), colour-jittered."""
    src = _source(name)
    sh, sw = src.shape[:2]
    frac = rng.uniform(0.35, 1.0)
    ch = max(8, int(min(sh, sw * h / w) * frac))
    cw = max(8, int(ch * w / h))
    ch, cw = min(ch, sh), min(cw, sw)
    y, x = rng.integers(0, sh - ch + 1), rng.integers(0, sw - cw + 1)
    patch = cv2.resize(src[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    gain = rng.uniform(0.7, 1.3, size=3) * rng.uniform(0.8, 1.2)
    shift = rng.uniform(-25, 25, size=3)
    return np.clip(patch.astype(np.float32) * gain + shift, 0, 255).astype(np.uint8)


def _shape_mask(rng: np.random.Generator, cls: int, h: int, w: int, extent: float) -> np.ndarray:
    """A filled ellipse, rotated rectangle or random star-shaped polygon, centred anywhere."""
    mask = np.zeros((h, w), np.uint8)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    r = extent / 2
    if CLASSES[cls] == "ellipse":
        axes = (max(2, round(r)), max(2, round(r * rng.uniform(0.45, 1.0))))
        cv2.ellipse(mask, (round(cx), round(cy)), axes, rng.uniform(0, 180), 0, 360, 1, thickness=-1)
    elif CLASSES[cls] == "rectangle":
        box = cv2.boxPoints(((cx, cy), (2 * r, 2 * r * rng.uniform(0.4, 1.0)), rng.uniform(0, 90)))
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
    else:
        n = int(rng.integers(7, 13))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = r * rng.uniform(0.35, 1.0, n)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def make_scene(cfg: SynthConfig, index: int) -> Scene:
    rng = np.random.default_rng([cfg.seed, SPLITS[cfg.split], index])
    h, w = cfg.size
    image = _crop(rng, str(rng.choice(BACKGROUNDS)), h, w)
    instances = np.zeros((h, w), np.int32)
    classes: list[int] = []
    areas: list[int] = []
    for _ in range(int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))):
        cls = int(rng.integers(1, len(CLASSES)))
        extent = rng.uniform(*cfg.scale) * min(h, w)
        mask = _shape_mask(rng, cls, h, w, extent)
        if not mask.any():
            continue
        fill = str(rng.choice(FILLS[cls]))
        image[mask] = _crop(rng, fill, h, w)[mask]
        classes.append(cls)
        areas.append(int(mask.sum()))
        instances[mask] = len(classes)
    visible = np.bincount(instances.ravel(), minlength=len(classes) + 1)[1:]
    crowd = [bool(v < cfg.min_visible) for v in visible]
    lut = np.array([0] + [IGNORE if c else k for k, c in zip(classes, crowd)], np.uint8)
    return Scene(image, lut[instances], instances, classes, areas, crowd)


def coco_annotations(instances: np.ndarray, classes: list[int], crowd: list[bool], image_id: int,
                     first_id: int) -> list[dict[str, Any]]:
    """COCO annotations (compressed RLE) for the visible part of each object of an instance-id map
    (0 = background; id k has class ``classes[k - 1]``)."""
    from pycocotools import mask as mask_utils

    anns = []
    for k, cls in enumerate(classes, start=1):
        m = instances == k
        if not m.any():
            continue  # fully occluded
        rle = rle_encode(m[None])[0]
        anns.append({
            "id": first_id + len(anns), "image_id": image_id, "category_id": cls, "segmentation": rle,
            "area": int(m.sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": int(crowd[k - 1]),
        })
    return anns


def categories(names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{"id": i, "name": n, "supercategory": "object"} for i, n in enumerate(names) if i > 0]


def iter_scenes(cfg: SynthConfig) -> Iterator[Scene]:
    for i in range(cfg.count):
        yield make_scene(cfg, i)


@dataclass
class Sample:
    """One image of a dataset folder: pixels as written (BGR or grayscale), class-id labels, and the
    instance-id map with each instance's class and crowd flag."""

    stem: str
    image: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    classes: list[int]
    crowd: list[bool]


def write_folder(out: Path, samples: Iterable[Sample], names: tuple[str, ...],
                 info: dict[str, Any] | None = None) -> Path:
    """A ``segrt eval`` dataset folder (images/, labels/, annotations.json, classes.json), built aside
    and renamed into place."""
    from segrt.export.bundle import atomic_dir

    with atomic_dir(Path(out), force=True) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        images, anns = [], []
        for i, s in enumerate(samples, start=1):
            write_image_atomic(tmp / "images" / f"{s.stem}.png", s.image)
            write_image_atomic(tmp / "labels" / f"{s.stem}.png", s.labels)
            images.append({"id": i, "file_name": f"{s.stem}.png", "height": s.labels.shape[0],
                           "width": s.labels.shape[1]})
            anns += coco_annotations(s.instances, s.classes, s.crowd, i, len(anns) + 1)
        coco = ({"info": info} if info else {}) | {"images": images, "annotations": anns,
                                                    "categories": categories(names)}
        write_json_atomic(tmp / "annotations.json", coco)
        write_json_atomic(tmp / "classes.json", {"classes": list(names), "ignore_index": IGNORE})
    return Path(out)


def write_dataset(out: Path, cfg: SynthConfig) -> Path:
    """Write ``cfg.count`` scenes as a ``segrt eval`` dataset folder."""
    samples = (Sample(f"{cfg.split}_{i:05d}", s.image[:, :, ::-1], s.labels, s.instances, s.classes, s.crowd)
               for i, s in enumerate(iter_scenes(cfg)))
    return write_folder(out, samples, CLASSES, {"description": "segrt synthetic scenes", "config": _jsonable(cfg)})


def _jsonable(cfg: SynthConfig) -> dict[str, Any]:
    return json.loads(json.dumps(cfg.__dict__))
