"""Task ``instance``: instances: boxes, labels, scores and masks (COCO results)."""

from __future__ import annotations

from .base import Task


class InstanceTask(Task):
    name = "instance"
    summary = "instances: boxes, labels, scores and masks (COCO results)"

    # -- runtime: load, segrt run/info/stream, serving ---------------------------------------------

    # -- quantization gate, calibration and segrt eval ----------------------------------------------


TASK = InstanceTask()
