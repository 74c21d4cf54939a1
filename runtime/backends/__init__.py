"""Backends in fallback priority order, and the selection that logs why each skipped one was skipped."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import get_args

from ..errors import BackendUnavailableError, InvalidInputError
from .base import Device, Runner, RunnerOptions, TensorSpec
from .ort import OrtCpuRunner, OrtCudaRunner, OrtTensorRTRunner, available_providers
from .tensorrt import TensorRTRunner

log = logging.getLogger("segrt")

BACKENDS: tuple[type[Runner], ...] = (TensorRTRunner, OrtTensorRTRunner, OrtCudaRunner, OrtCpuRunner)
DEVICES = ("auto", *get_args(Device))


def select_runner(model_path: Path, device: str = "auto", options: RunnerOptions | None = None) -> tuple[Runner, list[str]]:
    """Create the first runner that works for ``device``; return it with the reasons others were skipped.

    ``auto`` walks :data:`BACKENDS` in order. An explicit device tries only its own backends and
    raises :class:`BackendUnavailableError` naming why each failed.
    """
    if device not in DEVICES:
        raise InvalidInputError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    options = options or RunnerOptions()
    if device == "tensorrt" and not options.build_engines:
        from dataclasses import replace

        options = replace(options, build_engines=True)  # asked for TensorRT by name: build when none fits
    candidates = [b for b in BACKENDS if device == "auto" or b.device == device]
    skipped: list[str] = []
    for backend in candidates:
        reason = backend.unavailable_reason()
        if reason is None:
            try:
                runner = backend(model_path, options)
            except BackendUnavailableError as exc:
                reason = str(exc)
            else:
                for line in skipped:
                    log.info("skipped %s", line)
                log.info("using %s for %s", backend.name, model_path)
                return runner, skipped
        skipped.append(f"{backend.name}: {reason}")
    raise BackendUnavailableError(f"no backend for device {device!r}: " + "; ".join(skipped))


__all__ = ["BACKENDS", "DEVICES", "Runner", "RunnerOptions", "TensorSpec", "available_providers", "select_runner"]
