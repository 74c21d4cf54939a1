"""Volume accuracy per label: Dice and the 95th-percentile Hausdorff distance in millimetres (HD95).

The NumPy/SciPy twins of MONAI's ``compute_dice`` and ``compute_hausdorff_distance(percentile=95)`` (tested
against them): edges are the mask minus its binary erosion (outside the volume counts as background),
distances are the Euclidean distance transform of the other mask's non-edges with the voxel spacing, and
HD95 is the larger of the two directed 95th percentiles. Empty masks follow MONAI's defaults
(``compute_dice(ignore_empty=True)``, ``compute_hausdorff_distance``): an empty truth gives Dice NaN, an empty
prediction of a present label Dice 0; HD95 is NaN when either mask is empty. SciPy is imported here only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred.astype(bool), truth.astype(bool)
    if not t.any():
        return float("nan")  # MONAI's ignore_empty=True: nothing to find
    return 2.0 * int((p & t).sum()) / (int(p.sum()) + int(t.sum()))


def _edges(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    from scipy.ndimage import distance_transform_edt

    p, t = pred.astype(bool), truth.astype(bool)
    if not p.any() or not t.any():
        return float("nan")
    ep, et = _edges(p), _edges(t)
    to_truth = distance_transform_edt(~et, sampling=spacing)[ep]
    to_pred = distance_transform_edt(~ep, sampling=spacing)[et]
    return float(max(np.percentile(to_truth, 95), np.percentile(to_pred, 95)))


def per_label(pred: np.ndarray, truth: np.ndarray, labels: Sequence[int],
              spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[int, dict[str, float]]:
    """``{label: {"dice": ..., "hd95_mm": ...}}`` for each of ``labels``."""
    if pred.shape != truth.shape:
        from .errors import InvalidInputError

        raise InvalidInputError(f"label volumes differ in shape: {pred.shape} against the truth's {truth.shape}")
    return {int(k): {"dice": dice(pred == k, truth == k), "hd95_mm": hd95(pred == k, truth == k, spacing)}
            for k in labels}
