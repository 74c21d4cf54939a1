"""TensorRT engine plumbing that runs without TensorRT or a GPU: options, profiles from real ONNX
inputs, the engine cache (key, atomic store, the one matcher ``resolve_engine`` and TensorRT's version rule),
and the errors when TensorRT is absent. Builds through the builder double are in test_engine_build.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from segrt.runtime import (
    BackendUnavailableError,
    InvalidInputError,
    load,
)
from segrt.runtime.backends.tensorrt import TensorRTRunner
from segrt.runtime.engine import (
    BuildOptions,
    EngineKey,
    GpuIdentity,
    Profile,
    derive_profiles,
    resolve_engine,
    store_engine,
    stored_engines,
    version_fit,
    workspace_bytes,
)
from segrt.runtime.engine_build import onnx_inputs
from segrt.runtime.onnx_files import external_data_locations, model_digest

from .conftest import PPOCR, conv_onnx
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
    ({"exclude_lean_runtime": True}, "only applies with --version-compatible"),
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
    base = dict(model_file="model.onnx", model_sha256="ab" * 32, precision="fp16",
                profiles=(Profile("x", (1, 3, 64, 64), (1, 3, 512, 512), (1, 3, 1024, 1024)),),
                tensorrt="10.9.0", gpu="NVIDIA Jetson Orin", compute_capability="8.7")
    return EngineKey(**{**base, **changes})


ORIN = GpuIdentity("NVIDIA Jetson Orin", "8.7")


def _bundle_with_model(tmp_path) -> Path:
    bundle = tmp_path / "b"
    bundle.mkdir()
    conv_onnx(bundle / "model.onnx")
    return bundle


def test_engine_store_is_atomic_and_keyed_by_its_digest(tmp_path) -> None:
    key = _key()
    assert key.digest() == _key().digest() and key.digest() != _key(precision="int8").digest()
    plan = store_engine(tmp_path, key, b"serialized plan bytes", {"build_seconds": 1.0})
    assert plan.read_bytes() == b"serialized plan bytes" and not list((tmp_path / "engines").glob(".*"))
    assert plan.parent.name == key.digest() and stored_engines(tmp_path, "model.onnx") == [(key, plan)]
    assert stored_engines(tmp_path, "decoder.onnx") == []  # another graph's engines are not candidates
    (plan.parent / "key.json").write_text(json.dumps(_key(dla_core=0).to_dict()))  # filed under the wrong key
    assert stored_engines(tmp_path, "model.onnx") == []
    (plan.parent / "key.json").write_text(json.dumps({"onnx_sha256": "ab", "precision": "fp16"}))  # old segrt
    assert stored_engines(tmp_path, "model.onnx") == []


@pytest.mark.parametrize("built, runtime, vc, no_lean, lean, fits", [
    ("10.9.0", "10.9.0", False, False, False, True),     # same version: any plan
    ("10.9.0", "10.12.0", False, False, False, False),   # ordinary plan: only its own version
    ("10.9.0", "11.4.0", True, False, False, True),      # version-compatible: same or later (10 -> 11 documented)
    ("11.4.0", "10.16.1", True, False, False, False),    # never an earlier runtime
    ("10.9.0", "10.12.0", True, True, False, False),     # lean runtime left out: only that version's lean runtime
    ("10.9.0", "10.9.0", True, True, True, True),
    ("10.9.0", "10.9.0", False, False, True, False),     # the lean runtime loads version-compatible plans only
    ("8.5.1", "10.9.0", True, False, False, False),      # version compatibility starts at 8.6
])
def test_version_fit_follows_tensorrts_documented_rule(built, runtime, vc, no_lean, lean, fits) -> None:
    key = _key(tensorrt=built, version_compatible=vc, exclude_lean_runtime=no_lean)
    assert (version_fit(key, runtime, lean) is None) == fits


def test_resolve_engine_picks_deterministically_and_says_what_differs(tmp_path) -> None:
    bundle = _bundle_with_model(tmp_path)
    digest = model_digest(bundle / "model.onnx")
    fp32 = store_engine(bundle, _key(model_sha256=digest, precision="fp32"), b"a")
    fp16 = store_engine(bundle, _key(model_sha256=digest), b"b")
    vc = store_engine(bundle, _key(model_sha256=digest, precision="int8", tensorrt="10.3.0", version_compatible=True),
                      b"c")
    store_engine(bundle, _key(model_sha256="cd" * 32, precision="int8"), b"stale")  # an older export
    plan, key = resolve_engine(bundle / "model.onnx", runtime_version="10.9.0", gpu=ORIN, lean=False, build=False)
    assert plan == fp16 and key.precision == "fp16"  # this exact version first, then the lowest precision
    plan, _ = resolve_engine(bundle / "model.onnx", runtime_version="10.12.0", gpu=ORIN, lean=False, build=False)
    assert plan == vc  # only the version-compatible plan loads on a later runtime
    opts = BuildOptions(precision="fp32", **SIZES)
    with pytest.raises(BackendUnavailableError) as err:
        resolve_engine(bundle / "model.onnx", runtime_version="10.9.0", gpu=ORIN, lean=False, build=False,
                       build_options=opts)
    line = str(err.value)
    assert "\n" not in line and "profiles: engine has" in line and "precision" in line
    assert f"segrt build {bundle} --precision fp32 --min 256x256 --opt 512x640 --max 1024x1024" in line
    with pytest.raises(BackendUnavailableError, match="gpu: engine has 'NVIDIA Jetson Orin', needed 'NVIDIA H100'"):
        resolve_engine(bundle / "model.onnx", runtime_version="10.9.0", gpu=GpuIdentity("NVIDIA H100", "9.0"),
                       lean=False, build=False)
    plan, _ = resolve_engine(bundle / "model.onnx", runtime_version="10.9.0", gpu=ORIN, lean=True, build=False)
    assert plan == vc  # the lean runtime: version-compatible plans only
    with pytest.raises(BackendUnavailableError, match="--version-compatible --exclude-lean-runtime` on a machine "
                                                      "with TensorRT 10.2.0"):
        resolve_engine(bundle / "model.onnx", runtime_version="10.2.0", gpu=ORIN, lean=True, build=True)  # never built
    assert fp32.is_file() and not list((bundle / "engines").glob(".*"))


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


def test_external_data_is_found_without_onnx_wherever_it_is_referenced(tmp_path) -> None:
    """Per-tensor files (older exporters), one shared file, and a tensor inside a node attribute (a Constant):
    every one is in the digest, and changing any one's bytes, or losing it, changes the digest."""
    import onnx
    from onnx import helper, numpy_helper

    conv_onnx(tmp_path / "src.onnx")
    model = onnx.load(str(tmp_path / "src.onnx"))
    bias = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(1, 64, 1, 1)[:, :3], "bias_value")
    model.graph.node.append(helper.make_node("Constant", [], ["bias"], value=bias))
    model.graph.node.append(helper.make_node("Add", ["scores", "bias"], ["scored"]))
    model.graph.output[0].name = "scored"
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0, convert_attribute=True)
    found = external_data_locations(tmp_path / "m.onnx")
    assert set(found) == {"w1", "w2", "bias_value"} and all((tmp_path / f).is_file() for f in found)
    before = model_digest(tmp_path / "m.onnx")
    raw = bytearray((tmp_path / "bias_value").read_bytes())
    raw[:4] = b"\xff" * 4
    (tmp_path / "bias_value").write_bytes(bytes(raw))
    changed = model_digest(tmp_path / "m.onnx")
    (tmp_path / "w2").unlink()
    assert len({before, changed, model_digest(tmp_path / "m.onnx")}) == 3
    onnx.save_model(onnx.load(str(tmp_path / "src.onnx")), str(tmp_path / "one.onnx"), save_as_external_data=True,
                    location="one.onnx.data", size_threshold=0)
    assert external_data_locations(tmp_path / "one.onnx") == ["one.onnx.data"]
    assert external_data_locations(tmp_path / "src.onnx") == []
