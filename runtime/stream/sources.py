"""Where a stream's frames come from: cameras, video files, URLs (OpenCV) and image folders."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import cv2
import numpy as np

from ..errors import InvalidInputError
from ..image import IMAGE_SUFFIXES, list_images, read_image

log = logging.getLogger("segrt")
#: Consecutive failed reads after which a live source counts as broken.
LIVE_READ_RETRIES = 25


class FrameSource:
    """Where frames come from. ``read()`` returns the next 8-bit RGB (or 16-bit/grayscale) frame, or
    None at the end; a frame that cannot be decoded raises :class:`InvalidInputError` (counted as a
    skip). ``live`` sources are sampled (newest frame wins), others are processed in full."""

    name: str = "source"
    live: bool = False
    fps: float = 0.0  # the source's nominal rate (0 when unknown)
    expected_frames: int | None = None
    size: tuple[int, int] | None = None  # (width, height) when the source knows it before the first frame

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class VideoSource(FrameSource):
    """A camera index, /dev/videoN, a video file or an rtsp/http URL, through OpenCV."""

    def __init__(self, spec: str | int, live: bool | None = None) -> None:
        target: str | int = spec
        is_device = isinstance(spec, int) or bool(re.fullmatch(r"\d+|/dev/video\d+", str(spec)))
        is_url = isinstance(spec, str) and "://" in spec
        if isinstance(spec, str) and spec.isdigit():
            target = int(spec)
        if not (is_device or is_url) and not Path(str(spec)).is_file():
            raise InvalidInputError(f"source {str(spec)!r} is not a camera index, /dev/videoN, URL, file or folder")
        self.name = str(spec)
        self.live = (is_device or is_url) if live is None else live
        self._cap = cv2.VideoCapture(target)
        if not self._cap.isOpened():
            raise InvalidInputError(f"cannot open video source {self.name!r} (not a video OpenCV can decode, "
                                    "or the device/stream is unavailable)")
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        w, h = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.size = (w, h) if w > 0 and h > 0 else None
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.expected_frames = count if count > 0 and not (is_device or is_url) else None
        self._failures = 0

    def read(self) -> np.ndarray | None:
        while True:
            ok, frame = self._cap.read()
            if ok and frame is not None and frame.size:
                self._failures = 0
                return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if frame.ndim == 3 and frame.shape[2] == 3 else frame
            if not self.live:
                return None
            self._failures += 1  # a camera or network stream can hiccup; a run of failures ends it
            if self._failures >= LIVE_READ_RETRIES:
                log.warning("source %s stopped delivering frames", self.name)
                return None
            time.sleep(0.02)

    def close(self) -> None:
        self._cap.release()


class FolderSource(FrameSource):
    """The images of a folder in name order, as a file-like (every frame) source."""

    def __init__(self, folder: Path, live: bool = False) -> None:
        self.name, self.live = str(folder), live
        self._paths = list_images(folder)
        if not self._paths:
            raise InvalidInputError(f"folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.expected_frames = len(self._paths)
        self._next = 0

    def read(self) -> np.ndarray | None:
        if self._next >= len(self._paths):
            return None
        path = self._paths[self._next]
        self._next += 1
        return read_image(path)  # InvalidInputError for a corrupt file: the pipeline counts a skip


def open_source(spec: str | int | Path | FrameSource, live: bool | None = None) -> FrameSource:
    """A :class:`FrameSource` for a camera index, /dev/videoN, file, URL or folder (or pass one through)."""
    if isinstance(spec, FrameSource):
        if live is not None:
            spec.live = live
        return spec
    if isinstance(spec, Path) or (isinstance(spec, str) and "://" not in spec and Path(spec).is_dir()):
        path = Path(spec)
        if path.is_dir():
            return FolderSource(path, live=bool(live))
    return VideoSource(str(spec) if isinstance(spec, Path) else spec, live)
