"""``segrt eval``: bundles x devices over one folder of images with ground truth, in one pass.

Each image is read once and given to every (bundle, device) row in turn, so FP32 / FP16 / INT8 and
each backend are judged on the same pixels, and each row is compared with the reference row on the
spot (Polygraphy's ``--compare`` view): pixel agreement for semantic bundles, matched-instance mask
IoU for instance bundles, each checked against a stated tolerance. What is scored, and how, is the
task's evaluator (``Task.evaluator`` in ``runtime/tasks/``); this module runs the rows and the table.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segrt.runtime.errors import InvalidInputError
from segrt.runtime.image import list_images, read_image
from segrt.runtime.loader import load
from segrt.runtime.manifest import read_manifest
from segrt.runtime.tasks import task_for


@dataclass(frozen=True)
class Tolerances:
    min_pixel_agreement: float = 0.99  # semantic: fraction of pixels with the reference's label
    min_mask_iou: float = 0.9  # instance: mean mask IoU of matched reference detections
    min_match_fraction: float = 0.95  # instance: reference detections matched (same label, IoU >= 0.5)

    def __post_init__(self) -> None:
        for name, v in self.__dict__.items():
            if not 0 <= v <= 1:
                raise InvalidInputError(f"tolerance {name} must be in [0, 1]; got {v}")


@dataclass
class Row:
    bundle: Path
    device: str
    model: Any
    reference: bool = False
    state: Any = None  # the task evaluator's accumulator for this row (Task.evaluator(...).start)
    ms: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        m = self.model.manifest
        return f"{self.bundle.name} ({m.architecture}, {m.precision})"


@dataclass(frozen=True)
class Dataset:
    root: Path
    images: list[Path]
    labels: Path | None  # folder of class-id PNGs
    coco: Path | None  # annotations.json
    ids: dict[str, int]  # COCO image id by file name
    panoptic: Path | None = None  # COCO panoptic ground truth: panoptic.json beside panoptic/<stem>.png

    @classmethod
    def open(cls, root: Path) -> Dataset:
        if not (root / "images").is_dir():
            raise InvalidInputError(f"{str(root)!r} has no images/ folder (expected DIR/images, DIR/labels or "
                                    f"DIR/annotations.json)")
        images = list_images(root / "images")
        if not images:
            raise InvalidInputError(f"{str(root / 'images')!r} holds no images")
        labels = root / "labels" if (root / "labels").is_dir() else None
        coco = root / "annotations.json" if (root / "annotations.json").is_file() else None
        ids: dict[str, int] = {}
        if coco is not None:
            try:
                ids = {im["file_name"]: int(im["id"]) for im in json.loads(coco.read_text())["images"]}
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InvalidInputError(f"{coco} is not a COCO annotation file ({type(exc).__name__}: {exc})") from None
        panoptic = root / "panoptic.json" if (root / "panoptic.json").is_file() else None
        if labels is None and coco is None and panoptic is None:
            raise InvalidInputError(f"{str(root)!r} has neither labels/, annotations.json nor panoptic.json: nothing "
                                    "to score against")
        return cls(root, images, labels, coco, ids, panoptic)

    def read(self, path: Path) -> np.ndarray:
        return read_image(path)

    def truth(self, image: Path) -> np.ndarray:
        assert self.labels is not None
        path = self.labels / f"{image.stem}.png"
        lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if lab is None or lab.ndim != 2:
            raise InvalidInputError(f"no single-channel label PNG {str(path)!r} for {image.name}")
        return lab


def evaluate(bundles: list[Path], devices: list[str], data: Path, reference: Path | None = None,
             tolerances: Tolerances = Tolerances(), threads: int | None = None,
             score_threshold: float | None = None) -> dict[str, Any]:
    """``score_threshold`` (instance bundles): COCO AP rewards the low-score tail, so pass the graph's
    floor (e.g. 0.05) to score a bundle as torchvision's own evaluation does."""
    tasks = {read_manifest(b).task for b in [*bundles, *([reference] if reference is not None else [])]}
    if len(tasks) != 1:
        raise InvalidInputError(f"all bundles of one evaluation must share a task; got {sorted(tasks)}")
    task = tasks.pop()
    ds = open_dataset(task, data)
    evaluator = task_for(task).evaluator(ds, tolerances)  # refuses data without this task's ground truth, or the task
    opts: dict[str, Any] = {"threads": threads, "score_threshold": score_threshold}
    rows = [Row(b, d, load(b, d, **opts)) for b in bundles for d in devices]
    if reference is not None:
        rows.insert(0, Row(reference, "cpu", load(reference, "cpu", **opts), reference=True))
    elif len(rows) > 1:
        rows[0].reference = True
    for row in rows:
        row.state = evaluator.start(row.model)
    from tqdm import tqdm

    for path in tqdm(ds.images, unit="img", disable=len(ds.images) < 5):
        image = ds.read(path)
        ref = None
        for row in rows:
            t0 = time.perf_counter()
            res = evaluator.step(row.state, row.model, image, path, None if row.reference else ref)
            row.ms.append((time.perf_counter() - t0) * 1e3)
            if row.reference:
                ref = res
    return {"task": task, "data": str(data), "images": len(ds.images), "tolerances": tolerances.__dict__,
            "score_threshold": score_threshold,
            "rows": [_summary(r, evaluator, any(x.reference for x in rows)) for r in rows]}


def open_dataset(task: str, data: Path) -> Any:
    """The task's own reader of ``--data`` where it has one (``Task.eval_dataset``: volumes, which come with
    label volumes), else :class:`Dataset` (images/ with labels/, COCO or panoptic ground truth)."""
    own = task_for(task).eval_dataset(data)
    return Dataset.open(data) if own is None else own


def _summary(row: Row, evaluator: Any, compared: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"bundle": str(row.bundle), "label": row.label, "device": row.model.device,
                           "backend": row.model.runner.name, "precision": row.model.manifest.precision,
                           "reference": row.reference, "mean_ms": float(np.mean(row.ms))}
    out["accuracy"] = evaluator.accuracy(row.state, row.model)
    if compared and not row.reference:
        out["agreement"], out["passed"] = evaluator.agreement(row.state)
    return out


def table(result: dict[str, Any]) -> str:
    """One Markdown table for the run: accuracy per row, agreement with the reference, pass/fail."""
    evaluator = task_for(result["task"]).evaluator(None, None)  # the columns only
    head = f"| bundle | device | {evaluator.columns[0]} | {evaluator.columns[1]} | vs reference | ms/img |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        a, b = evaluator.cells(r["accuracy"])
        if r["reference"]:
            vs = "reference"
        elif "agreement" not in r:
            vs = "-"
        else:
            vs = evaluator.versus(r["agreement"])
            vs += " PASS" if r["passed"] else " FAIL"
        lines.append(f"| {r['label']} | {r['device']} ({r['backend']}) | {a:.4f} | {b:.4f} | {vs} | {r['mean_ms']:.1f} |")
    tol = result["tolerances"]
    lines.append("")
    lines.append(f"{result['images']} images from {result['data']}. Tolerances: pixel agreement >= "
                 f"{tol['min_pixel_agreement']}, matched mask IoU >= {tol['min_mask_iou']} with >= "
                 f"{tol['min_match_fraction']:.0%} of reference instances matched.")
    return "\n".join(lines)
