"""Shared builder for segmentation_models_pytorch architectures."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..spec import ExportConfig


def smp_encoders() -> Sequence[str]:
    import segmentation_models_pytorch as smp

    return sorted(smp.encoders.get_encoder_names())


def smp_builder(cls_name: str) -> Callable[[ExportConfig], object]:
    def build(cfg: ExportConfig):
        import segmentation_models_pytorch as smp

        cls = getattr(smp, cls_name)
        return cls(encoder_name=cfg.encoder, encoder_weights=None, in_channels=cfg.in_channels, classes=cfg.classes)

    build.__name__ = f"build_{cls_name.lower()}"
    return build
