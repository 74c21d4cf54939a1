"""The real TensorRT lean bindings the TensorRT runner tests use, and the named test doubles for what needs a GPU.

``make trt-lean`` (a step of ``make test``) installs the lean wheels of both majors with ``pip --target`` under
``.cache/trt-lean/<version>``, outside the venv, so ``device="auto"`` elsewhere in the suite still sees no
TensorRT. ``SEGRT_TRT_LEAN`` points at another such folder. A test that needs a version skips, saying how to
get it, when it is missing.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

LEAN_ROOT = Path(os.environ.get("SEGRT_TRT_LEAN", Path(__file__).parents[1] / ".cache" / "trt-lean"))
_LOADED: dict[str, dict[str, ModuleType]] = {}


def lean_dirs() -> dict[int, Path]:
    """{major: --target folder} of the newest installed lean bindings of each major."""
    found: dict[int, Path] = {}
    dirs = sorted(LEAN_ROOT.glob("*/tensorrt_lean_bindings"), key=lambda p: [int(x) for x in p.parent.name.split(".")])
    for d in dirs:
        found[int(d.parent.name.split(".")[0])] = d.parent
    return found


def lean_dir(major: int) -> Path:
    found = lean_dirs().get(major)
    if found is None:
        pytest.skip(f"real TensorRT lean {major}.x bindings not found under {LEAN_ROOT}: run `make trt-lean` "
                    "(a step of `make test`) or set SEGRT_TRT_LEAN")
    return found


def _import_once(folder: Path) -> dict[str, ModuleType]:
    """Import ``tensorrt_lean`` from ``folder`` once per process and take it off sys.path and sys.modules again
    (a pybind11 module cannot be imported twice); callers put the modules back for one test at a time."""
    if str(folder) not in _LOADED:
        before = set(sys.modules)
        sys.path.insert(0, str(folder))
        try:
            importlib.import_module("tensorrt_lean")
        finally:
            sys.path.remove(str(folder))
            importlib.invalidate_caches()
        _LOADED[str(folder)] = {n: sys.modules.pop(n) for n in set(sys.modules) - before if n.startswith("tensorrt")}
    return _LOADED[str(folder)]


@pytest.fixture
def lean_trt(monkeypatch) -> ModuleType:
    """The real ``tensorrt_lean`` 11.x module, importable (and found by ``find_spec``) for this test only."""
    for name, module in _import_once(lean_dir(11)).items():
        monkeypatch.setitem(sys.modules, name, module)
    return sys.modules["tensorrt_lean"]


@dataclass(frozen=True)
class TensorDouble:
    """One I/O tensor of :class:`EngineDouble`."""

    name: str
    shape: tuple[int, ...]
    is_input: bool
    profile: tuple[tuple[int, ...], ...] = ()
    shape_tensor: bool = False


class EngineDouble:
    """Test double of ``ICudaEngine`` (a real one needs a GPU): only methods the real class has (checked in
    tests/test_tensorrt_runtime.py), answering with the real module's enums."""

    def __init__(self, trt: ModuleType, tensors: tuple[TensorDouble, ...]) -> None:
        self._trt, self._tensors = trt, {t.name: t for t in tensors}

    @property
    def num_io_tensors(self) -> int:
        return len(self._tensors)

    def get_tensor_name(self, index: int) -> str:
        return list(self._tensors)[index]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._tensors[name].shape

    def get_tensor_dtype(self, name: str):
        return self._trt.float32

    def get_tensor_mode(self, name: str):
        return self._trt.TensorIOMode.INPUT if self._tensors[name].is_input else self._trt.TensorIOMode.OUTPUT

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
        return self._tensors[name].profile

    def is_shape_inference_io(self, name: str) -> bool:
        return self._tensors[name].shape_tensor


class ContextDouble:
    """Test double of ``IExecutionContext``: outputs take the shape of the first input, or ``-1`` (data-dependent)
    where the double says so; ``fail`` names a call that returns False, as TensorRT's do on error. Its
    ``execute_async_v3`` writes 2 * input into the output through :class:`CudaDouble`'s device memory."""

    def __init__(self, outputs: tuple[str, ...], data_dependent: bool = False, fail: str = "",
                 cuda: CudaDouble | None = None) -> None:
        self._outputs, self._dd, self._fail, self._cuda = outputs, data_dependent, fail, cuda
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return self._fail != "set_input_shape"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self._outputs:
            first = next(iter(self.shapes.values()))
            return (-1, *first[1:]) if self._dd else first
        return self.shapes[name]

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return self._fail != "set_tensor_address"

    def execute_async_v3(self, stream: int) -> bool:
        if self._fail == "execute_async_v3":
            return False
        src = next(a for n, a in self.addresses.items() if n not in self._outputs)
        for name in self._outputs:
            self._cuda.device[self.addresses[name]][:] = (self._cuda.device[src].view("f4") * 2).view("u1")
        return True


class CudaDouble:
    """Test double of :class:`segrt.runtime.backends._cuda.CudaPython` (same methods): host buffers are real
    memory, device buffers NumPy arrays behind made-up pointers, a "graph" replays nothing; every call is
    recorded, in order."""

    graphs = True

    def __init__(self, fail: str = "") -> None:
        import numpy as np

        self._np, self._fail, self._next = np, fail, 1 << 40
        self.device: dict[int, object] = {}
        self.host: dict[int, object] = {}
        self.calls: list[str] = []

    def _record(self, what: str) -> None:
        from segrt.runtime.errors import InferenceError

        self.calls.append(what)
        if what == self._fail:
            raise InferenceError(f"CUDA {what} failed (test double)")

    def stream_create(self) -> int:
        self._record("stream_create")
        return 7

    def stream_destroy(self, stream: int) -> None:
        self._record("stream_destroy")

    def synchronize(self, stream: int) -> None:
        self._record("synchronize")

    def malloc(self, nbytes: int) -> int:
        self._record("malloc")
        self._next += 1 << 20
        self.device[self._next] = self._np.zeros(nbytes, self._np.uint8)
        return self._next

    def free(self, ptr: int) -> None:
        self._record("free")
        del self.device[ptr]

    def malloc_host(self, nbytes: int) -> int:
        self._record("malloc_host")
        arr = self._np.zeros(nbytes, self._np.uint8)
        self.host[arr.ctypes.data] = arr
        return arr.ctypes.data

    def free_host(self, ptr: int) -> None:
        self._record("free_host")
        del self.host[ptr]

    def host_view(self, ptr: int, nbytes: int):
        return self.host[ptr][:nbytes]

    def to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._record("to_device")
        self.device[dst][:nbytes] = self.host[src][:nbytes]

    def to_host(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._record("to_host")
        self.host[dst][:nbytes] = self.device[src][:nbytes]

    def capture(self, stream: int, enqueue):
        self._record("capture")
        return f"graph{self.calls.count('capture')}", enqueue()

    def graph_launch(self, graph_exec, stream: int) -> None:
        self._record("graph_launch")

    def graph_destroy(self, graph_exec) -> None:
        self._record("graph_destroy")

    def close(self) -> None:
        self._record("close")
