"""Run one step of ``segrt bench --quick`` in a fresh (spawned) process, so what it allocates is returned to the
system when it ends.

A Python process keeps the memory PyTorch, ONNX Runtime and the exporter took at their peak (allocator caches,
malloc arenas), so in one process the quick run's peak was the sum of its parts: the seeded exports, the model
rows with their PyTorch modules, SAM vit_b's encoder on both sides and its 32x32-point generators (15.8 GB measured
on a fresh clone, issue 18). In children the peak is the largest part plus the parent's own.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def _child_logging(level: int) -> None:
    logging.basicConfig(level=level, format="%(message)s")
    logging.getLogger("segrt").setLevel(level)


def in_child(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a spawned process (``fn`` module-level, it and its arguments picklable); its
    result, or its exception re-raised here. The child logs at the parent's ``segrt`` level."""
    level = logging.getLogger("segrt").getEffectiveLevel()
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_child_logging, initargs=(level,)) as pool:
        return pool.submit(fn, *args, **kwargs).result()
