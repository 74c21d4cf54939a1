"""One engine build for TensorRT 10.x and 11.x: a strongly typed network whose precision is its graph's.

The same calls on both versions (checked against the Python bindings, ``python/src/infer/pyCore.cpp`` and
``python/src/parsers/pyOnnx.cpp`` of TensorRT OSS v10.16 and v11.1, and NVIDIA's 10.x-to-11.x migration
guide): ``create_network(1 << STRONGLY_TYPED)`` (required for strong typing on 10.x; accepted and
ignored on 11.x, where every network is strongly typed), ``OnnxParser.parse_from_file``,
``set_memory_pool_limit(WORKSPACE)``, one optimisation profile, a timing cache, ``VERSION_COMPATIBLE`` /
``EXCLUDE_LEAN_RUNTIME`` / ``GPU_FALLBACK``, ``default_device_type`` and ``DLA_core``, and
``build_serialized_network``. Never the precision flags 11.x removed (``BuilderFlag.FP16``, ``INT8``,
``BF16``, ``FP8``, ``OBEY/PREFER_PRECISION_CONSTRAINTS``) nor an INT8 calibrator: an FP16 engine is built
from an FP16 graph, an INT8 engine from a Q/DQ graph (:func:`..variants.graph_for`).

This module needs no ``onnx`` and never makes a variant: on a runtime-only install it builds the graph a
bundle already carries. ``segrt build`` (``segrt.export.build_cli``) makes the FP16 variant first when one
is asked for. Tested with a test double of the builder (TensorRT's builder does not install on CI
machines); NOT run on a GPU in this project.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .engine import (
    BuildOptions,
    EngineKey,
    GpuIdentity,
    engine_key,
    gpu_identity,
    stored_engines,
    store_engine,
    workspace_bytes,
)
from .errors import BackendUnavailableError, ModelFormatError
from .manifest import read_manifest
from .variants import best_precision, graph_for

log = logging.getLogger("segrt")


def onnx_inputs(path: Path) -> list[tuple[str, tuple[int | str | None, ...]]]:
    """Input names and shapes (ints fixed, str/None dynamic) read with ONNX Runtime, no TensorRT."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise ModelFormatError(f"model file {str(path)!r} is missing; re-export the bundle")
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped pybind errors
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFormatError(f"cannot read the inputs of {str(path)!r}: {text}") from None
    return [(i.name, tuple(i.shape)) for i in sess.get_inputs()]


def _tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailableError("TensorRT is not installed: pip install 'segrt[tensorrt]' on an NVIDIA "
                                      "machine (TensorRT 10.x or 11.x)") from None
    return trt


def tensorrt_version() -> str:
    return str(_tensorrt().__version__)


def concrete(bundle: Path, model_file: str, opts: BuildOptions) -> BuildOptions:
    """``opts`` with ``best`` replaced by the lowest precision among the graphs present."""
    if opts.precision != "best":
        return opts
    chosen = best_precision(bundle)
    log.info("--precision best: %s is the lowest-precision gated graph of %s", chosen, model_file)
    return replace(opts, precision=chosen)


def _network(trt: Any, builder: Any, logger: Any, graph: Path) -> tuple[Any, Any]:
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelFormatError(f"TensorRT cannot parse {graph.name}: {errors[:300]}")
    return network, parser


def _config(trt: Any, builder: Any, opts: BuildOptions, workspace: int) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if opts.dla_core is not None:
        if opts.dla_core >= builder.num_DLA_cores:
            note = " (TensorRT 11 does not support JetPack: Jetson's DLA stays on TensorRT 10)" \
                if int(str(trt.__version__).split(".")[0]) >= 11 else ""
            raise BackendUnavailableError(f"--dla-core {opts.dla_core}: this device has {builder.num_DLA_cores} DLA "
                                          f"core(s){note}; drop --dla-core to build for the GPU")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = opts.dla_core
        if opts.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if opts.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if opts.exclude_lean_runtime:
            config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    return config


def _add_profile(builder: Any, config: Any, key: EngineKey) -> None:
    profile = builder.create_optimization_profile()
    for p in key.profiles:
        profile.set_shape(p.name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file beside ``path``, then rename: a timing cache is never half written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_engine(bundle: Path, opts: BuildOptions, model_file: str | None = None, *, force: bool = False,
                 gpu: GpuIdentity | None = None) -> tuple[Path, EngineKey]:
    """The engine for ``opts`` from the engine cache, or built (minutes) and stored when none has exactly
    its key, or when ``force``. Returns the plan's path and its key."""
    trt = _tensorrt()
    bundle = Path(bundle)
    model_file = model_file or read_manifest(bundle).model_file
    opts = concrete(bundle, model_file, opts)
    graph = graph_for(bundle, model_file, opts.precision)
    gpu = gpu or gpu_identity()
    key = engine_key(bundle / model_file, opts, str(trt.__version__), gpu)
    cached = [plan for stored, plan in stored_engines(bundle, model_file) if stored == key]
    if cached and not force:
        log.info("reusing engine %s for %s (pass --force to rebuild)", key.digest(), model_file)
        return cached[0], key
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _network(trt, builder, logger, graph)
    workspace = workspace_bytes(opts, gpu.free_bytes)
    config = _config(trt, builder, opts, workspace)
    _add_profile(builder, config, key)
    cache_bytes = opts.timing_cache.read_bytes() if opts.timing_cache and opts.timing_cache.is_file() else b""
    timing = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing, False)
    log.warning("building a TensorRT %s engine for %s from %s; this takes minutes", opts.precision, model_file,
                graph.relative_to(bundle))
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelFormatError(f"TensorRT failed to build an engine for {model_file}; run with -v for its log")
    if opts.timing_cache:
        _write_atomic(opts.timing_cache, bytes(timing.serialize()))
    facts = {"build_seconds": round(time.perf_counter() - t0, 3), "workspace_bytes": workspace,
             "graph": str(graph.relative_to(bundle))}
    return store_engine(bundle, key, bytes(plan), facts), key

