"""Panoptic fusion: a semantic label map and instances into one map of segment ids (the Panoptic FPN heuristic).

detectron2's ``combine_semantic_and_instance_outputs`` (and panopticapi's
``combine_semantic_and_instance_predictions.py``) define it:

1. instances by descending score, from ``confidence_thr`` up; an instance whose mask overlaps pixels already
   assigned by more than ``overlap_thr`` of its own area is dropped, otherwise only its free pixels are pasted;
2. the pixels still free take the semantic map's *stuff* classes (the semantic classes that are not things),
   one segment per class, in class order; a class whose free area is below ``stuff_area_limit`` stays VOID (0).

Segment ids count from 1 in the order segments are made. Which classes are things, and how instance and
semantic classes map onto panoptic categories, is decided once by name (:class:`Categories`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError

VOID = 0


@dataclass(frozen=True)
class FusionConfig:
    """detectron2's defaults: ``confidence_thr`` 0.5, ``overlap_thr`` 0.5, ``stuff_area_limit`` 4096 (64x64)."""

    confidence_thr: float = 0.5
    overlap_thr: float = 0.5
    stuff_area_limit: int = 4096

    def __post_init__(self) -> None:
        for name in ("confidence_thr", "overlap_thr"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InvalidInputError(f"{name} must be in [0, 1]; got {value}")
        if self.stuff_area_limit < 0:
            raise InvalidInputError(f"stuff_area_limit must be >= 0 pixels; got {self.stuff_area_limit}")


@dataclass(frozen=True)
class Category:
    id: int  # panoptic category id, from 1
    name: str
    isthing: bool

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "isthing": int(self.isthing)}


@dataclass(frozen=True)
class Categories:
    """The panoptic categories (stuff first, in semantic class order, then things in the order given) and the
    lookup tables from semantic and instance class ids onto them (0: not a category of that kind)."""

    categories: tuple[Category, ...]
    stuff_of_semantic: np.ndarray  # (num semantic classes,) int32: category id, or 0 for a thing class
    thing_of_instance: np.ndarray  # (num instance classes,) int32: category id, or 0 for a class not fused

    @classmethod
    def build(cls, semantic_classes: Sequence[str], instance_classes: Sequence[str],
              things: Sequence[str] | None = None) -> Categories:
        """``things`` None: every instance class but the first (torchvision's label 0 is the background)."""
        valid = [c for c in instance_classes[1:]]
        things = list(valid if things is None else things)
        if not things:
            raise InvalidInputError(f"name at least one thing class; the instance bundle's are: {', '.join(valid)}")
        unknown = [t for t in things if t not in valid]
        if unknown:
            raise InvalidInputError(f"unknown thing class(es) {', '.join(map(repr, unknown))}; the instance bundle's "
                                    f"classes are: {', '.join(valid)}")
        if len(set(things)) != len(things):
            raise InvalidInputError(f"thing classes are named twice: {', '.join(things)}")
        stuff = [c for c in dict.fromkeys(semantic_classes) if c not in things]
        cats = tuple(Category(i + 1, n, False) for i, n in enumerate(stuff)) + tuple(
            Category(len(stuff) + i + 1, n, True) for i, n in enumerate(things))
        by_name = {c.name: c.id for c in cats}
        stuff_lut = np.array([0 if n in things else by_name[n] for n in semantic_classes], np.int32)
        thing_lut = np.array([by_name[n] if k > 0 and n in things else 0 for k, n in enumerate(instance_classes)],
                             np.int32)
        return cls(cats, stuff_lut, thing_lut)

    def by_id(self, category_id: int) -> Category:
        return self.categories[category_id - 1]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.categories)


@dataclass(frozen=True)
class FusedSegment:
    id: int
    category_id: int
    area: int
    bbox: tuple[int, int, int, int]  # x, y, w, h (COCO panoptic: inclusive pixel extent)
    score: float | None  # things only


def _window(box: np.ndarray | None, mask: np.ndarray) -> tuple[slice, slice]:
    """The rows and columns holding the mask: from its box (1 px of margin) when given, else from the mask."""
    h, w = mask.shape
    if box is not None:
        x0, y0 = max(int(np.floor(box[0])) - 1, 0), max(int(np.floor(box[1])) - 1, 0)
        x1, y1 = min(int(np.ceil(box[2])) + 2, w), min(int(np.ceil(box[3])) + 2, h)
        return slice(y0, max(y1, y0)), slice(x0, max(x1, x0))
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _bbox(mask: np.ndarray, y0: int = 0, x0: int = 0) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return (int(x0 + cols[0]), int(y0 + rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


def _check(semantic: np.ndarray, masks: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> None:
    if semantic.ndim != 2 or masks.ndim != 3 or masks.shape[1:] != semantic.shape:
        raise InvalidInputError(f"instance masks {masks.shape} do not cover the semantic map {semantic.shape}")
    if not len(scores) == len(labels) == len(masks):
        raise InvalidInputError(f"{len(masks)} masks, {len(scores)} scores and {len(labels)} labels: one each")


def paste_things(panoptic: np.ndarray, masks: np.ndarray, scores: np.ndarray, categories: np.ndarray,
                 cfg: FusionConfig, boxes: np.ndarray | None = None) -> list[FusedSegment]:
    """Step 1, in place on ``panoptic`` (all VOID on entry): ``categories`` is each instance's thing category
    (0: not fused)."""
    segments: list[FusedSegment] = []
    for k in np.argsort(-scores, kind="stable"):
        if scores[k] < cfg.confidence_thr:
            break
        if categories[k] == 0:
            continue
        rows, cols = _window(None if boxes is None else boxes[k], masks[k])
        mask, region = masks[k, rows, cols], panoptic[rows, cols]
        area = int(np.count_nonzero(mask))
        if area == 0:
            continue
        free = mask & (region == VOID)
        pasted = int(np.count_nonzero(free))
        if (area - pasted) / area > cfg.overlap_thr or pasted == 0:
            continue
        seg_id = len(segments) + 1
        region[free] = seg_id
        segments.append(FusedSegment(seg_id, int(categories[k]), pasted, _bbox(free, rows.start, cols.start),
                                     float(scores[k])))
    return segments


def paste_stuff(panoptic: np.ndarray, semantic: np.ndarray, stuff_of_semantic: np.ndarray, cfg: FusionConfig,
                first_id: int) -> list[FusedSegment]:
    """Step 2, in place: each stuff class's free pixels become one segment if there are enough of them."""
    free = panoptic == VOID
    labels = semantic[free]
    if labels.size and (labels.min() < 0 or labels.max() >= len(stuff_of_semantic)):
        raise InvalidInputError(f"semantic labels run to {int(labels.max())}; the bundle has "
                                f"{len(stuff_of_semantic)} classes")
    counts = np.bincount(labels, minlength=len(stuff_of_semantic))
    kept = [c for c in range(len(stuff_of_semantic)) if stuff_of_semantic[c] and counts[c] >= max(cfg.stuff_area_limit, 1)]
    lut = np.zeros(len(stuff_of_semantic), np.int32)
    lut[kept] = np.arange(first_id, first_id + len(kept), dtype=np.int32)
    panoptic[free] = lut[labels]
    segments = []
    for c in kept:
        seg_id = int(lut[c])
        segments.append(FusedSegment(seg_id, int(stuff_of_semantic[c]), int(counts[c]), _bbox(panoptic == seg_id),
                                     None))
    return segments


def fuse(semantic: np.ndarray, masks: np.ndarray, scores: np.ndarray, labels: np.ndarray, cats: Categories,
         cfg: FusionConfig = FusionConfig(), boxes: np.ndarray | None = None) -> tuple[np.ndarray, list[FusedSegment]]:
    """The panoptic map (H, W) int32 of segment ids (0 VOID) and its segments, things first.

    ``semantic``: (H, W) class ids of the semantic bundle; ``masks`` (N, H, W) bool, ``scores`` (N,),
    ``labels`` (N,) instance class ids; ``boxes`` (N, 4) xyxy bound each mask (they only speed it up)."""
    _check(semantic, masks, scores, labels)
    labels = np.asarray(labels, np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(cats.thing_of_instance)):
        raise InvalidInputError(f"instance labels run to {int(labels.max())}; the bundle has "
                                f"{len(cats.thing_of_instance)} classes")
    panoptic = np.zeros(semantic.shape, np.int32)
    things = paste_things(panoptic, masks, np.asarray(scores, np.float32), cats.thing_of_instance[labels], cfg, boxes)
    if semantic.dtype.kind not in "ui":
        raise InvalidInputError(f"the semantic map must hold integer class ids; got {semantic.dtype}")
    stuff = paste_stuff(panoptic, semantic, cats.stuff_of_semantic, cfg, len(things) + 1)
    return panoptic, things + stuff
