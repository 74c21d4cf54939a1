"""``segrt export sam``: segment-anything's model to a two-graph bundle, checked against SamPredictor.

The SAM family itself (graphs, manifest, check, gate) is ``models/sam.py``'s spec, exported by
``exporter.export_bundle`` like every other; these are the variant/checkpoint entry points tests,
benchmarks and callers use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segrt.runtime.errors import ExportError
from segrt.runtime.manifest import Manifest

from .exporter import build_module, export_bundle
from .models import sam as S
from .models.sam import MAX_LOGIT_REL_ERROR, MIN_MASK_IOU
from .spec import ExportConfig
from .verify import check_prompts, mask_iou, sam_agreement

__all__ = ["MAX_LOGIT_REL_ERROR", "MIN_MASK_IOU", "build", "check_prompts", "export_sam", "mask_iou", "sam_agreement",
           "sam_config"]


def prompt_model_config(family: str, architecture: str, variants: Any, variant: str, checkpoint: Path | None, *,
                        seed: int = 0, opset: int = 18, verify_image: Path | None = None,
                        unweighted: str = "random") -> ExportConfig:
    """The export configuration of one variant of a promptable family (SAM, SAM 2: no classes)."""
    if variant not in variants:
        raise ExportError(f"unknown {family} variant {variant!r}; valid: {', '.join(variants)}")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ExportError(f"checkpoint {str(checkpoint)!r} does not exist (pass --checkpoint none for {unweighted} "
                          "weights)")
    return ExportConfig(architecture=architecture, encoder=variant, classes=0, class_names=(),
                        weights=None if checkpoint is None else Path(checkpoint), seed=seed, opset=opset,
                        verify_image=verify_image)


def sam_config(variant: str, checkpoint: Path | None, *, seed: int = 0, opset: int = 18,
               verify_image: Path | None = None) -> ExportConfig:
    """The export configuration of one SAM variant (SAM has no classes)."""
    return prompt_model_config("SAM", S.SPEC.name, S.VARIANTS, variant, checkpoint, seed=seed, opset=opset,
                               verify_image=verify_image)


def build(variant: str, checkpoint: Path | None, seed: int) -> tuple[Any, dict[str, Any]]:
    """segment-anything's ``Sam`` (eval mode, weights loaded or seeded) and the manifest's ``source`` record."""
    return build_module(S.SPEC, sam_config(variant, checkpoint, seed=seed))


def export_sam(variant: str, checkpoint: Path | None, out: Path, *, seed: int = 0, opset: int = 18,
               force: bool = False, verify_image: Path | None = None) -> Manifest:
    """Export both graphs, then check the bundle against segment-anything on a real photo."""
    cfg = sam_config(variant, checkpoint, seed=seed, opset=opset, verify_image=verify_image)
    return export_bundle(S.SPEC, cfg, out, force=force)
