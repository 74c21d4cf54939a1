"""Mask2Former post-processing in NumPy: transformers' three ``post_process_*`` on class and mask logits.

For one image: ``class_logits`` (Q, C + 1; the last class is "no object") and ``mask_logits`` (Q, h, w), the
graph's outputs. Each function does what ``Mask2FormerImageProcessor``'s method of the same kind does
(transformers 5), step for step, with its defaults:

- every kind first resizes the mask logits to 384x384 (bilinear, half-pixel centres), as transformers does
  "for all models";
- :func:`semantic_map`: per-class scores ``softmax(classes)[:, :C]`` weighted by ``sigmoid(masks)``, summed
  over queries, resized to the target size, argmax;
- :func:`instance_segments`: the top Q (query, class) pairs by class probability, each scored by that
  probability times its mask's mean probability over its ``logit > 0`` pixels, masks resized nearest to the
  target; kept from ``threshold`` up (transformers' instance path takes ``mask_threshold`` and
  ``overlap_mask_area_threshold`` and uses neither, nor here);
- :func:`panoptic_segments`: queries whose best class is not "no object" and scores above ``threshold``;
  their mask probabilities (resized to the target) times their scores, each pixel to the best query; a query
  keeps its segment when its pixels are more than ``overlap_mask_area_threshold`` of its own mask
  (``prob * score >= mask_threshold``); classes in ``label_ids_to_fuse`` share one segment.

One departure, in order only: transformers' instance path takes the top Q with ``topk(sorted=False)``, whose
order PyTorch leaves unspecified, and paints the segment map in it; here segments come by descending score and
the map is painted so that the highest score wins where masks overlap. The masks and scores are the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

#: transformers resizes mask logits to this before any post-processing ("(384, 384) for all models")
WORK_SIZE = (384, 384)
THRESHOLD = 0.5
MASK_THRESHOLD = 0.5
OVERLAP_MASK_AREA_THRESHOLD = 0.8


@dataclass
class Segments:
    """Instance or panoptic segments of one image, at the target size.

    ``segmentation``: (H, W) int32 segment ids (-1 where no segment, as transformers: instance ids count from 0,
    panoptic ids from 1 with 0 for pixels no kept query wins, and all -1 when nothing passed ``threshold``).
    ``segments``: one dict per segment: ``id``, ``label_id``, ``was_fused``, ``score`` (rounded to 6 places).
    ``masks``: (N, H, W) bool, one per segment in ``segments``' order.
    """

    segmentation: np.ndarray
    segments: list[dict] = field(default_factory=list)
    masks: np.ndarray | None = None


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's ``interpolate(mode="bilinear", align_corners=False)`` taps for one axis, computed as its CPU
    kernel does, in float32: source ``scale * (i + 0.5) - 0.5`` (one rounding, as a fused multiply-add), clamped
    at 0; the two neighbours and their weights. Returns (first index, second index, first weight, second weight)."""
    f32 = np.float32
    scale = f32(f32(n_in) / f32(n_out))
    src = (np.float64(scale) * (np.arange(n_out) + 0.5) - 0.5).astype(f32)
    src = np.maximum(src, f32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = i0 + (i0 < n_in - 1)
    lam = np.clip(src - i0.astype(f32), f32(0), f32(1)).astype(f32)
    return i0, i1, f32(1) - lam, lam


def resize_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) float maps to (N, H, W) as PyTorch resizes them (within a float32 rounding per value); the
    identity when the size is the same."""
    h, w = maps.shape[1:]
    maps = maps.astype(np.float32, copy=False)
    if (h, w) == tuple(size):
        return maps
    r0, r1, h0, h1 = _linear_taps(h, size[0])
    c0, c1, w0, w1 = _linear_taps(w, size[1])
    rows = maps[:, :, c0] * w0 + maps[:, :, c1] * w1  # width first, then height: PyTorch's order of the sums
    return rows[:, r0] * h0[:, None] + rows[:, r1] * h1[:, None]


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """PyTorch's ``mode="nearest"`` source index per output index: floor(i * in / out) in float32."""
    if n_in == n_out:
        return np.arange(n_out)
    scale = np.float32(n_in / n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)


def resize_nearest(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = maps.shape[1:]
    return maps[:, _nearest_index(h, size[0])][:, :, _nearest_index(w, size[1])]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def _checked(class_logits: np.ndarray, mask_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from .errors import InvalidInputError

    if class_logits.ndim != 2 or mask_logits.ndim != 3 or class_logits.shape[0] != mask_logits.shape[0]:
        raise InvalidInputError(f"expected class logits (Q, C + 1) and mask logits (Q, h, w) of one image; got "
                                f"{class_logits.shape} and {mask_logits.shape}")
    if class_logits.shape[1] < 2:
        raise InvalidInputError(f"class logits need at least one class and the no-object one; got {class_logits.shape}")
    return class_logits.astype(np.float32, copy=False), resize_bilinear(mask_logits, WORK_SIZE)


def semantic_scores(class_logits: np.ndarray, mask_logits: np.ndarray,
                    target_size: tuple[int, int] | None = None) -> np.ndarray:
    """(C, H, W) class scores: ``post_process_semantic_segmentation``'s ``segmentation_scores``."""
    classes, masks = _checked(class_logits, mask_logits)
    probs = softmax(classes)[:, :-1]  # (Q, C)
    q, h, w = masks.shape
    scores = (probs.T @ sigmoid(masks).reshape(q, h * w)).reshape(-1, h, w)
    return scores if target_size is None else resize_bilinear(scores, target_size)


def semantic_map(class_logits: np.ndarray, mask_logits: np.ndarray,
                 target_size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) class ids: ``post_process_semantic_segmentation`` (384x384 without a target size)."""
    return semantic_scores(class_logits, mask_logits, target_size).argmax(0)


def instance_segments(class_logits: np.ndarray, mask_logits: np.ndarray, threshold: float = THRESHOLD,
                      target_size: tuple[int, int] | None = None) -> Segments:
    """``post_process_instance_segmentation`` (see the module's note on order)."""
    classes, masks = _checked(class_logits, mask_logits)
    q, num_classes = classes.shape[0], classes.shape[1] - 1
    flat = softmax(classes)[:, :-1].ravel()
    top = np.argsort(-flat, kind="stable")[:q]
    query, label = top // num_classes, top % num_classes
    logits = masks[query]
    binary = logits > 0
    mask_score = (sigmoid(logits) * binary).reshape(q, -1).sum(1) / (binary.reshape(q, -1).sum(1) + 1e-6)
    scores = flat[top] * mask_score
    if target_size is not None:
        binary = resize_nearest(binary, target_size)
    keep = [j for j in np.argsort(-scores, kind="stable") if scores[j] >= threshold and binary[j].any()]
    segmentation = np.full(binary.shape[1:], -1, np.int32)
    for new_id, j in reversed(list(enumerate(keep))):  # lowest score first: the highest wins where masks overlap
        segmentation[binary[j]] = new_id
    segments = [{"id": i, "label_id": int(label[j]), "was_fused": False, "score": round(float(scores[j]), 6)}
                for i, j in enumerate(keep)]
    return Segments(segmentation, segments, binary[keep])


def panoptic_segments(class_logits: np.ndarray, mask_logits: np.ndarray, threshold: float = THRESHOLD,
                      mask_threshold: float = MASK_THRESHOLD,
                      overlap_mask_area_threshold: float = OVERLAP_MASK_AREA_THRESHOLD,
                      label_ids_to_fuse: Iterable[int] | None = None,
                      target_size: tuple[int, int] | None = None) -> Segments:
    """``post_process_panoptic_segmentation``: each pixel to one kept query; fused classes share a segment."""
    classes, masks = _checked(class_logits, mask_logits)
    probs = softmax(classes)
    scores, labels = probs.max(-1), probs.argmax(-1)
    keep = (labels != classes.shape[1] - 1) & (scores > threshold)
    size = tuple(target_size) if target_size is not None else WORK_SIZE
    if not keep.any():
        return Segments(np.full(size, -1, np.int32), [], np.zeros((0, *size), bool))
    weighted = resize_bilinear(sigmoid(masks[keep]), size) * scores[keep][:, None, None]  # probabilities resized
    return _compute_segments(weighted, scores[keep], labels[keep], mask_threshold, overlap_mask_area_threshold,
                             set(label_ids_to_fuse or ()))


def _compute_segments(weighted: np.ndarray, scores: np.ndarray, labels: np.ndarray, mask_threshold: float,
                      overlap: float, fuse: set[int]) -> Segments:
    """transformers' ``compute_segments`` on score-weighted mask probabilities (K, H, W)."""
    owner = weighted.argmax(0)
    segmentation = np.zeros(owner.shape, np.int32)
    segments: list[dict] = []
    masks: list[np.ndarray] = []
    fused_ids: dict[int, int] = {}
    current = 0
    for k in range(len(labels)):
        label = int(labels[k])
        mask_k = owner == k
        area, original = int(mask_k.sum()), int((weighted[k] >= mask_threshold).sum())
        if not (area > 0 and original > 0 and area / original > overlap):
            continue
        if label in fused_ids:
            current = fused_ids[label]
        else:
            current += 1
        segmentation[mask_k] = current
        segments.append({"id": current, "label_id": label, "was_fused": label in fuse,
                         "score": round(float(scores[k]), 6)})
        masks.append(mask_k)
        if label in fuse:
            fused_ids[label] = current
    stacked = np.stack(masks) if masks else np.zeros((0, *owner.shape), bool)
    return Segments(segmentation, segments, stacked)
