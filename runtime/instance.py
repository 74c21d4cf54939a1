"""Instance segmentation (Mask R-CNN): ``InstanceSegmenter(image) -> InstanceResult``.

The graph takes the resized, normalised, padded image plus its unpadded size and returns boxes in
the resized frame, labels, scores and 28x28 mask probabilities. Here: torchvision's resize policy
before it; after it, the score filter, boxes scaled back to the original image, and each mask pasted
only inside its box (:func:`segrt.runtime.prepost.paste_masks`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import prepost
from .backends import Runner, RunnerOptions
from .bundle import BundleModel, Stages
from .errors import InvalidInputError, ModelFormatError
from .image import DEFAULT_MAX_PIXELS, ImageLike, InputColor, read_image, to_display_rgb
from .manifest import DetectionSpec, Manifest

log = logging.getLogger("segrt")
#: The resized image's shorter side must reach this (the deepest feature map's stride).
MIN_RESIZED_SIDE = 32


@dataclass
class InstanceResult:
    boxes: np.ndarray  # (N, 4) float32 xyxy in original image pixels
    scores: np.ndarray  # (N,) float32, descending
    labels: np.ndarray  # (N,) int64 class ids (0 is the background class)
    masks: np.ndarray  # (N, H, W) bool at the original resolution
    class_names: tuple[str, ...]
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    def to_coco(self, image_id: int) -> list[dict[str, Any]]:
        """COCO results (``loadRes`` format): bbox as xywh, segmentation as compressed RLE."""
        out = []
        rles = prepost.rle_encode(self.masks)
        for box, score, label, rle in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist(), rles):
            x0, y0, x1, y1 = box
            out.append({"image_id": int(image_id), "category_id": int(label), "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": float(score), "segmentation": rle})
        return out

    def overlay(self, image: ImageLike, alpha: float = 0.5, *, color: InputColor = "rgb",
                legend: bool = True) -> np.ndarray:
        """An 8-bit RGB picture with each instance's mask tinted, its box drawn and labelled and, with
        ``legend``, a colour key of the classes present in its top-right corner (not on images under 64 px)."""
        rgb = to_display_rgb(read_image(image, color=color))
        if rgb.shape[:2] != self.masks.shape[1:]:
            raise InvalidInputError(f"overlay image is {rgb.shape[1]}x{rgb.shape[0]}; the result is for "
                                    f"{self.masks.shape[2]}x{self.masks.shape[1]}")
        out = prepost.overlay_masks(rgb, self.masks, alpha)
        colours = prepost.palette(len(self) + 1)[1:]
        for i, (box, label, score) in enumerate(zip(self.boxes, self.labels, self.scores)):
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            colour = tuple(int(c) for c in colours[i])
            cv2.rectangle(out, (x0, y0), (x1, y1), colour, 2)
            name = self.class_names[label] if 0 <= label < len(self.class_names) else str(label)
            cv2.putText(out, f"{name} {score:.2f}", (x0, max(y0 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1,
                        cv2.LINE_AA)
        if legend:
            prepost.draw_legend(out, prepost.instance_legend(self.labels, self.class_names))
        return out


def _check_io(manifest: Manifest, runner: Runner) -> DetectionSpec:
    det = manifest.detection
    assert det is not None  # Manifest guarantees it for task "instance"
    inputs = {s.name: s for s in runner.input_specs()}
    outputs = {s.name for s in runner.output_specs()}
    for name in (manifest.input.name, det.size_input):
        if name not in inputs:
            raise ModelFormatError(f"manifest names input {name!r}; the model has {sorted(inputs)}")
    missing = [n for n in det.outputs if n not in outputs]
    if missing:
        raise ModelFormatError(f"the model has no output named {', '.join(map(repr, missing))} (it has "
                               f"{sorted(outputs)}); instance bundles need boxes, labels, scores and masks")
    if manifest.input.resize != "shortest_edge":
        raise ModelFormatError(f"instance bundles resize with 'shortest_edge'; the manifest says {manifest.input.resize!r}")
    return det


class InstanceSegmenter(BundleModel):
    """Loads an instance bundle; ``det(image)`` returns an :class:`InstanceResult`."""

    task = "instance"

    def __init__(self, bundle: str | Path, device: str = "auto", *, threads: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, score_threshold: float | None = None,
                 options: RunnerOptions | None = None) -> None:
        super().__init__(bundle, device, threads=threads, max_pixels=max_pixels, options=options)
        self.detection = _check_io(self.manifest, self.runner)
        self.score_threshold = self._threshold(score_threshold)

    def _threshold(self, value: float | None) -> float:
        if value is None:
            return self.detection.score_threshold
        floor = self.detection.graph_score_threshold
        if not floor <= value <= 1:
            raise InvalidInputError(f"score_threshold {value} must be in [{floor}, 1]: the graph already dropped "
                                    f"detections below {floor} (re-export with a lower --graph-score-threshold)")
        return float(value)

    def preprocess(self, image: np.ndarray) -> tuple[dict[str, np.ndarray], prepost.Frame]:
        frame = prepost.plan_frame(image.shape[0], image.shape[1], self.manifest.input)
        h, w = frame.content[2:]
        if min(h, w) < MIN_RESIZED_SIDE:
            raise InvalidInputError(
                f"image is {image.shape[1]}x{image.shape[0]}: resized for this model it would be {w}x{h}, "
                f"below the {MIN_RESIZED_SIDE}-pixel minimum side; crop it to a less extreme aspect ratio"
            )
        tensor, frames = prepost.preprocess([image], self.manifest.input)
        return {self.manifest.input.name: tensor, self.detection.size_input: np.array([h, w], np.int64)}, frames[0]

    def infer(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        out = self.runner.infer(feeds)
        return tuple(out[n] for n in self.detection.outputs)

    def postprocess(self, outputs: tuple[np.ndarray, ...], frame: prepost.Frame,
                    score_threshold: float | None = None) -> tuple[np.ndarray, ...]:
        boxes, labels, scores, masks = outputs
        keep = scores >= (self.score_threshold if score_threshold is None else self._threshold(score_threshold))
        boxes = boxes[keep].astype(np.float32)
        oh, ow = frame.orig_hw
        h, w = frame.content[2:]
        boxes *= np.array([ow / w, oh / h, ow / w, oh / h], np.float32)  # torchvision's resize_boxes
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not valid.all():
            log.debug("dropped %d degenerate box(es)", int((~valid).sum()))
        boxes = boxes[valid]
        masks = masks[keep][valid]
        pasted = prepost.paste_masks(masks, boxes, frame.orig_hw, self.detection.mask_threshold)
        return boxes, scores[keep][valid].astype(np.float32), labels[keep][valid].astype(np.int64), pasted

    def __call__(self, image: ImageLike, score_threshold: float | None = None, *,
                 color: InputColor = "rgb") -> InstanceResult:
        t0 = time.perf_counter()
        feeds, frame = self.preprocess(self.prepare(image, color))
        t1 = time.perf_counter()
        outputs = self.infer(feeds)
        t2 = time.perf_counter()
        boxes, scores, labels, masks = self.postprocess(outputs, frame, score_threshold)
        t3 = time.perf_counter()
        timings = {"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "post": (t3 - t2) * 1e3}
        return InstanceResult(boxes, scores, labels, masks, self.class_names, timings)


class InstanceStages(Stages):
    """:class:`InstanceSegmenter`'s steps for ``segrt stream``."""

    model: InstanceSegmenter

    def pre(self, frame):
        return self.model.preprocess(self.model.prepare(frame))

    def infer(self, model, payload):
        return model.infer(payload)

    def post(self, raw, ctx):
        boxes, scores, labels, masks = self.model.postprocess(raw, ctx)
        return InstanceResult(boxes, scores, labels, masks, self.model.class_names)
