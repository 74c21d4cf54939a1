"""The bundle manifest, ``segrt.json``: everything the runtime needs to pre- and post-process.

A bundle is a directory holding ``model.onnx`` and ``segrt.json``. The manifest is parsed into frozen
dataclasses and validated once, at load, so the hot path never re-checks it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from .errors import ModelFormatError

MANIFEST_NAME = "segrt.json"
FORMAT_VERSION = 1

#: a task name: one of ``segrt.runtime.tasks.TASKS`` (``task_names()``), checked at load
Task = str
Layout = Literal["nchw", "nhwc"]
ColorOrder = Literal["rgb", "bgr", "gray"]
ResizeMode = Literal["pad", "stretch", "letterbox", "shortest_edge", "longest_side"]
Activation = Literal["softmax", "sigmoid", "none"]
Intensity = Literal["dtype", "minmax"]
Precision = Literal["fp32", "fp16", "int8"]


def _check_choice(value: Any, literal: Any, what: str) -> None:
    choices = get_args(literal)
    if value not in choices:
        raise ModelFormatError(f"{what} must be one of {', '.join(choices)}; got {value!r}")


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the model's input tensor.

    ``intensity="dtype"`` divides by the dtype's maximum (255 or 65535) so values are in 0-1 before
    ``(x - mean) / std``; ``"minmax"`` stretches each image's own range to 0-1 (microscopy, where a
    16-bit image uses a few hundred grey levels). ``resize="pad"`` keeps the input's resolution and
    pads bottom/right to a multiple of ``stride``; ``stretch``/``letterbox`` resize to ``size``;
    ``shortest_edge`` is torchvision's detection policy: scale so the shorter side is ``min_size``
    unless the longer would pass ``max_size``, then pad to a multiple of ``stride``; ``longest_side``
    is Segment Anything's: scale so the longer side is ``size``'s, then pad bottom/right to ``size``.
    """

    name: str
    channels: int
    color: ColorOrder = "rgb"
    layout: Layout = "nchw"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    intensity: Intensity = "dtype"
    resize: ResizeMode = "pad"
    stride: int = 32
    size: tuple[int, int] | None = None  # (H, W) for fixed-size models
    min_size: int | None = None  # shortest_edge only
    max_size: int | None = None

    def __post_init__(self) -> None:
        _check_choice(self.color, ColorOrder, "input.color")
        _check_choice(self.layout, Layout, "input.layout")
        _check_choice(self.intensity, Intensity, "input.intensity")
        _check_choice(self.resize, ResizeMode, "input.resize")
        if self.channels < 1:
            raise ModelFormatError(f"input.channels must be >= 1; got {self.channels}")
        if (self.color == "gray") != (self.channels == 1):
            raise ModelFormatError(
                f"input.color {self.color!r} does not fit {self.channels} channel(s): use 'gray' for 1 channel"
            )
        for what, vals in (("mean", self.mean), ("std", self.std)):
            if len(vals) not in (1, self.channels):
                raise ModelFormatError(f"input.{what} needs 1 or {self.channels} values; got {len(vals)}")
        if any(s <= 0 for s in self.std):
            raise ModelFormatError(f"input.std values must be > 0; got {list(self.std)}")
        if self.stride < 1:
            raise ModelFormatError(f"input.stride must be >= 1; got {self.stride}")
        if self.resize == "shortest_edge":
            if self.min_size is None or self.max_size is None or not 1 <= self.min_size <= self.max_size:
                raise ModelFormatError(f"input.resize shortest_edge needs 1 <= min_size <= max_size; got "
                                       f"{self.min_size}, {self.max_size}")
        elif self.resize != "pad" and self.size is None:
            raise ModelFormatError(f"input.resize {self.resize!r} needs input.size [H, W]")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ModelFormatError(f"input.size must be [H, W] with positive sides; got {self.size}")


@dataclass(frozen=True)
class OutputSpec:
    """What the model's output means. C>1 channels: per-class scores, label = argmax.
    One channel: a foreground score; label = activation(score) > threshold."""

    name: str
    activation: Activation = "none"
    threshold: float = 0.5
    layout: Layout = "nchw"

    def __post_init__(self) -> None:
        _check_choice(self.activation, Activation, "output.activation")
        _check_choice(self.layout, Layout, "output.layout")


@dataclass(frozen=True)
class DetectionSpec:
    """An instance model's outputs and the settings baked into its graph.

    ``graph_score_threshold``, ``nms_threshold`` and ``max_detections`` are fixed at export; the
    runtime's ``score_threshold`` (overridable at load) filters above the graph's floor.
    """

    boxes: str = "boxes"
    labels: str = "labels"
    scores: str = "scores"
    masks: str = "masks"
    size_input: str = "image_size"
    score_threshold: float = 0.5
    graph_score_threshold: float = 0.05
    nms_threshold: float = 0.5
    max_detections: int = 100
    mask_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.graph_score_threshold <= self.score_threshold <= 1:
            raise ModelFormatError(
                f"detection.score_threshold {self.score_threshold} must lie in [graph_score_threshold "
                f"{self.graph_score_threshold}, 1]: the graph drops detections below its own threshold"
            )
        if not 0 < self.mask_threshold < 1:
            raise ModelFormatError(f"detection.mask_threshold must be in (0, 1); got {self.mask_threshold}")

    @property
    def outputs(self) -> tuple[str, str, str, str]:
        return self.boxes, self.labels, self.scores, self.masks


@dataclass(frozen=True)
class SamSpec:
    """A Segment Anything bundle's second graph and the constants its pre- and post-processing use.

    The manifest's ``model_file`` is the image encoder; ``decoder_file`` is the prompt decoder, which
    returns ``mask_tokens`` low-res masks per prompt (the first is the single-mask output, the rest
    the multimask outputs) and never sees the original image size.
    """

    variant: str
    decoder_file: str = "decoder.onnx"
    embedding_shape: tuple[int, int, int] = (256, 64, 64)
    low_res_size: int = 256
    mask_tokens: int = 4
    mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        if Path(self.decoder_file).name != self.decoder_file:
            raise ModelFormatError(f"sam.decoder_file must be a file name inside the bundle; got {self.decoder_file!r}")
        if len(self.embedding_shape) != 3 or self.low_res_size < 1 or self.mask_tokens < 2:
            raise ModelFormatError("sam needs embedding_shape [C, H, W], low_res_size >= 1 and mask_tokens >= 2")


Scaling = Literal["pixels", "fixed", "prompts"]


@dataclass(frozen=True)
class GraphCompute:
    """One graph's FLOPs, counted once at export (``segrt.benchmarks.limits``), for one image (one prompt).

    ``at`` is where it was counted: the image input's [H, W] ([D, H, W] for a volume graph, "fixed" per patch),
    or [prompts, points] for a prompt graph.
    ``scales``: "pixels", ``fixed + (flops - fixed) * (H x W) / (at's H x W)`` for the graph input's H x W (a convnet
    with dynamic H/W: ``fixed`` 0; Mask R-CNN: its RoI heads, at 1000 proposals and 100 detections); "fixed", the
    same at every size (SAM's 1024 encoder); "prompts", ``flops + per_prompt * (prompts - 1)`` (SAM's decoder).
    """

    flops: int
    at: tuple[int, ...]
    scales: Scaling
    counter: str = "torch.utils.flop_counter"
    per_prompt: int | None = None
    fixed: int = 0

    def __post_init__(self) -> None:
        _check_choice(self.scales, Scaling, "compute.scales")
        if not 0 <= self.fixed <= self.flops or (self.per_prompt is not None) != (self.scales == "prompts"):
            raise ModelFormatError(f"compute needs 0 <= fixed <= flops, and per_prompt exactly when scales is 'prompts'; "
                                   f"got flops {self.flops}, fixed {self.fixed}, scales {self.scales!r}, "
                                   f"per_prompt {self.per_prompt}")


@dataclass(frozen=True)
class Manifest:
    task: Task
    architecture: str
    classes: tuple[str, ...]
    input: InputSpec
    output: OutputSpec
    model_file: str = "model.onnx"
    precision: Precision = "fp32"
    encoder: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    detection: DetectionSpec | None = None  # task "instance"
    sam: SamSpec | None = None  # task "sam"
    volume: dict[str, Any] | None = None  # task "volume": parsed and checked by runtime/volume_spec.py
    quantization: dict[str, Any] = field(default_factory=dict)  # FP16/INT8 variants: what, how, gate numbers
    #: FLOPs per graph file, counted at export; absent in older bundles (segrt.benchmarks.limits counts the ONNX)
    compute: dict[str, GraphCompute] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        from .tasks import task_for, task_names  # the tasks import the predictors, which import this module

        if self.task not in task_names():
            raise ModelFormatError(f"task must be one of {', '.join(task_names())}; got {self.task!r}")
        _check_choice(self.precision, Precision, "precision")
        if self.format_version > FORMAT_VERSION:
            raise ModelFormatError(
                f"manifest format {self.format_version} is newer than this segrt reads ({FORMAT_VERSION}); upgrade segrt"
            )
        task_for(self.task).check_manifest(self)  # classes, the task's own section (detection, sam...)
        if self.input.resize == "longest_side" and (self.input.size is None or self.input.size[0] != self.input.size[1]):
            raise ModelFormatError("input.resize longest_side needs a square input.size")
        if Path(self.model_file).name != self.model_file:
            raise ModelFormatError(f"model_file must be a file name inside the bundle; got {self.model_file!r}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        try:
            inp = dict(data["input"])
            for key in ("mean", "std"):
                if key in inp:
                    inp[key] = tuple(float(v) for v in inp[key])
            if inp.get("size") is not None:
                inp["size"] = tuple(int(v) for v in inp["size"])
            fields = {k: v for k, v in data.items() if k not in ("input", "output", "classes", "detection", "sam")}
            fields["compute"] = {str(f): GraphCompute(**{**c, "at": tuple(int(v) for v in c["at"])})
                                 for f, c in (data.get("compute") or {}).items()}
            if data.get("detection") is not None:
                fields["detection"] = DetectionSpec(**data["detection"])
            if data.get("sam") is not None:
                sam = dict(data["sam"])
                sam["embedding_shape"] = tuple(int(v) for v in sam.get("embedding_shape", (256, 64, 64)))
                fields["sam"] = SamSpec(**sam)
            return cls(
                input=InputSpec(**inp),
                output=OutputSpec(**data["output"]),
                classes=tuple(str(c) for c in data["classes"]),
                **fields,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"manifest is malformed ({type(exc).__name__}: {exc}); re-export the bundle") from None


def read_manifest(bundle: str | os.PathLike[str]) -> Manifest:
    path = Path(bundle) / MANIFEST_NAME
    if not Path(bundle).is_dir():
        raise ModelFormatError(f"bundle {str(bundle)!r} is not a directory; pass the folder `segrt export` wrote")
    if not path.is_file():
        raise ModelFormatError(f"bundle {str(bundle)!r} has no {MANIFEST_NAME}; is it a segrt bundle?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path} is not valid JSON ({exc}); re-export the bundle") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path} must hold a JSON object; got {type(data).__name__}")
    return Manifest.from_dict(data)


def default_mode(directory: bool = False) -> int:
    """The permissions a plain open()/mkdir() would give under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` next to ``path`` under a temporary name, then rename: never a half file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, default_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished directory ``tmp`` to ``out``; an existing ``out`` is moved aside first and
    removed after, so ``out`` is always either the old directory or the new one, never half of one."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_manifest(bundle: Path, manifest: Manifest) -> None:
    write_json_atomic(Path(bundle) / MANIFEST_NAME, manifest.to_dict())
