"""Wrap a plain 3-D ONNX segmentation network in a ``volume`` bundle (no torch): ``import_volume_onnx``.

The network takes one rank-5 input, NCDHW or NDHWC, and returns one rank-5 output in the same layout. A fixed
spatial size is read from the graph (``size`` must agree); a dynamic one needs ``size``. ``inference``:
``sliding_window`` (windows of ``size``, MONAI's blend) or ``resize`` (the whole volume stretched to ``size``).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .backends.ort import OrtCpuRunner
from .backends.base import RunnerOptions
from .errors import InvalidInputError, ModelFormatError
from .manifest import InputSpec, Manifest, OutputSpec, replace_dir, write_manifest
from .volume_intensity import IntensityPolicy
from .volume_spec import VolumeSpec
from .volume_window import WindowSpec

MAX_CHANNELS = 16


@dataclass(frozen=True)
class VolumeImport:
    model: Path
    layout: str = "ncdhw"
    size: tuple[int, int, int] | None = None
    inference: str = "sliding_window"
    overlap: float = 0.25
    mode: str = "gaussian"
    sw_batch_size: int = 1
    activation: str = "softmax"
    threshold: float = 0.5
    classes: tuple[str, ...] | None = None
    intensity: IntensityPolicy = field(default_factory=IntensityPolicy)


def _spatial(shape: tuple, layout: str) -> tuple[object, tuple]:
    if len(shape) != 5:
        raise ModelFormatError(f"the model's input has shape {list(shape)}; a 3-D network takes a rank-5 tensor")
    return (shape[1], shape[2:]) if layout == "ncdhw" else (shape[4], shape[1:4])


def _size(cfg: VolumeImport, dims: tuple) -> tuple[int, int, int]:
    fixed = all(isinstance(d, int) and d > 0 for d in dims)
    if fixed and cfg.size is not None and tuple(cfg.size) != tuple(dims):
        raise InvalidInputError(f"--size {'x'.join(map(str, cfg.size))} disagrees with the model's fixed input {list(dims)}")
    if not fixed and cfg.size is None:
        raise InvalidInputError("the model's spatial size is dynamic; give the window or model size with --size DxHxW")
    return tuple(int(d) for d in (dims if fixed else cfg.size))  # type: ignore[return-value]


def build_volume_manifest(cfg: VolumeImport, runner: OrtCpuRunner) -> Manifest:
    if len(runner.input_specs()) != 1 or len(runner.output_specs()) != 1:
        raise ModelFormatError("a volume model has one input and one output")
    inp, out = runner.input_specs()[0], runner.output_specs()[0]
    channels, dims = _spatial(inp.shape, cfg.layout)
    if not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
        raise ModelFormatError(f"input {list(inp.shape)} read as {cfg.layout} has {channels} channels; is --layout right?")
    size = _size(cfg, dims)
    k, _ = _spatial(out.shape, cfg.layout)
    classes = cfg.classes or (("background", "foreground") if k == 1 else tuple(f"class_{i}" for i in range(int(k))))
    window = WindowSpec(size, cfg.overlap, cfg.mode, sw_batch_size=cfg.sw_batch_size)
    volume = VolumeSpec(cfg.layout, cfg.inference, window if cfg.inference == "sliding_window" else None,
                        size if cfg.inference == "resize" else None, cfg.intensity)
    return Manifest(
        task="volume", architecture="imported", classes=tuple(classes),
        input=InputSpec(name=inp.name, channels=channels, color="gray" if channels == 1 else "rgb",
                        mean=(0.0,), std=(1.0,), resize="pad", stride=1),
        output=OutputSpec(name=out.name, activation=cfg.activation, threshold=cfg.threshold),
        source={"weights": cfg.model.name, "trained": True, "imported": True}, volume=volume.to_dict())


def import_volume_onnx(cfg: VolumeImport, out: Path, *, force: bool = False) -> Manifest:
    """The bundle appears at ``out`` only once it loads; an existing ``out`` needs ``force``."""
    from .volume_predict import VolumeSegmenter

    if not cfg.model.is_file():
        raise InvalidInputError(f"model {str(cfg.model)!r} does not exist")
    if out.exists() and not force:
        raise InvalidInputError(f"{out} exists; pass force=True (--force) to replace it")
    manifest = build_volume_manifest(cfg, OrtCpuRunner(cfg.model, RunnerOptions()))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        shutil.copyfile(cfg.model, tmp / manifest.model_file)
        write_manifest(tmp, manifest)
        VolumeSegmenter(tmp, "cpu").close()  # proves the bundle loads before it is published
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
