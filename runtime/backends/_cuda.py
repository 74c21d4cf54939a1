"""The CUDA calls the TensorRT runners make: one stream, device and page-locked host buffers, copies, CUDA graphs.

Two implementations with the same methods: :class:`CudaPython` (cuda-python, ``cuda.bindings.runtime``, or
``cuda.cudart`` before 12.6; what ``segrt[tensorrt]`` installs) and :class:`PyCuda` (pycuda, which Jetson images
often carry; no CUDA graphs). Every call's status is checked: a failure while opening (``open_cuda``) is
:class:`BackendUnavailableError` (fall back to another backend), any later one :class:`InferenceError`.
Pointers and stream handles are plain ints, the form TensorRT's ``set_tensor_address`` and
``execute_async_v3`` take. Written against cuda-python's and pycuda's documented APIs; the cuda-python calls
are made (and fail with CUDA's own error, no GPU) in the tests; NOT run on a GPU in this project.
"""

from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, InferenceError, SegrtError


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def cuda_unavailable_reason() -> str | None:
    """Why no CUDA binding the runners accept is installed, or None. Cheap: ``find_spec`` only."""
    if _has("cuda.bindings") or _has("cuda.cudart") or _has("pycuda"):
        return None
    return "neither cuda-python nor pycuda is installed (pip install cuda-python)"


class CudaPython:
    """cuda-python's runtime API."""

    graphs = True

    def __init__(self, device_id: int) -> None:
        try:
            from cuda.bindings import runtime as rt
        except ImportError:
            from cuda import cudart as rt  # type: ignore[no-redef]
        self._rt = rt
        self.call(rt.cudaSetDevice(device_id), f"cudaSetDevice({device_id})", BackendUnavailableError)

    def call(self, result: Any, what: str, error: type[SegrtError] = InferenceError) -> Any:
        """The value of a cuda-python call ``(err, *values)``; ``error`` naming CUDA's error when err != 0."""
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            name = getattr(err, "name", str(int(err)))
            raise error(f"CUDA {what} failed with {name}; check the driver and device (nvidia-smi), "
                        "then run again with -v for TensorRT's log")
        return rest[0] if len(rest) == 1 else tuple(rest)

    def stream_create(self) -> int:
        return int(self.call(self._rt.cudaStreamCreate(), "cudaStreamCreate", BackendUnavailableError))

    def stream_destroy(self, stream: int) -> None:
        self.call(self._rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def synchronize(self, stream: int) -> None:
        self.call(self._rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def malloc(self, nbytes: int) -> int:
        return int(self.call(self._rt.cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))

    def free(self, ptr: int) -> None:
        self.call(self._rt.cudaFree(ptr), "cudaFree")

    def malloc_host(self, nbytes: int) -> int:
        return int(self.call(self._rt.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})"))

    def free_host(self, ptr: int) -> None:
        self.call(self._rt.cudaFreeHost(ptr), "cudaFreeHost")

    def host_view(self, ptr: int, nbytes: int) -> np.ndarray:
        """The page-locked buffer at ``ptr`` as a uint8 array (no copy)."""
        return np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(ptr))

    def to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call(self._rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync (to device)")

    def to_host(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call(self._rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync (to host)")

    def capture(self, stream: int, enqueue: Callable[[], bool]) -> tuple[Any, bool]:
        """Capture what ``enqueue`` puts on ``stream`` into an instantiated graph; (graph exec, enqueue's status)."""
        rt = self._rt
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self.call(rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        ok = enqueue()
        graph = self.call(rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        try:
            return self.call(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate"), ok
        finally:
            self.call(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def graph_launch(self, graph_exec: Any, stream: int) -> None:
        self.call(self._rt.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def graph_destroy(self, graph_exec: Any) -> None:
        self.call(self._rt.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")

    def close(self) -> None:
        """Nothing to release: TensorRT and cuda-python share the device's primary context."""


class PyCuda:
    """pycuda's driver API on the device's primary context (the one TensorRT's runtime API uses)."""

    graphs = False

    def __init__(self, device_id: int) -> None:
        import pycuda.driver as drv

        self._drv, self._streams, self._host = drv, {}, {}  # handle -> Stream, pointer -> pinned array
        self._device: dict[int, Any] = {}  # pointer -> DeviceAllocation
        self._ctx = self._run(lambda: self._open(device_id), f"opening device {device_id}", BackendUnavailableError)

    def _open(self, device_id: int) -> Any:
        self._drv.init()
        ctx = self._drv.Device(device_id).retain_primary_context()
        ctx.push()
        return ctx

    def _run(self, fn: Callable[[], Any], what: str, error: type[SegrtError] = InferenceError) -> Any:
        try:
            return fn()
        except self._drv.Error as exc:
            raise error(f"CUDA {what} failed (pycuda: {str(exc).splitlines()[0]}); check the driver and device "
                        "(nvidia-smi)") from None

    def stream_create(self) -> int:
        stream = self._run(self._drv.Stream, "stream creation", BackendUnavailableError)
        self._streams[int(stream.handle)] = stream
        return int(stream.handle)

    def stream_destroy(self, stream: int) -> None:
        self._streams.pop(stream, None)

    def synchronize(self, stream: int) -> None:
        self._run(self._streams[stream].synchronize, "stream synchronize")

    def malloc(self, nbytes: int) -> int:
        alloc = self._run(lambda: self._drv.mem_alloc(nbytes), f"mem_alloc({nbytes})")
        self._device[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        self._run(self._device.pop(ptr).free, "free")

    def malloc_host(self, nbytes: int) -> int:
        arr = self._run(lambda: self._drv.pagelocked_empty(nbytes, np.uint8), f"pagelocked_empty({nbytes})")
        self._host[arr.ctypes.data] = arr
        return int(arr.ctypes.data)

    def free_host(self, ptr: int) -> None:
        self._run(self._host.pop(ptr).base.free, "free host")

    def host_view(self, ptr: int, nbytes: int) -> np.ndarray:
        return self._host[ptr][:nbytes]

    def to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._run(lambda: self._drv.memcpy_htod_async(dst, self._host[src][:nbytes], self._streams[stream]),
                  "copy to device")

    def to_host(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._run(lambda: self._drv.memcpy_dtoh_async(self._host[dst][:nbytes], src, self._streams[stream]),
                  "copy to host")

    def close(self) -> None:
        self._run(self._ctx.pop, "context pop")


def open_cuda(device_id: int, graphs: bool) -> CudaPython | PyCuda:
    """cuda-python where installed, else pycuda; BackendUnavailableError when neither can open the device."""
    if _has("cuda.bindings") or _has("cuda.cudart"):
        return CudaPython(device_id)
    if graphs:
        raise BackendUnavailableError("cuda_graph=True needs cuda-python (pip install cuda-python); pycuda has "
                                      "no stream capture here")
    if _has("pycuda"):
        return PyCuda(device_id)
    raise BackendUnavailableError(str(cuda_unavailable_reason()))
