"""Check an exported bundle against the PyTorch model it came from, on a real photo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segrt.runtime.image import read_image, to_channels
from segrt.runtime.semantic import Segmenter


def default_photo(channels: int) -> tuple[str, np.ndarray]:
    """A real CC0 photo from scikit-image: astronaut (RGB) or camera (grayscale)."""
    import skimage.data

    if channels == 1:
        return "skimage.data.camera", skimage.data.camera()
    return "skimage.data.astronaut", skimage.data.astronaut()


def torch_label_map(module: Any, seg: Segmenter, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch on the runtime's own preprocessing: (label map, torch scores, model input tensor)."""
    import torch

    arr = to_channels(image, seg.manifest.input.channels)
    tensor, frames = seg.preprocess([arr])
    with torch.no_grad():
        out = module(torch.from_numpy(tensor)).float().numpy()
    return seg.postprocess(out[0], frames[0]), out, tensor


def verify_bundle(bundle: Path, module: Any, image_path: Path | None) -> dict[str, Any]:
    """Max abs logit difference (same input tensor) and argmax pixel agreement (full runtime path)."""
    seg = Segmenter(bundle, "cpu")
    if image_path is not None:
        name, image = str(image_path), read_image(image_path)
    else:
        name, image = default_photo(seg.manifest.input.channels)
    ref_labels, ref_scores, tensor = torch_label_map(module, seg, image)
    ort_scores = seg.infer(tensor)
    result = seg(image)
    return {
        "image": name,
        "image_size": [int(image.shape[0]), int(image.shape[1])],
        "backend": seg.runner.name,
        "max_abs_logit_diff": float(np.abs(ort_scores - ref_scores).max()),
        "max_rel_logit_diff": float(np.abs(ort_scores - ref_scores).max() / max(np.abs(ref_scores).max(), 1e-12)),
        "pixel_agreement": float((result.label_map == ref_labels).mean()),
    }

