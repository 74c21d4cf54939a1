"""Training the fixture models (see :mod:`segrt.benchmarks.fixtures` for the recipes and the cache): one
:class:`Trainer` per export task, so nothing here branches on the task."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segrt.runtime.errors import InvalidInputError
from segrt.runtime.manifest import InputSpec
from segrt.runtime.prepost import preprocess

from . import synth
from .evaluate import coco_evaluate, confusion, iou_summary
from .fixtures import Recipe, _train_samples

log = logging.getLogger("segrt")


def _crop(rng: np.random.Generator, sample: tuple[np.ndarray, ...], size: int) -> tuple[np.ndarray, ...]:
    h, w = sample[0].shape[:2]
    y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    flip = rng.random() < 0.5
    out = tuple(a[y : y + size, x : x + size] for a in sample)
    return tuple(np.ascontiguousarray(a[:, ::-1] if flip else a) for a in out)


def build_model(recipe: Recipe) -> Any:
    """The untrained model a recipe trains (seed it first): the export spec's module, or torchvision's."""
    return recipe.trainer.build(recipe)


def _build_semantic(recipe: Recipe) -> Any:
    from segrt.export.models import get_spec
    from segrt.export.spec import ExportConfig

    spec = get_spec(recipe.architecture)
    return spec.build(ExportConfig(recipe.architecture, recipe.encoder, len(recipe.classes), recipe.in_channels))


DETECTOR = "maskrcnn_resnet50_fpn"  # the torchvision model an instance recipe trains and exports


def _build_detector(recipe: Recipe) -> Any:
    from segrt.export.models.maskrcnn import build_torchvision

    model = build_torchvision(DETECTOR, len(recipe.classes), *recipe.resize_policy,
                              rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500, box_batch_size_per_image=128)
    # CPU budget: the stem and first stage stay as initialised (from a trained U-Net encoder
    # when the recipe names one, as torchvision freezes them when fine-tuning); the rest trains.
    for p in (*model.backbone.body.conv1.parameters(), *model.backbone.body.layer1.parameters()):
        p.requires_grad_(False)
    return model


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
    opt, step_fn = recipe.trainer.optimizer(model, recipe.lr), recipe.trainer.step
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
    return recipe.trainer.validate(model, recipe, val_dir)


def _validate_detector(model: Any, recipe: Recipe, val_dir: Path) -> dict[str, Any]:
    return coco_evaluate(val_dir / "annotations.json", torch_instances(model, val_dir))


def _validate_semantic(model: Any, recipe: Recipe, val_dir: Path) -> dict[str, Any]:
    from segrt.runtime.image import read_image, to_channels

    from .eval_run import Dataset

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


def _export_semantic(r: Recipe, checkpoint: Path) -> Any:
    from segrt.export.spec import ExportConfig

    return ExportConfig(r.architecture, r.encoder, len(r.classes), r.in_channels, class_names=r.classes,
                        weights=checkpoint, intensity=r.input_spec.intensity)


def _export_detector(r: Recipe, checkpoint: Path) -> Any:
    from segrt.export.spec import ExportConfig

    return ExportConfig(r.architecture, DETECTOR, len(r.classes), class_names=r.classes, weights=checkpoint,
                        min_size=r.resize_policy[0], max_size=r.resize_policy[1])


def _adamw(model: Any, lr: float) -> Any:
    import torch

    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)


def _sgd(model: Any, lr: float) -> Any:
    import torch

    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9, weight_decay=1e-4)


# ---------------------------------------------------------------------------------------- families

@dataclass(frozen=True)
class Trainer:
    """What differs between the families a recipe trains (one per export task): the model, its optimiser and
    loss step, how PyTorch's score is measured, the export configuration, and how the nuclei image is read
    (detectors see it as 8-bit RGB, semantic models as 16-bit grayscale)."""

    build: Callable[[Recipe], Any]
    optimizer: Callable[[Any, float], Any]
    step: Callable[[Any, Recipe, list], Any]
    validate: Callable[[Any, Recipe, Path], dict[str, Any]]
    export_config: Callable[[Recipe, Path], Any]
    eight_bit: bool


TRAINERS: dict[str, Trainer] = {
    "semantic": Trainer(_build_semantic, _adamw, _semantic_step, _validate_semantic, _export_semantic, False),
    "instance": Trainer(_build_detector, _sgd, _instance_step, _validate_detector, _export_detector, True),
}
