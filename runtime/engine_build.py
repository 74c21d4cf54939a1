"""``segrt build``: ONNX model of a bundle -> TensorRT engine in the bundle's engine cache.

Written against TensorRT 10's Python API (OnnxParser, optimisation profiles with ``set_shape``,
``set_memory_pool_limit``, timing cache, ``build_serialized_network``). NOT run on hardware in this
project (TensorRT cannot be installed on its machines); the parts that need no GPU are in
:mod:`segrt.runtime.engine` and tested.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .engine import (
    BuildOptions,
    EngineKey,
    derive_profiles,
    gpu_identity,
    sha256_file,
    store_engine,
    workspace_bytes,
)
from .errors import BackendUnavailableError, ModelFormatError
from .manifest import read_manifest

log = logging.getLogger("segrt")


def onnx_inputs(path: Path) -> list[tuple[str, tuple[int | str | None, ...]]]:
    """Input names and shapes (ints fixed, str/None dynamic) read with ONNX Runtime, no TensorRT."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [(i.name, tuple(i.shape)) for i in sess.get_inputs()]


def tensorrt_version() -> str:
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailableError("TensorRT is not installed: pip install 'segrt[tensorrt]' on an NVIDIA machine") from None
    return str(trt.__version__)


def engine_key(bundle: Path, opts: BuildOptions, model_file: str | None = None) -> EngineKey:
    m = read_manifest(bundle)
    path = Path(bundle) / (model_file or m.model_file)
    gpu = gpu_identity()
    return EngineKey(onnx_sha256=sha256_file(path), precision=opts.precision,
                     profiles=tuple(derive_profiles(onnx_inputs(path), opts)), tensorrt=tensorrt_version(),
                     gpu=gpu.name, compute_capability=gpu.compute_capability, dla_core=opts.dla_core,
                     version_compatible=opts.version_compatible)


def _config(trt: Any, builder: Any, opts: BuildOptions, free: int, strongly_typed: bool) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes(opts, free))
    if not strongly_typed:  # a QDQ (int8) network carries its own types
        if opts.precision in ("fp16", "best"):
            config.set_flag(trt.BuilderFlag.FP16)
        if opts.precision in ("int8", "best"):
            config.set_flag(trt.BuilderFlag.INT8)
    if opts.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = opts.dla_core
        if opts.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if opts.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    return config


def build_engine(bundle: Path, opts: BuildOptions, model_file: str | None = None) -> Path:
    """Build (minutes) and store an engine for ``opts``; returns the plan's path."""
    import tensorrt as trt

    key = engine_key(bundle, opts, model_file)
    path = Path(bundle) / (model_file or read_manifest(bundle).model_file)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    is_qdq = read_manifest(bundle).precision == "int8"
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if is_qdq else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelFormatError(f"TensorRT cannot parse {path.name}: {errors[:500]}")
    config = _config(trt, builder, opts, gpu_identity().free_bytes, is_qdq)
    profile = builder.create_optimization_profile()
    for p in key.profiles:
        profile.set_shape(p.name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)
    cache_bytes = opts.timing_cache.read_bytes() if opts.timing_cache and opts.timing_cache.is_file() else b""
    timing = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing, False)
    log.warning("building a TensorRT engine for %s (%s); this takes minutes", path.name, opts.precision)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelFormatError(f"TensorRT failed to build an engine for {path.name}; run with -v for its log")
    if opts.timing_cache:  # temp file, then rename: the cache is never half written
        tmp = opts.timing_cache.with_name(f".{opts.timing_cache.name}.tmp")
        tmp.write_bytes(bytes(timing.serialize()))
        tmp.replace(opts.timing_cache)
    return store_engine(bundle, key, bytes(plan), {"build_seconds": time.perf_counter() - t0,
                                                   "workspace_bytes": workspace_bytes(opts, gpu_identity().free_bytes)})
