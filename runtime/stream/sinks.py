"""Drawing and writing a stream's results: the annotated frame, a video file, a window."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import BackendUnavailableError, InvalidInputError


def annotate(frame: np.ndarray, result: Any, fps: float | None = None) -> np.ndarray:
    """The result's overlay on ``frame`` (8-bit RGB) with FPS and latency in the corner."""
    out = result.overlay(frame)
    lat = result.timings.get("latency")
    text = " | ".join(t for t in (f"{fps:.1f} FPS" if fps else "", f"{lat:.0f} ms" if lat is not None else "") if t)
    if text:
        cv2.putText(out, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return out


_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


class VideoSink:
    """Writes 8-bit RGB frames to a video through a temporary file renamed on :meth:`close`, so the
    path holds either nothing or a finalized, playable file."""

    def __init__(self, path: Path, fps: float, size_wh: tuple[int, int]) -> None:
        self.path = Path(path)
        fourcc = _FOURCC.get(self.path.suffix.lower())
        if fourcc is None:
            raise InvalidInputError(f"output video must end in {', '.join(_FOURCC)}; got {str(path)!r}")
        if not self.path.parent.is_dir():
            raise InvalidInputError(f"cannot write {str(path)!r}: folder {str(self.path.parent)!r} does not exist")
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix}")
        self.size, self.fourcc = size_wh, fourcc  # mp4v: PyPI's OpenCV has no H.264 encoder (browsers want avc1)
        self._writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*fourcc), fps or 25.0, size_wh)
        if not self._writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise InvalidInputError(f"cannot write video {str(path)!r} (folder not writable, or no {fourcc} encoder)")
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self, keep: bool = True) -> None:
        self._writer.release()
        if keep and self.frames:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


class Display:
    """``--show``: an OpenCV window (needs opencv-python with GUI support, not the headless build)."""

    def __init__(self, title: str) -> None:
        self.title = title
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise BackendUnavailableError("--show needs OpenCV with GUI support (pip install opencv-python, "
                                          "not opencv-python-headless) and a display") from None

    def show(self, rgb: np.ndarray) -> bool:
        cv2.imshow(self.title, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def close(self) -> None:
        cv2.destroyWindow(self.title)
