"""Task ``sam``: Segment Anything: masks from point/box prompts, or every object."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, ModelFormatError
from ..manifest import Manifest
from ..sam import PromptResult, SamPredictor, SamStages
from .base import Task


class SamTask(Task):
    name = "sam"
    summary = "Segment Anything: masks from point/box prompts, or every object"

    # -- runtime: load, segrt run/info/stream, serving ---------------------------------------------
    section = "sam"

    def check_manifest(self, manifest: Manifest) -> None:
        self.check_sections(manifest)  # classes may be empty: SAM masks have no class

    def load(self, bundle: Path, device: str = "auto", **kwargs: Any) -> SamPredictor:
        if kwargs.pop("score_threshold", None) is not None:
            raise ModelFormatError("score_threshold applies to instance bundles; this one is SAM")
        return SamPredictor(bundle, device, **kwargs)

    def runners(self, predictor: SamPredictor) -> dict:
        return {"encoder": predictor.encoder, "decoder": predictor.decoder}

    def check_run(self, bundle: Path) -> None:
        raise InvalidInputError(f"{bundle} is a SAM bundle, which needs prompts: use `segrt sam {bundle} "
                                "--image IMG --point X,Y` or `--everything`")

    # write: none (check_run refuses `segrt run`); `segrt sam` writes its own masks (runtime/sam_cli.py)

    def stages(self, predictor: SamPredictor, prompts: dict[str, Any] | None = None) -> SamStages:
        p = prompts or {}
        return SamStages(predictor, p.get("points"), p.get("labels"), p.get("box"))

    def for_stream(self, predictor: SamPredictor) -> None:
        predictor.cache.max_bytes = 0  # every video frame is new: hashing and keeping embeddings only costs

    def frame_record(self, result: PromptResult) -> dict[str, Any]:
        return {"masks": [{"area": int(m.sum()), "score": round(float(s), 4)} for m, s in zip(result.masks, result.scores)]}

    def serving_contract(self, manifest: Manifest):
        from ..serving.contract import sam_contract

        return sam_contract(manifest)

    def serving_handler(self, bundle: Path, **kwargs: Any):
        from ..serving.handlers import SamHandler

        return SamHandler(bundle, **kwargs)

    def serving_stages(self, manifest: Manifest, **kwargs: Any):
        from ..serving.stages import SamStages as ServingSamStages

        return ServingSamStages(manifest, **kwargs)

    def serving_networks(self, manifest: Manifest) -> tuple[tuple[str, str], ...]:
        return (("encoder", manifest.model_file), ("decoder", manifest.sam.decoder_file))

    # -- quantization gate, calibration and segrt eval ----------------------------------------------
    gate_metric = "mask_iou"

    def calibration_feeds(self, predictor: SamPredictor, image: np.ndarray) -> dict[str, np.ndarray]:
        """The image encoder's input (the decoder is calibrated by nothing: SAM's INT8 is dynamic)."""
        from ..sam import to_uint8_rgb

        x, _ = predictor.preprocess(to_uint8_rgb(image))
        return {predictor.manifest.input.name: x}

    def gate_score(self, reference: SamPredictor, variant: SamPredictor, image: np.ndarray) -> dict[str, float]:
        """Mean mask IoU over a 3x3 grid of single-point prompts (one mask each)."""
        from ..sam import to_uint8_rgb

        rgb = to_uint8_rgb(image)
        h, w = rgb.shape[:2]
        grid = (np.stack(np.meshgrid(np.linspace(0.2, 0.8, 3), np.linspace(0.2, 0.8, 3)), -1).reshape(-1, 2) * [w, h])
        reference.set_image(rgb)
        variant.set_image(rgb)
        a, _, _ = reference.predict_batch(grid[:, None], np.ones((9, 1), np.int64), multimask_output=False)
        b, _, _ = variant.predict_batch(grid[:, None], np.ones((9, 1), np.int64), multimask_output=False)
        return {"mask_iou": float(np.mean([_iou(x, y) for x, y in zip(a[:, 0], b[:, 0])]))}

    def evaluator(self, dataset: Any, tolerances: Any) -> Any:
        raise InvalidInputError("segrt eval scores semantic and instance bundles against ground truth; SAM has no "
                                "such metric yet (segrt quantize's gate compares SAM variants on point prompts)")

    # -- segrt bench and gpu-check ---------------------------------------------------------------------
    bench_instead = "time SAM with `segrt bench --sam VARIANT` (vit_b, vit_l, vit_h, tiny; against segment-anything)"
    resizes_input = True  # longest side to the encoder's size, inside preprocessing
    timed_at_bench_size = False  # SAM is timed on the photos at their own sizes
    int8_calibrated = False  # INT8 is dynamic (quantized at run time): no calibration photos

    def uncached(self) -> dict[str, Any]:
        return {"cache_bytes": 0}  # no embedding cache: every timed set_image encodes

    def timed_call(self, predictor: SamPredictor, image: np.ndarray) -> Any:
        """Encode the photo and ask one point, as a user does."""
        predictor.set_image(image)
        h, w = image.shape[:2]
        return predictor.predict(np.array([[0.45 * w, 0.4 * h]]), np.array([1]))

    # -- export ----------------------------------------------------------------------------------------
    importable = False
    quantize_min_score = 0.90
    gpu_check_torch = "segrt.benchmarks.gpu_check_timing:torch_sam"
    gpu_check_rounds = 12
    fp32_device_min = 0.90
    binding_min = 0.99


TASK = SamTask()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
