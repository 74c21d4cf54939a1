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
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from segrt.runtime.errors import InvalidInputError
from segrt.runtime.manifest import InputSpec, write_json_atomic
from segrt.runtime.prepost import preprocess

from . import synth
from .evaluate import coco_evaluate, confusion, iou_summary

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
        return "instance" if self.architecture == "maskrcnn" else "semantic"

    @property
    def input_spec(self) -> InputSpec:
        """The preprocessing the exported bundle's manifest will record (see export/models/_semantic.py)."""
        if self.in_channels == 1:
            return InputSpec("image", 1, "gray", mean=(sum(IMAGENET_MEAN) / 3,), std=(sum(IMAGENET_STD) / 3,),
                             intensity="minmax")
        return InputSpec("image", 3, "rgb", mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]

    def quick(self, steps: int, size: int, train_count: int = 64, val_count: int = 12) -> Recipe:
        """A tiny version for CI: same data and model, fewer steps on smaller scenes."""
        backbone = self.backbone_from.quick(steps, size, train_count, val_count) if self.backbone_from else None
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
    image, mask = _nuclei(eight_bit=recipe.task == "instance")
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
    image, ids = _nuclei(eight_bit=recipe.task == "instance")
    return [(image[:, :NUCLEI_SPLIT, None], (ids[:, :NUCLEI_SPLIT] > 0).astype(np.uint8), ids[:, :NUCLEI_SPLIT])]


def _crop(rng: np.random.Generator, sample: tuple[np.ndarray, ...], size: int) -> tuple[np.ndarray, ...]:
    h, w = sample[0].shape[:2]
    y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    flip = rng.random() < 0.5
    out = tuple(a[y : y + size, x : x + size] for a in sample)
    return tuple(np.ascontiguousarray(a[:, ::-1] if flip else a) for a in out)


# ----------------------------------------------------------------------------------------- training

def build_model(recipe: Recipe) -> Any:
    """The untrained model a recipe trains (seed it first): the export spec's module, or torchvision's."""
    if recipe.task == "instance":
        from segrt.export.models.maskrcnn import build_torchvision

        model = build_torchvision("maskrcnn_resnet50_fpn", len(recipe.classes), *recipe.resize_policy,
                                  rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
                                  box_batch_size_per_image=128)
        # CPU budget: the stem and first stage stay as initialised (from a trained U-Net encoder
        # when the recipe names one, as torchvision freezes them when fine-tuning); the rest trains.
        for p in (*model.backbone.body.conv1.parameters(), *model.backbone.body.layer1.parameters()):
            p.requires_grad_(False)
        return model
    from segrt.export.models import get_spec
    from segrt.export.spec import ExportConfig

    spec = get_spec(recipe.architecture)
    return spec.build(ExportConfig(recipe.architecture, recipe.encoder, len(recipe.classes), recipe.in_channels))


def _batch(recipe: Recipe, rng: np.random.Generator, samples: list) -> list[tuple[np.ndarray, ...]]:
    picks = rng.integers(0, len(samples), recipe.batch)
    return [_crop(rng, samples[i], recipe.size) for i in picks]


def _semantic_step(model: Any, recipe: Recipe, crops: list[tuple[np.ndarray, ...]]) -> Any:
    import torch
    import torch.nn.functional as F

    tensor, _ = preprocess([c[0] for c in crops], recipe.input_spec)
    target = torch.from_numpy(np.stack([c[1] for c in crops]).astype(np.int64))
    return F.cross_entropy(model(torch.from_numpy(tensor)), target, ignore_index=synth.IGNORE)


def instance_targets(ids: np.ndarray, classes: np.ndarray | None = None) -> dict[str, Any]:
    """torchvision detection targets from an instance-id map (0 = background)."""
    import torch

    found = [k for k in np.unique(ids) if k > 0]
    masks = np.stack([ids == k for k in found]) if found else np.zeros((0, *ids.shape), bool)
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    labels = [int(classes[k - 1]) if classes is not None else 1 for k in found]
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64), "masks": torch.from_numpy(masks.astype(np.uint8))}


def _instance_step(model: Any, recipe: Recipe, crops: list[tuple[np.ndarray, ...]]) -> Any:
    import torch

    images, targets = [], []
    for image, labels, ids in crops:
        rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
        images.append(torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / 255.0))
        # class of each instance id, read off the semantic labels
        classes = np.zeros(int(ids.max()) + 1 if ids.size else 1, np.int64)
        classes[ids.ravel()] = labels.ravel()
        targets.append(instance_targets(ids, classes[1:]))
    return sum(model(images, targets).values())


def load_backbone(model: Any, checkpoint: Path) -> int:
    """Copy a trained smp ResNet encoder (``encoder.*``) into a torchvision detector's ResNet body
    (``backbone.body.*``): smp's ResNet encoders are torchvision ResNets, so the keys line up."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    body = model.backbone.body.state_dict()
    found = {k: state[f"encoder.{k}"] for k in body if f"encoder.{k}" in state}
    if len(found) != len(body):
        raise InvalidInputError(f"{checkpoint} holds {len(found)} of the {len(body)} backbone tensors")
    model.backbone.body.load_state_dict(found)
    return len(found)


def train(recipe: Recipe, backbone: Path | None = None) -> tuple[Any, dict[str, Any]]:
    """Train ``recipe`` from its seed; returns the eval-mode module and the training record."""
    import torch

    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    samples = _train_samples(recipe)
    model = build_model(recipe).train()
    if backbone is not None:
        log.info("%s: backbone from %s (%d tensors)", recipe.name, backbone, load_backbone(model, backbone))
    if recipe.task == "instance":
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=recipe.lr, momentum=0.9,
                              weight_decay=1e-4)
        step_fn = _instance_step
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
        step_fn = _semantic_step
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.steps, pct_start=0.1)
    t0, losses = time.perf_counter(), []
    for step in range(recipe.steps):
        loss = step_fn(model, recipe, _batch(recipe, rng, samples))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == recipe.steps - 1:
            log.info("%s step %d/%d loss %.4f", recipe.name, step + 1, recipe.steps, np.mean(losses[-50:]))
    record = {"train_seconds": round(time.perf_counter() - t0, 1), "final_loss": float(np.mean(losses[-20:]))}
    return model.eval(), record


# ------------------------------------------------------------------------------------- validation

def validate(model: Any, recipe: Recipe, val_dir: Path) -> dict[str, Any]:
    """PyTorch's own score on the held-out folder: mIoU (semantic) or COCO box/mask AP (instance)."""
    from segrt.runtime.image import read_image, to_channels

    from .eval_run import Dataset

    if recipe.task == "instance":
        return coco_evaluate(val_dir / "annotations.json", torch_instances(model, val_dir))
    ds = Dataset.open(val_dir)
    conf = np.zeros((len(recipe.classes),) * 2, np.int64)
    for path in ds.images:
        arr = to_channels(read_image(path), recipe.in_channels)
        conf += confusion(torch_labels(model, recipe.input_spec, arr), ds.truth(path), len(recipe.classes))
    return iou_summary(conf, recipe.classes)


def torch_labels(model: Any, spec: InputSpec, image: np.ndarray) -> np.ndarray:
    import torch

    tensor, frames = preprocess([image], spec)
    with torch.no_grad():
        out = model(torch.from_numpy(tensor))[0].argmax(0).numpy()
    h, w = frames[0].orig_hw
    return out[:h, :w].astype(np.uint8)


def torch_instances(model: Any, val_dir: Path) -> list[dict[str, Any]]:
    """torchvision's own end-to-end predictions on a COCO folder (every detection the model keeps),
    as COCO results."""
    from segrt.export.verify import torch_instances as predict
    from segrt.runtime.image import read_image
    from segrt.runtime.instance import InstanceResult

    coco = json.loads((val_dir / "annotations.json").read_text())
    results = []
    for info in coco["images"]:
        boxes, labels, scores, masks = predict(model, read_image(val_dir / "images" / info["file_name"]), 0.0)
        results += InstanceResult(boxes, scores, labels, masks, ()).to_coco(info["id"])
    return results


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

    fixture = Fixture(recipe, (root or cache_root()) / f"{recipe.name}-{recipe.key()}")
    if (fixture.directory / "metrics.json").is_file() and not force:
        return fixture
    log.info("training fixture %s (cached in %s)", recipe.name, fixture.directory)
    backbone = build_fixture(recipe.backbone_from, root).checkpoint if recipe.backbone_from else None
    with atomic_dir(fixture.directory, force=True) as tmp:
        model, record = train(recipe, backbone)
        torch.save(model.state_dict(), tmp / "checkpoint.pth")
        write_val_data(recipe, tmp / "val")
        scores = validate(model, recipe, tmp / "val")
        write_json_atomic(tmp / "metrics.json", {"recipe": asdict(recipe), "task": recipe.task,
                                                 "classes": list(recipe.classes), "training": record,
                                                 "validation": scores, "versions": tool_versions()})
    return fixture


def export_fixture(fixture: Fixture, *, force: bool = False) -> Path:
    """The fixture's ONNX bundle (``bundle/`` beside its checkpoint), exported and verified once."""
    from segrt.export.exporter import export_model
    from segrt.export.spec import ExportConfig

    r = fixture.recipe
    out = fixture.directory / "bundle"
    if (out / "segrt.json").is_file() and not force:
        return out
    if r.task == "instance":
        cfg = ExportConfig(r.architecture, "maskrcnn_resnet50_fpn", len(r.classes), class_names=r.classes,
                           weights=fixture.checkpoint, min_size=r.resize_policy[0], max_size=r.resize_policy[1])
    else:
        cfg = ExportConfig(r.architecture, r.encoder, len(r.classes), r.in_channels, class_names=r.classes,
                           weights=fixture.checkpoint, intensity=r.input_spec.intensity)
    export_model(cfg, out, force=True)
    return out
