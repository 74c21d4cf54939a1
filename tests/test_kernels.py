"""Native (C++) kernels against their NumPy twin: bit-identical integer outputs, float outputs identical
or within a stated tolerance, on random and real inputs and the edge cases; plus the switch between them."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from segrt.runtime import kernels, prepost
from segrt.runtime.errors import InvalidInputError
from segrt.runtime.kernels import Taps, chain
from segrt.runtime.manifest import InputSpec, OutputSpec

pytestmark = pytest.mark.skipif(not kernels.native_available(), reason="C++ extension not built (no compiler at install)")
RNG = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def restore_impl():
    before = kernels.active()
    yield
    kernels.use(before)


def both(fn, *args, **kwargs):
    """fn under the native then the reference implementation."""
    kernels.use("native")
    a = fn(*args, **kwargs)
    kernels.use("reference")
    b = fn(*args, **kwargs)
    return a, b


def same(a, b) -> None:
    if isinstance(a, tuple):
        for x, y in zip(a, b):
            same(x, y)
    elif a is None:
        assert b is None
    else:
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


# -- preprocessing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("src_hw, dst_hw", [((1, 1), (1, 1)), ((1, 1), (7, 5)), ((37, 53), (37, 53)), ((37, 53), (64, 31)),
                                             ((481, 641), (240, 320)), ((2, 3), (513, 1))])
def test_resize_normalize_is_identical(dtype, src_hw, dst_hw) -> None:
    hi = 255 if dtype == np.uint8 else 65535 if dtype == np.uint16 else 1.0
    image = (RNG.random((*src_hw, 3)) * hi).astype(dtype)
    a, b = np.array([0.017, 0.018, 0.0175], np.float32), np.array([-2.1, -2.0, -1.8], np.float32)
    rows, cols = Taps.linear(src_hw[0], dst_hw[0]), Taps.linear(src_hw[1], dst_hw[1])
    for out_dtype in (np.float32, np.float16):
        outs = []
        for name in ("native", "reference"):
            kernels.use(name)
            out = np.zeros((3, dst_hw[0] + 3, dst_hw[1] + 2), out_dtype)
            kernels.resize_normalize(image, rows, cols, a, b, out, 2, 1)
            outs.append(out)
        same(outs[0], outs[1])
        assert not outs[0][:, :2].any() and not outs[0][:, :, :1].any()  # padding untouched


def test_preprocess_of_real_photos_and_16_bit_medical_images(photos) -> None:
    import tifffile

    from .conftest import NUCLEI

    nuclei = tifffile.imread(NUCLEI)  # stardist's fluorescence image, uint16
    cases = [(photos["chelsea"], InputSpec(name="x", channels=3, resize="letterbox", size=(256, 256))),
             (photos["astronaut"][::2, ::3], InputSpec(name="x", channels=3)),  # non-contiguous view
             (photos["coffee"], InputSpec(name="x", channels=3, resize="shortest_edge", min_size=200, max_size=333)),
             ((nuclei * np.uint16(211))[:, :, None],
              InputSpec(name="x", channels=1, color="gray", mean=(0.5,), std=(0.25,), intensity="minmax", resize="stretch",
                        size=(100, 90)))]
    for image, spec in cases:
        (t1, f1), (t2, f2) = both(prepost.preprocess, [image], spec)
        same(t1, t2)
        assert f1 == f2
    # Unresized pixels are exactly the normalisation formula (no interpolation error at all).
    image = photos["chelsea"]
    t, _ = prepost.preprocess([image], InputSpec(name="x", channels=3))
    want = (image.astype(np.float32) * (1 / (255 * np.float32(0.229))))[:, :, 0]
    np.testing.assert_allclose(t[0, 0, :300, :451], want - np.float32(0.485 / 0.229), atol=1e-5)


# -- semantic post ---------------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [1, 2, 21, 300])
@pytest.mark.parametrize("case", ["same", "quarter", "letterbox", "tiny"])
def test_upsample_argmax_is_identical(classes, case) -> None:
    spec = {"same": InputSpec(name="x", channels=3), "quarter": InputSpec(name="x", channels=3),
            "letterbox": InputSpec(name="x", channels=3, resize="letterbox", size=(128, 128)),
            "tiny": InputSpec(name="x", channels=3, resize="stretch", size=(8, 8))}[case]
    orig = {"same": (96, 160), "quarter": (270, 481), "letterbox": (301, 177), "tiny": (1, 1)}[case]
    frame = prepost.plan_frame(*orig, spec)
    low = frame.input_hw if case in ("same", "letterbox", "tiny") else (frame.input_hw[0] // 4, frame.input_hw[1] // 4)
    scores = RNG.normal(size=(classes, *low)).astype(np.float32)
    scores[:, ::7] = scores[:1, ::7]  # exact ties: both must pick the first class
    out = OutputSpec(name="y", activation="sigmoid" if classes == 1 else "softmax", threshold=0.3)
    labels = both(prepost.labels_from_scores, scores, frame, out, max(classes, 2))
    same(*labels)
    assert labels[0].shape == orig
    rows, cols = prepost.original_taps(low, frame)
    if classes > 1:
        (l1, c1), (l2, c2) = both(kernels.upsample_argmax, scores, rows, cols, confidence=True)
        same(l1, l2)
        np.testing.assert_allclose(c1, c2, rtol=2e-6)  # exp and the sum's order differ (libm vs NumPy)
        full = kernels.upsample(scores, rows, cols)
        np.testing.assert_array_equal(full.argmax(0), l1)
        p = np.exp(full - full.max(0))
        np.testing.assert_allclose(c1, 1 / p.sum(0), rtol=1e-5)


def test_one_pass_upsample_matches_opencv_two_step(photos) -> None:
    """The composed taps are OpenCV's resize -> crop -> resize, up to float rounding."""
    import cv2

    frame = prepost.plan_frame(300, 451, InputSpec(name="x", channels=3, resize="letterbox", size=(256, 256)))
    scores = RNG.normal(size=(3, 64, 64)).astype(np.float32)
    top, left, h, w = frame.content
    step = cv2.resize(scores.transpose(1, 2, 0), (256, 256), interpolation=cv2.INTER_LINEAR)[top : top + h, left : left + w]
    step = cv2.resize(np.ascontiguousarray(step), (451, 300), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    for name in ("native", "reference"):
        kernels.use(name)
        np.testing.assert_allclose(prepost.scores_to_original(scores, frame), step, atol=2e-5)


# -- SAM post --------------------------------------------------------------------------------------
@pytest.mark.parametrize("orig", [(1, 1), (480, 640), (333, 97)])
def test_sam_upscale_threshold_and_stability_are_identical(orig) -> None:
    from segrt.runtime.sam import preprocess_shape, upscale_taps

    low = RNG.normal(0, 3, size=(5, 256, 256)).astype(np.float32)
    taps = upscale_taps((256, 256), preprocess_shape(*orig, 1024), orig, 1024)
    (m1, c1), (m2, c2) = both(kernels.upsample_threshold, low, *taps, 0.0, 1.0, counts=True)
    same(m1, m2)
    same(c1, c2)
    logits = both(kernels.upsample, low, *taps)
    same(*logits)
    np.testing.assert_array_equal(m1, logits[0] > 0)
    np.testing.assert_array_equal(c1[:, 0], (logits[0] > 1).sum((1, 2)))
    np.testing.assert_array_equal(c1[:, 1], (logits[0] > -1).sum((1, 2)))


# -- Mask R-CNN paste ------------------------------------------------------------------------------
def test_paste_masks_is_identical_including_boxes_outside_the_image() -> None:
    n = 60
    masks = RNG.random((n, 28, 28)).astype(np.float32)
    x0, y0 = RNG.uniform(-80, 620, n), RNG.uniform(-80, 460, n)
    boxes = np.stack([x0, y0, x0 + RNG.uniform(0, 250, n), y0 + RNG.uniform(0, 250, n)], 1).astype(np.float32)
    boxes[0] = [-50, -40, -10, -5]  # fully outside
    boxes[1] = [600, 400, 900, 700]  # partly outside
    boxes[2] = [10, 10, 10.4, 10.2]  # under a pixel
    out = both(prepost.paste_masks, masks, boxes, (480, 640), 0.5)
    same(*out)
    assert not out[0][0].any() and out[0][1].any()
    zero = both(prepost.paste_masks, masks[:0], boxes[:0], (480, 640))
    same(*zero)
    assert zero[0].shape == (0, 480, 640)
    one = both(prepost.paste_masks, masks[:3], np.array([[0, 0, 0.5, 0.5]] * 3, np.float32), (1, 1))
    same(*one)


def test_paste_matches_torchvision() -> None:
    torch = pytest.importorskip("torch")
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    masks = RNG.random((20, 28, 28)).astype(np.float32)
    x0, y0 = RNG.uniform(-30, 300, 20), RNG.uniform(-30, 200, 20)
    boxes = np.stack([x0, y0, x0 + RNG.uniform(1, 200, 20), y0 + RNG.uniform(1, 200, 20)], 1).astype(np.float32)
    want = paste_masks_in_image(torch.from_numpy(masks[:, None]), torch.from_numpy(boxes), (240, 320))[:, 0].numpy() > 0.5
    for name in ("native", "reference"):
        kernels.use(name)
        got = prepost.paste_masks(masks, boxes, (240, 320), 0.5)
        assert (got == want).mean() > 0.9999, name


# -- RLE and overlay -------------------------------------------------------------------------------
def test_rle_strings_are_pycocotools_strings(photos) -> None:
    from pycocotools import mask as mask_utils

    gray = photos["camera"]
    masks = np.stack([gray > 128, gray < 20, np.zeros_like(gray, bool), np.ones_like(gray, bool)])
    masks = np.concatenate([masks, RNG.random((3, *gray.shape)) > 0.5])
    (r1, r2) = both(prepost.rle_encode, masks)
    assert r1 == r2
    for rle, m in zip(r1, masks):
        np.testing.assert_array_equal(mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}), m)
    odd = both(kernels.rle_strings, (RNG.random((2, 1, 1)) > 0.5))
    assert odd[0] == odd[1]
    assert both(prepost.rle_encode, masks[:0]) == ([], [])


def test_overlay_is_identical(photos) -> None:
    image = photos["coffee"]
    labels = (RNG.random(image.shape[:2]) * 4).astype(np.uint8)
    labels[:50] = 0
    a, b = both(prepost.overlay_labels, image, labels, 21, 0.4)
    same(a, b)
    np.testing.assert_array_equal(a[:50], image[:50])
    col = prepost.palette(21)[labels[60, 60]].astype(int)
    if labels[60, 60]:
        assert np.all(np.abs(a[60, 60].astype(int) - (0.6 * image[60, 60] + 0.4 * col)) <= 1)
    wide = np.zeros(image.shape[:2], np.uint16)
    wide[10:20, 10:20] = 299
    same(*both(prepost.overlay_labels, image, wide, 300, 0.5))
    masks = RNG.random((3, *image.shape[:2])) > 0.7
    same(*both(prepost.overlay_masks, image, masks))


# -- errors and the switch -------------------------------------------------------------------------
def test_bad_arguments_are_typed_errors_in_both() -> None:
    for name in ("native", "reference"):
        kernels.use(name)
        with pytest.raises(InvalidInputError, match="do not fit"):
            kernels.upsample(np.zeros((2, 4, 4), np.float32), Taps.linear(5, 8), Taps.linear(4, 8))
        with pytest.raises(InvalidInputError, match="has no colour"):
            kernels.overlay_labels(np.zeros((2, 2, 3), np.uint8), np.full((2, 2), 5, np.uint8), prepost.palette(3), 0.5)
        with pytest.raises(InvalidInputError, match="does not fit"):
            kernels.resize_normalize(np.zeros((4, 4, 3), np.uint8), Taps.linear(4, 4), Taps.linear(4, 4),
                                     np.ones(3), np.zeros(3), np.zeros((3, 4, 4), np.float32), 1, 0)
        with pytest.raises(InvalidInputError, match="expected"):
            kernels.paste_masks(np.zeros((2, 28, 27), np.float32), np.zeros((2, 4)), (8, 8), 0.5)
    with pytest.raises(ValueError, match="cannot compose"):
        Taps.linear(4, 8).then(Taps.linear(9, 2))
    assert len(chain(64, 256, 16, 224, 480)) == 480


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


BLOCK_NATIVE = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "segrt.runtime._native":
            raise ImportError("simulated: extension not built")
sys.meta_path.insert(0, Block())
"""


def test_environment_switch_and_clean_fallback(tmp_path) -> None:
    probe = "from segrt.runtime import kernels; print(kernels.active())"
    assert _run(probe, SEGRT_PREPOST="reference").stdout.strip() == "reference"
    assert _run(probe, SEGRT_PREPOST="native").stdout.strip() == "native"
    env = {k: v for k, v in os.environ.items() if k != "SEGRT_PREPOST"}
    missing = subprocess.run([sys.executable, "-c", BLOCK_NATIVE + probe], capture_output=True, text=True, env=env)
    assert missing.stdout.strip() == "reference"
    # Without the extension a whole segmentation still runs (through the NumPy twin), and forcing
    # native then is a one-line typed error, not a traceback.
    from .conftest import conv_onnx

    conv_onnx(tmp_path / "m.onnx")
    code = BLOCK_NATIVE + (
        "from segrt.export.importer import ImportConfig, import_onnx\n"
        f"import_onnx(ImportConfig(model=__import__('pathlib').Path({str(tmp_path / 'm.onnx')!r})), "
        f"__import__('pathlib').Path({str(tmp_path / 'b')!r}))\n"
        "import numpy as np\nfrom segrt.runtime import load, kernels\n"
        f"r = load({str(tmp_path / 'b')!r}, 'cpu')(np.full((33, 47, 3), 90, np.uint8))\n"
        "print(kernels.active(), r.label_map.shape)\n")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert ran.stdout.strip() == "reference (33, 47)", ran.stderr
    import cv2

    cv2.imwrite(str(tmp_path / "i.png"), np.full((20, 30, 3), 60, np.uint8))
    run = ("from segrt.runtime.cli import main; import sys; "
           f"sys.exit(main(['run', {str(tmp_path / 'b')!r}, '--input', {str(tmp_path / 'i.png')!r}, '--out', "
           f"{str(tmp_path / 'o')!r}]))")
    forced = subprocess.run([sys.executable, "-c", BLOCK_NATIVE + run], capture_output=True, text=True,
                            env={**env, "SEGRT_PREPOST": "native"})
    assert forced.returncode == 2 and "SEGRT_PREPOST=native" in forced.stderr and "Traceback" not in forced.stderr
    bad = _run(run, SEGRT_PREPOST="fast")
    assert bad.returncode == 2 and "must be 'native' or 'reference'" in bad.stderr
    info = _run(f"from segrt.runtime.cli import main; main(['info', '--json', {str(tmp_path / 'b')!r}])", SEGRT_PREPOST="reference")
    assert '"prepost": "reference"' in info.stdout


def test_thread_limit_is_per_thread_and_changes_no_result() -> None:
    """Streams cap their stage threads' kernels at one thread (the stages are the parallelism); the cap
    belongs to the calling thread, is restored on leaving the block, and changes no output bit."""
    import threading

    from segrt.runtime import _native

    kernels.use("native")
    full = _native.kernel_threads()
    scores = RNG.standard_normal((5, 120, 160)).astype(np.float32)
    rows, cols = chain(120, 480, 0, 480, 1080), chain(160, 640, 0, 640, 1440)
    unlimited = kernels.upsample_argmax(scores, rows, cols, confidence=True)
    seen: dict[str, int] = {}
    with kernels.thread_limit(1):
        assert _native.kernel_threads() == 1
        other = threading.Thread(target=lambda: seen.update(other=_native.kernel_threads()))
        other.start()
        other.join()
        limited = kernels.upsample_argmax(scores, rows, cols, confidence=True)
    assert seen["other"] == full and _native.kernel_threads() == full
    same(unlimited, limited)
    with pytest.raises(InvalidInputError, match="thread limit"):
        with kernels.thread_limit(-1):
            pass
    kernels.use("reference")
    with kernels.thread_limit(1):
        assert kernels.impl().kernel_threads() == 1
