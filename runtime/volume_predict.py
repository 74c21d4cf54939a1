"""Volumetric segmentation: ``VolumeSegmenter(volume) -> VolumeResult`` over ``runner.infer(feeds)``.

The volume (a path or a :class:`~.volume_io.Volume`) is normalised by the manifest's intensity policy, then either
tiled with sliding windows (MONAI's ``sliding_window_inference``, :mod:`.volume_window`) or stretched whole to
the model's fixed size and its probabilities stretched back; labels are the per-voxel argmax (one channel:
the probability above the output threshold). The result keeps the input's affine, so the label volume lands
on the input's grid.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bundle import BundleModel
from .errors import InvalidInputError, ModelFormatError
from .prepost import palette
from .volume_io import Volume, read_volume
from .volume_spec import VolumeSpec
from .volume_window import resize_linear, sliding_window

OVERLAY_MIN_HEIGHT = 192


@dataclass
class VolumeResult:
    labels: np.ndarray  # (X, Y, Z) class ids on the input's grid
    affine: np.ndarray  # the input's 4x4 voxel -> RAS affine
    class_names: tuple[str, ...]
    volume: Volume | None = None  # the input, for the overlay and the NIfTI header
    timings: dict[str, float] = field(default_factory=dict)

    def stats(self) -> dict:
        """Per-label voxel counts and volumes in millilitres (voxel volume from the affine)."""
        voxel_ml = abs(float(np.linalg.det(self.affine[:3, :3]))) / 1000.0
        ids, counts = np.unique(self.labels, return_counts=True)
        names = self.class_names
        return {"voxel_ml": voxel_ml, "shape": list(self.labels.shape),
                "labels": {str(i): {"name": names[i] if i < len(names) else str(i), "voxels": int(c),
                                    "ml": round(int(c) * voxel_ml, 6)} for i, c in zip(ids.tolist(), counts.tolist())}}

    def overlay(self, alpha: float = 0.5) -> np.ndarray:
        """An RGB picture of three orthogonal mid-slices (sagittal, coronal, axial) with the labels painted over."""
        grey = _display_grey(self.volume.data if self.volume is not None else self.labels)
        colors = palette(max(int(self.labels.max(initial=0)) + 1, 2))
        x, y, z = (s // 2 for s in self.labels.shape)
        views = [(grey[x], self.labels[x]), (grey[:, y], self.labels[:, y]), (grey[:, :, z], self.labels[:, :, z])]
        tiles = [_paint(np.rot90(g), np.rot90(lab), colors, alpha) for g, lab in views]
        height = max(t.shape[0] for t in tiles)
        scale = max(1, -(-OVERLAY_MIN_HEIGHT // height))  # small volumes drawn larger (nearest)
        tiles = [np.repeat(np.repeat(t, scale, 0), scale, 1) for t in tiles]
        height *= scale
        return np.concatenate([np.pad(t, ((0, height - t.shape[0]), (0, 2), (0, 0))) for t in tiles], axis=1)


def _display_grey(data: np.ndarray) -> np.ndarray:
    x = np.asarray(data[..., 0] if data.ndim == 4 else data, np.float32)
    lo, hi = np.percentile(x, (1, 99))
    return (np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def _paint(grey: np.ndarray, labels: np.ndarray, colors: np.ndarray, alpha: float) -> np.ndarray:
    rgb = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)
    fg = labels > 0
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colors[labels[fg]]
    return rgb.astype(np.uint8)


class VolumeSegmenter(BundleModel):
    """Segments 3-D volumes with a ``volume`` bundle; ``seg(volume)`` returns a :class:`VolumeResult`."""

    task = "volume"

    def __init__(self, bundle: str | Path, device: str = "auto", **kwargs) -> None:
        kwargs.pop("max_pixels", None)  # an image limit; volumes are bounded by the window, not the file
        super().__init__(bundle, device, **kwargs)
        self.spec = VolumeSpec.from_dict(self.manifest.volume or {})
        self.output = self.manifest.output

    def __call__(self, volume: Volume | str | os.PathLike[str]) -> VolumeResult:
        vol = volume if isinstance(volume, Volume) else read_volume(volume)
        t0 = time.perf_counter()
        image = self.prepare(vol)
        t1 = time.perf_counter()
        probs = self.probabilities(image)
        t2 = time.perf_counter()
        labels = self.labels(probs)
        t3 = time.perf_counter()
        return VolumeResult(labels, vol.affine, self.manifest.classes, vol,
                            {"pre_ms": (t1 - t0) * 1e3, "infer_ms": (t2 - t1) * 1e3, "post_ms": (t3 - t2) * 1e3})

    def prepare(self, volume: Volume) -> np.ndarray:
        """The channel-first float32 input (C, X, Y, Z) after the manifest's intensity policy."""
        want = self.manifest.input.channels
        if volume.channels != want:
            raise InvalidInputError(f"volume of shape {volume.data.shape} has {volume.channels} channel(s); this "
                                    f"model takes {want} (a 3-D volume, or 4-D with {want} volumes on the last axis)")
        data = volume.data if volume.data.ndim == 4 else volume.data[..., None]
        return np.ascontiguousarray(self.spec.intensity.channels(np.moveaxis(data, -1, 0)))

    def prepare_array(self, data: np.ndarray) -> np.ndarray:
        """:meth:`prepare` for a bare (X, Y, Z) or (X, Y, Z, C) array."""
        return self.prepare(Volume(np.asarray(data), np.eye(4), None, "array"))

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Blended per-class probabilities (K, X, Y, Z) of a prepared volume."""
        if self.spec.inference == "sliding_window":
            return sliding_window(image, self.predict_patches, self.spec.window)
        small = resize_linear(image, self.spec.size)
        return resize_linear(self.predict_patches(small[None])[0], image.shape[1:])

    def predict_patches(self, patches: np.ndarray) -> np.ndarray:
        """One network call: (N, C, d, h, w) -> activated scores (N, K, d, h, w)."""
        feed = patches if self.spec.layout == "ncdhw" else np.moveaxis(patches, 1, -1)
        out = self.runner.infer({self.manifest.input.name: np.ascontiguousarray(feed, np.float32)})
        scores = out[self.output.name]
        if scores.ndim != 5:
            raise ModelFormatError(f"output {self.output.name!r} has shape {scores.shape}; a 3-D network returns 5-D")
        if self.spec.layout == "ndhwc":
            scores = np.moveaxis(scores, -1, 1)
        return _activate(scores.astype(np.float32, copy=False), self.output.activation)

    def labels(self, probs: np.ndarray) -> np.ndarray:
        if probs.shape[0] == 1:
            return (probs[0] > self.output.threshold).astype(np.uint8)
        return np.argmax(probs, axis=0).astype(np.uint8 if probs.shape[0] <= 256 else np.uint16)


def _activate(scores: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-scores))
    if activation == "softmax":
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return scores
