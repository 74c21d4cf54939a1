"""segrt's lean runtime: NumPy, OpenCV and ONNX Runtime (or TensorRT). Never imports torch."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .backends import BACKENDS, available_providers
from .errors import (
    BackendUnavailableError,
    EngineMismatchError,
    ExportError,
    InferenceError,
    InvalidInputError,
    ModelFormatError,
    SegrtError,
)
from .instance import InstanceResult, InstanceSegmenter
from .loader import load
from .manifest import DetectionSpec, InputSpec, Manifest, OutputSpec, SamSpec, read_manifest
from .sam import SamPredictor
from .sam_amg import SamAutomaticMaskGenerator
from .semantic import SegmentationResult, Segmenter

try:
    __version__ = version("segrt")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "EngineMismatchError",
    "ExportError",
    "InferenceError",
    "DetectionSpec",
    "InputSpec",
    "InstanceResult",
    "InstanceSegmenter",
    "InvalidInputError",
    "Manifest",
    "ModelFormatError",
    "OutputSpec",
    "SamAutomaticMaskGenerator",
    "SamPredictor",
    "SegmentationResult",
    "Segmenter",
    "SamSpec",
    "SegrtError",
    "available_providers",
    "load",
    "read_manifest",
    "__version__",
]
