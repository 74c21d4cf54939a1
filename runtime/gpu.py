"""The CUDA device a TensorRT engine is built for or run on: name, compute capability, free memory, read
through cuda-python (or pycuda, which Jetson images often carry). Needs a GPU; not run on one here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import BackendUnavailableError


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: str
    free_bytes: int = field(compare=False, default=0)


def gpu_identity(device_id: int = 0) -> GpuIdentity:
    """Name, compute capability and free memory of a CUDA device, through cuda-python (or pycuda)."""
    try:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 layout
        except ImportError:
            from cuda import cudart  # type: ignore[no-redef]
    except ImportError:
        return _pycuda_identity(device_id)
    err, prop = cudart.cudaGetDeviceProperties(device_id)
    if int(err) != 0:
        raise BackendUnavailableError(f"no CUDA device {device_id} (cudaGetDeviceProperties error {int(err)})")
    (err,) = _as_tuple(cudart.cudaSetDevice(device_id))  # cudaMemGetInfo reads the current device
    if int(err) == 0:
        err, free, _total = cudart.cudaMemGetInfo()
    if int(err) != 0:
        raise BackendUnavailableError(f"CUDA device {device_id}: cudaMemGetInfo failed with error {int(err)}")
    name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
    return GpuIdentity(name, f"{prop.major}.{prop.minor}", int(free))


def _as_tuple(result: Any) -> tuple[Any, ...]:
    return result if isinstance(result, tuple) else (result,)


def _pycuda_identity(device_id: int) -> GpuIdentity:
    """The same through pycuda (Jetson images often carry it), on the device's primary context, which it
    retains and releases again (a context of its own would stay allocated on the device)."""
    try:
        import pycuda.driver as drv
    except ImportError:
        raise BackendUnavailableError("neither cuda-python nor pycuda is installed: pip install 'segrt[tensorrt]'") from None
    try:
        drv.init()
        dev = drv.Device(device_id)
        ctx = dev.retain_primary_context()
        ctx.push()
        try:
            free, _ = drv.mem_get_info()
        finally:
            ctx.pop()
            ctx.detach()
        major, minor = dev.compute_capability()
        return GpuIdentity(dev.name(), f"{major}.{minor}", int(free))
    except drv.Error as exc:
        raise BackendUnavailableError(f"CUDA device {device_id} (pycuda): {str(exc).splitlines()[0]}") from None
