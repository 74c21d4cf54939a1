"""TensorRT engine plumbing that runs without TensorRT or a GPU: options, profiles from real ONNX
inputs, the engine cache key and its atomic store, and the errors when TensorRT is absent.
The build and the runner themselves need TensorRT and are skipped here (see the support matrix)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from segrt.runtime import (
    BackendUnavailableError,
    EngineMismatchError,
    InvalidInputError,
    load,
)
from segrt.runtime.backends.tensorrt import TensorRTRunner
from segrt.runtime.engine import (
    BuildOptions,
    EngineKey,
    Profile,
    derive_profiles,
    explain_mismatch,
    find_engine,
    store_engine,
    workspace_bytes,
)
from segrt.runtime.engine_build import onnx_inputs

from .conftest import PPOCR
from .test_cli import segrt

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
SIZES = {"min_hw": (256, 256), "opt_hw": (512, 640), "max_hw": (1024, 1024)}


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "int4"}, "--precision must be"),
    ({"min_hw": (256, 256)}, "together"),
    ({"min_hw": (512, 512), "opt_hw": (256, 256), "max_hw": (1024, 1024)}, "--min <= --opt <= --max"),
    ({"dla_core": 0, "precision": "fp32"}, "DLA runs fp16 or int8"),
    ({"gpu_fallback": True}, "only applies with --dla-core"),
    ({"workspace_gb": 0}, "--workspace-gb must be > 0"),
    ({"max_batch": 0}, "must be >= 1"),
])
def test_build_options_are_validated(kwargs, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        BuildOptions(**kwargs)


def test_profiles_from_a_real_onnx_model() -> None:
    inputs = onnx_inputs(PPOCR)  # PP-OCR: (batch, 3, height, width), all dynamic
    (p,) = derive_profiles(inputs, BuildOptions(max_batch=4, **SIZES))
    assert p == Profile("x", (1, 3, 256, 256), (4, 3, 512, 640), (4, 3, 1024, 1024))
    with pytest.raises(InvalidInputError, match="dynamic height: give --min, --opt and --max"):
        derive_profiles(inputs, BuildOptions())


@pytest.mark.slow
def test_profiles_for_both_sam_graphs(sam_tiny) -> None:
    enc = derive_profiles(onnx_inputs(sam_tiny.bundle / "encoder.onnx"), BuildOptions())
    assert enc == [Profile("image", (1, 3, 1024, 1024), (1, 3, 1024, 1024), (1, 3, 1024, 1024))]  # fixed: no flags needed
    dec = {p.name: p for p in derive_profiles(onnx_inputs(sam_tiny.bundle / "decoder.onnx"),
                                              BuildOptions(max_batch=64, max_points=8))}
    assert dec["point_coords"] == Profile("point_coords", (1, 1, 2), (64, 2, 2), (64, 8, 2))
    assert dec["point_labels"].max == (64, 8) and dec["mask_input"].max == (64, 1, 256, 256)
    assert dec["has_mask_input"].min == (1,) and dec["image_embeddings"].opt == (1, 256, 64, 64)


def _key(**changes) -> EngineKey:
    base = dict(onnx_sha256="ab" * 32, precision="fp16", profiles=(Profile("x", (1, 3, 64, 64), (1, 3, 512, 512), (1, 3, 1024, 1024)),),
                tensorrt="10.9.0", gpu="NVIDIA Jetson Orin", compute_capability="8.7")
    return EngineKey(**{**base, **changes})


def test_engine_cache_finds_only_the_exact_key_and_says_what_differs(tmp_path) -> None:
    key = _key()
    assert key.digest() == _key().digest() and key.digest() != _key(precision="int8").digest()
    plan = store_engine(tmp_path, key, b"serialized plan bytes", {"build_seconds": 1.0})
    assert plan.read_bytes() == b"serialized plan bytes" and not list((tmp_path / "engines").glob(".*"))
    assert find_engine(tmp_path, key) == plan
    assert EngineKey.from_dict(json.loads((plan.parent / "key.json").read_text())) == key
    other = _key(tensorrt="10.12.0", gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0")
    assert find_engine(tmp_path, other) is None
    why = explain_mismatch(tmp_path, other)
    assert "tensorrt: engine has '10.9.0'" in why and "compute_capability: engine has '8.7'" in why and "precision" not in why
    (plan.parent / "key.json").write_text(json.dumps(_key(dla_core=0).to_dict()))  # a plan filed under the wrong key
    with pytest.raises(EngineMismatchError, match="dla_core: engine has 0"):
        find_engine(tmp_path, key)


def test_workspace_is_capped_by_free_memory() -> None:
    gib = 1 << 30
    assert workspace_bytes(BuildOptions(workspace_gb=2), 8 * gib) == 2 * gib
    assert workspace_bytes(BuildOptions(workspace_gb=16), 4 * gib) == int(4 * gib * 0.9)  # a Jetson's shared memory
    assert workspace_bytes(BuildOptions(), 6 * gib) == 3 * gib


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown where TensorRT is absent")
def test_without_tensorrt_the_backends_say_why(tmp_path) -> None:
    assert "tensorrt is not installed" in TensorRTRunner.unavailable_reason()
    from segrt.export.importer import ImportConfig, import_onnx

    import_onnx(ImportConfig(model=PPOCR, threshold=0.3), tmp_path / "b")
    with pytest.raises(BackendUnavailableError, match="no backend for device 'tensorrt': tensorrt: tensorrt is not installed"):
        load(tmp_path / "b", device="tensorrt")
    assert load(tmp_path / "b", device="auto").device == "cpu"  # auto falls back, logging why
    proc = segrt("build", tmp_path / "b", "--min", "256x256", "--opt", "512x512", "--max", "1024x1024")
    assert proc.returncode == 2 and "TensorRT is not installed" in proc.stderr and "Traceback" not in proc.stderr
    proc = segrt("build", tmp_path / "b")  # flags are checked before anything needs a GPU
    assert proc.returncode == 2 and "dynamic height" in proc.stderr


def test_onnxruntime_tensorrt_provider_options_map_the_build_options(tmp_path) -> None:
    """ONNX Runtime's TensorRT provider gets the same options `segrt build` takes: profiles from the same
    derivation in its "name:AxBxC" syntax, precision flags, caches inside the bundle, DLA, CUDA graphs."""
    from segrt.runtime.engine import ort_tensorrt_options

    inputs = onnx_inputs(PPOCR)
    opts = ort_tensorrt_options(tmp_path, inputs, BuildOptions(max_batch=4, **SIZES))
    assert opts["trt_profile_min_shapes"] == "x:1x3x256x256" and opts["trt_profile_opt_shapes"] == "x:4x3x512x640"
    assert opts["trt_profile_max_shapes"] == "x:4x3x1024x1024"
    assert (opts["trt_fp16_enable"], opts["trt_int8_enable"]) == ("1", "0")
    assert opts["trt_engine_cache_enable"] == "1" and opts["trt_engine_cache_path"] == str(tmp_path / "engines" / "onnxruntime-trt")
    assert opts["trt_timing_cache_path"] == opts["trt_engine_cache_path"] and "trt_max_workspace_size" not in opts
    assert "trt_dla_enable" not in opts and "trt_cuda_graph_enable" not in opts
    int8 = ort_tensorrt_options(tmp_path, inputs, BuildOptions(precision="int8", dla_core=1, workspace_gb=2,
                                                               timing_cache=tmp_path / "t" / "timing.cache", **SIZES),
                                free_bytes=8 << 30, cuda_graph=True)
    assert (int8["trt_fp16_enable"], int8["trt_int8_enable"], int8["trt_dla_core"]) == ("0", "1", "1")
    assert int8["trt_max_workspace_size"] == str(2 << 30) and int8["trt_cuda_graph_enable"] == "1"
    assert int8["trt_timing_cache_path"] == str(tmp_path / "t")
    best = ort_tensorrt_options(tmp_path, [("image", (1, 3, 512, 512))], BuildOptions(precision="best"))
    assert (best["trt_fp16_enable"], best["trt_int8_enable"]) == ("1", "1")
    assert "trt_profile_min_shapes" not in best  # a fixed-shape model needs no profile
    with pytest.raises(InvalidInputError, match="dynamic height"):
        ort_tensorrt_options(tmp_path, inputs, BuildOptions())  # the same rule as segrt build
