"""DeepLabV3+ from segmentation_models_pytorch and DeepLabV3 from torchvision (aux head dropped)."""

from __future__ import annotations

from segrt.runtime.errors import ExportError

from ..spec import SMP_DEPS, TORCHVISION_DEPS, ExportConfig, ModelSpec
from ._semantic import SEMANTIC
from ._smp import smp_builder, smp_encoders

_TV_BUILDERS = {
    "resnet50": "deeplabv3_resnet50",
    "resnet101": "deeplabv3_resnet101",
    "mobilenet_v3_large": "deeplabv3_mobilenet_v3_large",
}


def _tv_encoders() -> list[str]:
    return sorted(_TV_BUILDERS)


def build_tv_deeplabv3(cfg: ExportConfig):
    """torchvision's DeepLabV3 returning the ``out`` tensor instead of a dict. A subclass, not a
    wrapper, so state_dict keys stay torchvision's and official checkpoints load unchanged."""
    import torchvision.models.segmentation as tvseg
    from torchvision.models.segmentation.deeplabv3 import DeepLabV3

    if cfg.in_channels != 3:
        raise ExportError(f"torchvision deeplabv3 takes 3-channel input; got --in-channels {cfg.in_channels}")

    class DeepLabV3Out(DeepLabV3):
        def forward(self, x):  # type: ignore[override]
            return super().forward(x)["out"]

    model = getattr(tvseg, _TV_BUILDERS[cfg.encoder])(
        weights=None, weights_backbone=None, num_classes=cfg.classes, aux_loss=False
    )
    model.__class__ = DeepLabV3Out
    return model


SPEC_V3PLUS = ModelSpec(
    name="deeplabv3plus",
    task="semantic",
    family=SEMANTIC,
    build=smp_builder("DeepLabV3Plus"),
    encoders=smp_encoders,
    default_encoder="resnet50",
    stride=32,
    deps=SMP_DEPS,
)

SPEC_V3 = ModelSpec(
    name="deeplabv3",
    task="semantic",
    family=SEMANTIC,
    build=build_tv_deeplabv3,
    encoders=_tv_encoders,
    default_encoder="resnet50",
    stride=8,
    drop_prefixes=("aux_classifier.",),
    deps=TORCHVISION_DEPS,
)
