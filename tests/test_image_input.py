"""Images in: paths and arrays, colour orders, channel conversion, and every kind of bad input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from segrt.runtime.errors import InvalidInputError
from segrt.runtime.image import read_image, to_channels


def _write(path, image) -> None:
    assert cv2.imwrite(str(path), image)


def test_path_is_read_as_rgb(tmp_path, photos) -> None:
    rgb = photos["chelsea"]
    _write(tmp_path / "c.png", rgb[:, :, ::-1])
    assert np.array_equal(read_image(tmp_path / "c.png"), rgb)


def test_sixteen_bit_png_keeps_its_depth(tmp_path) -> None:
    image = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    _write(tmp_path / "d.png", image)
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint16 and np.array_equal(out, image)


def test_bgr_arrays_are_reordered(photos) -> None:
    rgb = photos["coffee"]
    assert np.array_equal(read_image(np.ascontiguousarray(rgb[:, :, ::-1]), color="bgr"), rgb)


@pytest.mark.parametrize("channels_in", [1, 3, 4])
def test_channel_conversion(photos, channels_in: int) -> None:
    rgb = photos["coffee"]
    image = {1: cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 3: rgb, 4: cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)}[channels_in]
    three, one = to_channels(image, 3), to_channels(image, 1)
    assert three.shape == (*rgb.shape[:2], 3) and one.shape == (*rgb.shape[:2], 1)
    assert np.array_equal(one[:, :, 0], cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    if channels_in == 1:
        assert np.array_equal(three[:, :, 0], three[:, :, 2])
    else:
        assert np.array_equal(three, rgb)


def test_jpeg_missing_its_end_is_refused(tmp_path, photos) -> None:
    ok, buf = cv2.imencode(".jpg", photos["coffee"])
    (tmp_path / "t.jpg").write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(InvalidInputError, match="truncated JPEG"):
        read_image(tmp_path / "t.jpg")


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"hello, I am text", "could not be decoded"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "could not be decoded")],
)
def test_unreadable_files(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=message):
        read_image(path)


def test_truncated_png(tmp_path, photos) -> None:
    ok, buf = cv2.imencode(".png", photos["coffee"])
    (tmp_path / "t.png").write_bytes(buf.tobytes()[: len(buf) // 3])
    with pytest.raises(InvalidInputError, match="could not be decoded"):
        read_image(tmp_path / "t.png")


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 4, 3), np.float32), "dtype must be uint8 or uint16"),
        (np.zeros((4, 4, 2), np.uint8), "C in 1, 3, 4"),
        (np.zeros((2, 4, 4, 3), np.uint8), "HxW or HxWxC"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        ([[1, 2], [3, 4]], "numpy array"),
    ],
)
def test_bad_arrays(array, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        read_image(array)


def test_size_limit_is_enforced_and_configurable() -> None:
    image = np.zeros((100, 200), np.uint8)
    with pytest.raises(InvalidInputError, match="exceeds the limit of 10000 pixels"):
        read_image(image, max_pixels=10_000)
    assert read_image(image, max_pixels=20_000).shape == (100, 200)


def test_missing_file_and_bad_color(tmp_path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(InvalidInputError, match="'rgb' or 'bgr'"):
        read_image(np.zeros((2, 2, 3), np.uint8), color="hsv")  # type: ignore[arg-type]
