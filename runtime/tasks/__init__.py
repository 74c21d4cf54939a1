"""Tasks: the third extension point (see :mod:`.base`). ``TASKS`` lists them; :func:`task_for` looks one up.

Generic code never branches on the task's name; it asks the task::

    task = task_for(read_manifest(bundle).task)
    task.check_run(bundle)                      # segrt run: SAM refuses (it needs prompts)
    model = task.load(bundle, "cpu")            # Segmenter, InstanceSegmenter, SamPredictor...
    result = model(image)
    task.write(result, image, out_dir, "page", source)  # <stem>.labels.png, or COCO results and image entry
    stages = task.stages(model, {"points": None, "labels": None, "box": None})  # segrt stream's pre/infer/post

A new task (``volume``, say) is one module here and one entry in ``TASKS``::

    # runtime/tasks/volume.py
    class VolumeTask(Task):
        name = "volume"                         # the manifest's "task"
        summary = "3-D label volumes: one class id per voxel"
        section = "volume"                      # a manifest section only its bundles have (or None)

        def check_manifest(self, manifest):     # refuse what this task cannot run
            self.check_sections(manifest)

        def load(self, bundle, device="auto", **kwargs):
            return VolumeSegmenter(bundle, device, **kwargs)
        ...                                     # runners, write, stages, frame_record, serving_*...

    TASK = VolumeTask()
    # runtime/tasks/__init__.py
    TASKS = (semantic.TASK, instance.TASK, sam.TASK, volume.TASK)

A hook the new task leaves out raises ``NotImplementedError`` naming the task and the hook (serving hooks:
a one-line ``InvalidInputError``, since a task need not be served).
"""

from __future__ import annotations

from ..errors import ModelFormatError
from . import instance, mask2former, panoptic, sam, sam2, semantic, volume
from .base import Task

TASKS: tuple[Task, ...] = (semantic.TASK, instance.TASK, sam.TASK, panoptic.TASK, volume.TASK, sam2.TASK,
                           mask2former.TASK)


def task_names() -> tuple[str, ...]:
    return tuple(t.name for t in TASKS)


def task_for(name: str) -> Task:
    """The task whose manifest name is ``name``; an unknown one is a bundle this segrt cannot run."""
    for task in TASKS:
        if task.name == name:
            return task
    raise ModelFormatError(f"bundle task {name!r} is not supported by this segrt (known: {', '.join(task_names())})")


__all__ = ["TASKS", "Task", "task_for", "task_names"]
