"""Check an exported bundle against the PyTorch model it came from, on a real photo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segrt.runtime.image import read_image, to_channels
from segrt.runtime.matching import box_iou, match_instances
from segrt.runtime.sam import SamPredictor, to_uint8_rgb
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


def check_prompts(height: int, width: int) -> list[dict[str, Any]]:
    """A point, two points (one background), a box, and a point inside a box, placed by image size."""
    cx, cy = width * 0.5, height * 0.45
    box = np.array([width * 0.3, height * 0.2, width * 0.7, height * 0.75])
    return [
        {"name": "point", "point_coords": np.array([[cx, cy]]), "point_labels": np.array([1])},
        {"name": "points", "point_coords": np.array([[cx, cy], [width * 0.1, height * 0.9]]),
         "point_labels": np.array([1, 0])},
        {"name": "box", "box": box},
        {"name": "point+box", "point_coords": np.array([[cx, cy]]), "point_labels": np.array([1]), "box": box},
    ]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def sam_agreement(model: Any, pred: SamPredictor, image: np.ndarray) -> list[dict[str, Any]]:
    """segment-anything's ``SamPredictor`` against segrt's on one image, every test prompt, with and
    without multimask output: low-res logit relative error, worst mask IoU, IoU-prediction error."""
    from segment_anything import SamPredictor as TorchPredictor

    rgb = to_uint8_rgb(image)
    ref = TorchPredictor(model)
    ref.set_image(rgb)
    pred.set_image(rgb)
    checks = []
    for prompt in check_prompts(*rgb.shape[:2]):
        kwargs = {k: v for k, v in prompt.items() if k != "name"}
        for multi in (True, False):
            m_t, iou_t, low_t = ref.predict(multimask_output=multi, **kwargs)
            m_o, iou_o, low_o = pred.predict(multimask_output=multi, **kwargs)
            checks.append({
                "prompt": prompt["name"], "multimask": multi,
                "logit_rel_error": float(np.abs(low_o - low_t).max() / max(np.abs(low_t).max(), 1e-12)),
                "min_mask_iou": min(mask_iou(a, b) for a, b in zip(m_o, m_t)),
                "iou_pred_abs_error": float(np.abs(iou_o - iou_t).max()),
                "mask_pixels": int(m_t.sum()),
            })
    return checks
