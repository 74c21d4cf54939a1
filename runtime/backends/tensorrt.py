"""Native TensorRT runner (TensorRT 10 name-based API). NOT run on hardware in this project.

The engine comes from the bundle's engine cache (:mod:`segrt.runtime.engine`): one built for this
model file, TensorRT version and GPU. ``device="tensorrt"`` builds one when none fits (minutes, with a
message); ``auto`` only uses an engine that already exists. One CUDA stream; device buffers and
page-locked host buffers are allocated once per shape and reused; inputs are bound with
``set_input_shape``/``set_tensor_address`` and run with ``execute_async_v3``. With
``RunnerOptions(cuda_graph=True)`` the enqueue is captured into a CUDA graph the first time a set of
shapes and buffers is seen and replayed (``cudaGraphLaunch``) while they stay the same.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import BackendUnavailableError, EngineMismatchError
from .base import Device, Runner, RunnerOptions, TensorSpec

log = logging.getLogger("segrt")
_H2D, _D2H = 1, 2  # cudaMemcpyKind


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # type: ignore[no-redef]
    return cudart


def _check(result: tuple[Any, ...], what: str) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendUnavailableError(f"CUDA {what} failed with error {int(err)}")
    return rest[0] if len(rest) == 1 else rest


def compatible_engine(bundle: Path, model_file: str, onnx_sha256: str, tensorrt: str, gpu: str, cc: str) -> Path | None:
    """An engine built from this ONNX file with this TensorRT on this GPU (any precision/profile)."""
    for key_file in sorted((bundle / "engines").glob("*/key.json")):
        k = json.loads(key_file.read_text())
        if (k.get("onnx_sha256"), k.get("tensorrt"), k.get("gpu"), k.get("compute_capability")) == (onnx_sha256, tensorrt, gpu, cc):
            return key_file.parent / "model.plan"
        log.info("engine %s was built for %s / TensorRT %s / %s, not %s / %s / %s (%s)", key_file.parent.name,
                 k.get("gpu"), k.get("tensorrt"), k.get("onnx_sha256", "")[:12], gpu, tensorrt, onnx_sha256[:12], model_file)
    return None


class TensorRTRunner(Runner):
    name: ClassVar[str] = "tensorrt"
    device: ClassVar[Device] = "tensorrt"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("tensorrt") is None:
            return "tensorrt is not installed (pip install 'segrt[tensorrt]')"
        if importlib.util.find_spec("cuda") is None and importlib.util.find_spec("pycuda") is None:
            return "neither cuda-python nor pycuda is installed"
        return None

    def __init__(self, model_path: Path, options: RunnerOptions) -> None:
        import tensorrt as trt

        from ..engine import BuildOptions, gpu_identity, sha256_file
        from ..engine_build import build_engine

        bundle, gpu = model_path.parent, gpu_identity(options.device_id)
        plan = compatible_engine(bundle, model_path.name, sha256_file(model_path), trt.__version__, gpu.name,
                                 gpu.compute_capability)
        if plan is None:
            if not options.build_engines:
                raise BackendUnavailableError(f"no TensorRT engine for {model_path.name} on this GPU/TensorRT yet: "
                                              f"run `segrt build {bundle}` (or load with device='tensorrt')")
            plan = build_engine(bundle, BuildOptions(precision="fp16", min_hw=(256, 256), opt_hw=(512, 512),
                                                     max_hw=(1024, 1024)), model_path.name)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise EngineMismatchError(f"TensorRT {trt.__version__} could not deserialize {plan}; delete it and rebuild")
        self._ctx = self._engine.create_execution_context()
        self._trt, self._cudart = trt, _cudart()
        self._stream = _check(self._cudart.cudaStreamCreate(), "stream creation")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_in = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._inputs = tuple(self._spec(n) for n in names if is_in[n])
        self._outputs = tuple(self._spec(n) for n in names if not is_in[n])
        self._device: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)
        self._host: dict[str, tuple[int, int]] = {}
        self._use_graph = options.cuda_graph
        self._graph: tuple[Any, Any] | None = None  # (key: shapes + buffer addresses, instantiated graph)

    def _spec(self, name: str) -> TensorSpec:
        shape = tuple(int(d) if d >= 0 else None for d in self._engine.get_tensor_shape(name))
        return TensorSpec(name, shape, np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name))))

    def input_specs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    def output_specs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def _buffer(self, pool: dict[str, tuple[int, int]], name: str, nbytes: int, pinned: bool) -> int:
        ptr, size = pool.get(name, (0, 0))
        if size < nbytes:  # grow once per larger shape, then reuse
            if ptr:
                _check(self._cudart.cudaFreeHost(ptr) if pinned else self._cudart.cudaFree(ptr), "free")
            ptr = _check(self._cudart.cudaMallocHost(nbytes) if pinned else self._cudart.cudaMalloc(nbytes), "malloc")
            pool[name] = (int(ptr), nbytes)
        return pool[name][0]

    def _enqueue(self, key: tuple[Any, ...]) -> None:
        """Run the engine on the stream: directly, or by replaying the CUDA graph captured for ``key`` (the
        shapes and device addresses bound; a new key is run once, then captured)."""
        cr, s = self._cudart, self._stream
        if self._use_graph and self._graph is not None and self._graph[0] == key:
            _check(cr.cudaGraphLaunch(self._graph[1], s), "graph launch")
            return
        if not self._ctx.execute_async_v3(s):
            raise BackendUnavailableError("TensorRT execute_async_v3 failed; run with -v for its log")
        if self._use_graph:  # TensorRT wants one plain enqueue per shape before capture
            _check(cr.cudaStreamSynchronize(s), "synchronize")
            mode = cr.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            _check(cr.cudaStreamBeginCapture(s, mode), "graph capture")
            ok = self._ctx.execute_async_v3(s)
            graph = _check(cr.cudaStreamEndCapture(s), "graph capture")
            if not ok:
                raise BackendUnavailableError("TensorRT could not be captured into a CUDA graph; run without cuda_graph")
            if self._graph is not None:
                _check(cr.cudaGraphExecDestroy(self._graph[1]), "graph destroy")
            self._graph = (key, _check(cr.cudaGraphInstantiate(graph, 0), "graph instantiate"))
            _check(cr.cudaGraphDestroy(graph), "graph destroy")

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cr, s = self._cudart, self._stream
        bound: list[tuple[str, tuple[int, ...], int]] = []  # what a captured graph depends on
        for spec in self._inputs:
            arr = np.ascontiguousarray(feeds[spec.name], dtype=spec.dtype)
            self._ctx.set_input_shape(spec.name, arr.shape)
            host = self._buffer(self._host, spec.name, arr.nbytes, True)
            ctypes.memmove(host, arr.ctypes.data, arr.nbytes)
            dev = self._buffer(self._device, spec.name, arr.nbytes, False)
            _check(cr.cudaMemcpyAsync(dev, host, arr.nbytes, _H2D, s), "copy to device")
            self._ctx.set_tensor_address(spec.name, dev)
            bound.append((spec.name, arr.shape, dev))
        shapes = {}
        for spec in self._outputs:
            shape = tuple(self._ctx.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise BackendUnavailableError(f"output {spec.name!r} has a data-dependent shape (e.g. Mask R-CNN's "
                                              "detections), which segrt's TensorRT runner does not support yet; use "
                                              "device='cuda' (ONNX Runtime)")
            shapes[spec.name] = shape
            nbytes = int(np.prod(shape)) * spec.dtype.itemsize
            ptr = self._buffer(self._device, spec.name, nbytes, False)
            self._ctx.set_tensor_address(spec.name, ptr)
            bound.append((spec.name, shape, ptr))
        self._enqueue(tuple(bound))
        out = {}
        for spec in self._outputs:
            arr = np.empty(shapes[spec.name], spec.dtype)
            host = self._buffer(self._host, spec.name, arr.nbytes, True)
            _check(cr.cudaMemcpyAsync(host, self._device[spec.name][0], arr.nbytes, _D2H, s), "copy to host")
            out[spec.name] = arr
        _check(cr.cudaStreamSynchronize(s), "synchronize")
        for name, arr in out.items():
            ctypes.memmove(arr.ctypes.data, self._host[name][0], arr.nbytes)
        return out
