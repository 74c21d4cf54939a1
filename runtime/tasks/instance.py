"""Task ``instance``: instances: boxes, labels, scores and masks (COCO results)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, ModelFormatError
from ..instance import InstanceResult, InstanceSegmenter, InstanceStages
from ..manifest import Manifest, write_json_atomic, write_text_atomic
from .base import Task


class InstanceTask(Task):
    name = "instance"
    summary = "instances: boxes, labels, scores and masks (COCO results)"

    # -- runtime: load, segrt run/info/stream, serving ---------------------------------------------
    section = "detection"

    def check_manifest(self, manifest: Manifest) -> None:
        if not manifest.classes:
            raise ModelFormatError("classes must name at least one class")
        self.check_sections(manifest)

    def load(self, bundle: Path, device: str = "auto", **kwargs: Any) -> InstanceSegmenter:
        return InstanceSegmenter(bundle, device, **kwargs)  # score_threshold: None is the manifest's

    def runners(self, predictor: InstanceSegmenter) -> dict:
        return {"model": predictor.runner}

    def write(self, result: InstanceResult, image: np.ndarray, out_dir: Path, stem: str,
              source: Path) -> list[Path]:
        # COCO's results file, as COCO.loadRes reads it; the image entry it refers to beside it
        coco, entry = out_dir / f"{stem}.instances.json", out_dir / f"{stem}.image.json"
        write_text_atomic(coco, json.dumps(result.to_coco(image_id=1)) + "\n")
        write_json_atomic(entry, {"id": 1, "file_name": source.name, "height": image.shape[0],
                                  "width": image.shape[1], "class_names": list(result.class_names)})
        return [coco, entry]

    def stages(self, predictor: InstanceSegmenter, prompts: dict[str, Any] | None = None) -> InstanceStages:
        self.refuse_prompts(prompts)
        return InstanceStages(predictor)

    def frame_record(self, result: InstanceResult) -> dict[str, Any]:
        return {"instances": [{"label": int(lab), "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
                              for b, s, lab in zip(result.boxes, result.scores, result.labels)]}

    def serving_contract(self, manifest: Manifest):
        from ..serving.contract import instance_contract

        return instance_contract(manifest)

    def serving_handler(self, bundle: Path, **kwargs: Any):
        from ..serving.handlers import InstanceHandler

        return InstanceHandler(bundle, **kwargs)

    def serving_stages(self, manifest: Manifest, **kwargs: Any):
        from ..serving.stages import InstanceStages as ServingInstanceStages

        return ServingInstanceStages(manifest, **kwargs)

    def serving_networks(self, manifest: Manifest) -> tuple[tuple[str, str], ...]:
        return (("net", manifest.model_file),)

    # -- quantization gate, calibration and segrt eval ----------------------------------------------
    gate_metric = "mask_iou"

    def calibration_feeds(self, predictor: InstanceSegmenter, image: np.ndarray) -> dict[str, np.ndarray]:
        feeds, _ = predictor.preprocess(predictor.prepare(image))
        return feeds

    def gate_score(self, reference: InstanceSegmenter, variant: InstanceSegmenter,
                   image: np.ndarray) -> dict[str, float]:
        """Mean mask IoU of the reference's instances, each matched (same label) in the variant's or 0."""
        from ..matching import match_instances

        a, b = reference(image), variant(image)
        if len(a) == 0:
            return {"mask_iou": 1.0 if len(b) == 0 else 0.0, "reference_instances": 0}
        pairs = match_instances(a.labels, a.masks, b.labels, b.masks)
        ious = [iou for _, _, iou in pairs] + [0.0] * (len(a) - len(pairs))
        return {"mask_iou": float(np.mean(ious)), "reference_instances": len(a)}

    def evaluator(self, dataset: Any, tolerances: Any) -> InstanceEvaluator:
        return InstanceEvaluator(dataset, tolerances)

    # -- segrt bench and gpu-check ---------------------------------------------------------------------
    resizes_input = True  # to the manifest's min/max size, inside preprocessing

    # -- export ----------------------------------------------------------------------------------------
    importable = False
    quantize_min_score = 0.85
    bench_row = "segrt.benchmarks.cli_bench:instance_row"
    gpu_check_torch = "segrt.benchmarks.gpu_check_timing:torch_instance"
    gpu_check_rounds = 12
    fp32_device_min = 0.90
    binding_min = 0.99


TASK = InstanceTask()


# -- segrt eval (TASK.evaluator) ------------------------------------------------------------------------
@dataclass
class _InstanceScores:
    coco: list[dict[str, Any]] = field(default_factory=list)  # COCO results over every image
    agree: list[float] = field(default_factory=list)  # per image: mean matched mask IoU with the reference
    matched: list[float] = field(default_factory=list)  # per image: fraction of reference instances matched


class InstanceEvaluator:
    """``segrt eval`` for instance bundles: COCO box and mask AP against ``annotations.json`` (pycocotools),
    and the reference row's detections matched (same label, mask IoU >= 0.5) with their mean mask IoU."""

    columns = ("box AP", "mask AP")

    def __init__(self, dataset: Any, tolerances: Any) -> None:
        if dataset is not None and dataset.coco is None:
            raise InvalidInputError(f"instance bundles are scored against {dataset.root}/annotations.json; "
                                    "there is none")
        self.dataset, self.tolerances = dataset, tolerances

    def start(self, model: InstanceSegmenter) -> _InstanceScores:
        return _InstanceScores()

    def step(self, state: _InstanceScores, model: InstanceSegmenter, image: np.ndarray, path: Path,
             reference: InstanceResult | None) -> InstanceResult:
        from ..matching import match_instances

        res = model(image)
        if path.name not in self.dataset.ids:
            raise InvalidInputError(f"{path.name} is not listed in {self.dataset.coco}")
        state.coco += res.to_coco(self.dataset.ids[path.name])
        if reference is not None:
            pairs = [p for p in match_instances(reference.labels, reference.masks, res.labels, res.masks) if p[2] >= 0.5]
            state.matched.append(len(pairs) / len(reference) if len(reference) else float(len(res) == 0))
            state.agree.append(float(np.mean([p[2] for p in pairs])) if pairs else float(len(reference) == len(res) == 0))
        return res

    def accuracy(self, state: _InstanceScores, model: InstanceSegmenter) -> dict[str, Any]:
        from segrt.benchmarks.evaluate import coco_evaluate

        return coco_evaluate(self.dataset.coco, state.coco)

    def agreement(self, state: _InstanceScores) -> tuple[dict[str, float], bool]:
        iou, frac = float(np.mean(state.agree)), float(np.mean(state.matched))
        return ({"mean_matched_mask_iou": iou, "match_fraction": frac},
                iou >= self.tolerances.min_mask_iou and frac >= self.tolerances.min_match_fraction)

    @staticmethod
    def cells(accuracy: dict[str, Any]) -> tuple[float, float]:
        return accuracy["box"]["AP"], accuracy["mask"]["AP"]

    @staticmethod
    def versus(agreement: dict[str, float]) -> str:
        return f"mask IoU {agreement['mean_matched_mask_iou']:.3f}, {agreement['match_fraction']:.1%} matched"
