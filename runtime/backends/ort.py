"""ONNX Runtime runners: TensorRT, CUDA and CPU execution providers."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import BackendUnavailableError, InvalidInputError, ModelFormatError
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


def _model_file(model_path: Path) -> Path:
    path = Path(model_path)
    if not path.is_file():
        raise ModelFormatError(f"model file {str(path)!r} is missing; re-export the bundle")
    return path


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

        path = _model_file(model_path)  # before anything opens it
        options = options or RunnerOptions()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if options.threads is not None:
            so.intra_op_num_threads = options.threads
        providers: list[Any] = [(self.provider, self._provider_options(path, options))]
        if self.provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")  # nodes the GPU provider cannot take
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

    def _release(self) -> None:
        self._session = None  # ONNX Runtime frees the session (and its device memory) with the last reference

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
    """ONNX Runtime's TensorRT provider with ``segrt build``'s options (:mod:`..ort_trt`): the session runs the
    graph that carries the precision (the bundle's own, or its cached FP16 variant) as a strongly typed
    network on TensorRT 10 and 11, with explicit profiles and the engine/timing caches in the bundle.
    Default options: the bundle's own precision, sides 256..1024. NOT run on hardware here."""

    name = "onnxruntime-tensorrt"
    device: ClassVar[Device] = "tensorrt"
    provider = "TensorrtExecutionProvider"

    def __init__(self, model_path: Path, options: RunnerOptions | None = None) -> None:
        options = options or RunnerOptions()
        graph, self._trt_options = self._plan(_model_file(model_path), options)
        super().__init__(graph, options)

    @staticmethod
    def _graph(path: Path, precision: str) -> tuple[Path, str]:
        """The graph for ``precision`` and the precision it carries (a bare .onnx: taken as asked)."""
        from ..manifest import MANIFEST_NAME, read_manifest
        from ..variants import graph_for

        if not (path.parent / MANIFEST_NAME).is_file():
            return path, precision
        try:
            return graph_for(path.parent, path.name, precision), precision
        except InvalidInputError as exc:  # no graph carries it: the provider options decide (flag or error)
            log.info("onnxruntime-tensorrt: %s", exc)
            return path, read_manifest(path.parent).precision

    @classmethod
    def _plan(cls, path: Path, options: RunnerOptions) -> tuple[Path, dict[str, Any]]:
        """The graph the session runs and the provider options; no provider is loaded."""
        from ..engine import default_build_options, derive_profiles
        from ..engine_build import concrete, onnx_inputs
        from ..onnx_files import model_digest
        from ..ort_trt import ort_tensorrt_options, tensorrt_major_for_ort

        opts = options.engine or default_build_options(path.parent)
        if opts.precision == "best":
            opts = concrete(path.parent, path.name, opts)
        graph, carried = cls._graph(path, opts.precision)
        inputs = onnx_inputs(path)
        try:
            derive_profiles(inputs, opts)
        except InvalidInputError as exc:  # a dynamic axis segrt has no rule for: the provider's own profiles
            log.info("onnxruntime-tensorrt: no explicit profiles for %s (%s)", path.name, exc)
            inputs = []
        mapped = ort_tensorrt_options(path.parent, inputs, opts, graph_precision=carried,
                                      graph_digest=model_digest(graph), tensorrt_major=tensorrt_major_for_ort(),
                                      cuda_graph=options.cuda_graph)
        Path(mapped["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        return graph, {"device_id": str(options.device_id), **mapped}

    def _provider_options(self, model_path: Path, options: RunnerOptions) -> dict[str, Any]:
        return self._trt_options


class OrtCudaRunner(OrtRunner):
    name = "onnxruntime-cuda"
    device: ClassVar[Device] = "cuda"
    provider = "CUDAExecutionProvider"


class OrtCpuRunner(OrtRunner):
    name = "onnxruntime-cpu"
    device: ClassVar[Device] = "cpu"
    provider = "CPUExecutionProvider"
