"""`segrt quantize --int8-tool ort|modelopt`: who places the Q/DQ of TensorRT's INT8 form (issue 17).

ModelOpt is not a segrt dependency (its [onnx] extra pins onnx~=1.21 and onnxruntime-gpu~=1.24): where it is
not installed, the real ModelOpt run is skipped and the refusal is tested instead. The run was checked in an
environment with nvidia-modelopt 0.47.0 (onnx 1.21.0, onnxruntime-gpu 1.24.4, CPU only), see
run 2026-12-01-int8-modelopt-vs-ort-cpu-epyc-2core of benchmarks/results/history.jsonl.
"""

from __future__ import annotations

import importlib.util
from collections import Counter

import cv2
import onnx
import pytest

from segrt.export.importer import ImportConfig, import_onnx
from segrt.export.quantize import QuantizeConfig, quantize_bundle
from segrt.runtime.cli import main
from segrt.runtime.errors import ExportError, InvalidInputError

from .conftest import PPOCR

HAVE_MODELOPT = importlib.util.find_spec("modelopt") is not None


@pytest.fixture(scope="module")
def ocr(tmp_path_factory, photos):
    """(PP-OCR bundle, calibration folder of four photos, held-out folder with skimage's page)."""
    import skimage.data

    tmp = tmp_path_factory.mktemp("ocr")
    import_onnx(ImportConfig(model=PPOCR, threshold=0.3, classes=("background", "text")), tmp / "bundle")
    calib, held = tmp / "calib", tmp / "held"
    calib.mkdir()
    held.mkdir()
    for name, img in photos.items():
        cv2.imwrite(str(calib / f"{name}.png"), img if img.ndim == 2 else img[:, :, ::-1])
    cv2.imwrite(str(held / "page.png"), skimage.data.page())
    return tmp / "bundle", calib, held


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"precision": "int8", "target": "cpu"}, "use it with --precision int8 --target tensorrt"),
    ({"precision": "fp16"}, "use it with --precision int8 --target tensorrt"),
    ({"precision": "int8", "target": "tensorrt", "calibrator": "percentile"}, "calibrates with minmax or entropy"),
])
def test_modelopt_is_for_tensorrt_int8_only(kwargs, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        QuantizeConfig(int8_tool="modelopt", **kwargs)
    with pytest.raises(InvalidInputError, match="--int8-tool must be ort or modelopt"):
        QuantizeConfig("int8", target="tensorrt", int8_tool="polygraphy")


def test_cli_flag_reaches_the_config(ocr, tmp_path, capsys) -> None:
    bundle, calib, _ = ocr
    rc = main(["quantize", str(bundle), "--precision", "int8", "--int8-tool", "modelopt", "--calib", str(calib),
               "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--target tensorrt" in err
    assert not (tmp_path / "q").exists()


@pytest.mark.skipif(HAVE_MODELOPT, reason="nvidia-modelopt is installed: the real run below is tested instead")
def test_modelopt_missing_is_one_line_that_says_how_to_install(ocr, tmp_path) -> None:
    bundle, calib, held = ocr
    cfg = QuantizeConfig("int8", calib=calib, samples=4, eval_images=held, target="tensorrt", int8_tool="modelopt")
    with pytest.raises(ExportError, match=r"needs NVIDIA ModelOpt.*pip install 'nvidia-modelopt\[onnx\]'"):
        quantize_bundle(bundle, tmp_path / "q", cfg)
    assert not (tmp_path / "q").exists()


def _fed_by_dq(path) -> Counter:
    """Op types that read a DequantizeLinear output, one count per input."""
    g = onnx.load(str(path)).graph
    dq_out = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    return Counter(n.op_type for n in g.node for i in n.input if i in dq_out)


@pytest.mark.skipif(not HAVE_MODELOPT, reason="nvidia-modelopt[onnx] is not installed (it pins onnx~=1.21, "
                    "onnxruntime-gpu~=1.24; install it in an environment of its own to run this)")
def test_modelopt_int8_is_gated_and_placed_for_tensorrt(ocr, tmp_path) -> None:
    """Measured: 0.947 pixel agreement with FP32 on the page (ONNX Runtime's tool: 0.958); Q/DQ only where
    TensorRT fuses them: every Conv's weight and input, residual Adds, the SE blocks' Mul, pooling, Resize;
    nothing around Relu, Clip, HardSigmoid or Sigmoid (ONNX Runtime's tool puts Q/DQ on each of those)."""
    bundle, calib, held = ocr
    cfg = QuantizeConfig("int8", calib=calib, samples=4, eval_images=held, min_score=0.9, target="tensorrt",
                         int8_tool="modelopt")
    m = quantize_bundle(bundle, tmp_path / "mo", cfg)
    facts = m.quantization["graphs"]["model.onnx"]
    assert m.quantization["gate"]["passed"] and facts["tool"] == "modelopt" and facts["target"] == "tensorrt"
    fed = _fed_by_dq(tmp_path / "mo" / "model.onnx")
    assert fed["Conv"] == 2 * 62 and fed["ConvTranspose"] == 2 * 2  # every conv: its weight and its input
    assert set(fed) <= {"Conv", "ConvTranspose", "Add", "Mul", "GlobalAveragePool", "Resize", "Concat"}
    assert 0 < fed["Add"] < 89  # residual Adds get one quantized input, not every Add both
    g = onnx.load(str(tmp_path / "mo" / "model.onnx")).graph
    weights = {t.name for t in g.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4}
    assert len(weights) == 62 + 2  # int8 weights behind DQ alone (PP-OCR's Constant weights made initializers)
    stored = {t.name for t in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant"}
    assert not [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] in stored]  # no Q on a weight


def test_ort_tool_is_recorded(ocr, tmp_path) -> None:
    bundle, calib, held = ocr
    cfg = QuantizeConfig("int8", calib=calib, samples=4, eval_images=held, min_score=0.95, target="tensorrt")
    facts = quantize_bundle(bundle, tmp_path / "ort", cfg).quantization["graphs"]["model.onnx"]
    assert facts["tool"] == "ort"
    fed = _fed_by_dq(tmp_path / "ort" / "model.onnx")
    assert fed["Conv"] >= 2 * 62 and {"Relu", "Clip", "HardSigmoid"} <= set(fed)  # the placement compared above
