"""Bundles the engine-build tests share: a small real FP32 bundle, and one whose FP16 variant exists."""

from __future__ import annotations

from pathlib import Path

import pytest
from segrt.runtime.cli import main
from segrt.runtime.engine import GpuIdentity

from .conftest import conv_onnx
from .doubles.tensorrt_builder import installed

VERSIONS = ("10.16.1.11", "11.4.0.106")
GPU = GpuIdentity("NVIDIA Jetson AGX Orin", "8.7", free_bytes=8 << 30)
SIZES = ["--min", "64x64", "--opt", "128x128", "--max", "256x256"]


def fp32_bundle(root: Path, external: bool = False) -> Path:
    from segrt.export.importer import ImportConfig, import_onnx

    root.mkdir(parents=True, exist_ok=True)
    conv_onnx(root / "conv.onnx")
    if external:  # weights in conv.onnx.data, as protobuf's 2 GB ceiling forces for SAM vit_h
        import onnx
        from segrt.export.onnx_io import save_onnx

        save_onnx(onnx.load(str(root / "conv.onnx")), root / "conv.onnx", force_external=True)
    import_onnx(ImportConfig(model=root / "conv.onnx", classes=("a", "b", "c")), root / "bundle")
    return root / "bundle"


@pytest.fixture(scope="module")
def fp16_source(tmp_path_factory) -> Path:
    """An FP32 bundle whose FP16 variant `segrt build --precision fp16` has made (once per module)."""
    bundle = fp32_bundle(tmp_path_factory.mktemp("fp16"))
    with installed(VERSIONS[1]) as trt, pytest.MonkeyPatch.context() as mp:
        mp.setattr("segrt.runtime.engine_build.gpu_identity", lambda device_id=0: GPU)
        assert main(["build", str(bundle), "--precision", "fp16", "--min", "32x32", "--opt", "64x64",
                     "--max", "128x128"]) == 0
    parsed = [c[1] for c in trt.calls if c[0] == "parser.parse_from_file"]
    assert parsed and parsed[0].startswith(str(bundle / "variants" / "fp16-"))
    return bundle
