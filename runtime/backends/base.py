"""The backend contract. A new backend is one file defining a :class:`Runner` subclass plus one entry
in :data:`segrt.runtime.backends.BACKENDS` (whose order is the fallback priority).

Lifecycle: a runner holds device resources until :meth:`Runner.close` (or the end of a ``with runner:``
block). ``close`` is idempotent, ``infer`` after it raises :class:`InferenceError`, and ``__del__`` closes
without ever raising. Subclasses free what they hold in ``_release``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal

import numpy as np

from ..errors import InferenceError, InvalidInputError

Device = Literal["cpu", "cuda", "tensorrt", "openvino"]
Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]  # ints are fixed; str/None are dynamic
    dtype: np.dtype

    @property
    def is_dynamic(self) -> bool:
        return any(not isinstance(d, int) or d < 0 for d in self.shape)


@dataclass(frozen=True)
class RunnerOptions:
    threads: int | None = None  # intra-op threads; None lets the backend decide (physical cores)
    device_id: int = 0
    build_engines: bool = False  # TensorRT: build an engine when none fits (minutes); set for device="tensorrt"
    #: ONNX Runtime: bind inputs/outputs through an IOBinding (None: on for the GPU providers, so outputs are
    #: copied to the host once, when post-processing needs them; off on the CPU, where it gains nothing)
    io_binding: bool | None = None
    #: TensorRT (native runner and ONNX Runtime's TensorRT provider): replay a captured CUDA graph while the
    #: input shapes stay the same (camera loops); recaptured when a shape changes
    cuda_graph: bool = False
    #: TensorRT: the ``segrt build`` options (a ``BuildOptions``) ONNX Runtime's TensorRT provider maps, and that the
    #: native runner matches and builds with (None: the provider's FP16 256..1024 defaults; any fitting engine)
    engine: Any = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise InvalidInputError(f"threads must be >= 1 or None; got {self.threads}")
        if self.device_id < 0:
            raise InvalidInputError(f"device_id must be >= 0; got {self.device_id}")


class Runner(ABC):
    """Runs one model file. Public methods check their arguments; subclasses implement ``_infer``."""

    name: ClassVar[str]
    device: ClassVar[Device]
    _closed: bool = False  # set on the instance by close()

    @classmethod
    @abstractmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run here, or None if it can. Cheap: no model is loaded."""

    @classmethod
    def is_available(cls) -> bool:
        return cls.unavailable_reason() is None

    @abstractmethod
    def __init__(self, model_path: Path, options: RunnerOptions) -> None: ...

    @abstractmethod
    def input_specs(self) -> tuple[TensorSpec, ...]: ...

    @abstractmethod
    def output_specs(self) -> tuple[TensorSpec, ...]: ...

    @abstractmethod
    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._closed:
            raise InferenceError(f"{self.name}: this runner was closed; load the model again to run it")
        self._check(feeds)
        return self._infer(feeds)

    def _release(self) -> None:
        """Free what the runner holds (sessions, device memory, streams). Called once, by :meth:`close`."""

    def close(self) -> None:
        """Free the runner's resources; later calls do nothing, later ``infer`` calls raise InferenceError."""
        if self._closed:
            return
        self._closed = True
        self._release()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - a finaliser must never raise (interpreter shutdown, half-built runner)
            pass

    def _check(self, feeds: Mapping[str, np.ndarray]) -> None:
        specs = {s.name: s for s in self.input_specs()}
        if set(feeds) != set(specs):
            raise InvalidInputError(f"{self.name}: expected inputs {sorted(specs)}; got {sorted(feeds)}")
        for name, arr in feeds.items():
            spec = specs[name]
            if not isinstance(arr, np.ndarray):
                raise InvalidInputError(f"{self.name}: input {name!r} must be a numpy array; got {type(arr).__name__}")
            if arr.dtype != spec.dtype:
                raise InvalidInputError(f"{self.name}: input {name!r} must be {spec.dtype}; got {arr.dtype}")
            if arr.ndim != len(spec.shape):
                raise InvalidInputError(
                    f"{self.name}: input {name!r} must have rank {len(spec.shape)} {spec.shape}; got shape {arr.shape}"
                )
            for axis, (want, got) in enumerate(zip(spec.shape, arr.shape)):
                if isinstance(want, int) and want >= 0 and want != got:
                    raise InvalidInputError(
                        f"{self.name}: input {name!r} axis {axis} must be {want}; got shape {arr.shape}"
                    )
