"""Volumes in and out: NIfTI (``.nii``, ``.nii.gz``, nibabel), a DICOM series folder (pydicom) and ``.npy``.

A :class:`Volume` keeps the file's voxel axes (nibabel's ``(i, j, k)`` order, as MONAI's ``LoadImage`` does),
the 4x4 voxel-to-RAS affine and, for NIfTI, the header, so the label volume written back lands on the input's
grid. nibabel and pydicom are the ``medical`` extra: imported when a volume is read, never by ``segrt.runtime``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npy")
#: DICOM slices whose spacing differs from the series' median by more than this fraction: a missing slice
SLICE_GAP_TOLERANCE = 0.1


@dataclass
class Volume:
    data: np.ndarray  # (X, Y, Z), or (X, Y, Z, C) for a 4-D NIfTI of C volumes; the file's voxel order
    affine: np.ndarray  # 4x4 voxel -> RAS millimetres
    header: Any = None  # nibabel header of a NIfTI input (written back with the labels), else None
    source: str = "npy"  # "nifti" | "dicom" | "npy" | "array"

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in millimetres along the three spatial axes."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def orientation(self) -> str:
        """The axis codes (``"RAS"``, ``"LPS"``...) of the affine."""
        import nibabel as nib

        return "".join(nib.aff2axcodes(self.affine))

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[:3])

    @property
    def channels(self) -> int:
        return 1 if self.data.ndim == 3 else int(self.data.shape[3])


def volume_stem(path: Path) -> str:
    """``brain.nii.gz`` -> ``brain``; a DICOM folder -> its name."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """A NIfTI file, a ``.npy`` array (identity affine) or a folder holding one DICOM series."""
    path = Path(path)
    if path.is_dir():
        from .volume_dicom import read_dicom_series

        return _check_affine(read_dicom_series(path), path.name)
    if not path.is_file():
        raise InvalidInputError(f"volume {str(path)!r} does not exist")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _check_affine(_read_nifti(path), path.name)
    if name.endswith(".npy"):
        return _read_npy(path)
    raise InvalidInputError(f"volume {path.name!r} is not {', '.join(VOLUME_SUFFIXES)} or a DICOM series folder")


def _check_affine(volume: Volume, what: str) -> Volume:
    """Refuse a grid whose spacing or orientation cannot be resolved (a singular or non-finite affine)."""
    rzs = volume.affine[:3, :3]
    if not np.all(np.isfinite(volume.affine)) or abs(float(np.linalg.det(rzs))) < 1e-9:
        raise InvalidInputError(f"{what}: its voxel-to-world affine is singular or not finite (spacing "
                                f"{[round(float(v), 4) for v in np.linalg.norm(rzs, axis=0)]}); the spacing or "
                                "orientation cannot be resolved: fix the header (pixdim/sform, or PixelSpacing)")
    return volume


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, zlib/gzip errors, OSError...
        raise InvalidInputError(f"{path.name} is not a readable NIfTI volume ({type(exc).__name__}: {exc})") from None
    return Volume(_check_spatial(data, path.name), np.asarray(img.affine, np.float64), img.header, "nifti")


def _read_npy(path: Path) -> Volume:
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInputError(f"{path.name} is not a readable .npy array ({exc})") from None
    return Volume(_check_spatial(data, path.name), np.eye(4), None, "npy")


def _check_spatial(data: np.ndarray, what: str) -> np.ndarray:
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (3, 4):
        raise InvalidInputError(f"{what} holds a {data.ndim}-D array of shape {data.shape}; a volume is 3-D "
                                "(X, Y, Z), or 4-D (X, Y, Z, C) for a model of C channels")
    if not (np.issubdtype(data.dtype, np.number) and not np.issubdtype(data.dtype, np.complexfloating)):
        raise InvalidInputError(f"{what} holds {data.dtype} voxels; expected integers or floats")
    if min(data.shape) < 1:
        raise InvalidInputError(f"{what} is empty (shape {data.shape})")
    return data


def write_labels_nifti(path: Path, labels: np.ndarray, volume: Volume) -> None:
    """The label volume as NIfTI on the input's grid (shape, affine and, for a NIfTI input, its header),
    written under a temporary name and renamed, so ``path`` is never half a file."""
    import nibabel as nib

    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    header = volume.header.copy() if volume.header is not None else None
    img = nib.Nifti1Image(labels.astype(dtype), volume.affine, header)
    img.set_data_dtype(dtype)
    img.header["scl_slope"], img.header["scl_inter"] = 1, 0  # labels are ids, never rescaled
    img.header["descrip"] = b"segrt label volume"
    _save_atomic(path, lambda tmp: nib.save(img, tmp))


def _save_atomic(path: Path, save: Any) -> None:
    suffix = ".nii.gz" if path.name.endswith(".gz") else path.suffix
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        from .manifest import default_mode

        os.chmod(tmp, default_mode())
        save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
