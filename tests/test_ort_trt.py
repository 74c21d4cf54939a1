"""ONNX Runtime's TensorRT provider on TensorRT 10 and 11: which graph the session gets, which precision
flags are set (none where the graph carries the precision), profiles and caches in the bundle, and the
model-file check before anything opens the file. Pure option mapping; the provider never ran here."""

from __future__ import annotations

import pytest
from segrt.runtime import InvalidInputError, ModelFormatError
from segrt.runtime.backends.base import RunnerOptions
from segrt.runtime.backends.ort import OrtTensorRTRunner
from segrt.runtime.engine import BuildOptions
from segrt.runtime.engine_build import onnx_inputs
from segrt.runtime.ort_trt import ort_tensorrt_options, precision_flags

from .conftest import PPOCR
from .engine_fixtures import fp16_source  # noqa: F401  (the module fixture: an FP32 bundle + its FP16 variant)

SIZES = {"min_hw": (256, 256), "opt_hw": (512, 640), "max_hw": (1024, 1024)}
OFF = {"trt_fp16_enable": "0", "trt_int8_enable": "0"}


@pytest.mark.parametrize("asked, graph, major, flags", [
    ("fp32", "fp32", 10, OFF), ("fp32", "fp32", 11, OFF),
    ("fp16", "fp16", 10, OFF), ("fp16", "fp16", 11, OFF),  # the FP16 graph: strongly typed, no flag
    ("int8", "int8", 10, OFF), ("int8", "int8", 11, OFF),  # Q/DQ is explicit quantization: no flag
    ("fp16", "fp32", 10, {"trt_fp16_enable": "1", "trt_int8_enable": "0"}),  # TensorRT 10's weak typing
])
def test_precision_flags_per_tensorrt_version(asked, graph, major, flags, tmp_path) -> None:
    assert precision_flags(asked, graph, major, tmp_path) == flags


@pytest.mark.parametrize("asked, graph, major, message", [
    ("fp16", "fp32", 11, "run `segrt build .* --precision fp16` once"),
    ("int8", "fp32", 10, "--target tensorrt"), ("int8", "fp16", 11, "--target tensorrt"),
    ("fp32", "fp16", 10, "the graph is fp16"),
])
def test_precision_no_graph_carries_is_an_error_that_says_the_fix(asked, graph, major, message, tmp_path) -> None:
    with pytest.raises(InvalidInputError, match=message):
        precision_flags(asked, graph, major, tmp_path)


def test_options_map_profiles_caches_workspace_dla(tmp_path) -> None:
    inputs = onnx_inputs(PPOCR)
    opts = ort_tensorrt_options(tmp_path, inputs, BuildOptions(precision="fp32", max_batch=4, **SIZES),
                                graph_precision="fp32", graph_digest="ab" * 32, tensorrt_major=11)
    assert opts["trt_profile_min_shapes"] == "x:1x3x256x256" and opts["trt_profile_opt_shapes"] == "x:4x3x512x640"
    assert opts["trt_profile_max_shapes"] == "x:4x3x1024x1024"
    assert (opts["trt_fp16_enable"], opts["trt_int8_enable"]) == ("0", "0")
    cache = tmp_path / "engines" / "onnxruntime-trt" / ("ab" * 8 + "-fp32")  # keyed by the graph's digest
    assert opts["trt_engine_cache_path"] == str(cache) and opts["trt_timing_cache_path"] == str(cache)
    assert "trt_max_workspace_size" not in opts and "trt_dla_enable" not in opts and "trt_cuda_graph_enable" not in opts
    int8 = ort_tensorrt_options(tmp_path, inputs, BuildOptions(precision="int8", dla_core=1, workspace_gb=2,
                                                               timing_cache=tmp_path / "t" / "timing.cache", **SIZES),
                                graph_precision="int8", graph_digest="cd" * 32, tensorrt_major=10,
                                free_bytes=8 << 30, cuda_graph=True)
    assert (int8["trt_int8_enable"], int8["trt_dla_core"], int8["trt_max_workspace_size"]) == ("0", "1", str(2 << 30))
    assert int8["trt_cuda_graph_enable"] == "1" and int8["trt_timing_cache_path"] == str(tmp_path / "t")
    fixed = ort_tensorrt_options(tmp_path, [("image", (1, 3, 512, 512))], BuildOptions(precision="fp32"),
                                 graph_precision="fp32", graph_digest="ef" * 32, tensorrt_major=11)
    assert "trt_profile_min_shapes" not in fixed  # a fixed-shape model needs no profile
    with pytest.raises(InvalidInputError, match="dynamic height"):
        ort_tensorrt_options(tmp_path, inputs, BuildOptions(precision="fp32"), graph_precision="fp32",
                             graph_digest="ab" * 32, tensorrt_major=11)  # the same rule as segrt build


@pytest.mark.parametrize("major", (10, 11))
def test_the_session_gets_the_fp16_variant_on_both_versions(major, fp16_source, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setattr("segrt.runtime.ort_trt.tensorrt_major_for_ort", lambda: major)
    options = RunnerOptions(engine=BuildOptions(precision="fp16", min_hw=(64, 64), opt_hw=(128, 128),
                                                max_hw=(256, 256)))
    graph, provider = OrtTensorRTRunner._plan(fp16_source / "model.onnx", options)
    assert graph.parent.parent == fp16_source / "variants" and graph.name == "model.onnx"
    assert (provider["trt_fp16_enable"], provider["trt_int8_enable"]) == ("0", "0")
    assert provider["trt_profile_max_shapes"] == "image:1x3x256x256" and provider["device_id"] == "0"
    graph, provider = OrtTensorRTRunner._plan(fp16_source / "model.onnx", RunnerOptions())  # the bundle's own: fp32
    assert graph == fp16_source / "model.onnx" and provider["trt_fp16_enable"] == "0"


def test_a_missing_model_file_is_reported_before_anything_opens_it(tmp_path) -> None:
    with pytest.raises(ModelFormatError, match="is missing; re-export the bundle"):
        OrtTensorRTRunner(tmp_path / "absent.onnx", RunnerOptions())


def test_the_tensorrt_version_ort_loads(monkeypatch) -> None:
    from importlib import metadata

    from segrt.runtime import ort_trt

    def version(installed: dict[str, str]):
        def lookup(dist: str) -> str:
            if dist not in installed:
                raise metadata.PackageNotFoundError(dist)
            return installed[dist]
        return lookup

    monkeypatch.setattr(ort_trt.metadata, "version", version({"tensorrt-cu12-libs": "10.16.1.11"}))
    assert ort_trt.tensorrt_major_for_ort() == 10  # the wheel says
    monkeypatch.setattr(ort_trt.metadata, "version", version({}))
    monkeypatch.setattr("onnxruntime.__version__", "1.26.0")
    assert ort_trt.tensorrt_major_for_ort() == 10  # ONNX Runtime before 1.27 cannot load TensorRT 11
    monkeypatch.setattr("onnxruntime.__version__", "1.27.1")
    assert ort_trt.tensorrt_major_for_ort() == 11
