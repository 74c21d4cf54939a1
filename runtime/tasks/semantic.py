"""Task ``semantic``: label maps: one class id per pixel."""

from __future__ import annotations

from .base import Task


class SemanticTask(Task):
    name = "semantic"
    summary = "label maps: one class id per pixel"

    # -- runtime: load, segrt run/info/stream, serving ---------------------------------------------

    # -- quantization gate, calibration and segrt eval ----------------------------------------------


TASK = SemanticTask()
