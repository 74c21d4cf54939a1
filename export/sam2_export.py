"""``segrt export sam2``: sam2's image path to a two-graph bundle, checked against the sam2 modules.

The family itself (graphs, manifest, gate) is ``models/sam2.py``'s spec, exported by ``exporter.export_bundle``
like every other; here are the entry points tests and callers use, and the checks its ``verify`` runs: each
graph against the sam2 modules it was traced from (same inputs, max abs difference), and the whole bundle
through segrt's ``SAM2ImagePredictor`` against sam2's own on a real photo (mask IoU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segrt.runtime.manifest import Manifest
from segrt.runtime.sam2 import FEATURES, SAM2ImagePredictor, Sam2Spec

from .exporter import build_module, export_bundle
from .models import sam2 as S2
from .sam_export import prompt_model_config
from .spec import ExportConfig
from .verify import check_prompts, mask_iou

__all__ = ["agreement", "build", "export_sam2", "sam2_config", "write_sidecar"]


def sam2_config(variant: str, checkpoint: Path | None, *, seed: int = 0, opset: int = 18,
                verify_image: Path | None = None) -> ExportConfig:
    """The export configuration of one SAM 2 variant (no classes)."""
    return prompt_model_config("SAM 2", S2.SPEC.name, S2.VARIANTS, variant, checkpoint, seed=seed, opset=opset,
                               verify_image=verify_image, unweighted="seeded")


def build(variant: str, checkpoint: Path | None, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """sam2's ``SAM2Base`` (eval mode; weights loaded, or seeded and made non-trivial) and the ``source`` record."""
    return build_module(S2.SPEC, sam2_config(variant, checkpoint, seed=seed))


def export_sam2(variant: str, checkpoint: Path | None, out: Path, *, seed: int = 0, opset: int = 18,
                force: bool = False, verify_image: Path | None = None) -> Manifest:
    """Export both graphs, then check them and the bundle against sam2 on a real photo."""
    cfg = sam2_config(variant, checkpoint, seed=seed, opset=opset, verify_image=verify_image)
    return export_bundle(S2.SPEC, cfg, out, force=force)


def write_sidecar(model: Any, bundle: Path, variant: str) -> None:
    """The bundle's ``sam2.json``: the decoder file and the mask-selection constants of ``model``'s decoder."""
    dec = model.sam_mask_decoder
    Sam2Spec(variant=variant, decoder_file="decoder.onnx", low_res_size=S2.LOW_RES, mask_tokens=dec.num_mask_tokens,
             dynamic_multimask=bool(dec.dynamic_multimask_via_stability),
             stability_delta=float(dec.dynamic_multimask_stability_delta),
             stability_thresh=float(dec.dynamic_multimask_stability_thresh)).write(bundle)


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12))


def _sam2_decoder(model: Any, feats: dict[str, Any], coords: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """sam2's own prompt encoder + mask decoder (all four masks) on prompts without their padding point."""
    import torch

    pe, dec = model.sam_prompt_encoder, model.sam_mask_decoder
    with torch.no_grad():
        sparse, dense = pe(points=(torch.from_numpy(coords[:, :-1]), torch.from_numpy(labels[:, :-1]).int()),
                           boxes=None, masks=None)
        masks, iou, _, obj = dec.predict_masks(
            image_embeddings=feats["image_embed"], image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, repeat_image=True,
            high_res_features=[feats["high_res_feats_0"], feats["high_res_feats_1"]])
    return [masks.numpy(), iou.numpy(), obj.numpy()]


def agreement(model: Any, bundle: Path, photo: np.ndarray) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The bundle against sam2 on ``photo``: each graph output's max abs difference from the sam2 modules on the
    same input, over the modules' max abs value (the encoder on sam2's own preprocessing, the decoder on those
    features and the test prompts); then segrt's ``SAM2ImagePredictor`` against sam2's, end to end."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor as TorchPredictor

    rgb = np.ascontiguousarray(photo[..., :3])
    ref, pred = TorchPredictor(model), SAM2ImagePredictor(bundle, "cpu")
    ref.set_image(rgb)
    feats = ref._features
    ref_feats = {"image_embed": feats["image_embed"], "high_res_feats_0": feats["high_res_feats"][0],
                 "high_res_feats_1": feats["high_res_feats"][1]}
    got = pred.encoder.infer({"image": ref._transforms(rgb)[None].numpy()})
    errors = {f"encoder.{k}": _rel(got[k], ref_feats[k].numpy()) for k in FEATURES}
    errors.update(_decoder_errors(model, pred, {k: np.ascontiguousarray(got[k]) for k in FEATURES}, rgb.shape[:2]))
    pred.set_image(rgb)
    checks = _predictor_checks(ref, pred, rgb.shape[:2])
    pred.close()
    return errors, checks


def _decoder_errors(model: Any, pred: SAM2ImagePredictor, feats: dict[str, np.ndarray], hw: tuple[int, int]
                    ) -> dict[str, float]:
    import torch

    torch_feats = {k: torch.from_numpy(v) for k, v in feats.items()}
    errors: dict[str, float] = {}
    for prompt in check_prompts(*hw):
        coords, labels = pred.prompts(prompt.get("point_coords"), prompt.get("point_labels"), prompt.get("box"), True, hw)
        out = pred.decoder.infer({**feats, "point_coords": coords, "point_labels": labels,
                                  "mask_input": np.zeros((1, 1, S2.LOW_RES, S2.LOW_RES), np.float32),
                                  "has_mask_input": np.zeros(1, np.float32)})
        for name, r in zip(S2.DECODER_OUTPUTS, _sam2_decoder(model, torch_feats, coords, labels)):
            errors[f"decoder.{name}"] = max(errors.get(f"decoder.{name}", 0.0), _rel(out[name], r))
    return errors


def _predictor_checks(ref: Any, pred: SAM2ImagePredictor, hw: tuple[int, int]) -> list[dict[str, Any]]:
    """Every test prompt, with and without multimask output: worst mask IoU, IoU-prediction error and the
    reference masks' share of the image."""
    checks = []
    for prompt in check_prompts(*hw):
        kwargs = {k: v for k, v in prompt.items() if k != "name"}
        for multi in (True, False):
            m_t, iou_t, _ = ref.predict(multimask_output=multi, **kwargs)
            m_o, iou_o, _ = pred.predict(multimask_output=multi, **kwargs)
            checks.append({"prompt": prompt["name"], "multimask": multi,
                           "min_mask_iou": min(mask_iou(a, b > 0.5) for a, b in zip(m_o, m_t)),
                           "iou_pred_abs_error": float(np.abs(iou_o - iou_t).max()),
                           "mask_fraction": [round(float((m > 0.5).mean()), 4) for m in m_t]})
    return checks
