"""``segrt export sam``: segment-anything's model to a two-graph bundle, checked against SamPredictor."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from segrt.runtime.errors import ExportError
from segrt.runtime.image import read_image
from segrt.runtime.manifest import (
    InputSpec,
    Manifest,
    OutputSpec,
    SamSpec,
    write_manifest,
)
from segrt.runtime.sam import SamPredictor, to_uint8_rgb

from .bundle import atomic_dir
from .exporter import tool_versions
from .models import sam as S
from .onnx_io import PROTO_LIMIT, export_onnx
from .spec import IMAGENET_MEAN, IMAGENET_STD, require_export_deps
from .verify import default_photo
from .weights import sha256_file

log = logging.getLogger("segrt")
#: A fresh export is refused when its low-res logits differ from PyTorch's by more than this
#: (max abs difference over max abs PyTorch logit) or any mask's IoU with PyTorch's is below the next.
MAX_LOGIT_REL_ERROR = 1e-3
MIN_MASK_IOU = 0.98


def build(variant: str, checkpoint: Path | None, seed: int) -> tuple[Any, dict[str, Any]]:
    require_export_deps()
    import torch

    torch.manual_seed(seed)
    model = S.build_sam(variant)
    if checkpoint is None:
        log.warning("exporting SAM %s with seeded random weights (seed %d): the model is untrained", variant, seed)
        return model.eval(), {"weights": None, "sha256": None, "trained": False, "seed": seed}
    if not checkpoint.is_file():
        raise ExportError(f"checkpoint {str(checkpoint)!r} does not exist (pass --checkpoint none for random weights)")
    S.load_checkpoint(model, variant, checkpoint)
    return model.eval(), {"weights": checkpoint.name, "sha256": sha256_file(checkpoint), "trained": True, "seed": None}


def make_manifest(variant: str, source: dict[str, Any], facts: dict[str, Any]) -> Manifest:
    return Manifest(
        task="sam", architecture="sam", encoder=variant, classes=(),
        input=InputSpec(name=S.ENCODER_INPUTS[0], channels=3, color="rgb", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        resize="longest_side", stride=S.IMAGE_SIZE, size=(S.IMAGE_SIZE, S.IMAGE_SIZE)),
        output=OutputSpec(name=S.ENCODER_OUTPUTS[0]),
        model_file="encoder.onnx",
        sam=SamSpec(variant=variant, decoder_file="decoder.onnx", embedding_shape=S.EMBED_SHAPE,
                    low_res_size=S.LOW_RES, mask_tokens=S.MASK_TOKENS),
        source={**source, "export": facts}, versions={**tool_versions(), **_sam_version()},
    )


def _sam_version() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return {"segment-anything": version("segment-anything")}
    except PackageNotFoundError:
        return {}


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


def export_sam(variant: str, checkpoint: Path | None, out: Path, *, seed: int = 0, opset: int = 18,
               force: bool = False, verify_image: Path | None = None) -> Manifest:
    """Export both graphs, then check the bundle against segment-anything on a real photo."""
    import torch

    if variant not in S.VARIANTS:
        raise ExportError(f"unknown SAM variant {variant!r}; valid: {', '.join(S.VARIANTS)}")
    model, source = build(variant, checkpoint, seed)
    s = S.IMAGE_SIZE
    dec_example = (torch.randn(1, *S.EMBED_SHAPE), torch.rand(2, 3, 2) * s, torch.tensor([[1.0, 0.0, -1.0]] * 2),
                   torch.zeros(1, 1, S.LOW_RES, S.LOW_RES), torch.zeros(1))
    encoder_spec = S.ENCODER
    if sum(p.numel() * p.element_size() for p in model.image_encoder.parameters()) > PROTO_LIMIT:
        # vit_h (2.5 GB): the TorchScript exporter runs a real forward while tracing and was OOM-killed at 24 GB;
        # the dynamo exporter traces with fake tensors (vit_b: 1.2 GB peak, outputs within 1e-6 of PyTorch)
        encoder_spec = replace(S.ENCODER, exporter="dynamo")
    with atomic_dir(out, force=force) as tmp:
        facts = {"encoder": export_onnx(S.encoder_graph(model), (torch.randn(1, 3, s, s),), encoder_spec,
                                        tmp / "encoder.onnx", opset),
                 "decoder": export_onnx(S.decoder_graph(model), dec_example, S.DECODER, tmp / "decoder.onnx", opset)}
        manifest = make_manifest(variant, source, facts)
        write_manifest(tmp, manifest)
        name, photo = (str(verify_image), read_image(verify_image)) if verify_image else default_photo(3)
        checks = sam_agreement(model, SamPredictor(tmp, "cpu"), photo)
        worst_err = max(c["logit_rel_error"] for c in checks)
        worst_iou = min(c["min_mask_iou"] for c in checks)
        log.info("verified against segment-anything on %s: logit rel error %.2e, worst mask IoU %.4f",
                 name, worst_err, worst_iou)
        if worst_err > MAX_LOGIT_REL_ERROR or worst_iou < MIN_MASK_IOU:
            raise ExportError(f"exported SAM {variant} differs from segment-anything on {name}: logit relative "
                              f"error {worst_err:.2e} (limit {MAX_LOGIT_REL_ERROR:g}), worst mask IoU {worst_iou:.4f} "
                              f"(limit {MIN_MASK_IOU}); bundle not written")
        verification = {"image": name, "max_logit_rel_error": worst_err, "min_mask_iou": worst_iou, "checks": checks}
        manifest = Manifest.from_dict({**manifest.to_dict(), "verification": verification})
        write_manifest(tmp, manifest)
    return manifest
