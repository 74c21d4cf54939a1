"""Tasks: the third extension point (see :mod:`.base`). ``TASKS`` lists them; :func:`task_for` looks one up."""

from __future__ import annotations

from ..errors import ModelFormatError
from . import instance, sam, semantic
from .base import Task

TASKS: tuple[Task, ...] = (semantic.TASK, instance.TASK, sam.TASK)


def task_names() -> tuple[str, ...]:
    return tuple(t.name for t in TASKS)


def task_for(name: str) -> Task:
    """The task whose manifest name is ``name``; an unknown one is a bundle this segrt cannot run."""
    for task in TASKS:
        if task.name == name:
            return task
    raise ModelFormatError(f"bundle task {name!r} is not supported by this segrt (known: {', '.join(task_names())})")


__all__ = ["TASKS", "Task", "task_for", "task_names"]
