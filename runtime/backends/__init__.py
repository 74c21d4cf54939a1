"""Backends in fallback priority order, and the selection that logs why each skipped one was skipped.

The order, fastest first and each one's fall-back signal being :class:`BackendUnavailableError` from
``unavailable_reason`` or ``__init__``:

1. ``tensorrt`` (native TensorRT 10.x/11.x): exact-version and version-compatible engines; the only one that
   builds (``device="tensorrt"``; ``auto`` uses only an engine that already exists).
2. ``tensorrt-lean`` (TensorRT's lean runtime, the edge install): version-compatible engines built elsewhere with
   ``segrt build --version-compatible --exclude-lean-runtime``. After the native runner because such engines may
   run a little slower and because, with both installed, the native one can also run exact-version engines.
3. ``onnxruntime-tensorrt``, 4. ``onnxruntime-cuda``, 5. ``onnxruntime-cpu``: ONNX Runtime's providers.
6. ``openvino-cpu`` (OpenVINO's CPU plugin, the ``segrt[openvino]`` extra): after ONNX Runtime's CPU provider,
   so ``auto`` picks it only where that provider is missing, or where the bundle's ``cpu_engine.json`` (written by
   ``segrt build BUNDLE --device cpu``, which times both on this graph in interleaved pairs and checks that their
   outputs agree) names it for this graph and was measured on this machine's CPU model: then ``auto`` tries it
   before ``onnxruntime-cpu`` (after the GPU backends) and logs the recorded ratio. Which one is faster depends on
   the model and the CPU (FP32, interleaved pairs on a quiet 2-core AMD EPYC: Mask R-CNN 0.80x-0.82x of ONNX
   Runtime's time; U-Net 1.08x and DeepLabV3+ 1.12x, slower); a record from another CPU is ignored with a log
   line, a corrupt one with a warning (:mod:`..cpu_engine`). ``device="openvino"`` asks for it by name.

``device="tensorrt"`` tries 1, 2 and 3; ``cuda`` 4; ``cpu`` 5; ``openvino`` 6. An engine segrt's TensorRT runners cannot run
(data-dependent output shapes such as Mask R-CNN's detections, shape-tensor inputs) is refused in ``__init__``,
so ``auto`` falls through to ONNX Runtime.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import get_args

from ..cpu_engine import preferred_cpu_backend
from ..errors import BackendUnavailableError, InvalidInputError
from .base import Device, Runner, RunnerOptions, TensorSpec
from .openvino import OpenVinoCpuRunner
from .ort import OrtCpuRunner, OrtCudaRunner, OrtTensorRTRunner, available_providers
from .tensorrt import TensorRTRunner
from .tensorrt_lean import TensorRTLeanRunner

log = logging.getLogger("segrt")

BACKENDS: tuple[type[Runner], ...] = (TensorRTRunner, TensorRTLeanRunner, OrtTensorRTRunner, OrtCudaRunner,
                                      OrtCpuRunner, OpenVinoCpuRunner)
DEVICES = ("auto", *get_args(Device))


def auto_order(model_path: Path) -> list[type[Runner]]:
    """:data:`BACKENDS`, with ``openvino-cpu`` moved before ``onnxruntime-cpu`` when the bundle's
    ``cpu_engine.json`` chose it for this graph on this CPU."""
    order = list(BACKENDS)
    if preferred_cpu_backend(Path(model_path)) == OpenVinoCpuRunner.name:
        order.remove(OpenVinoCpuRunner)
        order.insert(order.index(OrtCpuRunner), OpenVinoCpuRunner)
    return order


def select_runner(model_path: Path, device: str = "auto", options: RunnerOptions | None = None) -> tuple[Runner, list[str]]:
    """Create the first runner that works for ``device``; return it with the reasons others were skipped.

    ``auto`` walks :func:`auto_order` (:data:`BACKENDS`, the CPU pair as ``cpu_engine.json`` chose). An explicit device tries only its own backends and
    raises :class:`BackendUnavailableError` naming why each failed.
    """
    if device not in DEVICES:
        raise InvalidInputError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    options = options or RunnerOptions()
    if device == "tensorrt" and not options.build_engines:
        from dataclasses import replace

        options = replace(options, build_engines=True)  # asked for TensorRT by name: build when none fits
    candidates = auto_order(model_path) if device == "auto" else [b for b in BACKENDS if b.device == device]
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


__all__ = ["BACKENDS", "DEVICES", "auto_order", "Runner", "RunnerOptions", "TensorSpec", "available_providers", "select_runner"]
