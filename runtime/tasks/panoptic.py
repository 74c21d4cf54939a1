"""Task ``panoptic``: a semantic and an instance bundle fused into COCO panoptic segments (stuff and things).

A panoptic bundle holds no network of its own: its ``panoptic.json`` names the two bundles, the things and the
thresholds (``segrt panoptic --save-bundle``; :func:`segrt.runtime.panoptic.write_panoptic_bundle`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, ModelFormatError
from ..manifest import Manifest
from ..panoptic import PanopticResult, PanopticSegmenter, PanopticStages, load_panoptic_bundle
from .base import Task

_PARTS = "quantize or serve the semantic and instance bundles a panoptic bundle names, not the panoptic bundle"


class PanopticTask(Task):
    name = "panoptic"
    summary = "panoptic segments: stuff from a semantic bundle, things from an instance bundle (COCO panoptic)"

    def check_manifest(self, manifest: Manifest) -> None:
        if not manifest.classes:
            raise ModelFormatError("a panoptic bundle's classes (its categories) must name at least one")
        self.check_sections(manifest)

    def load(self, bundle: Path, device: str = "auto", **kwargs: Any) -> PanopticSegmenter:
        return load_panoptic_bundle(bundle, device, **kwargs)

    def runners(self, predictor: PanopticSegmenter) -> dict:
        return predictor.runners

    def write(self, result: PanopticResult, image: np.ndarray, out_dir: Path, stem: str,
              source: Path) -> list[Path]:
        return result.save(out_dir, stem, file_name=source.name)  # segrt run writes the overlay itself

    def stages(self, predictor: PanopticSegmenter, prompts: dict[str, Any] | None = None) -> PanopticStages:
        self.refuse_prompts(prompts)
        return PanopticStages(predictor)

    def frame_record(self, result: PanopticResult) -> dict[str, Any]:
        return {"segments": [{k: s[k] for k in ("id", "category_name", "area") if k in s} for s in result.segments]}

    # -- quantization and segrt eval ------------------------------------------------------------------------
    gate_metric = "pq"
    bench_instead = "time the semantic and instance bundles it names with `segrt bench`; the fusion with " \
                    "`segrt bench --prepost`"

    def calibration_feeds(self, predictor: Any, image: np.ndarray) -> dict[str, np.ndarray]:
        raise InvalidInputError(_PARTS)

    def gate_score(self, reference: Any, variant: Any, image: np.ndarray) -> dict[str, float]:
        raise InvalidInputError(_PARTS)

    def evaluator(self, dataset: Any, tolerances: Any) -> PanopticEvaluator:
        return PanopticEvaluator(dataset, tolerances)


TASK = PanopticTask()


# -- segrt eval (TASK.evaluator) ------------------------------------------------------------------------
@dataclass
class _PanopticScores:
    stat: Any = None  # PQStat against the ground truth
    versus: Any = None  # PQStat against the reference row's predictions
    ref_categories: dict[int, dict[str, Any]] = field(default_factory=dict)


class PanopticEvaluator:
    """``segrt eval`` for panoptic bundles: PQ / SQ / RQ against ``panoptic.json`` + ``panoptic/`` (COCO panoptic,
    scored as panopticapi does), and PQ against the reference row's predictions (>= the mask IoU tolerance)."""

    columns = ("PQ", "SQ")

    def __init__(self, dataset: Any, tolerances: Any) -> None:
        from segrt.benchmarks.pq import PanopticTruth

        if dataset is not None and getattr(dataset, "panoptic", None) is None:
            raise InvalidInputError(f"panoptic bundles are scored against {dataset.root}/panoptic.json and "
                                    f"{dataset.root}/panoptic/; there is none")
        self.truth = PanopticTruth.open(dataset.root) if dataset is not None else None
        self.dataset, self.tolerances = dataset, tolerances

    def start(self, model: PanopticSegmenter) -> _PanopticScores:
        from segrt.benchmarks.pq import PQStat

        return _PanopticScores(PQStat(), PQStat())

    def step(self, state: _PanopticScores, model: PanopticSegmenter, image: np.ndarray, path: Path,
             reference: PanopticResult | None) -> PanopticResult:
        from segrt.benchmarks.pq import pq_image, relabel

        res = model(image)
        pan_gt, gt_segments = self.truth.truth(path.name)
        ids = self.truth.category_ids([c["name"] for c in res.categories])
        state.stat += pq_image(pan_gt, gt_segments, res.panoptic, relabel(res.segments, ids), self.truth.categories)
        if reference is not None:
            state.ref_categories = {c["id"]: c for c in reference.categories}
            names = {c["name"]: c["id"] for c in reference.categories}
            if set(names) != {c["name"] for c in res.categories}:
                raise InvalidInputError("a row's panoptic categories differ from the reference row's")
            state.versus += pq_image(reference.panoptic, reference.segments, res.panoptic,
                                     relabel(res.segments, names), state.ref_categories)
        return res

    def accuracy(self, state: _PanopticScores, model: PanopticSegmenter) -> dict[str, Any]:
        from segrt.benchmarks.pq import summarize

        return summarize(state.stat, self.truth.categories)

    def agreement(self, state: _PanopticScores) -> tuple[dict[str, float], bool]:
        from segrt.benchmarks.pq import summarize

        pq = summarize(state.versus, state.ref_categories)["All"]["pq"]
        return {"pq_vs_reference": pq}, pq >= self.tolerances.min_mask_iou

    @staticmethod
    def cells(accuracy: dict[str, Any]) -> tuple[float, float]:
        return accuracy["All"]["pq"], accuracy["All"]["sq"]

    @staticmethod
    def versus(agreement: dict[str, float]) -> str:
        return f"PQ {agreement['pq_vs_reference']:.3f} vs reference"
