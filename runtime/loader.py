"""``load(bundle)``: the manifest's task picks the segmenter class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ModelFormatError
from .instance import InstanceSegmenter
from .manifest import read_manifest
from .sam import SamPredictor
from .semantic import Segmenter


def load(bundle: str | Path, device: str = "auto", **kwargs: Any) -> Segmenter | InstanceSegmenter | SamPredictor:
    """Open a bundle for inference on ``device`` (auto, tensorrt, cuda or cpu)."""
    task = read_manifest(bundle).task
    if task == "sam":
        if kwargs.pop("score_threshold", None) is not None:
            raise ModelFormatError("score_threshold applies to instance bundles; this one is SAM")
        return SamPredictor(bundle, device, **kwargs)
    if task == "semantic":
        if kwargs.get("score_threshold") is not None:
            raise ModelFormatError("score_threshold applies to instance bundles; this one is semantic")
        kwargs.pop("score_threshold", None)
        return Segmenter(bundle, device, **kwargs)
    if task == "instance":
        return InstanceSegmenter(bundle, device, **kwargs)
    raise ModelFormatError(f"bundle task {task!r} is not supported by this segrt")
