"""The exportable architectures. A new model is one module here plus one entry in :data:`SPECS`."""

from __future__ import annotations

from segrt.runtime.errors import ExportError
from segrt.runtime.manifest import Manifest

from . import deeplab, mask2former, maskrcnn, monai_nets, sam, sam2, unet
from ..spec import ModelSpec, QuantDefaults

SPECS: tuple[ModelSpec, ...] = (unet.SPEC, deeplab.SPEC_V3PLUS, deeplab.SPEC_V3, maskrcnn.SPEC, sam.SPEC, monai_nets.UNET3D,
                              monai_nets.SEGRESNET, monai_nets.SWINUNETR, sam2.SPEC, mask2former.SPEC)


def get_spec(name: str) -> ModelSpec:
    for spec in SPECS:
        if spec.name == name:
            return spec
    raise ExportError(f"unknown architecture {name!r}; valid: {', '.join(s.name for s in SPECS)}")


def quant_defaults(manifest: Manifest) -> QuantDefaults:
    """The quantization defaults of the family a bundle was exported from (by its manifest's ``architecture``);
    an imported or unknown architecture gets none."""
    return next((s.quant for s in SPECS if s.name == manifest.architecture), QuantDefaults())
