"""Bring your own ONNX: wrap any trained segmentation network in a bundle. Needs no torch."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from segrt.runtime.backends.ort import OrtCpuRunner
from segrt.runtime.errors import InvalidInputError, ModelFormatError
from segrt.runtime.manifest import Activation, ColorOrder, InputSpec, Layout, Manifest, OutputSpec, ResizeMode, write_manifest
from segrt.runtime.tasks import TASKS, task_for
from segrt.runtime.volume_import import VolumeImport, import_volume_onnx

from .bundle import atomic_dir
from .bundle import tool_versions
from .weights import sha256_file


MAX_CHANNELS = 16  # more than this on the channel axis almost always means the layout is wrong


@dataclass(frozen=True)
class ImportConfig:
    model: Path
    task: str = "semantic"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    size: tuple[int, int] | None = None
    resize: ResizeMode | None = None  # None: pad for dynamic models, stretch for fixed-size ones
    stride: int = 32
    activation: Activation = "none"
    threshold: float = 0.5
    classes: tuple[str, ...] | None = None
    input_name: str | None = None
    output: str | None = None
    layout: Layout = "nchw"
    color: ColorOrder | None = None

    def __post_init__(self) -> None:
        if self.task in {t.name for t in TASKS if t.volumetric}:
            raise InvalidInputError("a 3-D network is imported with VolumeImport (segrt import --task volume)")
        if self.layout not in ("nchw", "nhwc"):
            raise InvalidInputError(f"--layout {self.layout} is a 3-D layout; a 3-D network is imported with "
                                    "--task volume")
        if self.size is not None and len(self.size) != 2:
            raise InvalidInputError(f"--size {'x'.join(map(str, self.size))} is 3-D; a 2-D image model takes HxW "
                                    "(a 3-D network: --task volume)")


def _pick(names: list[str], wanted: str | None, what: str) -> str:
    if wanted is None:
        if len(names) != 1:
            raise InvalidInputError(f"the model has {what}s {names}; choose one with --{what}")
        return names[0]
    if wanted not in names:
        raise InvalidInputError(f"--{what} {wanted!r} is not in the model; it has {names}")
    return wanted


def build_manifest(cfg: ImportConfig, runner: OrtCpuRunner) -> Manifest:
    inp_name = _pick([s.name for s in runner.input_specs()], cfg.input_name, "input")
    out_name = _pick([s.name for s in runner.output_specs()], cfg.output, "output")
    inp = next(s for s in runner.input_specs() if s.name == inp_name)
    out = next(s for s in runner.output_specs() if s.name == out_name)
    if len(inp.shape) != 4:
        hint = " (a 3-D network: import it with --task volume --layout ncdhw|ndhwc)" if len(inp.shape) == 5 else ""
        raise ModelFormatError(f"input {inp_name!r} has shape {inp.shape}; segrt needs a rank-4 image input{hint}")
    c_axis, hw = (1, (2, 3)) if cfg.layout == "nchw" else (3, (1, 2))
    channels = inp.shape[c_axis]
    if not isinstance(channels, int):
        raise ModelFormatError(f"input {inp_name!r} has a dynamic channel axis {inp.shape}; is --layout right?")
    if channels > MAX_CHANNELS:
        raise ModelFormatError(
            f"input {inp_name!r} {list(inp.shape)} read as {cfg.layout} has {channels} channels; is --layout right?"
        )
    fixed = tuple(inp.shape[a] for a in hw)
    size = cfg.size
    if all(isinstance(d, int) for d in fixed):
        if size is not None and size != fixed:
            raise InvalidInputError(f"--size {size[0]}x{size[1]} disagrees with the model's fixed input {fixed}")
        size = fixed  # type: ignore[assignment]
    resize = cfg.resize or ("pad" if size is None else "stretch")
    if resize == "pad" and size is not None and all(isinstance(d, int) for d in fixed):
        raise InvalidInputError("--resize pad needs a model with dynamic height and width; use stretch or letterbox")
    out_channels = out.shape[1 if cfg.layout == "nchw" else -1] if len(out.shape) == 4 else 1
    classes = cfg.classes
    if classes is None:
        if not isinstance(out_channels, int):
            raise InvalidInputError("the model's class count is dynamic; name the classes with --classes a,b,c")
        classes = ("background", "foreground") if out_channels == 1 else tuple(f"class_{i}" for i in range(out_channels))
    elif isinstance(out_channels, int) and len(classes) != max(out_channels, 2):
        raise InvalidInputError(f"--classes names {len(classes)} classes; the model outputs {out_channels} channel(s)")
    if cfg.activation == "softmax" and out_channels == 1:
        raise InvalidInputError("--activation softmax needs several output channels; use sigmoid or none")
    color = cfg.color or ("gray" if channels == 1 else "rgb")
    return Manifest(
        task=cfg.task,
        architecture="imported",
        classes=tuple(classes),
        input=InputSpec(
            name=inp_name, channels=channels, color=color, layout=cfg.layout, mean=cfg.mean, std=cfg.std,
            resize=resize, stride=cfg.stride, size=size,
        ),
        output=OutputSpec(name=out_name, activation=cfg.activation, threshold=cfg.threshold, layout=cfg.layout),
        source={"weights": cfg.model.name, "sha256": sha256_file(cfg.model), "trained": True, "imported": True},
        versions=tool_versions(),
    )


def import_onnx(cfg: ImportConfig | VolumeImport, out: Path, *, force: bool = False) -> Manifest:
    """A 2-D image model (:class:`ImportConfig`) or a 3-D volume network (:class:`VolumeImport`, task ``volume``)."""
    if isinstance(cfg, VolumeImport):
        return import_volume_onnx(cfg, out, force=force, versions=tool_versions())
    importable = [t.name for t in TASKS if t.importable]
    if cfg.task not in importable:
        raise InvalidInputError(f"--task {cfg.task!r} cannot be imported yet; supported: {', '.join(importable)}")
    if not cfg.model.is_file():
        raise InvalidInputError(f"model {str(cfg.model)!r} does not exist")
    manifest = build_manifest(cfg, OrtCpuRunner(cfg.model))
    with atomic_dir(out, force=force) as tmp:
        shutil.copyfile(cfg.model, tmp / manifest.model_file)
        data = cfg.model.with_name(cfg.model.name + ".data")
        if data.is_file():
            shutil.copyfile(data, tmp / data.name)
        write_manifest(tmp, manifest)
        task_for(cfg.task).load(tmp, "cpu")  # proves the bundle loads with its manifest before it is published
    return manifest
