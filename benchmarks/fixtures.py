"""Trained fixture models: every exported architecture, fine-tuned on the CPU in minutes, seeded.

Random weights make parity meaningless (near-uniform logits flip on noise; Mask R-CNN finds nothing),
and pretrained weights cannot be downloaded here. So the project trains its own, on data with exact
ground truth: the synthetic scenes of :mod:`segrt.benchmarks.synth` and the stardist nuclei image.

``build_fixture(name)`` trains once and caches ``checkpoint.pth`` (a plain state_dict that
``segrt export --weights`` takes), ``metrics.json`` (recipe, PyTorch validation scores, versions) and
``val/`` (the held-out images with ground truth, the folder ``segrt eval --data`` reads) under
``$SEGRT_CACHE/fixtures/<name>-<recipe hash>/``. The inputs a model trains on go through the
runtime's own preprocessing, so the exported bundle sees exactly what PyTorch saw.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from segrt.runtime.errors import InvalidInputError
from segrt.runtime.manifest import InputSpec, write_json_atomic

from . import synth

if TYPE_CHECKING:
    from .fixture_training import Trainer

log = logging.getLogger("segrt")
DATA = Path(__file__).parent / "data"
NUCLEI_SPLIT = 384  # nuclei columns [0, 384) train, [384, 512) validate
Dataset = Literal["synthetic", "nuclei"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a fixture's weights; its hash names the cache entry."""

    name: str
    architecture: str  # an export architecture: unet, deeplabv3plus, maskrcnn
    encoder: str
    dataset: Dataset
    size: int  # square training crop / synthetic scene side
    steps: int
    batch: int
    lr: float
    in_channels: int = 3
    train_count: int = 400  # synthetic scenes to train on
    val_count: int = 40
    seed: int = 0
    # A semantic recipe with a ResNet encoder whose trained weights start this model's backbone:
    # Mask R-CNN does not train from scratch in CPU minutes, a U-Net on the same scenes does.
    backbone_from: Recipe | None = None
    # instance models: torchvision's resize policy (default: the training size, no resize)
    min_size: int | None = None
    max_size: int | None = None

    @property
    def resize_policy(self) -> tuple[int, int]:
        return self.min_size or self.size, self.max_size or self.size

    @property
    def classes(self) -> tuple[str, ...]:
        return synth.CLASSES if self.dataset == "synthetic" else ("background", "nucleus")

    @property
    def task(self) -> str:
        """The export spec's task (``semantic``, ``instance``): it picks the :class:`Trainer`."""
        from segrt.export.models import get_spec

        return get_spec(self.architecture).task

    @property
    def trainer(self) -> Trainer:
        from .fixture_training import TRAINERS

        found = TRAINERS.get(self.task)
        if found is None:
            raise InvalidInputError(f"fixture {self.name!r}: no trainer for {self.task!r} models "
                                    f"({self.architecture}); trainers: {', '.join(TRAINERS)}")
        return found

    @property
    def input_spec(self) -> InputSpec:
        """The preprocessing the exported bundle's manifest will record (see export/models/_semantic.py)."""
        if self.in_channels == 1:
            return InputSpec("image", 1, "gray", mean=(sum(IMAGENET_MEAN) / 3,), std=(sum(IMAGENET_STD) / 3,),
                             intensity="minmax")
        return InputSpec("image", 3, "rgb", mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]

    def quick(self, steps: int, size: int, train_count: int = 64, val_count: int = 12,
              backbone: dict[str, int] | None = None) -> Recipe:
        """A tiny version for CI: same data and model, fewer steps on smaller scenes. ``backbone`` sizes the
        quick run of ``backbone_from`` (default: the same steps and scenes as this one)."""
        sizing = backbone or dict(steps=steps, size=size, train_count=train_count, val_count=val_count)
        backbone = self.backbone_from.quick(**sizing) if self.backbone_from else None
        return replace(self, name=f"{self.name}-quick", steps=steps, size=size, train_count=train_count,
                       val_count=val_count, backbone_from=backbone)


_UNET_R50 = Recipe("unet-r50", "unet", "resnet50", "synthetic", size=128, steps=300, batch=8, lr=2e-3)
FIXTURES: tuple[Recipe, ...] = (
    Recipe("unet", "unet", "resnet18", "synthetic", size=160, steps=500, batch=8, lr=2e-3),
    Recipe("deeplabv3plus", "deeplabv3plus", "resnet18", "synthetic", size=160, steps=500, batch=8, lr=2e-3),
    Recipe("unet-nuclei", "unet", "resnet18", "nuclei", size=128, steps=300, batch=8, lr=2e-3, in_channels=1),
    _UNET_R50,
    Recipe("maskrcnn", "maskrcnn", "resnet50", "synthetic", size=160, steps=300, batch=2, lr=0.01, train_count=300,
           backbone_from=_UNET_R50),
    # Nuclei are 10-20 px: upsampled 2x, as the resize policy (min 256 / max 1024) also does at run time.
    Recipe("maskrcnn-nuclei", "maskrcnn", "resnet50", "nuclei", size=128, steps=200, batch=2, lr=0.01,
           min_size=256, max_size=1024, backbone_from=_UNET_R50),
)


def get_recipe(name: str) -> Recipe:
    for r in FIXTURES:
        if r.name == name:
            return r
    raise InvalidInputError(f"unknown fixture {name!r}; valid: {', '.join(r.name for r in FIXTURES)}")


def cache_root() -> Path:
    import os

    return Path(os.environ.get("SEGRT_CACHE", Path.home() / ".cache" / "segrt")) / "fixtures"


# --------------------------------------------------------------------------------------------- data

def _nuclei(eight_bit: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The stardist image (uint16) and its instance ids. Its values stop at 235, so ``eight_bit``
    gives the same pixels as uint8, the input RGB detectors are trained on."""
    image = cv2.imread(str(DATA / "nuclei_img2d.tif"), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(DATA / "nuclei_mask2d.tif"), cv2.IMREAD_UNCHANGED)
    if image is None or mask is None:
        raise InvalidInputError(f"cannot read the nuclei data in {DATA}; reinstall segrt")
    if eight_bit:
        if image.max() > 255:
            raise InvalidInputError("the nuclei image no longer fits 8 bits; update the fixture")
        image = image.astype(np.uint8)
    return image, mask.astype(np.int32)


def write_val_data(recipe: Recipe, out: Path) -> Path:
    """The held-out images and their ground truth, as a ``segrt eval`` dataset folder."""
    if recipe.dataset == "synthetic":
        return synth.write_dataset(out, synth.SynthConfig(count=recipe.val_count, size=(recipe.size,) * 2,
                                                          seed=recipe.seed, split="val"))
    image, mask = _nuclei(eight_bit=recipe.trainer.eight_bit)
    return write_instance_dataset(out, {"nuclei_val": (image[:, NUCLEI_SPLIT:], mask[:, NUCLEI_SPLIT:])},
                                  ("background", "nucleus"))


def write_instance_dataset(out: Path, items: dict[str, tuple[np.ndarray, np.ndarray]],
                           names: tuple[str, ...]) -> Path:
    """Images with instance-id masks (0 = background, all one class) as images/, labels/, COCO json."""
    samples = []
    for stem, (image, ids) in items.items():
        n = int(ids.max())
        samples.append(synth.Sample(stem, image, (ids > 0).astype(np.uint8), ids, [1] * n, [False] * n))
    return synth.write_folder(out, samples, names)


def _train_samples(recipe: Recipe) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image HxWxC in model channels, semantic labels, instance ids) to draw training crops from."""
    if recipe.dataset == "synthetic":
        cfg = synth.SynthConfig(count=recipe.train_count, size=(recipe.size,) * 2, seed=recipe.seed)
        return [(s.image, s.labels, np.where(s.labels == synth.IGNORE, 0, s.instances)) for s in synth.iter_scenes(cfg)]
    image, ids = _nuclei(eight_bit=recipe.trainer.eight_bit)
    return [(image[:, :NUCLEI_SPLIT, None], (ids[:, :NUCLEI_SPLIT] > 0).astype(np.uint8), ids[:, :NUCLEI_SPLIT])]


# ---------------------------------------------------------------------------------------- caching

@dataclass(frozen=True)
class Fixture:
    recipe: Recipe
    directory: Path

    @property
    def checkpoint(self) -> Path:
        return self.directory / "checkpoint.pth"

    @property
    def val_dir(self) -> Path:
        return self.directory / "val"

    @property
    def metrics(self) -> dict[str, Any]:
        return json.loads((self.directory / "metrics.json").read_text())


def build_fixture(recipe: Recipe, root: Path | None = None, *, force: bool = False) -> Fixture:
    """Train (or reuse the cached) fixture; the cache entry appears whole or not at all."""
    import torch

    from segrt.export.bundle import atomic_dir
    from segrt.export.exporter import tool_versions

    from .fixture_training import train

    fixture = Fixture(recipe, (root or cache_root()) / f"{recipe.name}-{recipe.key()}")
    if (fixture.directory / "metrics.json").is_file() and not force:
        return fixture
    log.info("training fixture %s (cached in %s)", recipe.name, fixture.directory)
    backbone = build_fixture(recipe.backbone_from, root).checkpoint if recipe.backbone_from else None
    with atomic_dir(fixture.directory, force=True) as tmp:
        model, record = train(recipe, backbone)
        torch.save(model.state_dict(), tmp / "checkpoint.pth")
        write_val_data(recipe, tmp / "val")
        scores = recipe.trainer.validate(model, recipe, tmp / "val")
        write_json_atomic(tmp / "metrics.json", {"recipe": asdict(recipe), "task": recipe.task,
                                                 "classes": list(recipe.classes), "training": record,
                                                 "validation": scores, "versions": tool_versions()})
    return fixture


def export_fixture(fixture: Fixture, *, force: bool = False) -> Path:
    """The fixture's ONNX bundle (``bundle/`` beside its checkpoint), exported and verified once."""
    from segrt.export.exporter import export_model

    out = fixture.directory / "bundle"
    if (out / "segrt.json").is_file() and not force:
        return out
    export_model(fixture.recipe.trainer.export_config(fixture.recipe, fixture.checkpoint), out, force=True)
    return out
