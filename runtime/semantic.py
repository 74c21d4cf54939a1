"""Semantic segmentation: ``Segmenter(image) -> SegmentationResult`` over ``runner.infer(feeds)``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import prepost
from .backends import Runner, RunnerOptions
from .bundle import BundleModel, Stages
from .errors import InvalidInputError, ModelFormatError
from .image import DEFAULT_MAX_PIXELS, ImageLike, InputColor, read_image, to_display_rgb, write_image_atomic
from .manifest import Manifest


@dataclass
class SegmentationResult:
    label_map: np.ndarray  # (H, W) class ids at the input's resolution
    class_names: tuple[str, ...]
    timings: dict[str, float] = field(default_factory=dict)  # pre, infer, post in ms

    def overlay(self, image: ImageLike, alpha: float = 0.5, *, color: InputColor = "rgb",
                legend: bool = True) -> np.ndarray:
        """An 8-bit RGB picture of ``image`` with each non-background class painted over it and, with
        ``legend``, a colour key of the classes present in its top-right corner (not on images under 64 px)."""
        rgb = to_display_rgb(read_image(image, color=color))
        out = prepost.overlay_labels(rgb, self.label_map, len(self.class_names), alpha)
        if legend:
            prepost.draw_legend(out, prepost.semantic_legend(self.label_map, self.class_names))
        return out

    def save(self, path: str | Path) -> None:
        """Write the label map as a PNG of class ids (uint8, or uint16 past 256 classes)."""
        path = Path(path)
        if path.suffix.lower() != ".png":
            raise InvalidInputError(f"label maps are saved as PNG; got {str(path)!r}")
        write_image_atomic(path, self.label_map)


def _check_io(manifest: Manifest, runner: Runner) -> None:
    """Refuse a manifest that disagrees with the model it describes."""
    inputs = {s.name: s for s in runner.input_specs()}
    outputs = {s.name: s for s in runner.output_specs()}
    spec = manifest.input
    if spec.name not in inputs:
        raise ModelFormatError(f"manifest names input {spec.name!r}; the model has {sorted(inputs)}")
    if manifest.output.name not in outputs:
        raise ModelFormatError(f"manifest names output {manifest.output.name!r}; the model has {sorted(outputs)}")
    if len(inputs) != 1:
        raise ModelFormatError(f"semantic models take one image input; this model has {sorted(inputs)}")
    shape = inputs[spec.name].shape
    if len(shape) != 4:
        raise ModelFormatError(f"input {spec.name!r} must be rank 4 ({spec.layout}); the model has {shape}")
    c_axis, hw_axes = (1, (2, 3)) if spec.layout == "nchw" else (3, (1, 2))
    if isinstance(shape[c_axis], int) and shape[c_axis] != spec.channels:
        raise ModelFormatError(f"manifest says {spec.channels} input channels; the model takes {shape[c_axis]}")
    fixed = tuple(shape[a] for a in hw_axes)
    if all(isinstance(d, int) for d in fixed):
        if spec.resize == "pad" or tuple(spec.size or ()) != fixed:
            raise ModelFormatError(
                f"the model has a fixed {fixed[0]}x{fixed[1]} input; the manifest must use resize stretch|letterbox "
                f"with size {fixed[0]}x{fixed[1]} (re-import with --size {fixed[0]}x{fixed[1]})"
            )
    if inputs[spec.name].dtype != np.float32:
        raise ModelFormatError(f"input {spec.name!r} must be float32; the model takes {inputs[spec.name].dtype}")
    _check_classes(manifest, outputs[manifest.output.name].shape)


def _check_classes(manifest: Manifest, shape: tuple) -> None:
    """The manifest's class names against the model's score channels (one channel: background + foreground)."""
    if len(shape) != 4:
        return  # rank checked on the first result
    channels = shape[1] if manifest.output.layout == "nchw" else shape[3]
    if not isinstance(channels, int) or channels < 1:
        return  # a dynamic channel axis: checked against the scores themselves
    expected = 2 if channels == 1 else channels
    if manifest.num_classes != expected:
        raise ModelFormatError(f"the manifest names {manifest.num_classes} classes; the model's output "
                               f"{manifest.output.name!r} has {channels} channel(s), i.e. {expected} classes: "
                               "fix the manifest's classes (or re-import with --classes)")


class Segmenter(BundleModel):
    """Loads a semantic bundle and segments images at their own resolution."""

    task = "semantic"

    def __init__(self, bundle: str | Path, device: str = "auto", *, threads: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, options: RunnerOptions | None = None) -> None:
        super().__init__(bundle, device, threads=threads, max_pixels=max_pixels, options=options)
        _check_io(self.manifest, self.runner)
        batch_dim = next(s for s in self.runner.input_specs() if s.name == self.manifest.input.name).shape[0]
        self.max_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[prepost.Frame]]:
        return prepost.preprocess(list(images), self.manifest.input)

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        out = self.runner.infer({self.manifest.input.name: tensor})[self.manifest.output.name]
        if out.ndim == 3:  # (N, H, W): a single score channel
            out = out[:, None]
        elif self.manifest.output.layout == "nhwc":
            out = out.transpose(0, 3, 1, 2)
        if out.ndim != 4:
            raise ModelFormatError(f"output {self.manifest.output.name!r} must be rank 3 or 4; got {out.shape}")
        return out

    def postprocess(self, scores: np.ndarray, frame: prepost.Frame) -> np.ndarray:
        return prepost.labels_from_scores(scores, frame, self.manifest.output, self.manifest.num_classes)

    def _run(self, arrays: list[np.ndarray]) -> list[SegmentationResult]:
        t0 = time.perf_counter()
        tensor, frames = self.preprocess(arrays)
        t1 = time.perf_counter()
        scores = self.infer(tensor)
        t2 = time.perf_counter()
        labels = [self.postprocess(scores[i], fr) for i, fr in enumerate(frames)]
        t3 = time.perf_counter()
        n = len(arrays)
        timings = {"pre": (t1 - t0) * 1e3 / n, "infer": (t2 - t1) * 1e3 / n, "post": (t3 - t2) * 1e3 / n}
        return [SegmentationResult(lm, self.class_names, dict(timings)) for lm in labels]

    def __call__(self, image: ImageLike, *, color: InputColor = "rgb") -> SegmentationResult:
        return self._run([self.prepare(image, color)])[0]

    def batch(self, images: Sequence[ImageLike], *, color: InputColor = "rgb") -> list[SegmentationResult]:
        """Segment several images, one inference call per group of images sharing an input size
        (camera frames: one call), split further where the model's batch axis is fixed."""
        if len(images) == 0:
            raise InvalidInputError("batch() needs at least one image")
        arrays = [self.prepare(im, color) for im in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, arr in enumerate(arrays):
            hw = prepost.plan_frame(arr.shape[0], arr.shape[1], self.manifest.input).input_hw
            groups.setdefault(hw, []).append(i)
        results: list[SegmentationResult | None] = [None] * len(arrays)
        for idx in groups.values():
            step = self.max_batch or len(idx)
            for k in range(0, len(idx), step):
                chunk = idx[k : k + step]
                for i, res in zip(chunk, self._run([arrays[i] for i in chunk])):
                    results[i] = res
        return results  # type: ignore[return-value]



class SemanticStages(Stages):
    """:class:`Segmenter`'s steps for ``segrt stream``: one frame per call."""

    model: Segmenter

    def pre(self, frame):
        tensor, frames = self.model.preprocess([self.model.prepare(frame)])
        return tensor, frames[0]

    def infer(self, model, payload):
        return model.infer(payload)

    def post(self, raw, ctx):
        return SegmentationResult(self.model.postprocess(raw[0], ctx), self.model.class_names)
