"""ONNX Runtime runners: TensorRT, CUDA and CPU execution providers."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import BackendUnavailableError, InvalidInputError, ModelFormatError, SegrtError
from .base import Device, Runner, RunnerOptions, TensorSpec

log = logging.getLogger("segrt")

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

    def _provider_options(self, model_path: Path, options: RunnerOptions) -> dict[str, Any]:
        return {} if self.provider == "CPUExecutionProvider" else {"device_id": options.device_id}

    def __init__(self, model_path: Path, options: RunnerOptions | None = None) -> None:
        import onnxruntime as ort

        options = options or RunnerOptions()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if options.threads is not None:
            so.intra_op_num_threads = options.threads
        providers: list[Any] = [(self.provider, self._provider_options(Path(model_path), options))]
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
        bind = options.io_binding if options.io_binding is not None else self.provider != "CPUExecutionProvider"
        #: where outputs are bound: the provider's device ("cuda" for the GPU providers), copied to the host
        #: in one step after the run, when post-processing needs them
        self._bind_device = ("cpu" if self.provider == "CPUExecutionProvider" else "cuda") if bind else None
        self._device_id = options.device_id

    def input_specs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    def output_specs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._bind_device is None:
            outs = self._session.run(self._output_names, dict(feeds))
            return dict(zip(self._output_names, outs))
        binding = self._session.io_binding()
        for name, arr in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(arr))  # one host-to-device copy per input
        for name in self._output_names:  # allocated by ONNX Runtime on the device: shapes may be data-dependent
            binding.bind_output(name, self._bind_device, self._device_id)
        self._session.run_with_iobinding(binding)
        outs = binding.copy_outputs_to_cpu()
        return dict(zip(self._output_names, outs))


class OrtTensorRTRunner(OrtRunner):
    """ONNX Runtime's TensorRT provider with ``segrt build``'s options (:func:`..engine.ort_tensorrt_options`):
    engine and timing caches in the bundle, explicit profiles, FP16/INT8. NOT run on hardware here."""

    name = "onnxruntime-tensorrt"
    device: ClassVar[Device] = "tensorrt"
    provider = "TensorrtExecutionProvider"

    def _provider_options(self, model_path: Path, options: RunnerOptions) -> dict[str, Any]:
        from ..engine import BuildOptions, ort_tensorrt_options
        from ..engine_build import onnx_inputs
        from ..manifest import read_manifest

        opts = options.engine
        if opts is None:
            try:
                int8 = read_manifest(model_path.parent).precision == "int8"
            except SegrtError:  # a model file outside a bundle
                int8 = False
            opts = BuildOptions(precision="int8" if int8 else "fp16", min_hw=(256, 256), opt_hw=(512, 512),
                                max_hw=(1024, 1024))
        (model_path.parent / "engines" / "onnxruntime-trt").mkdir(parents=True, exist_ok=True)
        inputs = onnx_inputs(model_path)
        try:
            mapped = ort_tensorrt_options(model_path.parent, inputs, opts, cuda_graph=options.cuda_graph)
        except InvalidInputError as exc:  # a dynamic axis segrt has no rule for: the provider's own profiles
            log.info("onnxruntime-tensorrt: no explicit profiles for %s (%s)", model_path.name, exc)
            mapped = ort_tensorrt_options(model_path.parent, [], opts, cuda_graph=options.cuda_graph)
        return {"device_id": str(options.device_id), **mapped}


class OrtCudaRunner(OrtRunner):
    name = "onnxruntime-cuda"
    device: ClassVar[Device] = "cuda"
    provider = "CUDAExecutionProvider"


class OrtCpuRunner(OrtRunner):
    name = "onnxruntime-cpu"
    device: ClassVar[Device] = "cpu"
    provider = "CPUExecutionProvider"
