"""Sliding-window inference in NumPy, equal to ``monai.inferers.sliding_window_inference``.

The same windows as MONAI (``_get_scan_interval`` and ``dense_patch_slices``: starts every
``int(roi * (1 - overlap))`` voxels, the last one pulled back inside the volume), the same importance map
(``compute_importance_map``: ones, or a separable Gaussian with ``sigma = sigma_scale * roi`` clamped below at
its minimum or 1e-3), the same symmetric padding when the volume is smaller than the window, and the same
blend: ``sum(patch * weight) / sum(weight)``. Patches are cut ``sw_batch_size`` at a time and their
predictions are added into one output array in place, so at most one batch of patches is held at once.
Also here: the whole-volume trilinear resize (``torch.nn.functional.interpolate(..., align_corners=False)``,
what MONAI's ``Resize`` does) for fixed-size models.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from .errors import InvalidInputError, ModelFormatError

BlendMode = Literal["constant", "gaussian"]
PadMode = Literal["constant", "reflect", "replicate", "circular"]
_NUMPY_PAD = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
#: a batch of patches (N, C, *roi) -> per-class probabilities (N, K, *roi)
PatchFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class WindowSpec:
    roi_size: tuple[int, int, int]
    overlap: float = 0.25
    mode: BlendMode = "constant"
    sigma_scale: float = 0.125
    sw_batch_size: int = 1
    padding_mode: PadMode = "constant"
    cval: float = 0.0

    def __post_init__(self) -> None:
        if len(self.roi_size) != 3 or min(self.roi_size) < 1:
            raise ModelFormatError(f"volume.roi_size must be three positive sizes; got {list(self.roi_size)}")
        if not 0 <= self.overlap < 1:
            raise ModelFormatError(f"volume.overlap must be >= 0 and < 1; got {self.overlap}")
        if self.mode not in get_args(BlendMode):
            raise ModelFormatError(f"volume.mode must be constant or gaussian; got {self.mode!r}")
        if self.padding_mode not in _NUMPY_PAD:
            raise ModelFormatError(f"volume.padding_mode must be one of {', '.join(_NUMPY_PAD)}; got {self.padding_mode!r}")
        if self.sigma_scale <= 0 or self.sw_batch_size < 1:
            raise ModelFormatError("volume.sigma_scale must be > 0 and volume.sw_batch_size >= 1")


def scan_interval(image: Sequence[int], roi: Sequence[int], overlap: float) -> tuple[int, ...]:
    return tuple(r if r == s else max(int(r * (1 - overlap)), 1) for s, r in zip(image, roi))


def window_starts(image: Sequence[int], roi: Sequence[int], overlap: float) -> list[tuple[int, ...]]:
    """Every window's corner, in MONAI's order (the last axis fastest)."""
    per_axis = []
    for size, patch, step in zip(image, roi, scan_interval(image, roi, overlap)):
        count = next(d for d in range(-(-size // step)) if d * step + patch >= size) + 1
        per_axis.append([min(i * step, size - patch) for i in range(count)])
    return list(itertools.product(*per_axis))


def importance_map(roi: Sequence[int], mode: BlendMode, sigma_scale: float) -> np.ndarray:
    if mode == "constant":
        return np.ones(tuple(roi), np.float32)
    weights = np.ones((), np.float32)
    for axis, size in enumerate(roi):
        x = np.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1, dtype=np.float32)
        g = np.exp(x**2 / np.float32(-2 * (size * sigma_scale) ** 2)).astype(np.float32)
        weights = weights[..., None] * g if axis else g
    return np.maximum(weights, max(float(weights.min()), 1e-3)).astype(np.float32)


def _pad_to_roi(volume: np.ndarray, spec: WindowSpec) -> tuple[np.ndarray, list[tuple[int, int]]]:
    pads = [(0, 0)] + [((r - s) // 2 if r > s else 0, (r - s) - (r - s) // 2 if r > s else 0)
                       for s, r in zip(volume.shape[1:], spec.roi_size)]
    if not any(a or b for a, b in pads):
        return volume, pads
    mode = _NUMPY_PAD[spec.padding_mode]
    kwargs = {"constant_values": spec.cval} if mode == "constant" else {}
    return np.pad(volume, pads, mode=mode, **kwargs), pads


def _batches(starts: list[tuple[int, ...]], size: int) -> Iterator[list[tuple[int, ...]]]:
    for i in range(0, len(starts), size):
        yield starts[i:i + size]


def sliding_window(volume: np.ndarray, predict: PatchFn, spec: WindowSpec) -> np.ndarray:
    """Blended per-class probabilities (K, X, Y, Z) of a channel-first volume (C, X, Y, Z)."""
    if volume.ndim != 4:
        raise InvalidInputError(f"sliding_window takes a channel-first volume (C, X, Y, Z); got shape {volume.shape}")
    padded, pads = _pad_to_roi(volume.astype(np.float32, copy=False), spec)
    image, roi = padded.shape[1:], spec.roi_size
    starts = window_starts(image, roi, spec.overlap)
    weight = importance_map(roi, spec.mode, spec.sigma_scale)
    out: np.ndarray | None = None
    count = np.zeros(image, np.float32)
    for batch in _batches(starts, spec.sw_batch_size):
        patches = np.stack([padded[(slice(None), *_window(s, roi))] for s in batch])
        probs = np.asarray(predict(patches), np.float32)
        if probs.shape[0] != len(batch) or probs.shape[2:] != tuple(roi):
            raise ModelFormatError(f"the model returned {probs.shape} for {patches.shape} patches; sliding windows "
                                   "need one output voxel per input voxel")
        if out is None:
            out = np.zeros((probs.shape[1], *image), np.float32)
        for start, prob in zip(batch, probs):
            window = _window(start, roi)
            out[(slice(None), *window)] += prob * weight
            count[window] += weight
    out /= count
    return out[(slice(None), *(slice(a, a + s) for (a, _), s in zip(pads[1:], volume.shape[1:])))]


def _window(start: Sequence[int], roi: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(a, a + r) for a, r in zip(start, roi))


def resize_linear(volume: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(C, X, Y, Z) resized to (C, *size) trilinearly, as ``F.interpolate(mode="trilinear",
    align_corners=False)``: separable, one axis at a time."""
    out = np.asarray(volume, np.float32)
    for axis, new in enumerate(size, start=1):
        out = _resize_axis(out, axis, int(new))
    return out


def _resize_axis(x: np.ndarray, axis: int, new: int) -> np.ndarray:
    old = x.shape[axis]
    if old == new:
        return x
    src = np.maximum((np.arange(new, dtype=np.float32) + 0.5) * np.float32(old / new) - 0.5, 0)
    lo = np.minimum(np.floor(src).astype(np.int64), old - 1)
    hi = np.minimum(lo + 1, old - 1)
    frac = (src - lo).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = new
    frac = frac.reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac
