"""Task ``sam2``: SAM 2's image path: masks from point/box prompts (``SAM2ImagePredictor``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, ModelFormatError
from ..manifest import Manifest
from ..sam2 import SAM2ImagePredictor, Sam2Spec
from .base import Task


class Sam2Task(Task):
    name = "sam2"
    summary = "SAM 2 image path: masks from point/box prompts (SAM2ImagePredictor)"
    section = None  # the decoder and its constants are the bundle's sam2.json (runtime/sam2.py)

    def check_manifest(self, manifest: Manifest) -> None:
        self.check_sections(manifest)
        if manifest.input.size is None or manifest.input.resize != "stretch":
            raise ModelFormatError("a sam2 bundle's input must be resize 'stretch' to a fixed size (sam2's 1024x1024)")

    def load(self, bundle: Path, device: str = "auto", **kwargs: Any) -> SAM2ImagePredictor:
        if kwargs.pop("score_threshold", None) is not None:
            raise ModelFormatError("score_threshold applies to instance bundles; this one is SAM 2")
        Sam2Spec.read(bundle)  # a missing or malformed sam2.json: one line, before any session opens
        return SAM2ImagePredictor(bundle, device, **kwargs)

    def runners(self, predictor: SAM2ImagePredictor) -> dict:
        return {"encoder": predictor.encoder, "decoder": predictor.decoder}

    def check_run(self, bundle: Path) -> None:
        raise InvalidInputError(f"{bundle} is a SAM 2 bundle, which needs prompts: use SAM2ImagePredictor from "
                                "segrt.runtime.sam2 (see docs/sam2.md)")

    bench_instead = "SAM 2 has no segrt bench entry yet (see docs/sam2.md)"
    resizes_input = True


TASK = Sam2Task()
