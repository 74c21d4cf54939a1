"""Pairwise box and mask IoU and instance matching: NumPy only, shared by the export's check
against PyTorch and by ``segrt eval``'s comparison of bundles."""

from __future__ import annotations

import numpy as np


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boolean masks a (N, H, W) and b (M, H, W): (N, M)."""
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes a (N, 4) and b (M, 4): (N, M)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_instances(ref_labels: np.ndarray, ref_masks: np.ndarray, labels: np.ndarray, masks: np.ndarray) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching of same-label instances by mask IoU, reference order (by score).
    Returns (reference index, candidate index, mask IoU) for each matched pair with IoU > 0."""
    if len(ref_masks) == 0 or len(masks) == 0:
        return []
    iou = mask_iou(ref_masks, masks)
    iou[ref_labels[:, None] != labels[None, :]] = 0.0
    pairs, taken = [], np.zeros(len(masks), bool)
    for i in range(len(ref_masks)):
        row = np.where(taken, -1.0, iou[i])
        j = int(row.argmax())
        if row[j] > 0:
            taken[j] = True
            pairs.append((i, j, float(row[j])))
    return pairs
