"""The openvino-cpu backend (device="openvino") answers like ONNX Runtime's CPU provider on real trained models,
through Python and the CLI; a missing ``openvino`` package is a one-line BackendUnavailableError."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from segrt.export.importer import ImportConfig, import_onnx
from segrt.runtime.backends import BACKENDS, RunnerOptions, select_runner
from segrt.runtime.backends.openvino import PRECISION, OpenVinoCpuRunner
from segrt.runtime.semantic import Segmenter

from .conftest import PPOCR

pytestmark = pytest.mark.skipif(OpenVinoCpuRunner.unavailable_reason() is not None,
                                reason=f"openvino-cpu unavailable here: {OpenVinoCpuRunner.unavailable_reason()}")

MIN_AGREEMENT = 0.999
#: FP32 on both sides, different kernels (oneDNN vs MLAS) and summation orders. Measured (2026-12-02, a 2-core
#: x86 without bf16): U-Net logits 5.0e-6, PP-OCR probabilities 2.7e-5. bf16 (OpenVINO's default on CPUs with
#: AMX/AVX512-BF16, which segrt overrides) keeps 8 mantissa bits: ~1e-2 on these, far outside the bound
MAX_ABS_DIFF = 1e-4


def _small(image: np.ndarray, side: int = 64) -> np.ndarray:
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)


def _compare(bundle: Path, images: list[np.ndarray]) -> tuple[float, float, int]:
    """Label-map agreement and max abs score difference, ONNX Runtime vs OpenVINO; classes seen."""
    with Segmenter(bundle, "cpu", threads=1) as ort_seg, Segmenter(bundle, "openvino", threads=1) as ov_seg:
        assert ort_seg.runner.name == "onnxruntime-cpu" and ov_seg.runner.name == "openvino-cpu"
        assert ov_seg.runner.inference_precision() == PRECISION
        same = total = 0
        worst = 0.0
        classes: set[int] = set()
        for image in images:
            tensor, _ = ort_seg.preprocess([ort_seg.prepare(image)])
            worst = max(worst, float(np.abs(ort_seg.infer(tensor) - ov_seg.infer(tensor)).max()))
            ours, theirs = ort_seg(image).label_map, ov_seg(image).label_map
            assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
            same, total = same + int((ours == theirs).sum()), total + ours.size
            classes |= set(np.unique(ours).tolist())
    return same / total, worst, len(classes)


@pytest.fixture(scope="module")
def ocr_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ocr") / "bundle"
    import_onnx(ImportConfig(model=PPOCR, threshold=0.3, classes=("background", "text")), out)
    return out


def test_listed_after_onnxruntime_cpu_so_auto_is_unchanged() -> None:
    names = [b.name for b in BACKENDS]
    assert names.index("openvino-cpu") == names.index("onnxruntime-cpu") + 1
    runner, _ = select_runner(PPOCR, "auto", RunnerOptions(threads=1))
    assert runner.name == "onnxruntime-cpu"  # auto keeps today's choice where ONNX Runtime's CPU provider exists


def test_unet_label_maps_equal_onnxruntime(unet_trained, photos) -> None:
    val = sorted((unet_trained.val / "images").glob("*.png"))[:4]
    images = [_small(photos[k]) for k in ("astronaut", "coffee", "chelsea")]
    images += [cv2.imread(str(p))[:, :, ::-1] for p in val]  # 96x96 scenes of the fixture's own classes
    agreement, worst, classes = _compare(unet_trained.bundle, images)
    assert classes > 1  # a trained model: not all background
    assert agreement >= MIN_AGREEMENT and worst <= MAX_ABS_DIFF, (agreement, worst)


def test_ppocr_label_maps_equal_onnxruntime(ocr_bundle) -> None:
    import skimage.data

    page = skimage.data.page()  # 191x384 grey page of text
    images = [page[:96, :160], page[90:, 200:]]
    agreement, worst, classes = _compare(ocr_bundle, images)
    assert classes == 2  # text found
    assert agreement >= MIN_AGREEMENT and worst <= MAX_ABS_DIFF, (agreement, worst)


@pytest.fixture(scope="module")
def unet_int8(unet_trained, tmp_path_factory) -> Path:
    """A static QDQ INT8 variant of the trained U-Net (4 calibration images, gated on 4 held-out ones; ~8 s)."""
    import shutil

    from segrt.export.quantize import QuantizeConfig, quantize_bundle

    tmp = tmp_path_factory.mktemp("int8")
    images = sorted((unet_trained.val / "images").glob("*.png"))
    for folder, part in (("calib", images[:4]), ("held", images[4:8])):
        (tmp / folder).mkdir()
        for path in part:
            shutil.copy(path, tmp / folder)
    fp32 = tmp / "fp32"  # a private copy: the shared fixture's calibration cache is left alone
    shutil.copytree(unet_trained.bundle, fp32, ignore=shutil.ignore_patterns("calibration"))
    quantize_bundle(fp32, tmp / "int8", QuantizeConfig("int8", calib=tmp / "calib", samples=4, eval_images=tmp / "held"))
    return tmp / "int8"


def test_int8_qdq_bundle_runs_int8_and_agrees(unet_int8, unet_trained, photos) -> None:
    """OpenVINO runs the QDQ convolutions in u8 (its own INT8 arithmetic, not ONNX Runtime's U8S8 kernels, so
    not bit-equal): its label maps must agree with ONNX Runtime's INT8 and FP32 ones at the quantize gate's
    0.98 pixel agreement. Measured: 0.994 against ONNX Runtime INT8 (max logit difference 1.1)."""
    with OpenVinoCpuRunner(unet_int8 / "model.onnx", RunnerOptions(threads=1)) as runner:
        layers = runner._compiled.get_runtime_model().get_ops()
        precisions = {str(op.get_rt_info()["runtimePrecision"].astype(str)) for op in layers
                      if str(op.get_rt_info()["layerType"].astype(str)) == "Convolution"}
    assert precisions == {"u8"}, precisions
    images = [_small(photos[k]) for k in ("astronaut", "coffee", "chelsea")]
    images += [cv2.imread(str(p))[:, :, ::-1] for p in sorted((unet_trained.val / "images").glob("*.png"))[:4]]
    agreement, _, classes = _compare(unet_int8, images)
    assert classes > 1 and agreement >= 0.98, agreement
    with Segmenter(unet_trained.bundle, "cpu", threads=1) as fp32, Segmenter(unet_int8, "openvino", threads=1) as ov:
        same = [float((fp32(im).label_map == ov(im).label_map).mean()) for im in images]
    assert float(np.mean(same)) >= 0.98, same


def _instance_agreement(ref, res, threshold: float) -> dict[str, float]:
    """ONNX Runtime's detections (``ref``) reproduced by OpenVINO's (``res``): same label, box and mask IoU
    >= 0.98, score within 1e-3; and the highest OpenVINO score above the threshold that ONNX Runtime lacks."""
    from segrt.runtime.matching import box_iou, match_instances

    pairs = match_instances(ref.labels, ref.masks, res.labels, res.masks)
    good = [(i, j) for i, j, iou in pairs if iou >= 0.98 and box_iou(ref.boxes[i:i + 1], res.boxes[j:j + 1])[0, 0] >= 0.98
            and abs(float(ref.scores[i]) - float(res.scores[j])) <= 1e-3]
    matched = {j for _, j in good}
    extra = [float(s) - threshold for j, s in enumerate(res.scores) if j not in matched]
    return {"ref": len(ref), "matched": len(good), "extra": max(extra, default=0.0)}


@pytest.mark.slow
def test_maskrcnn_instances_equal_onnxruntime(maskrcnn, photos) -> None:
    from segrt.runtime import InstanceSegmenter
    from segrt.runtime.image import read_image

    images = [read_image(p) for p in sorted((maskrcnn.val / "images").iterdir())[:4]] + [photos["coffee"][::4, ::4]]
    with InstanceSegmenter(maskrcnn.bundle, "cpu", threads=1) as ort_det, \
            InstanceSegmenter(maskrcnn.bundle, "openvino", threads=1) as ov_det:
        assert ov_det.runner.name == "openvino-cpu"
        checks = [_instance_agreement(ort_det(im), ov_det(im), ort_det.score_threshold) for im in images]
    assert sum(c["ref"] for c in checks) >= 4, checks  # detections to compare: not an empty agreement
    assert sum(c["matched"] for c in checks) >= 0.95 * sum(c["ref"] for c in checks), checks
    assert max(c["extra"] for c in checks) <= 0.01, checks


def test_threads_and_dynamic_shapes() -> None:
    with OpenVinoCpuRunner(PPOCR, RunnerOptions(threads=1)) as runner:
        assert runner._compiled.get_property("INFERENCE_NUM_THREADS") == 1
        (spec,) = runner.input_specs()
        assert spec.name == "x" and spec.is_dynamic and spec.dtype == np.float32
        for hw in ((32, 64), (64, 32)):  # one compiled model, two shapes
            out = runner.infer({"x": np.zeros((1, 3, *hw), np.float32)})
            assert out["sigmoid_0.tmp_0"].shape == (1, 1, *hw)


def segrt(*args: object, hide_openvino: bool = False) -> subprocess.CompletedProcess:
    prelude = "import sys\nsys.modules['openvino'] = None\n" if hide_openvino else "import sys\n"
    code = prelude + textwrap.dedent(
        """
        from segrt.runtime.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cli_run_with_device_openvino_writes_onnxruntimes_labels(ocr_bundle, tmp_path) -> None:
    import skimage.data

    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "page.png"), skimage.data.page()[:96, :160])
    for device in ("cpu", "openvino"):
        proc = segrt("run", ocr_bundle, "--input", folder, "--out", tmp_path / device, "--device", device)
        assert proc.returncode == 0, proc.stderr
    ours, theirs = (cv2.imread(str(tmp_path / d / "page.labels.png"), cv2.IMREAD_UNCHANGED) for d in ("cpu", "openvino"))
    assert ours.any() and float((ours == theirs).mean()) >= MIN_AGREEMENT


def test_info_lists_the_backend(ocr_bundle) -> None:
    proc = segrt("info", ocr_bundle, "--json")
    assert proc.returncode == 0, proc.stderr
    backends = json.loads(proc.stdout)["backends"]
    assert backends.index("openvino-cpu") > backends.index("onnxruntime-cpu")
    proc = segrt("info", ocr_bundle)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("backends"))
    assert "onnxruntime-cpu" in row and "openvino-cpu" in row


def test_missing_openvino_is_one_line_backend_unavailable(ocr_bundle, tmp_path) -> None:
    import skimage.data

    image = tmp_path / "page.png"
    cv2.imwrite(str(image), skimage.data.page()[:64, :64])
    proc = segrt("run", ocr_bundle, "--input", image, "--out", tmp_path / "o", "--device", "openvino", hide_openvino=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segrt: error:"), proc.stderr
    assert "openvino-cpu: openvino is not installed (pip install 'segrt[openvino]')" in lines[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # nothing half-written
    proc = segrt("info", ocr_bundle, hide_openvino=True)  # ONNX Runtime still runs; the list drops openvino
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("backends"))
    assert "onnxruntime-cpu" in row and "openvino" not in row

    code = "import sys\nimport segrt.runtime\nprint('openvino' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr  # lazy: not imported with runtime/
