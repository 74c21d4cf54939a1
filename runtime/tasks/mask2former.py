"""Task ``universal``: one Mask2Former bundle (class + mask logits) answering semantic, instance and panoptic.

The bundle's graph returns ``class_logits`` (B, Q, C + 1) and ``mask_logits`` (B, Q, H/4, W/4); the three kinds
of result are made from them by :mod:`segrt.runtime.mask2former_post` (transformers' ``post_process_*``), at the
image's own size. :class:`UniversalSegmenter` is the predictor; ``segrt run`` writes all three results.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import mask2former_post as post
from .. import prepost
from ..bundle import BundleModel, Stages
from ..errors import InvalidInputError, ModelFormatError
from ..image import ImageLike, InputColor, write_image_atomic
from ..manifest import Manifest, write_json_atomic
from ..panoptic import PanopticResult
from .base import Task

OUTPUTS = ("class_logits", "mask_logits")


@dataclass
class UniversalResult:
    """All three results for one image, at its size: ``label_map`` (semantic class ids), ``instances``
    (transformers' instance segments: masks, label ids, scores) and ``panoptic`` (COCO panoptic, VOID 0)."""

    label_map: np.ndarray
    instances: post.Segments
    panoptic: PanopticResult
    class_names: tuple[str, ...]
    timings: dict[str, float] = field(default_factory=dict)

    def overlay(self, image: ImageLike, alpha: float = 0.5, *, color: InputColor = "rgb",
                legend: bool = True) -> np.ndarray:
        """The panoptic picture: every segment tinted, with a key of the categories present."""
        return self.panoptic.overlay(image, alpha, color=color, legend=legend)

    def instance_records(self) -> list[dict[str, Any]]:
        """One record per instance: label id and name, score, bbox [x, y, w, h] and COCO RLE mask."""
        rles = prepost.rle_encode(self.instances.masks) if len(self.instances.segments) else []
        return [{"id": s["id"], "label_id": s["label_id"], "label": self.class_names[s["label_id"]],
                 "score": s["score"], "bbox": _bbox(m), "segmentation": rle}
                for s, m, rle in zip(self.instances.segments, self.instances.masks, rles)]


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def panoptic_result(seg: post.Segments, class_names: Sequence[str], fuse: set[int]) -> PanopticResult:
    """transformers' panoptic output as COCO panoptic: category id = label id + 1, fused classes are stuff."""
    cats = tuple({"id": i + 1, "name": n, "isthing": int(i not in fuse)} for i, n in enumerate(class_names))
    ids = np.maximum(seg.segmentation, 0).astype(np.int32)  # -1 (nothing kept) and 0 (no owner) are VOID
    records, seen = [], set()
    for s in seg.segments:
        if s["id"] in seen:  # a fused class: one segment, listed once
            continue
        seen.add(s["id"])
        mask = ids == s["id"]
        rec = {"id": s["id"], "category_id": s["label_id"] + 1, "category_name": class_names[s["label_id"]],
               "isthing": int(not s["was_fused"]), "iscrowd": 0, "area": int(mask.sum()), "bbox": _bbox(mask)}
        if not s["was_fused"]:
            rec["score"] = s["score"]
        records.append(rec)
    return PanopticResult(ids, records, cats)


class UniversalSegmenter(BundleModel):
    """Loads a Mask2Former bundle; ``seg(image)`` returns a :class:`UniversalResult` (all three kinds).

    ``threshold``, ``mask_threshold``, ``overlap_mask_area_threshold`` are transformers' (defaults 0.5, 0.5,
    0.8); ``stuff`` names the classes fused into one segment each in the panoptic result (``label_ids_to_fuse``).
    """

    task = "universal"

    def __init__(self, bundle: str | Path, device: str = "auto", *, threshold: float = post.THRESHOLD,
                 mask_threshold: float = post.MASK_THRESHOLD,
                 overlap_mask_area_threshold: float = post.OVERLAP_MASK_AREA_THRESHOLD,
                 stuff: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(bundle, device, **kwargs)
        names = {s.name for s in self.runner.output_specs()}
        if not set(OUTPUTS) <= names:
            raise ModelFormatError(f"a universal bundle's model returns {', '.join(OUTPUTS)}; this one {sorted(names)}")
        for what, value in (("threshold", threshold), ("mask_threshold", mask_threshold),
                            ("overlap_mask_area_threshold", overlap_mask_area_threshold)):
            if not 0 <= value <= 1:
                raise InvalidInputError(f"{what} must be in [0, 1]; got {value}")
        unknown = [s for s in stuff if s not in self.class_names]
        if unknown:
            raise InvalidInputError(f"stuff class(es) {', '.join(unknown)} unknown; valid: {', '.join(self.class_names)}")
        self.threshold, self.mask_threshold, self.overlap = threshold, mask_threshold, overlap_mask_area_threshold
        self.fuse = {self.class_names.index(s) for s in stuff}

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, prepost.Frame]:
        tensor, frames = prepost.preprocess([image], self.manifest.input)
        return tensor, frames[0]

    def infer(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.runner.infer({self.manifest.input.name: tensor})
        return out[OUTPUTS[0]], out[OUTPUTS[1]]

    def postprocess(self, logits: tuple[np.ndarray, np.ndarray], frame: prepost.Frame) -> UniversalResult:
        classes, masks = logits[0][0], logits[1][0]
        size = frame.orig_hw
        pan = post.panoptic_segments(classes, masks, self.threshold, self.mask_threshold, self.overlap, self.fuse, size)
        return UniversalResult(post.semantic_map(classes, masks, size).astype(np.int32),
                               post.instance_segments(classes, masks, self.threshold, size),
                               panoptic_result(pan, self.class_names, self.fuse), self.class_names)

    def __call__(self, image: ImageLike, *, color: InputColor = "rgb") -> UniversalResult:
        t0 = time.perf_counter()
        tensor, frame = self.preprocess(self.prepare(image, color))
        t1 = time.perf_counter()
        logits = self.infer(tensor)
        t2 = time.perf_counter()
        res = self.postprocess(logits, frame)
        res.timings = {"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "post": (time.perf_counter() - t2) * 1e3}
        return res


class UniversalStages(Stages):
    """:class:`UniversalSegmenter`'s steps for ``segrt stream``: the network on the worker, all three in post."""

    model: UniversalSegmenter

    def pre(self, frame: np.ndarray) -> tuple[np.ndarray, prepost.Frame]:
        return self.model.preprocess(self.model.prepare(frame))

    def infer(self, model: UniversalSegmenter, payload: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return model.infer(payload)

    def post(self, raw: tuple[np.ndarray, np.ndarray], ctx: prepost.Frame) -> UniversalResult:
        return self.model.postprocess(raw, ctx)


class UniversalTask(Task):
    name = "universal"
    summary = "Mask2Former: class and mask logits per query; semantic, instance and panoptic results from one bundle"
    resizes_input = True
    bench_instead = "time it with `segrt stream --log` (per-frame pre, infer and post) instead"

    def check_manifest(self, manifest: Manifest) -> None:
        if not manifest.classes:
            raise ModelFormatError("a universal (Mask2Former) bundle's classes must name at least one class")
        self.check_sections(manifest)

    def load(self, bundle: Path, device: str = "auto", **kwargs: Any) -> UniversalSegmenter:
        threshold = kwargs.pop("score_threshold", None)  # segrt run --score-threshold: transformers' threshold
        if threshold is not None:
            kwargs["threshold"] = threshold
        return UniversalSegmenter(bundle, device, **kwargs)

    def runners(self, predictor: UniversalSegmenter) -> dict:
        return {"model": predictor.runner}

    def write(self, result: UniversalResult, image: np.ndarray, out_dir: Path, stem: str,
              source: Path) -> list[Path]:
        """``<stem>.labels.png`` (semantic), ``<stem>.instances.json`` and the COCO panoptic PNG + JSON."""
        labels = out_dir / f"{stem}.labels.png"
        write_image_atomic(labels, result.label_map.astype(prepost.label_dtype(len(result.class_names))))
        instances = out_dir / f"{stem}.instances.json"
        write_json_atomic(instances, {"image_file_name": source.name, "height": int(result.label_map.shape[0]),
                                      "width": int(result.label_map.shape[1]), "instances": result.instance_records()})
        return [labels, instances, *result.panoptic.save(out_dir, stem, file_name=source.name)]

    def stages(self, predictor: UniversalSegmenter, prompts: dict[str, Any] | None = None) -> UniversalStages:
        self.refuse_prompts(prompts)
        return UniversalStages(predictor)

    def frame_record(self, result: UniversalResult) -> dict[str, Any]:
        return {"instances": len(result.instances.segments),
                "segments": [{k: s[k] for k in ("id", "category_name", "area")} for s in result.panoptic.segments]}

    def calibration_feeds(self, predictor: UniversalSegmenter, image: np.ndarray) -> dict[str, np.ndarray]:
        raise InvalidInputError("segrt quantize does not take universal (Mask2Former) bundles yet")

    def gate_score(self, reference: Any, variant: Any, image: np.ndarray) -> dict[str, float]:
        raise InvalidInputError("segrt quantize does not take universal (Mask2Former) bundles yet")

    def evaluator(self, dataset: Any, tolerances: Any) -> Any:
        raise InvalidInputError("segrt eval does not score universal (Mask2Former) bundles yet")


TASK = UniversalTask()
