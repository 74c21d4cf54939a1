"""`segrt quantize` on a model that already went through a float16 converter (issue 17).

The fixture is made the way such models are published: the real PP-OCR detector, simplified (ONNX
Runtime's basic optimisation folds BatchNorm into Conv, as onnxsim and friends do), then converted with
ONNX Runtime's float16 converter with ``keep_io_types=True`` and Resize kept FP32 (onnxconverter-common's
default block list has it). Before graph_normalize, `--precision fp16` on it died in onnx.checker ("not in
SSA form: 'graph_input_cast_0'") and `--precision int8` wrote a QuantizeLinear on a float16 tensor that
ONNX Runtime refused (INVALID_GRAPH).
"""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from segrt.export.graph_normalize import constants_to_initializers, has_float16, normalize_to_fp32
from segrt.export.importer import ImportConfig, import_onnx
from segrt.export.quantize import QuantizeConfig, quantize_bundle
from segrt.runtime import load
from segrt.runtime.errors import ExportError

from .conftest import IMAGENET_MEAN, IMAGENET_STD, PPOCR


def _page_feed() -> np.ndarray:
    import skimage.data

    page = skimage.data.page()
    rgb = np.repeat(page[:, :, None], 3, axis=2).astype(np.float32) / 255.0
    x = (rgb - IMAGENET_MEAN) / IMAGENET_STD
    h, w = page.shape
    x = np.pad(x, ((0, math.ceil(h / 32) * 32 - h), (0, math.ceil(w / 32) * 32 - w), (0, 0)))
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def _run(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """(folder, the FP16-converted PP-OCR file, its imported bundle)."""
    from onnxruntime.transformers import float16

    tmp = tmp_path_factory.mktemp("mixed")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp / "simplified.onnx")
    ort.InferenceSession(str(PPOCR), so, providers=["CPUExecutionProvider"])
    with warnings.catch_warnings():  # "will be truncated" per tiny weight
        warnings.simplefilter("ignore", UserWarning)
        fp16 = float16.convert_float_to_float16(onnx.load(str(tmp / "simplified.onnx")), keep_io_types=True,
                                                op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, "Resize"])
    onnx.save(fp16, str(tmp / "ppocr_fp16.onnx"))
    import_onnx(ImportConfig(model=tmp / "ppocr_fp16.onnx", threshold=0.3, classes=("background", "text")),
                tmp / "bundle")
    return tmp, tmp / "ppocr_fp16.onnx", tmp / "bundle"


def test_fixture_is_the_mixed_precision_kind(mixed) -> None:
    _, path, _ = mixed
    model = onnx.load(str(path))
    fp16 = onnx.TensorProto.FLOAT16
    assert sum(t.data_type == fp16 for t in model.graph.initializer) > 100
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert "graph_input_cast_0" in {o for n in casts for o in n.output} and len(casts) > 4


def test_normalised_graph_is_plain_fp32_and_computes_the_original(mixed) -> None:
    """No float16 tensor and no Cast left; the output is PP-OCR's FP32 output up to FP16 weight rounding
    (measured: max |dp| 0.038, mean 7e-5, 99.99% of text pixels agree)."""
    _, path, _ = mixed
    model = onnx.load(str(path))
    facts = normalize_to_fp32(model)
    assert facts["float16_tensors_widened"] > 100 and facts["fp32_round_trip_casts_dropped"] > 4
    assert not has_float16(model)
    assert not [n for n in model.graph.node if n.op_type in ("Cast", "Identity")]
    x = _page_feed()
    ref, got = _run(str(PPOCR), x), _run(model, x)
    assert np.abs(got - ref).mean() < 1e-3 and np.abs(got - ref).max() < 0.1
    assert ((got > 0.3) == (ref > 0.3)).mean() > 0.999
    assert normalize_to_fp32(onnx.load(str(PPOCR))) is None  # a plain FP32 graph is left alone


def _page_folders(tmp, photos) -> tuple:
    import skimage.data

    calib, held = tmp / "calib", tmp / "held"
    for folder in (calib, held):
        folder.mkdir(exist_ok=True)
    for name, img in photos.items():
        cv2.imwrite(str(calib / f"{name}.png"), img if img.ndim == 2 else img[:, :, ::-1])
    cv2.imwrite(str(held / "page.png"), skimage.data.page())
    return calib, held


def _text_found(bundle, page: np.ndarray) -> float:
    near = cv2.dilate(load(bundle, device="cpu")(page).label_map, np.ones((7, 7), np.uint8)).astype(bool)
    ink = page < 60
    return float((ink & near).sum() / ink.sum())


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_fp16_and_int8_of_the_mixed_model(mixed, tmp_path, photos, precision) -> None:
    """Both variants are written, load, pass the gate on the page and find its text. The bounds are the
    ones a plain FP32 PP-OCR meets (test_import: INT8 0.957 agreement); FP16 of the normalised graph agrees
    on 99.9% of pixels (a converter that kept the old casts or dropped a weight would not)."""
    import skimage.data

    folder, _, bundle = mixed
    calib, held = _page_folders(folder, photos)
    minimum = 0.999 if precision == "fp16" else 0.95
    cfg = QuantizeConfig(precision, calib=calib, samples=4, eval_images=held, min_score=minimum,
                         target="tensorrt" if precision == "int8" else "cpu")
    m = quantize_bundle(bundle, tmp_path / precision, cfg)
    assert m.quantization["gate"]["passed"]
    facts = m.quantization["graphs"]["model.onnx"]
    assert facts["normalized_from_mixed_precision"]["fp32_round_trip_casts_dropped"] > 4
    model = onnx.load(str(tmp_path / precision / "model.onnx"))
    if precision == "int8":
        assert not has_float16(model)
        q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
        assert len(q) > 50 and not [n for n in model.graph.node if n.op_type == "Cast"]
    page = skimage.data.page()
    assert _text_found(tmp_path / precision, page) >= 0.85
    assert abs(_text_found(tmp_path / precision, page) - _text_found(bundle, page)) < 0.05


def test_fp16_io_model_is_refused_with_one_line(tmp_path) -> None:
    from onnxruntime.transformers import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = float16.convert_float_to_float16(onnx.load(str(PPOCR)), keep_io_types=False)
    with pytest.raises(ExportError, match="float16: it is an FP16 model already"):
        normalize_to_fp32(model)


def test_a_converter_failure_is_one_typed_line(mixed) -> None:
    """The converter on the mixed graph as it was (not normalised) still fails, now as one ExportError line."""
    from segrt.export.fp16 import convert

    _, path, _ = mixed
    with pytest.raises(ExportError, match=r"^FP16 conversion failed \(ValidationError: .*SSA[^\n]*$"):
        convert(onnx.load(str(path)), QuantizeConfig("fp16"), [], [])


def test_branches_reading_float16_values_are_widened_too() -> None:
    """An If whose branches compute in FP16 on a value cast outside them (what converters leave around
    torchvision's NMS branches): after normalisation no float16 is left anywhere and ONNX Runtime computes
    the same values."""
    from onnx import TensorProto, helper, numpy_helper

    branch = {k: helper.make_graph([helper.make_node(op, ["x16", "half"], [f"{k}_out"])], k, [],
                                   [helper.make_tensor_value_info(f"{k}_out", TensorProto.FLOAT16, [1, 4])],
                                   [numpy_helper.from_array(np.full((1, 4), 0.5, np.float16), "half")])
              for k, op in (("then", "Mul"), ("else_", "Sub"))}
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
         helper.make_node("If", ["flag"], ["y16"], then_branch=branch["then"], else_branch=branch["else_"]),
         helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT)],
        "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                  helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"x": np.array([[1.0, 2.0, 3.0, 4.0]], np.float32), "flag": np.array(f)} for f in (True, False)]
    before = [ort.InferenceSession(model.SerializeToString()).run(None, f)[0] for f in feeds]
    normalize_to_fp32(model)
    assert not has_float16(model) and not [n for n in model.graph.node if n.op_type == "Cast"]
    after = [ort.InferenceSession(model.SerializeToString()).run(None, f)[0] for f in feeds]
    np.testing.assert_array_equal(after[0], before[0])  # 0.5, 1, 1.5, 2: exact in both precisions
    np.testing.assert_array_equal(after[1], before[1])


def test_two_outputs_cast_from_one_tensor_both_keep_a_producer() -> None:
    """Two graph outputs that are FP32 casts of one FP16 tensor (a converter's keep_io_types on a model
    returning one tensor twice): the first takes over the producer, the second becomes an Identity of it."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([[0.5, 2.0, -1.0, 4.0]], np.float16), "w")
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
         helper.make_node("Mul", ["x16", "w"], ["y16"]),
         helper.make_node("Cast", ["y16"], ["a"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["y16"], ["b"], to=TensorProto.FLOAT)],
        "twice", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("a", "b")], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = {"x": np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)}
    before = ort.InferenceSession(model.SerializeToString()).run(None, x)
    normalize_to_fp32(model)
    assert not has_float16(model) and [n.op_type for n in model.graph.node] == ["Mul", "Identity"]
    after = ort.InferenceSession(model.SerializeToString()).run(None, x)
    for got, want in zip(after, before):
        np.testing.assert_array_equal(got, want)  # exact: the products are exact in both precisions


def test_constant_weights_become_initializers() -> None:
    """PP-OCR stores its 342 weights as Constant nodes; made initializers, the graph computes the same."""
    model = onnx.load(str(PPOCR))
    x = _page_feed()
    before = _run(model, x)
    assert constants_to_initializers(model) == 342 and not [n for n in model.graph.node if n.op_type == "Constant"]
    onnx.checker.check_model(model)
    np.testing.assert_array_equal(_run(model, x), before)
