"""What a model family must declare to be exported: one :class:`ModelSpec` per architecture."""

from __future__ import annotations

import difflib

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from segrt.runtime.errors import ExportError
from segrt.runtime.manifest import Intensity, Task

if TYPE_CHECKING:
    import torch

Exporter = Literal["dynamo", "torchscript"]
#: Import names the export stage needs, with the distribution that provides each.
EXPORT_DEPS = {"torch": "torch", "torchvision": "torchvision", "segmentation_models_pytorch": "segmentation-models-pytorch",
               "segment_anything": "segment-anything",
               "onnx": "onnx", "onnxscript": "onnxscript", "onnxslim": "onnxslim", "skimage": "scikit-image"}


def require_export_deps() -> None:
    """Fail with the install command, not a traceback, on a runtime-only (edge) install."""
    import importlib.util

    def absent(mod: str) -> bool:
        try:
            return importlib.util.find_spec(mod) is None
        except (ImportError, ValueError):  # a broken or blocked install
            return True

    missing = [dist for mod, dist in EXPORT_DEPS.items() if absent(mod)]
    if missing:
        raise ExportError(f"exporting needs {', '.join(missing)}; install them with: pip install 'segrt[export]'")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ExportConfig:
    """What the user asked for. Validated here so builders can trust it."""

    architecture: str
    encoder: str
    classes: int
    in_channels: int = 3
    class_names: tuple[str, ...] | None = None
    weights: Path | None = None  # None: seeded random weights, recorded as untrained
    seed: int = 0
    opset: int = 18
    intensity: Intensity = "dtype"
    verify_image: Path | None = None
    # instance models (Mask R-CNN): torchvision's resize policy and the detection settings baked
    # into the graph. The score threshold here is the graph's floor; runtimes filter above it.
    min_size: int = 800
    max_size: int = 1333
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections: int = 100

    def __post_init__(self) -> None:
        if self.classes < 1:
            raise ExportError(f"--classes must be >= 1; got {self.classes}")
        if self.in_channels < 1:
            raise ExportError(f"--in-channels must be >= 1; got {self.in_channels}")
        if self.class_names is not None and len(self.class_names) != self.classes:
            raise ExportError(f"{len(self.class_names)} class names given for {self.classes} classes")
        if self.opset < 17:
            raise ExportError(f"opset must be 17 or newer; got {self.opset}")
        if not 32 <= self.min_size <= self.max_size:
            raise ExportError(f"need 32 <= --min-size <= --max-size; got {self.min_size} and {self.max_size}")
        if not (0 <= self.box_score_thresh < 1 and 0 < self.box_nms_thresh <= 1 and self.detections >= 1):
            raise ExportError("need 0 <= --graph-score-threshold < 1, 0 < --nms-threshold <= 1 and --detections >= 1")
        if self.weights is not None and not Path(self.weights).is_file():
            raise ExportError(f"weights file {str(self.weights)!r} does not exist (pass --weights none for random weights)")

    @property
    def names(self) -> tuple[str, ...]:
        return self.class_names or tuple(f"class_{i}" for i in range(self.classes))


@dataclass(frozen=True)
class ModelSpec:
    """One exportable architecture. The exporter, verifier and CLI take a spec and nothing else."""

    name: str
    task: Task
    build: Callable[[ExportConfig], torch.nn.Module]  # trace-friendly module returning one tensor per output
    encoders: Callable[[], Sequence[str]]  # valid --encoder names
    default_encoder: str
    stride: int  # inputs are padded to a multiple of this
    input_names: tuple[str, ...] = ("image",)
    output_names: tuple[str, ...] = ("logits",)
    dynamic_axes: Mapping[str, Mapping[int, str]] = field(
        default_factory=lambda: {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    )
    exporter: Exporter = "dynamo"
    drop_prefixes: tuple[str, ...] = ()  # checkpoint keys to drop (heads the export does not use)
    classes_key: str | None = None  # state-dict key whose first dimension is the number of classes
    trace_wrapper: Callable[[torch.nn.Module], torch.nn.Module] | None = None  # built model -> exported graph

    def check_encoder(self, encoder: str) -> None:
        valid = list(self.encoders())
        if encoder not in valid:
            close = difflib.get_close_matches(encoder, valid, n=5, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ExportError(f"unknown encoder {encoder!r} for {self.name}; {hint}valid: {', '.join(valid)}")
