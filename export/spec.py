"""What a model family must declare to be exported: one :class:`ModelSpec` per architecture.

A spec is data (names, stride, I/O, the dependencies it imports, default classes, quantization defaults) plus
an :class:`ExportFamily`: how its graphs are traced, what its manifest records, and how the bundle is checked
against PyTorch. ``exporter.export_bundle`` runs the same sequence for every spec.
"""

from __future__ import annotations

import difflib
import json

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from segrt.runtime.errors import ExportError
from segrt.runtime.manifest import Intensity, Manifest, Task

if TYPE_CHECKING:
    import torch

Exporter = Literal["dynamo", "torchscript"]
#: Import names every export needs, with the distribution that provides each; a spec's ``deps`` adds its own.
COMMON_DEPS = {"torch": "torch", "onnx": "onnx", "onnxscript": "onnxscript", "onnxslim": "onnxslim",
               "skimage": "scikit-image"}
SMP_DEPS = {"segmentation_models_pytorch": "segmentation-models-pytorch"}
TORCHVISION_DEPS = {"torchvision": "torchvision"}


def require_export_deps(deps: Mapping[str, str]) -> None:
    """Fail with the install command, not a traceback, on a runtime-only (edge) install.
    ``deps``: a spec's own imports (beside :data:`COMMON_DEPS`)."""
    import importlib.util

    def absent(mod: str) -> bool:
        try:
            return importlib.util.find_spec(mod) is None
        except (ImportError, ValueError):  # a broken or blocked install
            return True

    wanted = {**COMMON_DEPS, **deps}
    missing = [dist for mod, dist in wanted.items() if absent(mod)]
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
    score_threshold: float = 0.5  # the runtime's default filter, recorded in the manifest (overridable at load)

    def __post_init__(self) -> None:
        if self.classes < 1 and not (self.classes == 0 and self.class_names == ()):  # () : a class-free family (SAM)
            raise ExportError(f"--classes must be >= 1; got {self.classes}")
        if self.in_channels < 1:
            raise ExportError(f"--in-channels must be >= 1; got {self.in_channels}")
        if self.class_names is not None and len(self.class_names) != self.classes:
            raise ExportError(f"{len(self.class_names)} class names given for {self.classes} classes")
        if self.opset < 17:
            raise ExportError(f"opset must be 17 or newer; got {self.opset}")
        if not 32 <= self.min_size <= self.max_size:
            raise ExportError(f"need 32 <= --min-size <= --max-size; got {self.min_size} and {self.max_size}")
        if not 0 <= self.score_threshold <= 1:
            raise ExportError(f"--score-threshold must be in [0, 1]; got {self.score_threshold}")
        if not (0 <= self.box_score_thresh < 1 and 0 < self.box_nms_thresh <= 1 and self.detections >= 1):
            raise ExportError("need 0 <= --graph-score-threshold < 1, 0 < --nms-threshold <= 1 and --detections >= 1")
        if self.weights is not None and not Path(self.weights).is_file():
            raise ExportError(f"weights file {str(self.weights)!r} does not exist (pass --weights none for random weights)")

    @property
    def names(self) -> tuple[str, ...]:
        return self.class_names or tuple(f"class_{i}" for i in range(self.classes))


@dataclass(frozen=True)
class GraphIO:
    """One ONNX graph's interface, what ``onnx_io.export_onnx`` reads (a single-graph spec is its own)."""

    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: Mapping[str, Mapping[int, str]]
    exporter: Exporter = "torchscript"


@dataclass(frozen=True)
class Graph:
    """One graph to trace: the file it becomes, the module, example inputs and its interface.
    ``role`` keys its export facts in the manifest when a family writes several graphs."""

    file: str
    module: Any
    example: tuple[Any, ...]
    io: Any  # GraphIO or the ModelSpec itself: name, input/output names, dynamic axes, exporter
    role: str = "model"


@dataclass(frozen=True)
class QuantDefaults:
    """What ``segrt quantize`` keeps in float for a family, and how it quantizes it."""

    #: ONNX graph -> the node names kept in float by FP16 and INT8 (None: none beyond the op lists)
    float_nodes: Callable[[Any], list[str]] | None = None
    #: FP16's record names the kept nodes as a count with this text instead of listing them (too many)
    fp16_summary: str | None = None
    #: the op types INT8 quantizes (None: ONNX Runtime's default set)
    int8_op_types: tuple[str, ...] | None = None
    #: what the float nodes are, in INT8's record
    int8_note: str = ""
    #: INT8 for ONNX Runtime's CPU: static QDQ after calibration, or dynamic (weights only, no calibration)
    cpu_int8: Literal["static", "dynamic"] = "static"


class ExportFamily:
    """How a family's bundle is made: graphs to trace, the manifest, the check against PyTorch and its gate.
    ``exporter.export_bundle`` calls these in order; a family overrides what differs."""

    def check(self, spec: ModelSpec, cfg: ExportConfig) -> None:
        """Refuse a configuration before anything is built (an ``ExportError`` that says the fix)."""

    def graphs(self, spec: ModelSpec, model: Any, cfg: ExportConfig) -> list[Graph]:
        raise NotImplementedError(f"{type(self).__name__}.graphs")

    def manifest(self, spec: ModelSpec, cfg: ExportConfig, source: dict[str, Any], versions: dict[str, str]) -> Manifest:
        raise NotImplementedError(f"{type(self).__name__}.manifest")

    def verify(self, spec: ModelSpec, model: Any, bundle: Path, cfg: ExportConfig) -> dict[str, Any]:
        """The manifest's ``verification`` record: the written bundle against the PyTorch model."""
        raise NotImplementedError(f"{type(self).__name__}.verify")

    def gate(self, spec: ModelSpec, cfg: ExportConfig, source: dict[str, Any], verification: dict[str, Any]) -> None:
        """Raise ``ExportError`` (nothing is written) when the verification is below the family's limits."""

    def report(self, manifest: Manifest) -> str:
        """What ``segrt export`` prints after ``exported ARCH/ENCODER to OUT:``."""
        return json.dumps(manifest.verification)


@dataclass(frozen=True)
class ModelSpec:
    """One exportable architecture. The exporter, verifier and CLI take a spec and nothing else."""

    name: str
    task: Task
    family: ExportFamily  # graphs, manifest, verification and gate
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
    #: import names this family needs beyond COMMON_DEPS, with their distributions (versions go in the manifest)
    deps: Mapping[str, str] = field(default_factory=dict)
    #: input normalisation (0-1 units) for RGB input; other channel counts get the mean of each
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    #: the class names used when --classes is not given (None: --classes is required)
    default_classes: Callable[[], tuple[str, ...]] | None = None
    #: (cfg, state dict, checkpoint path) -> None: refuse a checkpoint of another variant, before loading it
    check_state: Callable[[ExportConfig, dict[str, Any], Path], None] | None = None
    #: the CLI flag its weights come from, and the hint shown when it is missing ("" : FILE|none)
    weights_flag: str = "--weights"
    weights_hint: str = ""
    quant: QuantDefaults = field(default_factory=QuantDefaults)

    def check_encoder(self, encoder: str) -> None:
        valid = list(self.encoders())
        if encoder not in valid:
            close = difflib.get_close_matches(encoder, valid, n=5, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ExportError(f"unknown encoder {encoder!r} for {self.name}; {hint}valid: {', '.join(valid)}")
