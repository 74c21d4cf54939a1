"""Task ``semantic``: label maps: one class id per pixel."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, ModelFormatError
from ..manifest import Manifest
from ..semantic import SegmentationResult, SemanticStages, Segmenter
from .base import Task


class SemanticTask(Task):
    name = "semantic"
    summary = "label maps: one class id per pixel"

    # -- runtime: load, segrt run/info/stream, serving ---------------------------------------------
    def check_manifest(self, manifest: Manifest) -> None:
        if not manifest.classes:
            raise ModelFormatError("classes must name at least one class")
        self.check_sections(manifest)

    def load(self, bundle: Path, device: str = "auto", **kwargs: Any) -> Segmenter:
        if kwargs.pop("score_threshold", None) is not None:
            raise ModelFormatError("score_threshold applies to instance bundles; this one is semantic")
        return Segmenter(bundle, device, **kwargs)

    def runners(self, predictor: Segmenter) -> dict:
        return {"model": predictor.runner}

    def write(self, result: SegmentationResult, image: np.ndarray, out_dir: Path, stem: str,
              source: Path) -> list[Path]:
        path = out_dir / f"{stem}.labels.png"  # class ids, uint8 (uint16 past 256 classes)
        result.save(path)
        return [path]

    def stages(self, predictor: Segmenter, prompts: dict[str, Any] | None = None) -> SemanticStages:
        self.refuse_prompts(prompts)
        return SemanticStages(predictor)

    def frame_record(self, result: SegmentationResult) -> dict[str, Any]:
        ids, counts = np.unique(result.label_map, return_counts=True)
        names = result.class_names
        return {"classes": {names[i] if i < len(names) else str(i): int(c) for i, c in zip(ids.tolist(), counts.tolist())}}

    def serving_contract(self, manifest: Manifest):
        from ..serving.contract import semantic_contract

        return semantic_contract(manifest)

    def serving_handler(self, bundle: Path, **kwargs: Any):
        from ..serving.handlers import SemanticHandler

        return SemanticHandler(bundle, **kwargs)

    def serving_stages(self, manifest: Manifest, **kwargs: Any):
        from ..serving.stages import SemanticStages as ServingSemanticStages

        return ServingSemanticStages(manifest, **kwargs)

    def serving_networks(self, manifest: Manifest) -> tuple[tuple[str, str], ...]:
        return (("net", manifest.model_file),)

    # -- quantization gate, calibration and segrt eval ----------------------------------------------
    gate_metric = "pixel_agreement"

    def calibration_feeds(self, predictor: Segmenter, image: np.ndarray) -> dict[str, np.ndarray]:
        tensor, _ = predictor.preprocess([predictor.prepare(image)])
        return {predictor.manifest.input.name: tensor}

    def gate_score(self, reference: Segmenter, variant: Segmenter, image: np.ndarray) -> dict[str, float]:
        a, b = reference(image).label_map, variant(image).label_map
        return {"pixel_agreement": float((a == b).mean())}

    def evaluator(self, dataset: Any, tolerances: Any) -> SemanticEvaluator:
        return SemanticEvaluator(dataset, tolerances)

    # -- export ----------------------------------------------------------------------------------------
    importable = True
    quantize_min_score = 0.98
    bench_row = "segrt.benchmarks.cli_bench:semantic_row"
    gpu_check_torch = "segrt.benchmarks.gpu_check_timing:torch_semantic"


TASK = SemanticTask()


# -- segrt eval (TASK.evaluator) ------------------------------------------------------------------------
@dataclass
class _SemanticScores:
    conf: np.ndarray  # confusion matrix over every image, rows = truth
    agree: list[float] = field(default_factory=list)  # per image: pixel agreement with the reference row


class SemanticEvaluator:
    """``segrt eval`` for semantic bundles: a confusion matrix against ``labels/<stem>.png`` (mIoU, pixel
    accuracy), and the fraction of pixels labelled as the reference row labels them."""

    columns = ("mIoU", "pixel acc")

    def __init__(self, dataset: Any, tolerances: Any) -> None:
        if dataset is not None and dataset.labels is None:
            raise InvalidInputError(f"semantic bundles are scored against {dataset.root}/labels/<stem>.png; "
                                    "there is none")
        self.dataset, self.tolerances = dataset, tolerances

    def start(self, model: Segmenter) -> _SemanticScores:
        n = model.manifest.num_classes
        return _SemanticScores(np.zeros((n, n), np.int64))

    def step(self, state: _SemanticScores, model: Segmenter, image: np.ndarray, path: Path,
             reference: SegmentationResult | None) -> SegmentationResult:
        from segrt.benchmarks.evaluate import confusion

        res = model(image)
        state.conf += confusion(res.label_map, self.dataset.truth(path), model.manifest.num_classes)
        if reference is not None:
            state.agree.append(float((res.label_map == reference.label_map).mean()))
        return res

    def accuracy(self, state: _SemanticScores, model: Segmenter) -> dict[str, Any]:
        from segrt.benchmarks.evaluate import iou_summary

        return iou_summary(state.conf, model.manifest.classes)

    def agreement(self, state: _SemanticScores) -> tuple[dict[str, float], bool]:
        agree = float(np.mean(state.agree))
        return ({"pixel_agreement": agree, "min_image_pixel_agreement": float(np.min(state.agree))},
                agree >= self.tolerances.min_pixel_agreement)

    @staticmethod
    def cells(accuracy: dict[str, Any]) -> tuple[float, float]:
        return accuracy["miou"], accuracy["pixel_accuracy"]

    @staticmethod
    def versus(agreement: dict[str, float]) -> str:
        return f"{agreement['pixel_agreement']:.4%} pixels"
