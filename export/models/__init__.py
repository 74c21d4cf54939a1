"""The exportable architectures. A new model is one module here plus one entry in :data:`SPECS`."""

from __future__ import annotations

from segrt.runtime.errors import ExportError

from . import deeplab, maskrcnn, unet
from ..spec import ModelSpec

SPECS: tuple[ModelSpec, ...] = (unet.SPEC, deeplab.SPEC_V3PLUS, deeplab.SPEC_V3, maskrcnn.SPEC)


def get_spec(name: str) -> ModelSpec:
    for spec in SPECS:
        if spec.name == name:
            return spec
    raise ExportError(f"unknown architecture {name!r}; valid: {', '.join(s.name for s in SPECS)}")
