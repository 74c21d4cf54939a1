"""Task ``universal``: one Mask2Former bundle (class + mask logits) answering semantic, instance and panoptic.

The bundle's graph returns ``class_logits`` (B, Q, C + 1) and ``mask_logits`` (B, Q, H/4, W/4); the three kinds
of result are made from them by :mod:`segrt.runtime.mask2former_post` (transformers' ``post_process_*``).
"""

from __future__ import annotations

from ..errors import ModelFormatError
from ..manifest import Manifest
from .base import Task


class UniversalTask(Task):
    name = "universal"
    summary = "Mask2Former: class and mask logits per query; semantic, instance and panoptic results from one bundle"

    def check_manifest(self, manifest: Manifest) -> None:
        if not manifest.classes:
            raise ModelFormatError("a universal (Mask2Former) bundle's classes must name at least one class")
        self.check_sections(manifest)


TASK = UniversalTask()
