"""Reading and validating images: paths or arrays in, HxW or HxWxC uint8/uint16 RGB(A) out."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Literal, Union

import cv2
import numpy as np

from .errors import InvalidInputError

ImageLike = Union[str, os.PathLike, np.ndarray]
InputColor = Literal["rgb", "bgr"]

#: Largest image accepted by default (pixels). Override per call site with ``max_pixels``.
DEFAULT_MAX_PIXELS = 100_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".pgm", ".ppm", ".pbm")
_DTYPES = (np.uint8, np.uint16)
#: How the lines start that the decoders print from C: libpng's errors and warnings, libjpeg's warnings
#: (on images that still decode). Only these are taken; anything else written to fd 2 while a decode runs (by
#: another thread, in that window of a millisecond or so) is passed on to stderr unchanged.
_DECODER_CHATTER = ("libpng ", "Corrupt JPEG data", "Premature end of JPEG", "Invalid SOS", "Unsupported marker")
log = logging.getLogger("segrt")
_stderr_lock = threading.Lock()
_spool: dict[int, IO[bytes]] = {}  # process id -> the temporary file fd 2 is pointed at (one per process)


def _reset_after_fork() -> None:
    """A child forked while another thread held the lock would wait on it forever; it starts afresh."""
    global _stderr_lock
    _stderr_lock = threading.Lock()
    _spool.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _spool_file() -> IO[bytes]:
    """This process's temporary file for :func:`_captured_fd2`, made once (making one per image costs
    more than decoding a small PNG); a forked child makes its own."""
    pid = os.getpid()
    if pid not in _spool:
        _spool.clear()
        _spool[pid] = tempfile.TemporaryFile()
    return _spool[pid]


@contextmanager
def _captured_fd2(sink: list[str]) -> Iterator[None]:
    """Point file descriptor 2 at a temporary file while the block runs, then put it back and add what
    was written there to ``sink`` (C libraries print to fd 2 directly; ``sys.stderr`` cannot catch it)."""
    with _stderr_lock:
        tmp = _spool_file()
        if sys.stderr is not None:
            sys.stderr.flush()  # Python's pending text goes out before fd 2 moves
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 to borrow: run the block as is
            saved = -1
        if saved < 0:
            yield
            return
        try:
            os.dup2(tmp.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.extend(tmp.read().decode("utf-8", "surrogateescape").splitlines(keepends=True))
            tmp.seek(0)
            tmp.truncate()


def _imdecode_quiet(data: np.ndarray) -> tuple[np.ndarray | None, list[str]]:
    """``cv2.imdecode`` without its C-level stderr lines: the image (None on failure) and what the decoder
    said (e.g. ``libpng error: IDAT: CRC error``). Lines other threads wrote meanwhile go on to stderr.
    Decodes are serialised by this (fd 2 is one per process)."""
    lines: list[str] = []
    with _captured_fd2(lines):
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    chatter = [ln.strip() for ln in lines if ln.startswith(_DECODER_CHATTER)]
    others = [ln for ln in lines if not ln.startswith(_DECODER_CHATTER)]
    if others:
        os.write(2, "".join(others).encode("utf-8", "surrogateescape"))
    return image, chatter


def _decode_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InvalidInputError(f"image {str(path)!r} does not exist or is not a file")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise InvalidInputError(f"image {str(path)!r} is empty (0 bytes)")
    if data[:3].tobytes() == b"\xff\xd8\xff" and b"\xff\xd9" not in data[-4096:].tobytes():
        raise InvalidInputError(f"image {str(path)!r} is a truncated JPEG (no end-of-image marker); re-copy the file")
    image, said = _imdecode_quiet(data)
    if image is None:
        reason = "; ".join(ln.split(":", 1)[1].strip() for ln in said if ln.startswith("libpng error:"))
        because = f" (libpng: {reason})" if reason else ""
        raise InvalidInputError(f"image {str(path)!r} could not be decoded{because}; expected PNG, JPEG, TIFF, BMP "
                                "or WebP, not corrupt or truncated")
    for line in said:  # warnings on an image that decoded: shown with -v only
        log.info("%s: %s", path.name, line)
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def validate_array(image: object, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Check an array is an HxW or HxWxC (C in 1, 3, 4) uint8/uint16 image; return it unchanged."""
    if not isinstance(image, np.ndarray):
        raise InvalidInputError(f"image must be a path or a numpy array; got {type(image).__name__}")
    if image.dtype not in _DTYPES:
        raise InvalidInputError(
            f"image dtype must be uint8 or uint16; got {image.dtype} (convert floats with (x*255).astype(np.uint8))"
        )
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise InvalidInputError(f"image must be HxW or HxWxC with C in 1, 3, 4; got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidInputError(f"image is empty: shape {image.shape}")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise InvalidInputError(
            f"image of {image.shape[1]}x{image.shape[0]} exceeds the limit of {max_pixels} pixels; "
            "downscale it or raise max_pixels"
        )
    return image


def read_image(src: ImageLike, *, color: InputColor = "rgb", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Return the image as an array in RGB(A) order (grayscale stays 2-D)."""
    if color not in ("rgb", "bgr"):
        raise InvalidInputError(f"color must be 'rgb' or 'bgr'; got {color!r}")
    if isinstance(src, (str, os.PathLike)):
        return validate_array(_decode_file(Path(src)), max_pixels=max_pixels)
    image = validate_array(src, max_pixels=max_pixels)
    if color == "bgr" and image.ndim == 3 and image.shape[2] >= 3:
        image = image[..., [2, 1, 0, 3][: image.shape[2]]]
    return image


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Convert an RGB(A)/grayscale image to ``channels`` (1 or 3), always returning HxWxC."""
    have = 1 if image.ndim == 2 else image.shape[2]
    if have == channels:
        return image if image.ndim == 3 else image[:, :, None]
    if channels == 1:
        code = cv2.COLOR_RGB2GRAY if have == 3 else cv2.COLOR_RGBA2GRAY
        return cv2.cvtColor(np.ascontiguousarray(image), code)[:, :, None]
    if channels == 3:
        if have == 1:
            return cv2.cvtColor(np.ascontiguousarray(image.reshape(image.shape[:2])), cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGBA2RGB)
    raise InvalidInputError(f"model expects {channels}-channel images; got {have} channel(s)")


def to_display_rgb(image: np.ndarray) -> np.ndarray:
    """An 8-bit RGB copy for drawing on: 16-bit images are stretched to their own range."""
    rgb = to_channels(image, 3)
    if rgb.dtype == np.uint16:
        lo, hi = float(rgb.min()), float(rgb.max())
        rgb = ((rgb.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1.0))).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def write_image_atomic(path: Path, image: np.ndarray) -> None:
    """Encode by suffix and write via a temporary file and rename: no half-written output."""
    ok, buf = cv2.imencode(path.suffix, image)
    if not ok:
        raise InvalidInputError(f"cannot encode an image of shape {image.shape} and dtype {image.dtype} as {path.suffix}")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(buf.tobytes())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InvalidInputError(f"cannot write {str(path)!r}: {exc.strerror}") from None
