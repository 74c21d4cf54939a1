"""``segrt build`` on TensorRT 10.x and 11.x through the builder TEST DOUBLE (tests/doubles/tensorrt_builder.py):
which calls segrt makes on each version, FP16 from the gated variant, INT8 refused without Q/DQ, the engine
cache (reuse, mismatch, external data), and the CLI's one-line errors. No GPU and no TensorRT: the double
stands in for ``tensorrt`` and a fixed identity for ``gpu_identity``. None of this ran a real engine."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from segrt.runtime import BackendUnavailableError
from segrt.runtime.cli import main
from segrt.runtime.engine import BuildOptions, resolve_engine
from segrt.runtime.engine_build import build_engine
from segrt.runtime.manifest import read_manifest
from segrt.runtime.variants import find_variant

from .doubles.tensorrt_builder import REMOVED_IN_11, installed
from .engine_fixtures import GPU, SIZES, VERSIONS, fp32_bundle, fp16_source  # noqa: F401  (a module fixture)
from .test_cli import segrt



@pytest.fixture(autouse=True)
def fixed_gpu(monkeypatch) -> None:
    monkeypatch.setattr("segrt.runtime.engine_build.gpu_identity", lambda device_id=0: GPU)


def _names(calls: list[tuple], what: str) -> list:
    return [c[1] for c in calls if c[0] == what]


@pytest.mark.parametrize("version", VERSIONS)
def test_build_is_strongly_typed_with_no_precision_flags(version, tmp_path, capsys) -> None:
    bundle = fp32_bundle(tmp_path)
    cache = tmp_path / "timing" / "trt.cache"
    with installed(version) as trt:
        assert main(["build", str(bundle), "--precision", "fp32", *SIZES, "--version-compatible",
                     "--exclude-lean-runtime", "--timing-cache", str(cache)]) == 0
    strongly = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert _names(trt.calls, "builder.create_network") == [strongly]  # 2 on 10.x (bit 1), 1 on 11.x (bit 0)
    assert _names(trt.calls, "config.set_flag") == ["VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"]
    assert not set(_names(trt.calls, "config.set_flag")) & set(REMOVED_IN_11)
    assert _names(trt.calls, "builder.build_serialized_network") == [True]  # the network was strongly typed
    assert [c[1:] for c in trt.calls if c[0] == "profile.set_shape"] == [
        ("image", (1, 3, 64, 64), (1, 3, 128, 128), (1, 3, 256, 256))]
    assert ("config.set_memory_pool_limit", "WORKSPACE", 4 << 30) in trt.calls  # half the free memory
    assert cache.read_bytes() == b"|timed" and [p.name for p in cache.parent.iterdir()] == ["trt.cache"]
    (engine,) = (bundle / "engines").iterdir()
    assert (engine / "model.plan").read_bytes().startswith(f"double-plan|trt {version}|".encode())
    assert f"fp32, TensorRT {version}" in capsys.readouterr().out


@pytest.mark.parametrize("version", VERSIONS)
def test_fp16_builds_from_the_gated_variant_and_reuses_the_cache(version, fp16_source) -> None:  # noqa: F811
    variant = find_variant(fp16_source, "fp16")
    m = read_manifest(variant)
    assert m.precision == "fp16" and m.quantization["gate"]["passed"]  # `segrt quantize`'s converter and gate
    with installed(version) as trt:
        plan, key = build_engine(fp16_source, BuildOptions(precision="fp16", min_hw=(64, 64), opt_hw=(128, 128),
                                                           max_hw=(256, 256)), gpu=GPU)
        assert _names(trt.calls, "parser.parse_from_file") == [str(variant / "model.onnx")]
        assert not set(_names(trt.calls, "config.set_flag")) & set(REMOVED_IN_11)
        again = build_engine(fp16_source, BuildOptions(precision="fp16", min_hw=(64, 64), opt_hw=(128, 128),
                                                       max_hw=(256, 256)), gpu=GPU)
    assert again == (plan, key) and _names(trt.calls, "builder.build_serialized_network") == [True]  # reused
    with installed(version) as trt:
        assert build_engine(fp16_source, BuildOptions(precision="fp16", min_hw=(64, 64), opt_hw=(128, 128),
                                                      max_hw=(256, 256)), gpu=GPU, force=True) == (plan, key)
    assert _names(trt.calls, "builder.build_serialized_network") == [True]  # --force rebuilds
    assert key.precision == "fp16" and key.tensorrt == version
    with installed(version) as trt:
        assert main(["build", str(fp16_source), "--precision", "best", *SIZES]) == 0  # best: the FP16 variant
    assert _names(trt.calls, "builder.build_serialized_network") == []


def test_dla_on_10_and_its_guard_on_11(fp16_source) -> None:  # noqa: F811
    opts = BuildOptions(precision="fp16", min_hw=(64, 64), opt_hw=(128, 128), max_hw=(256, 256), dla_core=1,
                        gpu_fallback=True)
    with installed(VERSIONS[0], dla_cores=2) as trt:
        build_engine(fp16_source, opts, gpu=GPU)
    assert _names(trt.calls, "config.set_flag") == ["GPU_FALLBACK"]
    with installed(VERSIONS[1]), pytest.raises(BackendUnavailableError, match="has 0 DLA core.*does not support "
                                                                               "JetPack.*drop --dla-core"):
        build_engine(fp16_source, opts, gpu=GPU)
    with installed(VERSIONS[0]), pytest.raises(BackendUnavailableError, match="has 0 DLA core.s.; drop --dla-core"):
        build_engine(fp16_source, opts, gpu=GPU, force=True)  # desktop GPU, 10.x (force: else the cache)


def test_int8_needs_a_qdq_graph_and_says_which_command(tmp_path, capsys) -> None:
    bundle = fp32_bundle(tmp_path)
    with installed(VERSIONS[1]) as trt:
        assert main(["build", str(bundle), "--precision", "int8", *SIZES]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"segrt quantize {bundle} --precision int8 --target tensorrt" in err
    assert trt.calls == []  # refused before TensorRT was touched


def test_a_reexport_with_new_external_data_never_reuses_the_old_engine(tmp_path) -> None:
    bundle = fp32_bundle(tmp_path, external=True)
    data = bundle / "conv.onnx.data"
    opts = BuildOptions(precision="fp32", min_hw=(64, 64), opt_hw=(128, 128), max_hw=(256, 256))
    with installed(VERSIONS[1]) as trt:
        _, first = build_engine(bundle, opts, gpu=GPU)
        raw = bytearray(data.read_bytes())
        raw[-8:] = bytes(8)  # the same graph bytes, other weights: what a re-export with new external data does
        data.write_bytes(bytes(raw))
        with pytest.raises(BackendUnavailableError, match="model_sha256: engine has"):
            resolve_engine(bundle / "model.onnx", runtime_version=VERSIONS[1], gpu=GPU, lean=False, build=False)
        _, second = resolve_engine(bundle / "model.onnx", runtime_version=VERSIONS[1], gpu=GPU, lean=False,
                                   build=True, build_options=opts)
    assert second.model_sha256 != first.model_sha256
    assert _names(trt.calls, "builder.build_serialized_network") == [True, True]


@pytest.mark.slow
def test_sam_tiny_with_external_data_gets_a_new_engine_after_reexport(sam_tiny, tmp_path) -> None:
    import onnx
    from segrt.export.onnx_io import save_onnx

    bundle = tmp_path / "sam"
    shutil.copytree(sam_tiny.bundle, bundle)
    save_onnx(onnx.load(str(bundle / "encoder.onnx")), bundle / "encoder.onnx", force_external=True)
    data = bundle / "encoder.onnx.data"
    assert data.stat().st_size > 100_000
    with installed(VERSIONS[0]) as trt:
        plan, first = resolve_engine(bundle / "encoder.onnx", runtime_version=VERSIONS[0], gpu=GPU, lean=False,
                                     build=True)
        assert resolve_engine(bundle / "encoder.onnx", runtime_version=VERSIONS[0], gpu=GPU, lean=False,
                              build=False) == (plan, first)
        raw = bytearray(data.read_bytes())
        raw[1000:1008] = bytes(8)
        data.write_bytes(bytes(raw))
        _, second = resolve_engine(bundle / "encoder.onnx", runtime_version=VERSIONS[0], gpu=GPU, lean=False,
                                   build=True)
    assert second.model_sha256 != first.model_sha256 and second.digest() != first.digest()
    assert _names(trt.calls, "builder.build_serialized_network") == [True, True]


def test_cli_flags_fail_in_one_line_before_anything_needs_a_gpu(tmp_path, capsys) -> None:
    bundle = fp32_bundle(tmp_path)
    cases = [(["--exclude-lean-runtime", *SIZES], "--exclude-lean-runtime only applies with --version-compatible"),
             (["--dla-core", "0", "--precision", "fp32", *SIZES], "DLA runs fp16 or int8 only"),
             (["--precision", "fp32"], "dynamic height: give --min, --opt and --max"),
             (["--precision", "fp32", "--min", "128x128", "--opt", "64x64", "--max", "256x256"], "--min <= --opt")]
    with installed(VERSIONS[1]) as trt:
        for flags, message in cases:
            assert main(["build", str(bundle), *flags]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and message in err, err
    assert trt.calls == []
    proc = segrt("build", bundle, "--precision", "fp32", *SIZES)  # a real process, no TensorRT installed
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "segrt: error: TensorRT is not installed: pip install 'segrt[tensorrt]' on an NVIDIA machine (TensorRT 10.x "
        "or 11.x)"]


def test_a_runtime_only_install_builds_what_the_graph_carries_and_says_what_to_install(tmp_path) -> None:
    """onnx cannot be imported (an edge install): FP32 still builds, FP16 on an FP32 bundle names the extra."""
    bundle = fp32_bundle(tmp_path)
    code = textwrap.dedent(f"""
        import sys
        class _NoOnnx:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("onnx", "torch"):
                    raise ImportError(f"{{name}} is blocked in this test")
        sys.meta_path.insert(0, _NoOnnx())
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        from tests.doubles.tensorrt_builder import installed
        from segrt.runtime import engine_build
        from segrt.runtime.engine import GpuIdentity
        from segrt.runtime.cli import main
        engine_build.gpu_identity = lambda device_id=0: GpuIdentity("NVIDIA Jetson AGX Orin", "8.7")
        sizes = ["--min", "64x64", "--opt", "128x128", "--max", "256x256"]
        with installed("10.16.1.11"):
            assert main(["build", {str(bundle)!r}, "--precision", "fp32", *sizes]) == 0
            assert main(["build", {str(bundle)!r}, "--precision", "fp16", *sizes]) == 2
        assert "onnx" not in sys.modules
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "segrt: error: making the FP16 graph TensorRT builds from needs onnx: pip install 'segrt[export]' "
        "(or build a bundle from `segrt quantize --precision fp16`)")
    assert not (bundle / "variants").exists()


@pytest.fixture(scope="module")
def int8_bundles(tmp_path_factory) -> dict[str, Path]:
    """Q/DQ INT8 bundles of the small FP32 bundle from `segrt quantize`, for TensorRT and for the CPU."""
    import cv2
    import skimage.data as d
    from segrt.export.quantize import QuantizeConfig, quantize_bundle

    root = tmp_path_factory.mktemp("int8")
    source, calib = fp32_bundle(root / "src"), root / "calib"
    calib.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        cv2.imwrite(str(calib / f"{name}.png"), getattr(d, name)()[:128, :128, ::-1])
    out = {}
    for target in ("tensorrt", "cpu"):
        cfg = QuantizeConfig(precision="int8", target=target, calib=calib, samples=4, min_score=0.0)
        quantize_bundle(source, root / target, cfg)
        out[target] = root / target
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_int8_builds_from_the_qdq_graph_with_no_int8_flag(version, int8_bundles, capsys) -> None:
    bundle = int8_bundles["tensorrt"]
    with installed(version) as trt:
        assert main(["build", str(bundle), "--precision", "int8", *SIZES]) == 0
        assert main(["build", str(int8_bundles["cpu"]), "--precision", "int8", *SIZES]) == 2
    assert _names(trt.calls, "parser.parse_from_file") == [str(bundle / "model.onnx")]
    assert _names(trt.calls, "config.set_flag") == [] and _names(trt.calls, "builder.build_serialized_network") == [True]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "INT8 for ONNX Runtime's CPU kernels" in err[0] and "--target tensorrt" in err[0]
