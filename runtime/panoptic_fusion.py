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

from . import kernels
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


def box_windows(boxes: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(N, 4) int64 rows [y0, y1) and columns [x0, x1) each mask is read in when boxes are given: its xyxy box
    with 1 px of margin, inside the image (empty for a box outside it)."""
    b = np.asarray(boxes, np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise InvalidInputError(f"boxes must be (N, 4) xyxy; got shape {b.shape}")
    if not np.isfinite(b).all():
        raise InvalidInputError("boxes must be finite; a box holds NaN or infinity")
    h, w = hw
    big = max(h, w) + 4  # clipped before the integer cast: a far box stays as far outside
    lo = np.clip(np.floor(b[:, :2]), -big, big).astype(np.int64) - 1
    hi = np.clip(np.ceil(b[:, 2:]), -big, big).astype(np.int64) + 2
    x0, y0 = np.minimum(np.maximum(lo[:, 0], 0), w), np.minimum(np.maximum(lo[:, 1], 0), h)
    x1, y1 = np.maximum(np.minimum(hi[:, 0], w), x0), np.maximum(np.minimum(hi[:, 1], h), y0)
    return np.stack([y0, y1, x0, x1], 1)


def _mask_window(mask: np.ndarray) -> tuple[slice, slice]:
    """The rows and columns holding the mask (no box given)."""
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
    if semantic.dtype.kind not in "ui":
        raise InvalidInputError(f"the semantic map must hold integer class ids; got {semantic.dtype}")


# A raw segment, as both twins return it: (source, category, area, x, y, w, h); source is the instance index
# of a thing, the semantic class of stuff.
RawSegment = tuple[int, int, int, int, int, int, int]


def paste_things(panoptic: np.ndarray, masks: np.ndarray, scores: np.ndarray, confident: np.ndarray,
                 categories: np.ndarray, windows: np.ndarray | None, overlap_thr: float) -> list[RawSegment]:
    """Step 1, in place on ``panoptic`` (all VOID on entry): instances by descending score until the first not
    ``confident``; ``categories`` is each one's thing category (0: not fused); ``windows`` from
    :func:`box_windows`, or None to find each mask's own."""
    segments: list[RawSegment] = []
    for k in np.argsort(-scores, kind="stable"):
        if not confident[k]:
            break
        if categories[k] == 0:
            continue
        if windows is None:
            rows, cols = _mask_window(masks[k])
        else:
            rows, cols = slice(*windows[k, :2]), slice(*windows[k, 2:])
        mask, region = masks[k, rows, cols], panoptic[rows, cols]
        area = int(np.count_nonzero(mask))
        if area == 0:
            continue
        free = mask & (region == VOID)
        pasted = int(np.count_nonzero(free))
        if (area - pasted) / area > overlap_thr or pasted == 0:
            continue
        region[free] = len(segments) + 1
        segments.append((int(k), int(categories[k]), pasted, *_bbox(free, rows.start, cols.start)))
    return segments


def paste_stuff(panoptic: np.ndarray, free: np.ndarray, labels: np.ndarray, stuff_lut: np.ndarray, area_limit: int,
                first_id: int) -> list[RawSegment]:
    """Step 2, in place: each stuff class's ``free`` pixels (their semantic ``labels``, all in range) become one
    segment if there are at least ``area_limit`` (and 1) of them."""
    labels = labels.astype(np.intp, copy=False)
    counts = np.bincount(labels, minlength=len(stuff_lut))
    kept = [c for c in range(len(stuff_lut)) if stuff_lut[c] and counts[c] >= max(area_limit, 1)]
    lut = np.zeros(len(stuff_lut), np.int32)
    lut[kept] = np.arange(first_id, first_id + len(kept), dtype=np.int32)
    panoptic[free] = lut[labels]
    return [(c, int(stuff_lut[c]), int(counts[c]), *_bbox(panoptic == lut[c])) for c in kept]


def fuse_reference(semantic: np.ndarray, masks: np.ndarray, scores: np.ndarray, confident: np.ndarray,
                   categories: np.ndarray, windows: np.ndarray | None, overlap_thr: float, stuff_lut: np.ndarray,
                   area_limit: int, panoptic: np.ndarray) -> tuple[list[RawSegment], list[RawSegment], int | None]:
    """The NumPy twin of the C++ ``panoptic_fuse`` (same arguments and results; :func:`kernels.panoptic_fuse`
    validates them and picks one). Pastes into ``panoptic`` and returns the things, the stuff and, when a free
    pixel's semantic label has no class, the largest free label (no stuff then; else None)."""
    things = paste_things(panoptic, masks, scores, confident, categories, windows, overlap_thr)
    free = panoptic == VOID
    labels = semantic[free]
    if labels.size and (labels.min() < 0 or labels.max() >= len(stuff_lut)):
        return things, [], int(labels.max())
    return things, paste_stuff(panoptic, free, labels, stuff_lut, area_limit, len(things) + 1), None


def fuse(semantic: np.ndarray, masks: np.ndarray, scores: np.ndarray, labels: np.ndarray, cats: Categories,
         cfg: FusionConfig = FusionConfig(), boxes: np.ndarray | None = None) -> tuple[np.ndarray, list[FusedSegment]]:
    """The panoptic map (H, W) int32 of segment ids (0 VOID) and its segments, things first.

    ``semantic``: (H, W) class ids of the semantic bundle; ``masks`` (N, H, W) bool, ``scores`` (N,),
    ``labels`` (N,) instance class ids; ``boxes`` (N, 4) xyxy bound each mask (a mask is read inside its box
    with 1 px of margin only). The C++ kernel by default, its NumPy twin with ``SEGRT_PREPOST=reference``."""
    _check(semantic, masks, scores, labels)
    labels = np.asarray(labels, np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(cats.thing_of_instance)):
        raise InvalidInputError(f"instance labels run to {int(labels.max())}; the bundle has "
                                f"{len(cats.thing_of_instance)} classes")
    scores = np.asarray(scores, np.float32)
    windows = None if boxes is None else box_windows(boxes, semantic.shape)
    panoptic, things, stuff, bad_label = kernels.panoptic_fuse(
        semantic, masks, scores, ~(scores < cfg.confidence_thr), cats.thing_of_instance[labels], windows,
        cfg.overlap_thr, cats.stuff_of_semantic, cfg.stuff_area_limit)
    if bad_label is not None:
        raise InvalidInputError(f"semantic labels run to {bad_label}; the bundle has "
                                f"{len(cats.stuff_of_semantic)} classes")
    segments = [FusedSegment(i + 1, cat, area, tuple(box), float(scores[k])) for i, (k, cat, area, *box) in enumerate(things)]
    return panoptic, segments + [FusedSegment(len(segments) + i + 1, cat, area, tuple(box), None)
                                 for i, (_, cat, area, *box) in enumerate(stuff)]
