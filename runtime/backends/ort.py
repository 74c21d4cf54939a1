"""ONNX Runtime runners: TensorRT, CUDA and CPU execution providers."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import BackendUnavailableError, ModelFormatError
from .base import Device, Runner, RunnerOptions, TensorSpec

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(bool)": np.bool_,
}


def available_providers() -> list[str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _spec(arg: Any) -> TensorSpec:
    if arg.type not in _ORT_TYPES:
        raise ModelFormatError(f"tensor {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
    return TensorSpec(arg.name, shape, np.dtype(_ORT_TYPES[arg.type]))


class OrtRunner(Runner):
    provider: ClassVar[str]

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (pip install segrt, or segrt[gpu])"
        if cls.provider not in available_providers():
            return f"the installed onnxruntime has no {cls.provider} (pip install 'segrt[gpu]' for GPU providers)"
        return None

    def _provider_options(self, options: RunnerOptions) -> dict[str, Any]:
        return {} if self.provider == "CPUExecutionProvider" else {"device_id": options.device_id}

    def __init__(self, model_path: Path, options: RunnerOptions | None = None) -> None:
        import onnxruntime as ort

        options = options or RunnerOptions()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if options.threads is not None:
            so.intra_op_num_threads = options.threads
        providers: list[Any] = [(self.provider, self._provider_options(options))]
        if self.provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")  # nodes the GPU provider cannot take
        path = Path(model_path)
        if not path.is_file():
            raise ModelFormatError(f"model file {str(path)!r} is missing; re-export the bundle")
        try:
            self._session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped pybind errors
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if self.provider != "CPUExecutionProvider" and "provider" in text.lower():
                raise BackendUnavailableError(f"{self.name}: {text}") from None
            raise ModelFormatError(f"cannot load {str(path)!r} with onnxruntime: {text}") from None
        if self.provider not in self._session.get_providers():
            # onnxruntime silently drops a provider whose libraries fail to load (e.g. no CUDA).
            raise BackendUnavailableError(f"{self.name}: onnxruntime could not initialise {self.provider}")
        self._inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self._outputs = tuple(_spec(a) for a in self._session.get_outputs())
        self._output_names = [o.name for o in self._outputs]

    def input_specs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    def output_specs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._session.run(self._output_names, dict(feeds))
        return dict(zip(self._output_names, outs))


class OrtTensorRTRunner(OrtRunner):
    name = "onnxruntime-tensorrt"
    device: ClassVar[Device] = "tensorrt"
    provider = "TensorrtExecutionProvider"


class OrtCudaRunner(OrtRunner):
    name = "onnxruntime-cuda"
    device: ClassVar[Device] = "cuda"
    provider = "CUDAExecutionProvider"


class OrtCpuRunner(OrtRunner):
    name = "onnxruntime-cpu"
    device: ClassVar[Device] = "cpu"
    provider = "CPUExecutionProvider"
