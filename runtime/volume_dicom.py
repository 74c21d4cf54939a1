"""A DICOM series folder as a :class:`~.volume_io.Volume` (pydicom).

One series per folder; slices are sorted by ``ImagePositionPatient`` projected on the slice normal (the cross
product of ``ImageOrientationPatient``'s row and column directions). Voxels are laid out ``(column, row, slice)``
with a voxel-to-RAS affine, as dcm2niix and nibabel lay out a NIfTI of the same series, and rescaled by
``RescaleSlope`` / ``RescaleIntercept`` (Hounsfield units for CT). Two series in one folder, slices of other
sizes or orientations, and a gap in the positions (a missing slice) are refused with one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError
from .volume_io import SLICE_GAP_TOLERANCE, Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_dicom_series(folder: Path) -> Volume:
    slices = _read_slices(folder)
    _check_one_series(slices, folder)
    normal = _slice_normal(slices[0], folder)
    slices.sort(key=lambda ds: float(np.dot(normal, _position(ds, folder))))
    step = _slice_step(slices, normal, folder)
    data = np.stack([_pixels(ds, folder) for ds in slices], axis=-1).transpose(1, 0, 2)  # (column, row, slice)
    return Volume(data, _affine(slices[0], normal, step, folder), None, "dicom")


def _read_slices(folder: Path) -> list[Any]:
    import pydicom

    slices = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # InvalidDicomError, truncated files...
            raise InvalidInputError(f"{folder.name}/{path.name} is not a readable DICOM file ({exc})") from None
        if "PixelData" in ds:
            slices.append(ds)
    if not slices:
        raise InvalidInputError(f"folder {str(folder)!r} holds no DICOM images")
    return slices


def _check_one_series(slices: list[Any], folder: Path) -> None:
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in slices}
    if len(series) > 1:
        raise InvalidInputError(f"folder {folder.name!r} holds {len(series)} DICOM series; put each series in its "
                                "own folder")
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in slices}
    if len(shapes) > 1:
        raise InvalidInputError(f"DICOM series in {folder.name!r} mixes slice sizes {sorted(shapes)}")
    orients = {tuple(round(float(v), 4) for v in _tag(ds, "ImageOrientationPatient", folder)) for ds in slices}
    if len(orients) > 1:
        raise InvalidInputError(f"DICOM series in {folder.name!r} mixes slice orientations; cannot stack it")


def _tag(ds: Any, name: str, folder: Path) -> Any:
    value = getattr(ds, name, None)
    if value is None:
        raise InvalidInputError(f"DICOM slice {_file(ds, folder)} has no {name}; cannot place it in the volume")
    return value


def _file(ds: Any, folder: Path) -> str:
    return f"{folder.name}/{Path(str(getattr(ds, 'filename', '') or '?')).name}"


def _position(ds: Any, folder: Path) -> np.ndarray:
    return np.asarray([float(v) for v in _tag(ds, "ImagePositionPatient", folder)])


def _slice_normal(ds: Any, folder: Path) -> np.ndarray:
    orient = np.asarray([float(v) for v in _tag(ds, "ImageOrientationPatient", folder)])
    return np.cross(orient[:3], orient[3:])


def _slice_step(slices: list[Any], normal: np.ndarray, folder: Path) -> float:
    """The spacing between slices along the normal; refuses duplicates and gaps (a missing slice)."""
    if len(slices) == 1:
        return float(getattr(slices[0], "SliceThickness", 1.0) or 1.0)
    along = np.asarray([float(np.dot(normal, _position(ds, folder))) for ds in slices])
    gaps = np.diff(along)
    step = float(np.median(gaps))
    if step <= 1e-6 or np.any(gaps <= 1e-6):
        raise InvalidInputError(f"DICOM series in {folder.name!r} has two slices at one position; one series per folder")
    if np.any(np.abs(gaps - step) > SLICE_GAP_TOLERANCE * step):
        worst = int(np.argmax(np.abs(gaps - step)))
        raise InvalidInputError(f"DICOM series in {folder.name!r} is missing slices: {gaps[worst]:.3g} mm between "
                                f"slices {worst} and {worst + 1}, {step:.3g} mm elsewhere")
    return step


def _pixels(ds: Any, folder: Path) -> np.ndarray:
    try:
        arr = ds.pixel_array.astype(np.float32)
    except (RuntimeError, NotImplementedError, ValueError) as exc:  # no decoder for the transfer syntax
        meta = getattr(ds, "file_meta", None)
        uid = getattr(meta, "TransferSyntaxUID", None)
        syntax = f"{uid.name} ({uid})" if uid is not None and hasattr(uid, "name") else str(uid)
        why = (str(exc).splitlines() or [type(exc).__name__])[0].rstrip(": ")
        raise InvalidInputError(f"DICOM slice {_file(ds, folder)}: cannot decode transfer syntax {syntax} ({why}); "
                                "install a pydicom pixel-data plugin for it or decompress the series") from None
    if arr.ndim != 2:
        raise InvalidInputError(f"DICOM slice holds a {arr.ndim}-D pixel array; expected one grey slice per file")
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    return arr * slope + float(getattr(ds, "RescaleIntercept", 0) or 0)


def _affine(first: Any, normal: np.ndarray, step: float, folder: Path) -> np.ndarray:
    orient = np.asarray([float(v) for v in first.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in getattr(first, "PixelSpacing", (1.0, 1.0)))
    lps = np.eye(4)
    lps[:3, 0] = orient[:3] * col_spacing  # along a row: the column index grows
    lps[:3, 1] = orient[3:] * row_spacing  # down a column: the row index grows
    lps[:3, 2] = normal * step
    lps[:3, 3] = _position(first, folder)
    return LPS_TO_RAS @ lps
