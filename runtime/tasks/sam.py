"""Task ``sam``: Segment Anything: masks from point/box prompts, or every object."""

from __future__ import annotations

from .base import Task


class SamTask(Task):
    name = "sam"
    summary = "Segment Anything: masks from point/box prompts, or every object"

    # -- runtime: load, segrt run/info/stream, serving ---------------------------------------------

    # -- quantization gate, calibration and segrt eval ----------------------------------------------


TASK = SamTask()
