"""Wrap a plain 3-D ONNX segmentation network in a ``volume`` bundle (no torch): ``import_volume_onnx``.

The network takes one rank-5 input, NCDHW or NDHWC, and returns one rank-5 output in the same layout. A fixed
spatial size is read from the graph (``size`` must agree); a dynamic one needs ``size``. ``inference``:
``sliding_window`` (windows of ``size``, MONAI's blend) or ``resize`` (the whole volume stretched to ``size``).
The window settings carry MONAI's ``sliding_window_inference`` names (``overlap``, ``mode``, ``sigma_scale``,
``sw_batch_size``, ``padding_mode``); ``segrt import --task volume`` fills them from its flags.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .backends.base import RunnerOptions
from .backends.ort import OrtCpuRunner
from .errors import InvalidInputError, ModelFormatError
from .manifest import InputSpec, Manifest, OutputSpec, replace_dir, write_manifest
from .volume_intensity import IntensityPolicy
from .volume_spec import VolumeSpec
from .volume_window import WindowSpec

MAX_CHANNELS = 16


@dataclass(frozen=True)
class VolumeImport:
    task: ClassVar[str] = "volume"  # the manifest task this config imports (segrt import --task volume)

    model: Path
    layout: str = "ncdhw"
    size: tuple[int, int, int] | None = None
    inference: str = "sliding_window"
    overlap: float = 0.25
    mode: str = "gaussian"
    sigma_scale: float = 0.125
    sw_batch_size: int = 1
    padding_mode: str = "constant"
    activation: str = "softmax"
    threshold: float = 0.5
    classes: tuple[str, ...] | None = None
    intensity: IntensityPolicy = field(default_factory=IntensityPolicy)

    def __post_init__(self) -> None:
        if self.layout not in ("ncdhw", "ndhwc"):
            raise InvalidInputError(f"a volume model's layout is ncdhw or ndhwc; got {self.layout!r}")
        if self.size is not None and (len(self.size) != 3 or min(self.size) < 1):
            raise InvalidInputError(f"a volume model's size is DxHxW (three positive sizes); got {list(self.size)}")


def _spatial(shape: tuple, layout: str, what: str = "input") -> tuple[object, tuple]:
    if len(shape) != 5:
        hint = " (a 2-D image network: import it with --task semantic and --layout nchw|nhwc)" if len(shape) == 4 else ""
        raise ModelFormatError(f"the model's {what} has shape {list(shape)}; a 3-D network takes a rank-5 tensor "
                               f"({layout}){hint}")
    return (shape[1], shape[2:]) if layout == "ncdhw" else (shape[4], shape[1:4])


def _size(cfg: VolumeImport, dims: tuple) -> tuple[int, int, int]:
    fixed = all(isinstance(d, int) and d > 0 for d in dims)
    if fixed and cfg.size is not None and tuple(cfg.size) != tuple(dims):
        raise InvalidInputError(f"--size {'x'.join(map(str, cfg.size))} disagrees with the model's fixed input {list(dims)}")
    if not fixed and cfg.size is None:
        raise InvalidInputError("the model's spatial size is dynamic; give the window or model size with --size DxHxW")
    return tuple(int(d) for d in (dims if fixed else cfg.size))  # type: ignore[return-value]


def _check_batch(cfg: VolumeImport, batch: object) -> None:
    """A fixed batch axis of 1 takes one window per call; any other fixed batch cannot take the last, smaller one."""
    calls = cfg.sw_batch_size if cfg.inference == "sliding_window" else 1
    if isinstance(batch, int) and batch != 1:
        raise ModelFormatError(f"the model's batch axis is fixed at {batch}; segrt needs a dynamic batch or 1")
    if batch == 1 and calls != 1:
        raise InvalidInputError(f"the model's batch axis is fixed at 1; --sw-batch-size {calls} needs a dynamic batch "
                                "(use --sw-batch-size 1)")


def _classes(cfg: VolumeImport, k: object) -> tuple[str, ...]:
    if cfg.activation == "softmax" and k == 1:
        raise InvalidInputError("--activation softmax needs several output channels; use sigmoid or none")
    if not isinstance(k, int):
        if cfg.classes is None:
            raise InvalidInputError("the model's class count is dynamic; name the classes with --classes a,b,c")
        return cfg.classes
    if cfg.classes is not None and len(cfg.classes) != max(k, 2):
        raise InvalidInputError(f"--classes names {len(cfg.classes)} classes; the model outputs {k} channel(s)")
    return cfg.classes or (("background", "foreground") if k == 1 else tuple(f"class_{i}" for i in range(k)))


def build_volume_manifest(cfg: VolumeImport, runner: OrtCpuRunner) -> Manifest:
    if len(runner.input_specs()) != 1 or len(runner.output_specs()) != 1:
        raise ModelFormatError("a volume model has one input and one output")
    inp, out = runner.input_specs()[0], runner.output_specs()[0]
    channels, dims = _spatial(inp.shape, cfg.layout)
    if not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
        raise ModelFormatError(f"input {list(inp.shape)} read as {cfg.layout} has {channels} channels; is --layout right?")
    size = _size(cfg, dims)
    _check_batch(cfg, inp.shape[0])
    k, out_dims = _spatial(out.shape, cfg.layout, "output")
    if all(isinstance(d, int) for d in (*dims, *out_dims)) and tuple(out_dims) != tuple(dims):
        raise ModelFormatError(f"the model maps {list(dims)} voxels to {list(out_dims)}; segrt needs one output voxel "
                               "per input voxel")
    classes = _classes(cfg, k)
    window = WindowSpec(size, cfg.overlap, cfg.mode, cfg.sigma_scale, cfg.sw_batch_size, cfg.padding_mode)
    volume = VolumeSpec(cfg.layout, cfg.inference, window if cfg.inference == "sliding_window" else None,
                        size if cfg.inference == "resize" else None, cfg.intensity)
    return Manifest(
        task="volume", architecture="imported", classes=tuple(classes),
        input=InputSpec(name=inp.name, channels=channels, color="gray" if channels == 1 else "rgb",
                        mean=(0.0,), std=(1.0,), resize="pad", stride=1),
        output=OutputSpec(name=out.name, activation=cfg.activation, threshold=cfg.threshold),
        source={"weights": cfg.model.name, "sha256": _sha256(cfg.model), "trained": True, "imported": True},
        volume=volume.to_dict())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_volume_onnx(cfg: VolumeImport, out: Path, *, force: bool = False,
                       versions: dict[str, str] | None = None) -> Manifest:
    """The bundle appears at ``out`` only once it loads; an existing ``out`` needs ``force``. The model's external
    weights (``MODEL.onnx.data``) travel with it."""
    from dataclasses import replace

    from .volume_predict import VolumeSegmenter

    if not cfg.model.is_file():
        raise InvalidInputError(f"model {str(cfg.model)!r} does not exist")
    if out.exists() and not force:
        raise InvalidInputError(f"{out} exists; pass force=True (--force) to replace it")
    manifest = build_volume_manifest(cfg, OrtCpuRunner(cfg.model, RunnerOptions()))
    if versions:
        manifest = replace(manifest, versions=versions)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        shutil.copyfile(cfg.model, tmp / manifest.model_file)
        data = cfg.model.with_name(cfg.model.name + ".data")
        if data.is_file():
            shutil.copyfile(data, tmp / data.name)
        write_manifest(tmp, manifest)
        VolumeSegmenter(tmp, "cpu").close()  # proves the bundle loads before it is published
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
