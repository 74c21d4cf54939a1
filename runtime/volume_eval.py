"""``segrt eval`` for volume bundles: Dice and HD95 (mm) per label against label volumes (no torch, no MONAI).

The data folder holds the images and their label volumes under one of two layouts, the first one found:

- ``DIR/images/<case>.nii.gz`` + ``DIR/labels/<case>.nii.gz`` (segrt's 2-D layout; a ``.nii``, ``.npy`` or a
  DICOM series folder ``images/<case>/`` as the image);
- the Medical Segmentation Decathlon / nnU-Net layout ``DIR/imagesTs`` + ``DIR/labelsTs`` (or ``imagesTr`` +
  ``labelsTr``), where nnU-Net's ``<case>_0000.nii.gz`` image is scored against ``<case>.nii.gz``.

A label volume holds the class ids of the bundle's classes on the image's grid (same shape; the same affine to
1e-3 mm). Every label but the background (0) is scored per case with :mod:`.volume_metrics` (MONAI's
``compute_dice`` and ``compute_hausdorff_distance(percentile=95)`` with the label volume's voxel spacing); the
summary is the mean over the cases where a value is defined (MONAI: NaN for an empty truth, and HD95 NaN when
either mask is empty), with that count. Rows are compared by voxel agreement with the reference row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError
from .volume_io import VOLUME_SUFFIXES, Volume, read_volume, volume_stem
from .volume_metrics import per_label

#: (images folder, labels folder) in the order they are looked for
LAYOUTS = (("images", "labels"), ("imagesTs", "labelsTs"), ("imagesTr", "labelsTr"))
NNUNET_CHANNEL = "_0000"
AFFINE_TOLERANCE_MM = 1e-3


def _cases(folder: Path) -> list[Path]:
    """Volume files and DICOM series folders, sorted by name; nnU-Net's extra channel files refused."""
    items = sorted(p for p in folder.iterdir() if p.is_dir() or p.name.lower().endswith(VOLUME_SUFFIXES))
    stems = {volume_stem(p) for p in items}
    extra = sorted(s for s in stems if s.endswith("_0001") and s[:-5] + NNUNET_CHANNEL in stems)
    if extra:
        raise InvalidInputError(f"{folder} holds nnU-Net channel files ({extra[0][:-5]}_0000, {extra[0]}...); segrt "
                                "reads one file per case: stack the channels into one 4-D NIfTI (X, Y, Z, C)")
    return items


@dataclass(frozen=True)
class VolumeDataset:
    root: Path
    images: list[Path]
    labels: Path

    @classmethod
    def open(cls, root: Path) -> VolumeDataset:
        for images, labels in LAYOUTS:
            if (root / images).is_dir() and (root / labels).is_dir():
                cases = _cases(root / images)
                if not cases:
                    raise InvalidInputError(f"{root / images} holds no volumes ({', '.join(VOLUME_SUFFIXES)} or "
                                            "DICOM series folders)")
                return cls(root, cases, root / labels)
        raise InvalidInputError(f"{str(root)!r} has no images/ + labels/ (or imagesTs/ + labelsTs/, imagesTr/ + "
                                "labelsTr/) folders of volumes and label volumes")

    def read(self, path: Path) -> Volume:
        return read_volume(path)

    def label_path(self, image: Path) -> Path:
        stem = volume_stem(image)
        stems = [stem, stem[: -len(NNUNET_CHANNEL)]] if stem.endswith(NNUNET_CHANNEL) else [stem]
        for s in stems:
            for suffix in VOLUME_SUFFIXES:
                if (self.labels / f"{s}{suffix}").is_file():
                    return self.labels / f"{s}{suffix}"
        raise InvalidInputError(f"no label volume for {image.name} in {self.labels} (expected {stems[-1]}.nii.gz)")

    def truth(self, image: Path, volume: Volume, classes: int) -> Volume:
        """The label volume of ``image``, checked against the image's grid and the bundle's class ids."""
        path = self.label_path(image)
        truth = read_volume(path)
        if truth.data.shape != volume.spatial_shape:
            raise InvalidInputError(f"label volume {path.name} has shape {truth.data.shape}; its image "
                                    f"{image.name} has {volume.spatial_shape}: they must share one grid")
        if volume.source != "npy" and truth.source != "npy" and \
                not np.allclose(truth.affine, volume.affine, atol=AFFINE_TOLERANCE_MM):
            raise InvalidInputError(f"label volume {path.name} has another affine than {image.name}: they must share "
                                    "one grid (resample the labels onto the image)")
        values = np.unique(truth.data)
        bad = values[(values < 0) | (values >= classes) | (values != np.round(values))]
        if bad.size:
            raise InvalidInputError(f"label volume {path.name} holds value {bad[0]:g}; the bundle's class ids are "
                                    f"0..{classes - 1}")
        return Volume(truth.data.astype(np.int64), truth.affine, truth.header, truth.source)


@dataclass
class _VolumeScores:
    cases: list[dict[str, Any]] = field(default_factory=list)
    agree: list[float] = field(default_factory=list)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _mean(values: list[float | None]) -> tuple[float | None, int]:
    kept = [v for v in values if v is not None]
    return (float(np.mean(kept)) if kept else None), len(kept)


class VolumeEvaluator:
    """Per-label Dice and HD95 against the label volumes, and voxel agreement with the reference row."""

    columns = ("mean Dice", "mean HD95 mm")

    def __init__(self, dataset: VolumeDataset | None, tolerances: Any) -> None:
        if dataset is not None and not isinstance(dataset, VolumeDataset):
            raise InvalidInputError("volume bundles are scored against a folder of label volumes (images/ + labels/)")
        self.dataset, self.tolerances = dataset, tolerances
        self._last: tuple[tuple[Path, int], Volume] | None = None

    def start(self, model: Any) -> _VolumeScores:
        return _VolumeScores()

    def _truth(self, path: Path, volume: Volume, classes: int) -> Volume:
        """The case's label volume, read once for all the rows (they score the same case in turn)."""
        if self._last is None or self._last[0] != (path, classes):
            self._last = ((path, classes), self.dataset.truth(path, volume, classes))
        return self._last[1]

    def step(self, state: _VolumeScores, model: Any, volume: Volume, path: Path, reference: Any) -> Any:
        classes = model.manifest.classes
        truth = self._truth(path, volume, max(len(classes), 2))
        res = model(volume)
        scores = per_label(res.labels, truth.data, range(1, max(len(classes), 2)), truth.spacing)
        state.cases.append({"case": volume_stem(path), "labels": {
            classes[k] if k < len(classes) else str(k): {
                "dice": _finite(s["dice"]), "hd95_mm": _finite(s["hd95_mm"]),
                "predicted_voxels": int((res.labels == k).sum()), "truth_voxels": int((truth.data == k).sum())}
            for k, s in scores.items()}})
        if reference is not None:
            state.agree.append(float((res.labels == reference.labels).mean()))
        return res

    def accuracy(self, state: _VolumeScores, model: Any) -> dict[str, Any]:
        names = list(state.cases[0]["labels"]) if state.cases else []
        labels = {}
        for name in names:
            dice, dice_n = _mean([c["labels"][name]["dice"] for c in state.cases])
            hd, hd_n = _mean([c["labels"][name]["hd95_mm"] for c in state.cases])
            labels[name] = {"dice": dice, "dice_cases": dice_n, "hd95_mm": hd, "hd95_cases": hd_n}
        mean_dice, _ = _mean([v["dice"] for v in labels.values()])
        mean_hd, _ = _mean([v["hd95_mm"] for v in labels.values()])
        return {"mean_dice": mean_dice, "mean_hd95_mm": mean_hd, "labels": labels, "cases": state.cases}

    def agreement(self, state: _VolumeScores) -> tuple[dict[str, float], bool]:
        agree = float(np.mean(state.agree))
        return ({"voxel_agreement": agree, "min_case_voxel_agreement": float(np.min(state.agree))},
                agree >= self.tolerances.min_pixel_agreement)

    @staticmethod
    def cells(accuracy: dict[str, Any]) -> tuple[float, float]:
        return tuple(float("nan") if v is None else v for v in (accuracy["mean_dice"], accuracy["mean_hd95_mm"]))

    @staticmethod
    def versus(agreement: dict[str, float]) -> str:
        return f"{agreement['voxel_agreement']:.4%} voxels"
