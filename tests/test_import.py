"""`segrt import`: real trained ONNX models through the same runtime."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from segrt.export.importer import ImportConfig, import_onnx
from segrt.runtime import load
from segrt.runtime.errors import InvalidInputError, ModelFormatError

from .conftest import IMAGENET_MEAN, IMAGENET_STD, PPOCR, conv_onnx

# the NumPy-twin pass (SEGRT_PREPOST=reference) runs these: their results go through the pre/post kernels
pytestmark = pytest.mark.prepost


@pytest.fixture(scope="module")
def ocr_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("ocr") / "bundle"
    import_onnx(ImportConfig(model=PPOCR, threshold=0.3, classes=("background", "text")), out)
    return out


def _ocr_reference(page: np.ndarray) -> np.ndarray:
    """PP-OCR's own recipe written directly against onnxruntime: pad to 32, ImageNet norm, p > 0.3."""
    rgb = np.repeat(page[:, :, None], 3, axis=2).astype(np.float32) / 255.0
    x = (rgb - IMAGENET_MEAN) / IMAGENET_STD
    h, w = page.shape
    H, W = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
    x = np.pad(x, ((0, H - h), (0, W - w), (0, 0))).transpose(2, 0, 1)[None].astype(np.float32)
    prob = ort.InferenceSession(str(PPOCR)).run(None, {"x": x})[0][0, 0, :h, :w]
    return (prob > 0.3).astype(np.uint8)


def test_ppocr_finds_the_text_on_a_real_page(ocr_bundle) -> None:
    import skimage.data

    page = skimage.data.page()
    res = load(ocr_bundle, device="cpu")(page)
    assert res.class_names == ("background", "text")
    assert np.array_equal(res.label_map, _ocr_reference(page))
    ink = page < 60  # dark glyph strokes
    near_text = cv2.dilate(res.label_map, np.ones((7, 7), np.uint8)).astype(bool)
    assert (ink & near_text).sum() / ink.sum() >= 0.85
    assert 0.05 <= res.label_map.mean() <= 0.4  # text lines, not the whole page
    rows = res.label_map.any(axis=1)
    assert np.count_nonzero(np.diff(rows.astype(int)) == 1) >= 5  # several separate text lines


def test_manifest_is_derived_from_the_model(ocr_bundle) -> None:
    data = json.loads((ocr_bundle / "segrt.json").read_text())
    assert data["input"]["name"] == "x" and data["output"]["name"] == "sigmoid_0.tmp_0"
    assert data["input"]["resize"] == "pad" and data["source"]["imported"] is True


def test_fixed_size_model_is_stretched_and_mapped_back(tmp_path, photos) -> None:
    conv_onnx(tmp_path / "f.onnx", hw=(64, 96))
    import_onnx(ImportConfig(model=tmp_path / "f.onnx"), tmp_path / "b")
    image = photos["coffee"]
    res = load(tmp_path / "b", device="cpu")(image)
    # segrt interpolates the float image (no 8-bit rounding between resize and normalisation)
    resized = cv2.resize(image.astype(np.float32), (96, 64), interpolation=cv2.INTER_LINEAR) / 255.0
    x = ((resized - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None].astype(np.float32)
    scores = ort.InferenceSession(str(tmp_path / "f.onnx")).run(None, {"image": x})[0][0]
    up = cv2.resize(scores.transpose(1, 2, 0), (600, 400), interpolation=cv2.INTER_LINEAR)
    assert res.label_map.shape == (400, 600)
    assert (res.label_map == up.argmax(2)).mean() >= 0.999


def test_nhwc_model_matches_its_nchw_twin(tmp_path, photos) -> None:
    conv_onnx(tmp_path / "a.onnx", layout="nchw")
    conv_onnx(tmp_path / "b.onnx", layout="nhwc")
    import_onnx(ImportConfig(model=tmp_path / "a.onnx", stride=1), tmp_path / "A")
    import_onnx(ImportConfig(model=tmp_path / "b.onnx", stride=1, layout="nhwc"), tmp_path / "B")
    a = load(tmp_path / "A", device="cpu")(photos["chelsea"]).label_map
    b = load(tmp_path / "B", device="cpu")(photos["chelsea"]).label_map
    assert np.array_equal(a, b) and len(np.unique(a)) > 1


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"size": (32, 32)}, InvalidInputError, "disagrees with the model's fixed input"),
        ({"resize": "pad"}, InvalidInputError, "needs a model with dynamic height and width"),
        ({"output": "logits"}, InvalidInputError, "not in the model; it has \\['scores'\\]"),
        ({"classes": ("a", "b")}, InvalidInputError, "names 2 classes; the model outputs 3"),
        ({"layout": "nhwc"}, ModelFormatError, "read as nhwc has 96 channels; is --layout right"),
    ],
)
def test_import_flags_that_do_not_fit(tmp_path, kwargs, error, message: str) -> None:
    conv_onnx(tmp_path / "f.onnx", hw=(64, 96))
    with pytest.raises(error, match=message):
        import_onnx(ImportConfig(model=tmp_path / "f.onnx", **kwargs), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_manifest_that_disagrees_with_the_model(ocr_bundle, tmp_path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ocr_bundle, bad)
    data = json.loads((bad / "segrt.json").read_text())
    data["input"]["name"] = "image"
    (bad / "segrt.json").write_text(json.dumps(data))
    with pytest.raises(ModelFormatError, match="manifest names input 'image'; the model has \\['x'\\]"):
        load(bad, device="cpu")
    data["input"]["name"] = "x"
    data["input"]["channels"], data["input"]["color"], data["input"]["mean"], data["input"]["std"] = 1, "gray", [0.5], [0.2]
    (bad / "segrt.json").write_text(json.dumps(data))
    with pytest.raises(ModelFormatError, match="manifest says 1 input channels; the model takes 3"):
        load(bad, device="cpu")
    data = json.loads((ocr_bundle / "segrt.json").read_text())
    data["classes"] = ["background", "text", "table"]  # one score channel means two classes
    (bad / "segrt.json").write_text(json.dumps(data))
    with pytest.raises(ModelFormatError, match="names 3 classes; the model's output .* has 1 channel"):
        load(bad, device="cpu")


def test_int8_of_an_opset_12_model(ocr_bundle, tmp_path, photos) -> None:
    """PP-OCR's graph is opset 12, where DequantizeLinear has no per-channel ``axis``: `segrt quantize`
    upgrades it to 13 first (onnxruntime writes per-channel Q/DQ whatever the opset; the result would not
    load). Calibrated on four photos, the INT8 variant still finds the page's text: 0.957 pixel agreement
    with FP32 on skimage's page, measured (text edges at the 0.3 threshold are what moves)."""
    import onnx
    import skimage.data

    from segrt.export.quantize import QuantizeConfig, quantize_bundle

    assert onnx.load(str(PPOCR), load_external_data=False).opset_import[0].version == 12
    calib, held = tmp_path / "calib", tmp_path / "held"
    calib.mkdir()
    held.mkdir()
    for name, img in photos.items():
        cv2.imwrite(str(calib / f"{name}.png"), img if img.ndim == 2 else img[:, :, ::-1])
    page = skimage.data.page()
    cv2.imwrite(str(held / "page.png"), page)
    cfg = QuantizeConfig("int8", calib=calib, samples=4, eval_images=held, min_score=0.95)
    m = quantize_bundle(ocr_bundle, tmp_path / "int8", cfg)
    assert m.quantization["gate"]["passed"]
    model = onnx.load(str(tmp_path / "int8" / "model.onnx"))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 13
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute)]
    assert len(per_channel) > 10
    fp32, int8 = load(ocr_bundle, device="cpu")(page).label_map, load(tmp_path / "int8", device="cpu")(page).label_map
    assert (fp32 == int8).mean() == pytest.approx(m.quantization["gate"]["score"], abs=1e-9)
    ink = page < 60
    near_text = cv2.dilate(int8, np.ones((7, 7), np.uint8)).astype(bool)
    assert (ink & near_text).sum() / ink.sum() >= 0.85  # the text lines are still found
