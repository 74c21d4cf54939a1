"""``load(bundle)``: the manifest's task loads the bundle (:meth:`segrt.runtime.tasks.Task.load`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .manifest import read_manifest
from .tasks import task_for


def load(bundle: str | Path, device: str = "auto", **kwargs: Any) -> Any:
    """Open a bundle for inference on ``device`` (auto, tensorrt, cuda or cpu): its task's predictor, a
    ``Segmenter``, ``InstanceSegmenter`` or ``SamPredictor``. ``score_threshold`` applies to instance bundles."""
    return task_for(read_manifest(bundle).task).load(bundle, device, **kwargs)
