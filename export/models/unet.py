from ..spec import SMP_DEPS, ModelSpec
from ._semantic import SEMANTIC
from ._smp import smp_builder, smp_encoders

SPEC = ModelSpec(
    name="unet",
    task="semantic",
    family=SEMANTIC,
    build=smp_builder("Unet"),
    encoders=smp_encoders,
    default_encoder="resnet34",
    stride=32,
    deps=SMP_DEPS,
)
