"""Check an exported bundle against the PyTorch model it came from, on a real photo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segrt.runtime.image import read_image, to_channels
from segrt.runtime.matching import box_iou, match_instances
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



def torch_instances(model: Any, image: np.ndarray, score_threshold: float) -> tuple[np.ndarray, ...]:
    """torchvision's end-to-end answer (its own resize, normalise and paste): boxes, labels, scores, masks."""
    import torch

    rgb = to_channels(image, 3)
    scale = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind == "u" else 1.0
    with torch.no_grad():
        out = model([torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / scale)])[0]
    keep = out["scores"] >= score_threshold
    return (out["boxes"][keep].numpy(), out["labels"][keep].numpy(), out["scores"][keep].numpy(),
            out["masks"][keep][:, 0].numpy() > 0.5)


def instance_agreement(model: Any, det: Any, image: np.ndarray, *, box_iou_min: float = 0.9,
                       mask_iou_min: float = 0.9, score_tol: float = 0.01) -> dict[str, Any]:
    """How many of torchvision's detections above the threshold segrt reproduces (same label, box
    and mask IoU, score), and the highest score among segrt detections torchvision does not have."""
    thr = det.score_threshold
    rb, rl, rs, rm = torch_instances(model, image, thr)
    res = det(image)
    pairs = match_instances(rl, rm, res.labels, res.masks)
    good = [(i, j, m) for i, j, m in pairs
            if m >= mask_iou_min and box_iou(rb[i : i + 1], res.boxes[j : j + 1])[0, 0] >= box_iou_min
            and abs(float(rs[i]) - float(res.scores[j])) <= score_tol]
    matched_seg = {j for _, j, _ in good}
    extra = [float(s) for j, s in enumerate(res.scores) if j not in matched_seg]
    return {
        "image_size": [int(image.shape[0]), int(image.shape[1])],
        "torch_detections": len(rs),
        "segrt_detections": len(res),
        "matched": len(good),
        "match_fraction": len(good) / len(rs) if len(rs) else 1.0,
        "max_unmatched_score_above_threshold": max((s - thr for s in extra), default=0.0),
        "min_mask_iou": min((m for _, _, m in good), default=None),
        "max_score_diff": max((abs(float(rs[i]) - float(res.scores[j])) for i, j, _ in good), default=None),
    }
