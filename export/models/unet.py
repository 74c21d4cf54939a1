from ..spec import ModelSpec
from ._smp import smp_builder, smp_encoders

SPEC = ModelSpec(
    name="unet",
    task="semantic",
    build=smp_builder("Unet"),
    encoders=smp_encoders,
    default_encoder="resnet34",
    stride=32,
)
