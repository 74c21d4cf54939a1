"""The TensorRT runner both TensorRT backends share: native ``tensorrt`` and the lean runtime ``tensorrt_lean``.

Written against TensorRT's documented name-based Python API, the part 10.x and 11.x share: ``Runtime``
(``engine_host_code_allowed``, ``deserialize_cuda_engine``), ``ICudaEngine`` (``num_io_tensors``,
``get_tensor_name/mode/shape/dtype``, ``get_tensor_profile_shape``, ``is_shape_inference_io``,
``create_execution_context``) and ``IExecutionContext`` (``set_input_shape``, ``get_tensor_shape``,
``set_tensor_address``, ``execute_async_v3``). Never a binding-index call (:data:`BINDING_INDEX_API`), never
anything TensorRT 11 removed (:data:`REMOVED_IN_11`). Every call this module makes on those objects is checked,
by reading this file's syntax tree, against the real classes of the lean bindings 10.16 and 11.4
(tests/test_tensorrt_runtime.py). NOT run on a GPU in this project.

Start-up, in order: the model file exists and is ONNX (:class:`ModelFormatError`); the bundle's engine cache
has a plan for this model, runtime version and GPU (``engine.resolve_engine``; none: BackendUnavailableError
saying which ``segrt build`` to run); the plan deserializes (:class:`EngineMismatchError`); the engine is one
segrt can run: no shape-tensor inputs, no data-dependent output shapes such as Mask R-CNN's detections
(BackendUnavailableError, so ``device="auto"`` falls back). After start-up every failing TensorRT or CUDA call
raises :class:`InferenceError`. One CUDA stream; device and page-locked buffers grow once per larger shape and
are reused; with ``RunnerOptions(cuda_graph=True)`` the enqueue is captured into a CUDA graph per set of shapes
and addresses and replayed while they stay the same. ``close()`` frees graph, buffers and stream.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from ..errors import (BackendUnavailableError, EngineMismatchError, InferenceError, InvalidInputError,
                      SegrtError)
from ._cuda import cuda_unavailable_reason, open_cuda
from ._model_file import check_model_file
from .base import Device, Runner, RunnerOptions, TensorSpec

#: Runtime-side names TensorRT 11 removed (migration guide; pyCore.cpp v10.16 vs v11.1), and the binding-index API
#: TensorRT 10 already removed. This module uses none of them; tests/test_tensorrt_runtime.py checks both, and
#: checks these lists against the real 10.16 and 11.4 lean bindings.
REMOVED_IN_11 = frozenset({
    "device_memory_size", "create_execution_context_without_device_memory", "get_device_memory_size_for_profile",
    "has_implicit_batch_dimension", "all_shape_inputs_specified", "weight_streaming_budget",
    "minimum_weight_streaming_budget",
})
BUILDER_REMOVED_IN_11 = frozenset({"platform_has_fast_fp16"})  # a Builder attribute: not in the lean bindings
BINDING_INDEX_API = frozenset({
    "num_bindings", "get_binding_index", "get_binding_name", "get_binding_shape", "get_binding_dtype",
    "binding_is_input", "set_binding_shape", "execute_async_v2", "execute_async", "execute",
})


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def import_first(names: tuple[str, ...], install: str) -> ModuleType:
    """The first of ``names`` that imports (``tensorrt_lean`` is the wrapper ``pip install tensorrt-lean-cu13``
    gives; ``tensorrt_lean_bindings`` what its bindings wheel alone gives)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise BackendUnavailableError(f"cannot import {' or '.join(names)}; reinstall it ({install})")


def tensor_specs(engine: Any, trt: ModuleType) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Input and output specs from the engine's I/O tensors, by name (``-1`` dims are dynamic: None)."""
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(int(d) if d >= 0 else None for d in engine.get_tensor_shape(name))
        try:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        except TypeError:  # bfloat16, fp8, fp4: no NumPy type
            raise BackendUnavailableError(f"tensor {name!r} has type {engine.get_tensor_dtype(name)}, which has no "
                                          "NumPy type; export the model with float32/float16 I/O") from None
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        (inputs if is_input else outputs).append(TensorSpec(name, shape, dtype))
    return tuple(inputs), tuple(outputs)


def input_profiles(engine: Any, inputs: tuple[TensorSpec, ...]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) of profile 0 for every input: the engine's own shape for a fixed one."""
    out = {}
    for spec in inputs:
        if engine.is_shape_inference_io(spec.name):
            raise BackendUnavailableError(f"input {spec.name!r} is a shape tensor, which segrt's TensorRT runner does "
                                          "not feed; use device='cuda' (ONNX Runtime) or re-export without it")
        if spec.is_dynamic:
            out[spec.name] = tuple(tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(spec.name, 0))
        else:
            out[spec.name] = (tuple(int(d) for d in spec.shape),) * 3
    return out


def refuse_data_dependent(ctx: Any, profiles: Mapping[str, tuple[tuple[int, ...], ...]],
                          outputs: tuple[TensorSpec, ...]) -> None:
    """BackendUnavailableError when an output's shape stays unknown (-1) once every input has its profile's opt
    shape: a data-dependent shape, which needs TensorRT's output allocator (not supported here)."""
    for name, (_, opt, _) in profiles.items():
        if not ctx.set_input_shape(name, opt):
            raise BackendUnavailableError(f"TensorRT refused input {name!r} at its own profile shape {opt}; rebuild "
                                          "the engine with segrt build")
    for spec in outputs:
        if any(d < 0 for d in ctx.get_tensor_shape(spec.name)):
            raise BackendUnavailableError(f"output {spec.name!r} has a data-dependent shape (e.g. Mask R-CNN's "
                                          "detections), which segrt's TensorRT runner does not support; use "
                                          "device='cuda' (ONNX Runtime)")


def build_hint(bundle: Path, lean: bool) -> str:
    return f"segrt build {bundle}" + (" --version-compatible --exclude-lean-runtime" if lean else "")


class TrtRunner(Runner):
    """One TensorRT engine on one CUDA stream; subclasses say which bindings to import and whether they are lean."""

    device: ClassVar[Device] = "tensorrt"
    modules: ClassVar[tuple[str, ...]]  # import names, first that imports wins
    install: ClassVar[str]  # what to pip install
    lean: ClassVar[bool]
    _cuda: Any = None  # CudaPython | PyCuda while open
    _stream: Any = None  # int handle while open
    _graph: tuple[tuple[Any, ...], Any] | None = None  # (shapes + addresses bound, instantiated graph)
    _ctx = _engine = _runtime = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not any(_has(m) for m in cls.modules):
            return f"{cls.modules[0]} is not installed ({cls.install})"
        return cuda_unavailable_reason()

    def __init__(self, model_path: Path, options: RunnerOptions | None = None) -> None:
        self._device: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)
        self._host: dict[str, tuple[int, int]] = {}  # page-locked staging buffers
        options = options or RunnerOptions()
        self._use_graph = options.cuda_graph
        model_path = Path(model_path)
        check_model_file(model_path)
        self._trt = import_first(self.modules, self.install)
        plan, key = self._resolve(model_path, options)
        try:  # the device first: TensorRT deserializes onto the current one
            self._cuda = open_cuda(options.device_id, graphs=options.cuda_graph)
            self._open(plan, key.version_compatible, build_hint(model_path.parent, self.lean))
            self._stream = self._cuda.stream_create()
        except BaseException:
            with contextlib.suppress(SegrtError):  # the start-up error is the one to report
                self.close()
            raise

    def _resolve(self, model_path: Path, options: RunnerOptions) -> tuple[Path, Any]:
        from ..engine import BuildOptions, gpu_identity, resolve_engine

        build_options = options.engine if isinstance(options.engine, BuildOptions) else None
        return resolve_engine(model_path, runtime_version=str(self._trt.__version__),
                              gpu=gpu_identity(options.device_id), lean=self.lean,
                              build=options.build_engines and not self.lean, build_options=build_options)

    def _open(self, plan: Path, version_compatible: bool, hint: str) -> None:
        trt = self._trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        if version_compatible:  # its lean runtime is host code TensorRT runs only when told to trust the plan
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise EngineMismatchError(f"TensorRT {trt.__version__} could not deserialize {plan} (its log says why); "
                                      f"delete {plan.parent} and run `{hint}`")
        ctx = engine.create_execution_context()
        if ctx is None:
            raise BackendUnavailableError(f"TensorRT could not create an execution context for {plan} (out of device "
                                          "memory?); free the GPU or use a smaller profile")
        self._runtime, self._engine, self._ctx = runtime, engine, ctx
        self._inputs, self._outputs = tensor_specs(engine, trt)
        self._profiles = input_profiles(engine, self._inputs)
        refuse_data_dependent(ctx, self._profiles, self._outputs)

    def input_specs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    def output_specs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def _buffer(self, name: str, nbytes: int, pinned: bool) -> int:
        """The device (or page-locked host) buffer for ``name``, grown when ``nbytes`` exceeds it."""
        cuda, pool = self._cuda, self._host if pinned else self._device
        ptr, size = pool.get(name, (0, 0))
        if size < max(nbytes, 1):
            if ptr:
                del pool[name]
                cuda.free_host(ptr) if pinned else cuda.free(ptr)
            nbytes = max(nbytes, 1)
            pool[name] = ((cuda.malloc_host if pinned else cuda.malloc)(nbytes), nbytes)
        return pool[name][0]

    def _check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        lo, _, hi = self._profiles[name]
        if any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            raise InvalidInputError(f"{self.name}: input {name!r} shape {shape} is outside the engine's profile "
                                    f"{lo}..{hi}; resize the input or rebuild with segrt build --min/--opt/--max")

    def _bind_input(self, spec: TensorSpec, value: np.ndarray) -> tuple[str, tuple[int, ...], int]:
        cuda, arr = self._cuda, np.ascontiguousarray(value, dtype=spec.dtype)
        self._check_shape(spec.name, arr.shape)
        if not self._ctx.set_input_shape(spec.name, arr.shape):
            raise InferenceError(f"TensorRT set_input_shape({spec.name!r}, {arr.shape}) failed; run with -v for "
                                 "its log")
        host, dev = self._buffer(spec.name, arr.nbytes, True), self._buffer(spec.name, arr.nbytes, False)
        np.copyto(cuda.host_view(host, arr.nbytes), arr.reshape(-1).view(np.uint8))
        cuda.to_device(dev, host, arr.nbytes, self._stream)
        self._set_address(spec.name, dev)
        return spec.name, arr.shape, dev

    def _bind_output(self, spec: TensorSpec) -> tuple[str, tuple[int, ...], int]:
        shape = tuple(int(d) for d in self._ctx.get_tensor_shape(spec.name))
        if any(d < 0 for d in shape):
            raise InferenceError(f"TensorRT left output {spec.name!r} without a shape ({shape}); the inputs' shapes do "
                                 "not fit the engine: rebuild it with segrt build")
        dev = self._buffer(spec.name, int(np.prod(shape)) * spec.dtype.itemsize, False)
        self._set_address(spec.name, dev)
        return spec.name, shape, dev

    def _set_address(self, name: str, ptr: int) -> None:
        if not self._ctx.set_tensor_address(name, ptr):
            raise InferenceError(f"TensorRT set_tensor_address({name!r}) failed; run with -v for its log")

    def _enqueue(self, key: tuple[Any, ...]) -> None:
        """Run the engine on the stream: directly, or by replaying the CUDA graph captured for ``key`` (shapes and
        device addresses bound; a new key is run once plainly, as TensorRT asks, then captured)."""
        cuda, stream = self._cuda, self._stream
        if self._use_graph and self._graph is not None and self._graph[0] == key:
            cuda.graph_launch(self._graph[1], stream)
            return
        if not self._ctx.execute_async_v3(stream):
            raise InferenceError("TensorRT execute_async_v3 failed; run with -v for its log")
        if self._use_graph:
            cuda.synchronize(stream)
            self._drop_graph()
            graph, ok = cuda.capture(stream, lambda: self._ctx.execute_async_v3(stream))
            if not ok:  # never keep a graph whose capture failed: replaying it would return stale outputs
                cuda.graph_destroy(graph)
                raise InferenceError("TensorRT could not be captured into a CUDA graph; run without cuda_graph")
            self._graph = (key, graph)

    def _fetch(self, bound: list[tuple[str, tuple[int, ...], int]]) -> dict[str, np.ndarray]:
        cuda, stream, sizes = self._cuda, self._stream, {}
        for spec in self._outputs:
            _, shape, dev = next(b for b in bound if b[0] == spec.name)
            nbytes = int(np.prod(shape)) * spec.dtype.itemsize
            cuda.to_host(self._buffer(spec.name, nbytes, True), dev, nbytes, stream)
            sizes[spec.name] = (shape, nbytes)
        cuda.synchronize(stream)
        return {spec.name: cuda.host_view(self._host[spec.name][0], sizes[spec.name][1])
                .view(spec.dtype).reshape(sizes[spec.name][0]).copy() for spec in self._outputs}

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        bound = [self._bind_input(spec, feeds[spec.name]) for spec in self._inputs]
        bound += [self._bind_output(spec) for spec in self._outputs]
        self._enqueue(tuple(bound))
        return self._fetch(bound)

    def _drop_graph(self) -> None:
        graph, self._graph = self._graph, None
        if graph is not None:
            self._cuda.graph_destroy(graph[1])

    def _release(self) -> None:
        """Free graph, device and host buffers and stream (each attempted even when one fails), drop the context,
        engine and runtime in that order, then let go of the device. InferenceError naming what failed."""
        cuda, stream, errors = self._cuda, self._stream, []
        steps: list[Any] = []
        if cuda is not None:
            steps += [lambda: stream is not None and cuda.synchronize(stream), self._drop_graph]
            steps += [lambda p=p: cuda.free(p) for p, _ in self._device.values()]
            steps += [lambda p=p: cuda.free_host(p) for p, _ in self._host.values()]
            steps += [lambda: stream is not None and cuda.stream_destroy(stream)]
        steps += [self._drop_tensorrt] + ([cuda.close] if cuda is not None else [])
        for step in steps:
            try:
                step()
            except SegrtError as exc:
                errors.append(str(exc))
        self._device.clear()
        self._host.clear()
        self._cuda = self._stream = self._graph = None
        if errors:
            raise InferenceError(f"{self.name}: closing failed: {'; '.join(errors)}")

    def _drop_tensorrt(self) -> None:
        self._ctx = None  # child first: context, engine, runtime
        self._engine = None
        self._runtime = None
