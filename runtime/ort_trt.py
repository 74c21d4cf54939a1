"""``segrt build``'s options for ONNX Runtime's TensorRT execution provider, on TensorRT 10 and 11.

Precision comes from the graph, as in ``segrt build``: the runner hands the provider the graph that
carries the asked precision (the bundle's own or its cached FP16 variant, :func:`..variants.graph_for`)
and sets ``trt_fp16_enable=0`` and ``trt_int8_enable=0``, which makes ONNX Runtime (1.21+) create a
strongly typed TensorRT network; a Q/DQ graph is explicit quantization and needs no flag. The one
exception is TensorRT 10 asked for FP16 with only an FP32 graph at hand: there ``trt_fp16_enable=1``
(TensorRT 10's documented weak typing, deprecated since 10.12). On TensorRT 11 (ONNX Runtime 1.27+) the
flags' behaviour is undocumented and the builder flags behind them are gone, so that case is an error
saying how to make the FP16 graph. Engine and timing caches live in the bundle under
``engines/onnxruntime-trt/<graph digest>-<precision>/``: ONNX Runtime's own cache names do not change when
only weights or external data change, so the digest folder keeps a re-export from a stale engine.
Pure functions, tested without a GPU; the provider itself has NOT been run on hardware here.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from .engine import ENGINES_DIR, BuildOptions, Profile, derive_profiles, workspace_bytes
from .errors import InvalidInputError
from .variants import int8_command

Inputs = list[tuple[str, tuple[int | str | None, ...]]]
#: pip distributions that carry libnvinfer, newest naming first
_TENSORRT_DISTS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-libs", "tensorrt-cu12-libs",
                   "tensorrt-libs")


def tensorrt_major_for_ort() -> int:
    """TensorRT's major version as ONNX Runtime's provider will load it: from the installed TensorRT wheel,
    else 10 for ONNX Runtime < 1.27 (which cannot load 11) and 11 otherwise (the stricter rule, under which
    TensorRT 10 builds just as well)."""
    for dist in _TENSORRT_DISTS:
        try:
            return int(metadata.version(dist).split(".")[0])
        except (metadata.PackageNotFoundError, ValueError):
            continue
    import onnxruntime as ort

    return 10 if tuple(int(v) for v in ort.__version__.split(".")[:2]) < (1, 27) else 11


def precision_flags(asked: str, graph_precision: str, tensorrt_major: int, bundle: Path) -> dict[str, str]:
    """``trt_fp16_enable`` / ``trt_int8_enable`` for a graph carrying ``graph_precision`` when ``asked``."""
    if asked == graph_precision:
        return {"trt_fp16_enable": "0", "trt_int8_enable": "0"}
    if asked == "int8":
        raise InvalidInputError(f"TensorRT INT8 needs a Q/DQ graph and {bundle} has none: run {int8_command(bundle)}")
    if asked == "fp16" and graph_precision == "fp32" and tensorrt_major < 11:
        return {"trt_fp16_enable": "1", "trt_int8_enable": "0"}
    if asked == "fp16" and graph_precision == "fp32":
        raise InvalidInputError(f"TensorRT {tensorrt_major} takes precision from the graph and {bundle} has no FP16 "
                                f"graph yet: run `segrt build {bundle} --precision fp16` once (it makes the gated "
                                "FP16 variant), or ask for fp32")
    raise InvalidInputError(f"the graph is {graph_precision}; {asked} cannot be built from it")


def _shapes_arg(profiles: list[Profile], which: str) -> str:
    """ONNX Runtime's profile syntax: ``name:1x3x256x256,other:1x2``."""
    return ",".join(f"{p.name}:{'x'.join(str(d) for d in getattr(p, which))}" for p in profiles)


def ort_tensorrt_options(bundle: Path, inputs: Inputs, opts: BuildOptions, *, graph_precision: str,
                         graph_digest: str, tensorrt_major: int, free_bytes: int = 0,
                         cuda_graph: bool = False) -> dict[str, str]:
    """Provider options: precision flags (:func:`precision_flags`), explicit profiles for every dynamic input
    (the same :func:`..engine.derive_profiles` as ``segrt build``), caches in the bundle keyed by the graph's
    digest, workspace capped by free memory, DLA, CUDA graphs."""
    cache = Path(bundle) / ENGINES_DIR / "onnxruntime-trt" / f"{graph_digest[:16]}-{graph_precision}"
    out = {
        **precision_flags(opts.precision, graph_precision, tensorrt_major, Path(bundle)),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(opts.timing_cache.parent if opts.timing_cache else cache),
    }
    if opts.workspace_gb is not None or free_bytes:  # else the provider's own default
        out["trt_max_workspace_size"] = str(workspace_bytes(opts, free_bytes))
    if any(not (isinstance(d, int) and d > 0) for _, dims in inputs for d in dims):
        profiles = derive_profiles(inputs, opts)
        out |= {f"trt_profile_{w}_shapes": _shapes_arg(profiles, w) for w in ("min", "opt", "max")}
    if opts.dla_core is not None:
        out |= {"trt_dla_enable": "1", "trt_dla_core": str(opts.dla_core)}
    if cuda_graph:
        out["trt_cuda_graph_enable"] = "1"
    return out
