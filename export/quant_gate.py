"""Calibration data and the accuracy gate for ``segrt quantize``: both through the runtime itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from segrt.runtime.errors import InvalidInputError
from segrt.runtime.image import IMAGE_SUFFIXES, list_images, read_image
from segrt.runtime.manifest import Manifest
from segrt.runtime.tasks import task_for

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".webm")
GATE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _video_frames(path: Path, samples: int) -> tuple[list[str], list[np.ndarray]]:
    cap = cv2.VideoCapture(str(path))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if not cap.isOpened() or total < 1:
        raise InvalidInputError(f"cannot read video {str(path)!r} (no frames); give a folder of images instead")
    names, frames = [], []
    for index in np.linspace(0, total - 1, min(samples, total)).astype(int).tolist():
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
        if ok:
            names.append(f"{path.name}#{index}")
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    return names, frames


def load_images(path: Path, samples: int) -> tuple[list[str], list[np.ndarray]]:
    """Up to ``samples`` images from a folder (sorted, evenly spaced) or frames from a video."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return _video_frames(path, samples)
    if not path.is_dir():
        raise InvalidInputError(f"{str(path)!r} is neither a folder of images ({', '.join(IMAGE_SUFFIXES)}) nor a "
                                f"video ({', '.join(VIDEO_SUFFIXES)})")
    found = list_images(path)
    if not found:
        raise InvalidInputError(f"folder {str(path)!r} holds no images")
    picked = [found[i] for i in np.linspace(0, len(found) - 1, min(samples, len(found))).astype(int).tolist()]
    return [p.name for p in picked], [read_image(p) for p in picked]


def _model(bundle: Path) -> Any:
    from segrt.runtime.loader import load

    return load(bundle, "cpu")


def calibration_feeds(bundle: Path, m: Manifest, images: list[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """The model file's input feeds for each image, made by the runtime's own preprocessing (the task's)."""
    model, task = _model(bundle), task_for(m.task)
    for image in images:
        yield task.calibration_feeds(model, image)


def _gate_images(eval_images: Path | None) -> tuple[list[str], list[np.ndarray]]:
    if eval_images is not None:
        return load_images(eval_images, 64)
    import skimage.data

    return [f"skimage.data.{n}" for n in GATE_PHOTOS], [getattr(skimage.data, n)() for n in GATE_PHOTOS]


def accuracy_gate(reference: Path, variant: Path, eval_images: Path | None, minimum: float) -> dict[str, Any]:
    """Variant against FP32 on held-out images: per image and mean; ``passed`` when mean >= minimum."""
    ref, var = _model(reference), _model(variant)
    task = task_for(ref.manifest.task)
    metric = task.gate_metric
    names, images = _gate_images(eval_images)
    per_image = {name: task.gate_score(ref, var, image) for name, image in zip(names, images)}
    score = float(np.mean([s[metric] for s in per_image.values()]))
    return {"metric": metric, "score": score, "minimum": minimum, "passed": score >= minimum, "images": len(names),
            "source": str(eval_images) if eval_images else "scikit-image photos " + ", ".join(GATE_PHOTOS),
            "per_image": per_image}
