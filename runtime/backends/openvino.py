"""OpenVINO's CPU plugin as a segrt backend (``device="openvino"``), for the models where it beats ONNX Runtime
on the same ONNX file (FP32, make bench runs 15/16, quiet 2-core AMD EPYC, interleaved pairs: Mask R-CNN at
0.80x-0.82x of ONNX Runtime's time; U-Net 1.08x and DeepLabV3+ 1.12x, slower). It sits after ``onnxruntime-cpu`` in
``BACKENDS``, so ``auto`` takes it only where ONNX Runtime's CPU provider is missing; choosing it per model
is the user's call.

``openvino`` is an optional extra (``pip install 'segrt[openvino]'``): it is imported only when a runner is
created (availability is a ``find_spec``), never when ``segrt.runtime`` is imported.

Settings: ``INFERENCE_PRECISION_HINT`` is ``f32`` (OpenVINO picks bf16 by default on CPUs with AMX/AVX512-BF16
and f16 on ARM; segrt keeps FP32 so the answers match ONNX Runtime's; an INT8 QDQ graph still runs its
convolutions in u8), ``INFERENCE_NUM_THREADS`` from :attr:`RunnerOptions.threads` (None: OpenVINO's choice),
everything else OpenVINO's defaults (the CPU plugin's latency hint)."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import BackendUnavailableError, InferenceError, ModelFormatError
from .base import Device, Runner, RunnerOptions, TensorSpec

#: OpenVINO element type names -> NumPy dtypes (the types segrt's models carry at their inputs and outputs)
_OV_TYPES = {
    "f32": np.float32, "f16": np.float16, "f64": np.float64, "i64": np.int64, "i32": np.int32,
    "i8": np.int8, "u8": np.uint8, "u16": np.uint16, "boolean": np.bool_,
}
#: what segrt sets on the CPU plugin besides the thread count (see the module docstring)
PRECISION = "f32"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _port_name(port: Any) -> str:
    names = port.get_names()
    if not names:
        raise ModelFormatError("an OpenVINO model port has no tensor name")
    return port.get_any_name()


def _spec(port: Any) -> TensorSpec:
    name = _port_name(port)
    kind = port.get_element_type().get_type_name()
    if kind not in _OV_TYPES:
        raise ModelFormatError(f"tensor {name!r} has unsupported type {kind}")
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    return TensorSpec(name, shape, np.dtype(_OV_TYPES[kind]))


class OpenVinoCpuRunner(Runner):
    """Runs one ONNX file with OpenVINO's CPU plugin: one compiled model and one infer request."""

    name = "openvino-cpu"
    device: ClassVar[Device] = "openvino"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            found = importlib.util.find_spec("openvino") is not None
        except (ImportError, ValueError):  # hidden (sys.modules entry None) or half-installed
            found = False
        if not found:
            return "openvino is not installed (pip install 'segrt[openvino]')"
        return None

    def __init__(self, model_path: Path, options: RunnerOptions | None = None) -> None:
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailableError(f"{self.name}: {reason}")
        import openvino as ov

        path = Path(model_path)
        if not path.is_file():
            raise ModelFormatError(f"model file {str(path)!r} is missing; re-export the bundle")
        options = options or RunnerOptions()
        core = ov.Core()
        if "CPU" not in core.available_devices:
            raise BackendUnavailableError(f"{self.name}: OpenVINO finds no CPU device here")
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISION}
        if options.threads is not None:
            config["INFERENCE_NUM_THREADS"] = options.threads
        try:
            self._compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as exc:  # OpenVINO raises its own untyped RuntimeErrors
            raise ModelFormatError(f"cannot load {str(path)!r} with openvino: {_one_line(exc)}") from None
        self._inputs = tuple(_spec(p) for p in self._compiled.inputs)
        self._outputs = tuple(_spec(p) for p in self._compiled.outputs)
        self._output_ports = [(p, s.name) for p, s in zip(self._compiled.outputs, self._outputs)]

    def input_specs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    def output_specs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def inference_precision(self) -> str:
        """The precision the CPU plugin compiled for (``f32`` as set; reported by ``segrt -v``-style checks)."""
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        return hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)

    def _release(self) -> None:
        self._compiled = None  # OpenVINO frees the compiled model with its last reference

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # A fresh request per call (~0.03 ms): a reused one keeps the previous call's outputs where this call's are
        # empty (OpenVINO 2026.4, Mask R-CNN with no detection returned the last image's boxes).
        request = self._compiled.create_infer_request()
        try:
            res = request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        except Exception as exc:  # noqa: BLE001 - OpenVINO's errors are untyped
            raise InferenceError(f"{self.name}: {_one_line(exc)}") from None
        # copied: the outputs are the request's buffers
        return {name: np.array(res[port]) for port, name in self._output_ports}
