"""Volumes in (NIfTI, DICOM series, .npy), intensity policies and sliding windows, against nibabel and MONAI.

The volume is a real one: a 48x56x40 crop of the MNI ICBM152 2009 T1 template (tests/data/README.md). The
window tests use a patch function that depends on where the patch sits (a cumulative sum along an axis), so a
wrong window, weight or blend changes the result; MONAI runs the same function in torch. The MONAI comparisons
skip without torch/MONAI and the DICOM tests without pydicom; the NIfTI/.npy/affine tests need neither.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segrt.runtime.errors import InvalidInputError
from segrt.runtime.volume_intensity import IntensityPolicy
from segrt.runtime.volume_io import read_volume, volume_stem, write_labels_nifti
from segrt.runtime.volume_window import WindowSpec, resize_linear, sliding_window

DATA = Path(__file__).parent / "data"
T1 = DATA / "mni_t1_crop.nii.gz"


def t1() -> np.ndarray:
    return np.asarray(nib.load(T1).dataobj, np.float32)


def patch_fn_np(x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.tanh(x / 100), np.cumsum(x, axis=-1) / 1000.0], axis=1)


def needs_monai():
    """torch and MONAI for a comparison (the test skips without them)."""
    return pytest.importorskip("torch"), pytest.importorskip("monai")


def patch_fn_torch(x):
    import torch

    return torch.cat([torch.tanh(x / 100), torch.cumsum(x, dim=-1) / 1000.0], dim=1)


def monai_window(volume: np.ndarray, spec: WindowSpec) -> np.ndarray:
    torch, _ = needs_monai()
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        out = sliding_window_inference(torch.from_numpy(volume[None]), spec.roi_size, spec.sw_batch_size,
                                       patch_fn_torch, overlap=spec.overlap, mode=spec.mode,
                                       sigma_scale=spec.sigma_scale, padding_mode=spec.padding_mode, cval=spec.cval)
    return out[0].numpy()


@pytest.mark.parametrize("spec", [
    WindowSpec((24, 24, 24), 0.25, "constant", sw_batch_size=1),
    WindowSpec((24, 32, 16), 0.5, "gaussian", sigma_scale=0.125, sw_batch_size=3),
    WindowSpec((20, 20, 20), 0.0, "gaussian", sigma_scale=0.3, sw_batch_size=4),
    WindowSpec((64, 40, 48), 0.25, "constant", padding_mode="constant", cval=-5.0),  # larger than the volume: padded
    WindowSpec((64, 16, 48), 0.6, "gaussian", padding_mode="replicate", sw_batch_size=2),
])
def test_sliding_window_equals_monai(spec: WindowSpec) -> None:
    volume = t1()[None]
    ours = sliding_window(volume, patch_fn_np, spec)
    theirs = monai_window(volume, spec)
    assert ours.shape == theirs.shape == (2, *volume.shape[1:])
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_sliding_window_holds_one_batch_of_patches_at_a_time() -> None:
    seen = []

    def fn(x: np.ndarray) -> np.ndarray:
        seen.append(x.shape[0])
        return patch_fn_np(x)

    sliding_window(t1()[None], fn, WindowSpec((16, 16, 16), 0.5, sw_batch_size=4))
    assert len(seen) > 10 and max(seen) == 4  # streamed: never more than sw_batch_size patches per call


def test_resize_equals_monai_resize() -> None:
    torch, _ = needs_monai()
    from monai.transforms import Resize

    volume = t1()[None]
    for size in ((32, 32, 32), (61, 40, 57)):
        theirs = Resize(size, mode="trilinear")(torch.from_numpy(volume)).numpy()
        np.testing.assert_allclose(resize_linear(volume, size), theirs, rtol=1e-5, atol=1e-3)


INTENSITY_CASES = [  # our policy, MONAI's transform and its arguments
    (IntensityPolicy("minmax"), "ScaleIntensity", {"minv": 0.0, "maxv": 1.0}),
    (IntensityPolicy("zscore"), "NormalizeIntensity", {}),
    (IntensityPolicy("percentile", lower=2, upper=98), "ScaleIntensityRangePercentiles",
     {"lower": 2, "upper": 98, "b_min": 0.0, "b_max": 1.0, "clip": True}),
    (IntensityPolicy("hu_window", a_min=40, a_max=200), "ScaleIntensityRange",
     {"a_min": 40, "a_max": 200, "b_min": 0.0, "b_max": 1.0, "clip": True}),
]


@pytest.mark.parametrize("policy, name, kwargs", INTENSITY_CASES)
def test_intensity_policies_equal_monai(policy: IntensityPolicy, name: str, kwargs: dict) -> None:
    torch, monai = needs_monai()
    x = t1()
    theirs = np.asarray(getattr(monai.transforms, name)(**kwargs)(torch.from_numpy(x[None]))[0])
    np.testing.assert_allclose(policy(x), theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channel_wise", [False, True])
@pytest.mark.parametrize("policy, name, kwargs", INTENSITY_CASES[:3])
def test_two_channel_intensity_equals_monai(policy: IntensityPolicy, name: str, kwargs: dict,
                                           channel_wise: bool) -> None:
    """Two channels of different ranges (T1 and a scaled, shifted copy): MONAI's default pools their statistics,
    channel_wise=True takes them per channel; ours the same, through VolumeSegmenter.prepare's call."""
    torch, monai = needs_monai()
    x = np.stack([t1(), t1()[::-1] * 3.0 + 500.0])
    theirs = np.asarray(getattr(monai.transforms, name)(**kwargs, channel_wise=channel_wise)(torch.from_numpy(x)))
    ours = replace(policy, channel_wise=channel_wise).channels(x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    if not channel_wise:
        assert not np.allclose(ours, replace(policy, channel_wise=True).channels(x), atol=1e-3)


def test_divide_by_max() -> None:
    x = t1()
    np.testing.assert_allclose(IntensityPolicy("divide_max")(x), x / x.max(), rtol=1e-6)


def test_nifti_keeps_affine_header_and_labels_round_trip(tmp_path: Path) -> None:
    vol = read_volume(T1)
    ref = nib.load(T1)
    assert vol.spatial_shape == ref.shape and np.array_equal(vol.affine, ref.affine)
    assert vol.spacing == (1.0, 1.0, 1.0) and vol.orientation == "RAS"
    labels = (vol.data > 150).astype(np.uint8)
    out = tmp_path / "t1.labels.nii.gz"
    write_labels_nifti(out, labels, vol)
    back = nib.load(out)
    assert np.array_equal(np.asarray(back.dataobj), labels) and np.array_equal(back.affine, ref.affine)
    assert back.header.get_zooms() == ref.header.get_zooms() and back.header["qform_code"] == ref.header["qform_code"]
    assert [p.name for p in tmp_path.iterdir()] == ["t1.labels.nii.gz"]  # no temporary left beside it
    assert volume_stem(T1) == "mni_t1_crop" and volume_stem(Path("a.nii")) == "a"


def test_npy_volume(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", t1())
    vol = read_volume(tmp_path / "v.npy")
    assert np.array_equal(vol.data, t1()) and np.array_equal(vol.affine, np.eye(4))


def write_series(folder: Path, data: np.ndarray, affine: np.ndarray, *, uid: str = "1.2.3.4",
                 skip: int | None = None, order: list[int] | None = None) -> None:
    """``data`` (column, row, slice) on ``affine`` (RAS) as one DICOM file per slice, built from pydicom's own
    CT_small.dcm (a real CT slice) with its pixels, position, orientation and spacing replaced."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    dirs = lps[:3, :3] / spacing
    for k in order if order is not None else range(data.shape[2]):
        if k == skip:
            continue
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        pixels = data[:, :, k].T.astype(np.int16)  # (row, column)
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.SeriesInstanceUID = uid
        ds.ImageOrientationPatient = [float(v) for v in (*dirs[:, 0], *dirs[:, 1])]
        ds.ImagePositionPatient = [float(v) for v in lps[:3, :3] @ np.array([0, 0, k]) + lps[:3, 3]]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.InstanceNumber = k + 1
        ds.save_as(folder / f"slice{k:03d}.dcm")


def tilted_affine() -> np.ndarray:
    """A grid that is not axis-aligned, with anisotropic voxels: orientation and spacing both matter."""
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.9, 1.1, 2.5])
    aff[:3, 3] = (-20.0, 14.0, 33.0)
    return aff


def test_dicom_series_equals_its_nifti(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    data = t1()[:, :, :12].astype(np.int16)
    aff = tilted_affine()
    order = list(range(12))
    np.random.default_rng(0).shuffle(order)  # files named and read out of order: sorted by position
    write_series(tmp_path / "ct", data, aff, order=order)
    vol = read_volume(tmp_path / "ct")
    assert vol.source == "dicom" and np.array_equal(vol.data, data.astype(np.float32))
    np.testing.assert_allclose(vol.affine, aff, atol=1e-4)


@pytest.mark.parametrize("problem, says", [("two_series", "holds 2 DICOM series"), ("gap", "missing slices"),
                                            ("no_spacing", "cannot be resolved"),
                                            ("no_position", "ct/slice005.dcm has no ImagePositionPatient")])
def test_dicom_folder_refused(tmp_path: Path, problem: str, says: str) -> None:
    pydicom = pytest.importorskip("pydicom")
    data = t1()[:, :, :8]
    if problem == "two_series":
        write_series(tmp_path / "ct", data, np.eye(4))
        write_series(tmp_path / "other", data[:, :, :2], np.eye(4), uid="9.9.9")
        for f in (tmp_path / "other").iterdir():
            f.rename(tmp_path / "ct" / f"b{f.name}")
    elif problem == "gap":
        write_series(tmp_path / "ct", data, np.eye(4), skip=4)
    else:
        write_series(tmp_path / "ct", data, np.eye(4))
        for f in sorted((tmp_path / "ct").iterdir()):
            ds = pydicom.dcmread(f)
            if problem == "no_spacing":
                ds.PixelSpacing = [0.0, 0.0]
            elif f.name == "slice005.dcm":  # a later slice without a position (the first one has it)
                del ds.ImagePositionPatient
            ds.save_as(f)
    with pytest.raises(InvalidInputError, match=says):
        read_volume(tmp_path / "ct")


def test_corrupt_and_wrong_volumes_refused(tmp_path: Path) -> None:
    good = T1.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.nii").write_bytes(b"not a nifti")
    np.save(tmp_path / "two.npy", np.zeros((4, 4)))
    for name, says in (("cut.nii.gz", "not a readable NIfTI"), ("text.nii", "not a readable NIfTI"),
                       ("two.npy", "2-D array")):
        with pytest.raises(InvalidInputError, match=says):
            read_volume(tmp_path / name)


def test_dice_and_hd95_equal_monai() -> None:
    torch, _ = needs_monai()
    from monai.metrics import compute_dice, compute_hausdorff_distance

    from segrt.runtime.volume_metrics import per_label

    truth = (np.asarray(nib.load(DATA / "mni_gm_crop.nii.gz").dataobj) > 100).astype(np.uint8)  # real GM map
    pred = (t1() < 120).astype(np.uint8) + (t1() > 200).astype(np.uint8) * 2  # a threshold "segmentation"
    truth = truth + 2 * (np.asarray(nib.load(DATA / "mni_gm_crop.nii.gz").dataobj) < 10)
    spacing = (0.9, 1.1, 2.5)
    ours = per_label(pred, truth, (1, 2), spacing)
    onehot = lambda a: torch.from_numpy(np.stack([a == k for k in (0, 1, 2)])[None].astype(np.float32))  # noqa: E731
    d = compute_dice(onehot(pred), onehot(truth), include_background=False)[0]
    h = compute_hausdorff_distance(onehot(pred), onehot(truth), percentile=95, spacing=spacing)[0]
    for i, k in enumerate((1, 2)):
        assert ours[k]["dice"] == pytest.approx(float(d[i]), abs=1e-6)
        assert ours[k]["hd95_mm"] == pytest.approx(float(h[i]), rel=1e-5)
