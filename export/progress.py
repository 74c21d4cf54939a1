"""Progress of long export steps: one stderr line as each step starts, with the seconds since the first.

Exports and quantization run for minutes (tracing, simplifying, the check against PyTorch, calibration);
these lines say what is happening. They go to stderr, so stdout stays the command's result.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``progress("tracing model.onnx")`` prints ``segrt: [   3.2 s] unet/resnet18: tracing model.onnx``."""

    def __init__(self, what: str, stream: TextIO | None = None) -> None:
        self.what = what
        self._stream = stream
        self._start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def __call__(self, step: str) -> None:
        stream = self._stream or sys.stderr  # looked up per line: pytest and callers may swap sys.stderr
        print(f"segrt: [{self.elapsed():6.1f} s] {self.what}: {step}", file=stream, flush=True)
