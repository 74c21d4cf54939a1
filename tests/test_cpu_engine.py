"""``segrt build --device cpu`` measures ONNX Runtime against OpenVINO per graph and records the faster one in
``cpu_engine.json``; ``select_runner(..., "auto")`` follows a record measured on this CPU and ignores any other."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from segrt.export.cpu_choice import MAX_RELATIVE_DIFF, choose, output_agreement
from segrt.export.importer import ImportConfig, import_onnx
from segrt.runtime.backends import select_runner
from segrt.runtime.backends.openvino import OpenVinoCpuRunner
from segrt.runtime.backends.ort import OrtCpuRunner
from segrt.runtime.cli import main
from segrt.runtime.cpu_engine import RECORD_NAME, cpu_model, read_record
from segrt.runtime.errors import ModelFormatError

from .conftest import DATA, PPOCR, conv_onnx

needs_openvino = pytest.mark.skipif(OpenVinoCpuRunner.unavailable_reason() is not None,
                                    reason=f"openvino-cpu unavailable here: {OpenVinoCpuRunner.unavailable_reason()}")


@pytest.fixture(scope="module")
def ocr_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ocr") / "bundle"
    import_onnx(ImportConfig(model=PPOCR, threshold=0.3, classes=("background", "text")), out)
    return out


def _record(cpu: str, graphs: dict[str, tuple[str, float]]) -> dict:
    return {"format_version": 1, "cpu": cpu, "measured": "2026-12-02T16:00:00+00:00",
            "graphs": {g: {"backend": b, "ratio": {"median": r, "q1": r - 0.02, "q3": r + 0.02}}
                       for g, (b, r) in graphs.items()}}


@pytest.fixture
def model(tmp_path) -> Path:
    """A bare real ONNX graph in a folder: select_runner looks for the record beside it."""
    conv_onnx(tmp_path / "model.onnx")
    return tmp_path / "model.onnx"


def _write(model: Path, record: dict | str) -> None:
    text = record if isinstance(record, str) else json.dumps(record)
    (model.parent / RECORD_NAME).write_text(text, encoding="utf-8")


# -- the measurement -------------------------------------------------------------------------------------------
@needs_openvino
def test_build_cpu_writes_a_record_whose_choice_follows_its_ratio(ocr_bundle, capsys) -> None:
    import onnxruntime
    import openvino

    assert main(["build", str(ocr_bundle), "--device", "cpu", "--pairs", "3", "--threads", "2",
                 "--image", str(DATA / "page.png")]) == 0
    data = json.loads((ocr_bundle / RECORD_NAME).read_text())
    assert data["cpu"] == cpu_model() and data["input"] == {"source": str(DATA / "page.png"), "shape": [191, 384]}  # grey page
    assert data["versions"]["onnxruntime"] == onnxruntime.__version__
    assert data["versions"]["openvino"] == openvino.get_version() and data["versions"]["segrt"]
    g = data["graphs"]["model.onnx"]
    assert list(data["graphs"]) == ["model.onnx"] and g["pairs"] == 3 and g["threads"] == 2
    assert set(g["p50_ms"]) == {"onnxruntime-cpu", "openvino-cpu"} and min(g["p50_ms"].values()) > 0
    r = g["ratio"]
    assert r["pairs"] == 3 and r["min"] <= r["q1"] <= r["median"] <= r["q3"] <= r["max"]
    # FP32 on both engines: PP-OCR's text probabilities within 1e-3 of their range (measured 1.6e-4 on noise)
    out = g["agreement"]["outputs"]["sigmoid_0.tmp_0"]
    assert g["agreement"]["passed"] and out["shape"] == [1, 1, 192, 384] and out["relative"] <= MAX_RELATIVE_DIFF
    clearly_faster = r["median"] < 1 and r["q3"] < 1
    assert g["backend"] == ("openvino-cpu" if clearly_faster else "onnxruntime-cpu")
    assert read_record(ocr_bundle).graphs["model.onnx"].backend == g["backend"]
    assert f"model.onnx -> {g['backend']}" in capsys.readouterr().out
    runner, _ = select_runner(ocr_bundle / "model.onnx", "auto")
    assert runner.name == g["backend"]


def test_choice_rule() -> None:
    assert choose({"median": 0.80, "q3": 0.90}, agrees=True) == "openvino-cpu"
    assert choose({"median": 0.80, "q3": 0.90}, agrees=False) == "onnxruntime-cpu"  # faster but answers differ
    assert choose({"median": 0.95, "q3": 1.02}, agrees=True) == "onnxruntime-cpu"  # not clearly faster
    assert choose({"median": 1.08, "q3": 1.10}, agrees=True) == "onnxruntime-cpu"


def test_output_agreement_worked_examples() -> None:
    ramp = np.linspace(0.0, 10.0, 101, dtype=np.float32)  # range 10: the bound is 0.01
    assert output_agreement({"p": ramp}, {"p": ramp + 0.009})["passed"]
    near = output_agreement({"p": ramp}, {"p": ramp + 0.02})
    assert not near["passed"] and near["max_relative_diff"] == pytest.approx(0.002, rel=1e-3)
    boxes = np.array([[10.0, 20.0, 400.0, 300.0]], np.float32)  # range 390: 0.39 px passes, one label off fails
    assert output_agreement({"boxes": boxes, "labels": np.array([3])},
                            {"boxes": boxes + 0.3, "labels": np.array([3])})["passed"]
    assert not output_agreement({"labels": np.array([3, 7])}, {"labels": np.array([3, 8])})["passed"]
    assert not output_agreement({"boxes": boxes}, {"boxes": np.zeros((0, 4), np.float32)})["passed"]  # count
    scores = np.zeros((1, 3, 10, 100), np.float32)
    scores[:, 1] = 1.0
    flipped = scores.copy()
    flipped[0, 2, 0, 0] = 2.0  # one pixel of 1000 changes class: argmax agreement 0.999
    res = output_agreement({"s": scores}, {"s": flipped})
    assert res["passed"] and res["outputs"]["s"]["argmax_agreement"] == pytest.approx(0.999)
    flipped[0, 2, 0, 1] = 2.0
    assert not output_agreement({"s": scores}, {"s": flipped})["passed"]


def test_probabilities_agree_within_a_hundredth_on_the_same_side_of_a_half() -> None:
    masks = np.linspace(0.0, 1.0, 2000, dtype=np.float32).reshape(2, 1, 1000)  # range 1: the plain bound is 1e-3
    close = np.clip(masks + 0.004, 0, 1)  # 0.4 % of the values cross 0.5, above the 0.1 % allowed
    assert not output_agreement({"masks": masks}, {"masks": close})["passed"]
    away = masks.copy()
    away[np.abs(masks - 0.5) > 0.01] += 0.004  # the same shift away from the threshold: no value crosses it
    res = output_agreement({"masks": masks}, {"masks": np.clip(away, 0, 1)})["outputs"]["masks"]
    assert res["passed"] and res["half_agreement"] == 1.0 and res["relative"] > MAX_RELATIVE_DIFF
    far = masks.copy()
    far[0, 0, :10] += 0.02  # 0.5 % of values, all below 0.01: stays below a half, but moves more than 0.01
    assert not output_agreement({"masks": masks}, {"masks": far})["passed"]


# -- selection from hand-written records --------------------------------------------------------------------------
@needs_openvino
def test_auto_takes_openvino_when_this_cpus_record_chose_it(model, caplog) -> None:
    _write(model, _record(cpu_model(), {"model.onnx": ("openvino-cpu", 0.8)}))
    caplog.set_level(logging.INFO, logger="segrt")
    runner, skipped = select_runner(model, "auto")
    assert isinstance(runner, OpenVinoCpuRunner)
    assert not any(s.startswith(("onnxruntime-cpu", "openvino-cpu")) for s in skipped)  # tried first, not skipped
    assert "cpu_engine.json: openvino-cpu (openvino-cpu at 0.80x" in caplog.text and cpu_model() in caplog.text
    assert isinstance(select_runner(model, "cpu")[0], OrtCpuRunner)  # device="cpu" still means ONNX Runtime
    assert isinstance(select_runner(model, "openvino")[0], OpenVinoCpuRunner)


@needs_openvino
def test_a_record_from_another_cpu_is_ignored(model, caplog) -> None:
    _write(model, _record("AMD EPYC 7B13 64-Core Processor (not this one)", {"model.onnx": ("openvino-cpu", 0.8)}))
    caplog.set_level(logging.INFO, logger="segrt")
    runner, _ = select_runner(model, "auto")
    assert isinstance(runner, OrtCpuRunner)
    assert "cpu_engine.json ignored: measured on AMD EPYC 7B13" in caplog.text


def test_a_record_naming_onnxruntime_keeps_it(model) -> None:
    _write(model, _record(cpu_model(), {"model.onnx": ("onnxruntime-cpu", 1.08)}))
    runner, skipped = select_runner(model, "auto")
    assert isinstance(runner, OrtCpuRunner) and not any(s.startswith("openvino") for s in skipped)


def test_a_record_without_this_graph_keeps_the_default_order(model, caplog) -> None:
    _write(model, _record(cpu_model(), {"decoder.onnx": ("openvino-cpu", 0.7)}))
    caplog.set_level(logging.INFO, logger="segrt")
    assert isinstance(select_runner(model, "auto")[0], OrtCpuRunner)
    assert "cpu_engine.json has no entry for model.onnx (graphs: decoder.onnx)" in caplog.text


@pytest.mark.parametrize("text, says", [
    ("{not json", "is not valid JSON"),
    (json.dumps(_record("x", {"model.onnx": ("tensorrt", 0.5)})), "must name a backend of onnxruntime-cpu, openvino-cpu"),
    (json.dumps({"cpu": "x"}), "needs a 'cpu' string and a 'graphs' object"),
])
def test_a_broken_record_is_a_typed_error_and_auto_ignores_it(model, caplog, text, says) -> None:
    _write(model, text)
    with pytest.raises(ModelFormatError, match=says):
        read_record(model.parent)
    caplog.set_level(logging.INFO, logger="segrt")
    assert isinstance(select_runner(model, "auto")[0], OrtCpuRunner)  # a stale hint never stops a load
    assert "cpu_engine.json ignored" in caplog.text and says in caplog.text


# -- without OpenVINO --------------------------------------------------------------------------------------------
def _hidden_openvino(code: str) -> subprocess.CompletedProcess:
    prelude = "import sys\nsys.modules['openvino'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_without_openvino_build_cpu_says_what_to_install_and_auto_falls_back(model) -> None:
    """OpenVINO hidden in a fresh process (as on an install without the extra): one line, exit 2; a record
    naming openvino-cpu then only costs a skip line."""
    _write(model, _record(cpu_model(), {"model.onnx": ("openvino-cpu", 0.8)}))
    import_dir = model.parent / "bundle"
    import_onnx(ImportConfig(model=model), import_dir)
    proc = _hidden_openvino(f"""
        from segrt.runtime.cli import main
        from segrt.runtime.backends import select_runner
        runner, skipped = select_runner({str(model)!r}, "auto")
        print(runner.name, [s for s in skipped if s.startswith("openvino")])
        sys.exit(main(["build", {str(import_dir)!r}, "--device", "cpu"]))
        """)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("onnxruntime-cpu [\"openvino-cpu: openvino is not installed")
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'segrt[openvino]'" in lines[0] and lines[0].startswith("segrt: error:")
    assert not (import_dir / RECORD_NAME).exists()


@pytest.mark.parametrize("flags, says", [
    (("--device", "cpu", "--min", "256x256", "--force"), "--min, --force apply to segrt build --device tensorrt only"),
    (("--pairs", "3", "--threads", "2"), "--pairs, --threads apply to segrt build --device cpu only"),
])
def test_flags_of_the_other_device_are_refused(ocr_bundle, capsys, flags, says) -> None:
    assert main(["build", str(ocr_bundle), *flags]) == 2  # before anything is measured or built
    assert says in capsys.readouterr().err
