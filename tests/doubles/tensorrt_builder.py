"""A TEST DOUBLE of TensorRT's builder Python surface, 10.x and 11.x, for machines where TensorRT's builder
cannot be installed. It implements only what segrt's build calls, with the members each version really has,
taken from the Python bindings of TensorRT OSS (``python/src/infer/pyCore.cpp``, ``python/src/parsers/
pyOnnx.cpp``) at v10.16 and v11.1: on 11 ``BuilderFlag.FP16``/``INT8``/``BF16``/``FP8``/``OBEY_``/
``PREFER_PRECISION_CONSTRAINTS``, ``IBuilderConfig.int8_calibrator``/``set_quantization_flag`` and
``Builder.platform_has_fast_fp16`` do not exist, so touching them fails with AttributeError as the real
bindings do; objects take no attributes they do not define (``__slots__``, like pybind11 classes).
Every call is appended to ``module.calls``. Building returns a fake plan naming the parsed graph's sha256.
It proves which calls segrt makes on each version, never that an engine runs.
"""

from __future__ import annotations

import enum
import hashlib
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

_FLAGS_10 = ("FP16", "BF16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "EDITABLE_TIMING_CACHE",
             "TF32", "SPARSE_WEIGHTS", "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
             "DIRECT_IO", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "FP8", "ERROR_ON_TIMING_CACHE_MISS",
             "DISABLE_COMPILATION_CACHE", "WEIGHTLESS", "STRIP_PLAN", "REFIT_IDENTICAL", "WEIGHT_STREAMING", "INT4",
             "REFIT_INDIVIDUAL", "STRICT_NANS", "MONITOR_MEMORY", "FP4", "DISTRIBUTIVE_INDEPENDENCE")
_FLAGS_11 = ("DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "EDITABLE_TIMING_CACHE", "TF32",
             "SPARSE_WEIGHTS", "SAFETY_SCOPE", "DIRECT_IO", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME",
             "ERROR_ON_TIMING_CACHE_MISS", "DISABLE_COMPILATION_CACHE", "STRIP_PLAN", "REFIT_IDENTICAL",
             "WEIGHT_STREAMING", "REFIT_INDIVIDUAL", "STRICT_NANS", "MONITOR_MEMORY", "DISTRIBUTIVE_INDEPENDENCE")
_NETWORK_10 = ("EXPLICIT_BATCH", "STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS")
_NETWORK_11 = ("STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS")
REMOVED_IN_11 = ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                 "PREFER_PRECISION_CONSTRAINTS", "WEIGHTLESS")


def make_tensorrt(version: str, *, dla_cores: int = 0) -> types.ModuleType:
    """A module object standing in for ``tensorrt`` ``version`` (10.x or 11.x)."""
    major = int(version.split(".")[0])
    if major not in (10, 11):
        raise ValueError(f"the double implements TensorRT 10 and 11, not {version}")
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls = []  # type: ignore[attr-defined]
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", _FLAGS_10 if major == 10 else _FLAGS_11, start=0)
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag",
                                                     _NETWORK_10 if major == 10 else _NETWORK_11, start=0)
    pools = ("WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM", "TACTIC_DRAM", "TACTIC_SHARED_MEMORY")
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", pools, start=0)
    trt.DeviceType = enum.IntEnum("DeviceType", ("GPU", "DLA"), start=0)
    strongly = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)

    class Logger:
        __slots__ = ("min_severity",)
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, min_severity: int = 2) -> None:
            self.min_severity = min_severity

    class INetworkDefinition:
        __slots__ = ("flags", "graph")

        def __init__(self, flags: int) -> None:
            self.flags, self.graph = flags, None

        @property
        def is_strongly_typed(self) -> bool:  # 11.x: every network is
            return major >= 11 or bool(self.flags & strongly)

    class IOptimizationProfile:
        __slots__ = ("shapes",)

        def __init__(self) -> None:
            self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002
            calls.append(("profile.set_shape", input, tuple(min), tuple(opt), tuple(max)))
            self.shapes[input] = (tuple(min), tuple(opt), tuple(max))

    class ITimingCache:
        __slots__ = ("data",)

        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> memoryview:
            return memoryview(self.data + b"|timed")

    class _Config:
        __slots__ = ("_flags", "pools", "profiles", "timing", "default_device_type", "DLA_core")

        def __init__(self) -> None:
            self._flags: set[Any] = set()
            self.pools: dict[Any, int] = {}
            self.profiles: list[IOptimizationProfile] = []
            self.timing = None
            self.default_device_type = trt.DeviceType.GPU
            self.DLA_core = -1

        def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
            calls.append(("config.set_memory_pool_limit", pool.name, pool_size))
            self.pools[pool] = pool_size

        def get_memory_pool_limit(self, pool: Any) -> int:
            return self.pools.get(pool, 0)

        def set_flag(self, flag: Any) -> None:
            if not isinstance(flag, trt.BuilderFlag):
                raise TypeError(f"set_flag(): incompatible argument {flag!r}")
            calls.append(("config.set_flag", flag.name))
            self._flags.add(flag)

        def get_flag(self, flag: Any) -> bool:
            return flag in self._flags

        def clear_flag(self, flag: Any) -> None:
            self._flags.discard(flag)

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            calls.append(("config.add_optimization_profile", len(profile.shapes)))
            self.profiles.append(profile)
            return len(self.profiles) - 1

        @property
        def num_optimization_profiles(self) -> int:
            return len(self.profiles)

        def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
            calls.append(("config.create_timing_cache", bytes(serialized_timing_cache)))
            return ITimingCache(bytes(serialized_timing_cache))

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            calls.append(("config.set_timing_cache", ignore_mismatch))
            self.timing = cache
            return True

    if major == 10:  # the weakly typed surface 11.x removed (present so that 10.x code paths are honest)
        class IBuilderConfig(_Config):
            __slots__ = ("int8_calibrator",)

            def set_quantization_flag(self, flag: Any) -> None:
                calls.append(("config.set_quantization_flag", flag))
    else:
        class IBuilderConfig(_Config):  # type: ignore[no-redef]
            __slots__ = ()

    class Builder:
        __slots__ = ("logger", "num_DLA_cores")

        def __init__(self, logger: Logger) -> None:
            calls.append(("Builder",))
            self.logger, self.num_DLA_cores = logger, dla_cores

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            calls.append(("builder.create_network", flags))
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> memoryview | None:
            calls.append(("builder.build_serialized_network", network.is_strongly_typed))
            if network.graph is None or not config.profiles:
                return None
            digest = hashlib.sha256(Path(network.graph).read_bytes()).hexdigest()
            flags = ",".join(sorted(f.name for f in config._flags))
            return memoryview(f"double-plan|trt {version}|{digest}|{flags}".encode())

    if major == 10:
        Builder.platform_has_fast_fp16 = property(lambda self: True)  # type: ignore[attr-defined]

    class OnnxParser:
        __slots__ = ("network", "logger", "_errors")

        def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
            self.network, self.logger, self._errors = network, logger, []

        def parse_from_file(self, model: str) -> bool:
            calls.append(("parser.parse_from_file", model))
            if not Path(model).is_file():
                self._errors.append(f"cannot open {model}")
                return False
            self.network.graph = model
            return True

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, index: int) -> str:
            return self._errors[index]

    if major == 10:
        OnnxParser.supports_model = lambda self, model, path=None: (True, [])  # type: ignore[attr-defined]

    for name, obj in (("Logger", Logger), ("Builder", Builder), ("OnnxParser", OnnxParser),
                      ("IBuilderConfig", IBuilderConfig), ("INetworkDefinition", INetworkDefinition),
                      ("IOptimizationProfile", IOptimizationProfile), ("ITimingCache", ITimingCache)):
        setattr(trt, name, obj)
    return trt


@contextmanager
def installed(version: str, **kwargs: Any) -> Iterator[types.ModuleType]:
    """``sys.modules['tensorrt']`` replaced by the double for the ``with`` block, restored after."""
    saved = sys.modules.get("tensorrt")
    trt = make_tensorrt(version, **kwargs)
    sys.modules["tensorrt"] = trt
    try:
        yield trt
    finally:
        if saved is None:
            sys.modules.pop("tensorrt", None)
        else:
            sys.modules["tensorrt"] = saved
