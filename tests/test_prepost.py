"""The NumPy reference pre/post-processing against direct formulas."""

from __future__ import annotations

import numpy as np
import pytest

from segrt.runtime import prepost
from segrt.runtime.errors import InvalidInputError, ModelFormatError
from segrt.runtime.manifest import InputSpec, OutputSpec

# the NumPy-twin pass (SEGRT_PREPOST=reference) runs these: their results go through the pre/post kernels
pytestmark = pytest.mark.prepost


def test_pad_frame_and_normalisation_match_the_formula(photos) -> None:
    spec = InputSpec(name="x", channels=3)
    image = photos["chelsea"]  # 300x451
    tensor, (frame,) = prepost.preprocess([image], spec)
    assert tensor.shape == (1, 3, 320, 480) and frame.content == (0, 0, 300, 451)
    want = (image / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(tensor[0, :, :300, :451], want.transpose(2, 0, 1), atol=1e-5)
    assert not tensor[0, :, 300:].any() and not tensor[0, :, :, 451:].any()


def test_minmax_intensity_uses_the_image_range() -> None:
    image = np.array([[100, 200], [300, 500]], np.uint16)[:, :, None]
    spec = InputSpec(name="x", channels=1, color="gray", mean=(0.0,), std=(1.0,), intensity="minmax", stride=1)
    tensor, _ = prepost.preprocess([image], spec)
    np.testing.assert_allclose(tensor[0, 0], [[0.0, 0.25], [0.5, 1.0]], atol=1e-6)


def test_letterbox_centres_the_image() -> None:
    spec = InputSpec(name="x", channels=3, resize="letterbox", size=(64, 64))
    frame = prepost.plan_frame(100, 200, spec)
    assert frame.content == (16, 0, 32, 64)


def test_scores_map_back_through_letterbox_and_low_resolution_output() -> None:
    spec = InputSpec(name="x", channels=3, resize="letterbox", size=(64, 64))
    frame = prepost.plan_frame(100, 200, spec)  # content rows 16..48 of 64
    scores = np.zeros((2, 16, 16), np.float32)  # a stride-4 output
    scores[0] = 2.5
    scores[1, :, 8:] = 5.0  # class 1 on the right half: the ramp crosses 2.5 exactly at the midline
    labels = prepost.labels_from_scores(scores, frame, OutputSpec(name="y"), 2)
    assert labels.shape == (100, 200)
    assert (labels[:, :95] == 0).all() and (labels[:, 105:] == 1).all()


def test_single_channel_threshold_with_sigmoid() -> None:
    frame = prepost.Frame((2, 2), (2, 2), (0, 0, 2, 2))
    scores = np.array([[[-3.0, -0.1], [0.1, 3.0]]], np.float32)
    out = prepost.labels_from_scores(scores, frame, OutputSpec(name="y", activation="sigmoid", threshold=0.5), 2)
    assert out.tolist() == [[0, 0], [1, 1]]


def test_many_classes_use_uint16_labels() -> None:
    frame = prepost.Frame((3, 3), (3, 3), (0, 0, 3, 3))
    scores = np.zeros((600, 3, 3), np.float32)
    scores[599, 1, 1] = 1.0
    out = prepost.labels_from_scores(scores, frame, OutputSpec(name="y"), 600)
    assert out.dtype == np.uint16 and out[1, 1] == 599 and out[0, 0] == 0


def test_mixed_sizes_in_one_tensor_are_refused(photos) -> None:
    with pytest.raises(InvalidInputError, match="share an input size"):
        prepost.preprocess([photos["coffee"], photos["chelsea"]], InputSpec(name="x", channels=3))


def test_overlay_leaves_background_untouched(photos) -> None:
    image = photos["coffee"]
    labels = np.zeros(image.shape[:2], np.uint8)
    labels[:10, :10] = 3
    out = prepost.overlay_labels(image, labels, 4)
    assert np.array_equal(out[10:], image[10:]) and not np.array_equal(out[:10, :10], image[:10, :10])
    assert prepost.palette(21)[15].tolist() == [192, 128, 128]  # PASCAL VOC's colour for class 15


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channels": 3, "color": "gray"}, "does not fit"),
        ({"channels": 3, "mean": (0.1, 0.2)}, "needs 1 or 3 values"),
        ({"channels": 3, "std": (0.0,)}, "must be > 0"),
        ({"channels": 3, "resize": "stretch"}, "needs input.size"),
        ({"channels": 3, "layout": "chw"}, "input.layout must be one of"),
    ],
)
def test_input_spec_validation(kwargs, message: str) -> None:
    with pytest.raises(ModelFormatError, match=message):
        InputSpec(name="x", **kwargs)
