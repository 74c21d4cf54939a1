"""The semantic family (one logits graph, label maps): U-Net, DeepLabV3(+) and any per-pixel classifier."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from segrt.runtime.errors import ExportError
from segrt.runtime.manifest import InputSpec, Manifest, OutputSpec

from ..spec import ExportConfig, ExportFamily, Graph, ModelSpec

log = logging.getLogger("segrt")
#: A fresh export that agrees with PyTorch on fewer pixels than this is refused.
MIN_PIXEL_AGREEMENT = 0.999


def normalization(spec: ModelSpec, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The spec's RGB mean/std, or for other channel counts each one's average repeated."""
    if channels == 3:
        return spec.mean, spec.std
    return (sum(spec.mean) / 3,) * channels, (sum(spec.std) / 3,) * channels


class SemanticExport(ExportFamily):
    def check(self, spec: ModelSpec, cfg: ExportConfig) -> None:
        if cfg.in_channels not in (1, 3) and cfg.verify_image is None:
            raise ExportError(f"--in-channels {cfg.in_channels} needs --verify-image (a {cfg.in_channels}-channel image)")

    def graphs(self, spec: ModelSpec, model: Any, cfg: ExportConfig) -> list[Graph]:
        import torch

        example = (torch.rand(1, cfg.in_channels, 2 * max(spec.stride, 32), 3 * max(spec.stride, 32)),)
        return [Graph("model.onnx", spec.trace_wrapper(model) if spec.trace_wrapper else model, example, spec)]

    def manifest(self, spec: ModelSpec, cfg: ExportConfig, source: dict[str, Any], versions: dict[str, str]) -> Manifest:
        mean, std = normalization(spec, cfg.in_channels)
        return Manifest(
            task=spec.task,
            architecture=spec.name,
            encoder=cfg.encoder,
            classes=cfg.names,
            input=InputSpec(name=spec.input_names[0], channels=cfg.in_channels,
                            color="gray" if cfg.in_channels == 1 else "rgb", mean=mean, std=std,
                            intensity=cfg.intensity, resize="pad", stride=spec.stride),
            output=OutputSpec(name=spec.output_names[0], activation="softmax" if cfg.classes > 1 else "sigmoid"),
            source=source,
            versions=versions,
        )

    def verify(self, spec: ModelSpec, model: Any, bundle: Path, cfg: ExportConfig) -> dict[str, Any]:
        from ..verify import verify_bundle

        check = verify_bundle(bundle, model, cfg.verify_image)
        log.info("verified against PyTorch: %s", check)
        return check

    def gate(self, spec: ModelSpec, cfg: ExportConfig, source: dict[str, Any], verification: dict[str, Any]) -> None:
        if verification["pixel_agreement"] < MIN_PIXEL_AGREEMENT:
            raise ExportError(
                f"exported {spec.name} agrees with PyTorch on only {verification['pixel_agreement']:.4%} of pixels "
                f"(max abs logit diff {verification['max_abs_logit_diff']:.3g}); bundle not written"
            )


SEMANTIC = SemanticExport()
