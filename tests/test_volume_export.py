"""MONAI 3-D networks exported to volume bundles and run end to end, against MONAI + PyTorch.

A seeded ``monai.networks.nets.UNet`` (and a ``SegResNet``) is exported to ONNX; segrt's sliding-window run of the
ONNX on a real volume (a crop of the MNI ICBM152 T1 template) must match ``monai.inferers.sliding_window_inference``
over the PyTorch module to 1e-4 in blended probability. ``segrt run`` writes a NIfTI on the input's grid, a DICOM
series of the same data gives the same labels, and bad volumes are one line, exit 2, nothing written.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from segrt.export.exporter import build_module, export_bundle  # noqa: E402
from segrt.export.models import get_spec, monai_nets  # noqa: E402
from segrt.export.spec import ExportConfig  # noqa: E402
from segrt.runtime.cli import main  # noqa: E402
from segrt.runtime.manifest import read_manifest  # noqa: E402
from segrt.runtime.volume_io import read_volume  # noqa: E402
from segrt.runtime.volume_predict import VolumeSegmenter  # noqa: E402
from segrt.runtime.volume_window import WindowSpec  # noqa: E402

from .test_volume import T1, tilted_affine, write_series  # noqa: E402

pytestmark = pytest.mark.slow
WINDOW = WindowSpec((32, 32, 32), 0.25, "gaussian", sigma_scale=0.125, sw_batch_size=2)


def export_small(arch: str, out: Path, classes: int = 3) -> tuple[Path, object]:
    spec = dataclasses.replace(get_spec(arch), family=monai_nets.VolumeExport(window=WINDOW))
    cfg = ExportConfig(architecture=arch, encoder="small", classes=classes, in_channels=1, verify_image=T1)
    export_bundle(spec, cfg, out)
    model, _ = build_module(spec, cfg)  # the same seeded weights
    return out, model


@pytest.fixture(scope="module")
def unet(tmp_path_factory) -> tuple[Path, object]:
    return export_small("monai_unet", tmp_path_factory.mktemp("vol") / "unet")


def test_sliding_window_of_the_onnx_equals_monai_on_a_real_volume(unet) -> None:
    bundle, model = unet
    seg = VolumeSegmenter(bundle, "cpu")
    image = seg.prepare(read_volume(T1))
    for window in (WINDOW, WindowSpec((24, 40, 32), 0.5, "constant", sw_batch_size=3)):
        ours = sliding_window_probs(seg, image, window)
        theirs = monai_nets.monai_probabilities(model, image, window, "softmax")
        assert ours.shape == theirs.shape == (3, *image.shape[1:])
        assert float(np.abs(ours - theirs).max()) <= 1e-4
        assert (seg.labels(ours) == np.argmax(theirs, 0)).mean() > 0.999
    verification = json.loads((bundle / "segrt.json").read_text())["verification"]
    assert verification["max_abs_prob_diff"] <= 1e-4 and verification["volume_shape"] == [48, 56, 40]


def test_compute_is_one_patch_fixed_at_the_window(unet) -> None:
    """The graph runs on roi_size patches only: its FLOPs are PyTorch's count of one patch, fixed at (D, H, W)."""
    from segrt.export.flops import count_torch_flops

    bundle, model = unet
    entry = read_manifest(bundle).compute["model.onnx"]
    assert entry.scales == "fixed" and entry.at == WINDOW.roi_size
    assert entry.flops == count_torch_flops(model, (torch.rand(1, 1, *WINDOW.roi_size),)) > 0


def test_score_threshold_on_a_volume_bundle_is_a_usage_error(unet, tmp_path: Path, capfd) -> None:
    bundle, _ = unet
    capfd.readouterr()
    out = tmp_path / "out"
    assert main(["run", str(bundle), "--input", str(T1), "--out", str(out), "--score-threshold", "0.5"]) == 2
    err = capfd.readouterr().err
    assert err.startswith("segrt: error: score_threshold") and err.count("\n") == 1, err


def sliding_window_probs(seg: VolumeSegmenter, image: np.ndarray, window: WindowSpec) -> np.ndarray:
    from segrt.runtime.volume_window import sliding_window

    return sliding_window(image, seg.predict_patches, window)


def test_segresnet_exports_and_matches_monai(tmp_path: Path) -> None:
    bundle, model = export_small("monai_segresnet", tmp_path / "segresnet", classes=2)
    seg = VolumeSegmenter(bundle, "cpu")
    image = seg.prepare(read_volume(T1))
    theirs = monai_nets.monai_probabilities(model, image, WINDOW, "softmax")
    assert float(np.abs(seg.probabilities(image) - theirs).max()) <= 1e-4


def test_segrt_run_writes_a_nifti_on_the_input_grid(unet, tmp_path: Path) -> None:
    bundle, model = unet
    assert main(["run", str(bundle), "--input", str(T1), "--out", str(tmp_path / "out")]) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["mni_t1_crop.labels.nii.gz", "mni_t1_crop.overlay.png", "mni_t1_crop.volumes.json"]
    ref, got = nib.load(T1), nib.load(tmp_path / "out" / "mni_t1_crop.labels.nii.gz")
    assert got.shape == ref.shape and np.array_equal(got.affine, ref.affine)
    assert got.header.get_zooms() == ref.header.get_zooms() and got.header["sform_code"] == ref.header["sform_code"]
    seg = VolumeSegmenter(bundle, "cpu")
    image = seg.prepare(read_volume(T1))
    monai_labels = np.argmax(monai_nets.monai_probabilities(model, image, WINDOW, "softmax"), 0)
    labels = np.asarray(got.dataobj)
    assert (labels == monai_labels).mean() > 0.999
    stats = json.loads((tmp_path / "out" / "mni_t1_crop.volumes.json").read_text())
    for i, row in stats["labels"].items():
        assert row["voxels"] == int((labels == int(i)).sum()) and row["ml"] == pytest.approx(row["voxels"] / 1000)
    result = seg(T1)  # the Python API: labels and the affine
    assert np.array_equal(result.labels, labels) and np.array_equal(result.affine, ref.affine)


def test_dicom_series_and_nifti_of_the_same_data_give_the_same_labels(unet, tmp_path: Path) -> None:
    bundle, _ = unet
    data = np.asarray(nib.load(T1).dataobj).astype(np.int16)
    aff = tilted_affine()
    write_series(tmp_path / "series", data, aff)
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "same.nii.gz")
    seg = VolumeSegmenter(bundle, "cpu")
    a, b = seg(tmp_path / "series"), seg(tmp_path / "same.nii.gz")
    assert np.array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    assert main(["run", str(bundle), "--input", str(tmp_path / "series"), "--out", str(tmp_path / "out")]) == 0
    got = nib.load(tmp_path / "out" / "series.labels.nii.gz")
    assert np.array_equal(np.asarray(got.dataobj), b.labels)


@pytest.mark.parametrize("case, says", [
    ("corrupt", "is not a readable NIfTI volume"),
    ("four_d", "has 2 channel(s); this model takes 1"),
    ("two_series", "holds 2 DICOM series"),
    ("missing", "is missing slices"),
])
def test_bad_volumes_are_one_line_exit_2_nothing_written(unet, tmp_path: Path, capfd, case: str, says: str) -> None:
    bundle, _ = unet
    data = np.asarray(nib.load(T1).dataobj)[:, :, :10]
    if case == "corrupt":
        good = T1.read_bytes()
        path = tmp_path / "cut.nii.gz"
        path.write_bytes(good[: len(good) // 3])
    elif case == "four_d":
        path = tmp_path / "two.nii.gz"
        nib.save(nib.Nifti1Image(np.stack([data, data], -1), np.eye(4)), path)
    else:
        path = tmp_path / "ct"
        write_series(path, data, np.eye(4), skip=5 if case == "missing" else None)
        if case == "two_series":
            write_series(tmp_path / "b", data[:, :, :3], np.eye(4), uid="7.7.7")
            for f in (tmp_path / "b").iterdir():
                f.rename(path / f"b{f.name}")
    capfd.readouterr()
    assert main(["run", str(bundle), "--input", str(path), "--out", str(tmp_path / "out")]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segrt: error: ") and says in lines[0], lines
    assert not any((tmp_path / "out").iterdir())


def test_import_of_a_plain_3d_onnx_runs_end_to_end(unet, tmp_path: Path) -> None:
    from segrt.runtime.errors import InvalidInputError, ModelFormatError
    from segrt.runtime.volume_import import VolumeImport, import_volume_onnx
    from segrt.runtime.volume_intensity import IntensityPolicy

    bundle, _ = unet
    cfg = VolumeImport(bundle / "model.onnx", size=(32, 32, 32), overlap=0.25, mode="gaussian", sw_batch_size=2,
                       activation="softmax", intensity=IntensityPolicy("zscore"))
    import_volume_onnx(cfg, tmp_path / "imported")
    assert main(["run", str(tmp_path / "imported"), "--input", str(T1), "--out", str(tmp_path / "out")]) == 0
    got = nib.load(tmp_path / "out" / "mni_t1_crop.labels.nii.gz")
    assert np.array_equal(got.affine, nib.load(T1).affine)
    assert np.array_equal(np.asarray(got.dataobj), VolumeSegmenter(bundle, "cpu")(T1).labels)
    with pytest.raises(InvalidInputError, match="dynamic"):
        import_volume_onnx(dataclasses.replace(cfg, size=None), tmp_path / "nosize")
    with pytest.raises(ModelFormatError, match="rank-5"):
        import_volume_onnx(dataclasses.replace(cfg, model=Path(__file__).parent / "data" / "ppocr_v4_det.onnx"),
                           tmp_path / "flat")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imported", "out"]  # nothing half-written


def test_volume_run_needs_no_torch_nor_monai(unet, tmp_path: Path) -> None:
    from .test_no_torch import BLOCK_TORCH, EXPORT_ONLY

    bundle, _ = unet
    block = BLOCK_TORCH.replace(f"EXPORT_ONLY = {EXPORT_ONLY!r}", f"EXPORT_ONLY = {(*EXPORT_ONLY, 'monai')!r}")
    assert "'monai')" in block
    code = f"""
    import sys
    from segrt.runtime.cli import main
    assert main(["run", {str(bundle)!r}, "--input", {str(T1)!r}, "--out", {str(tmp_path / "o")!r}]) == 0
    assert not any(m.split(".")[0] in EXPORT_ONLY for m in sys.modules)
    print("ok")
    """
    import subprocess
    import sys
    import textwrap

    proc = subprocess.run([sys.executable, "-c", block + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr
    assert (tmp_path / "o" / "mni_t1_crop.labels.nii.gz").is_file()


SWIN_WINDOW = WindowSpec((64, 64, 64), 0.25, "gaussian", sigma_scale=0.125, sw_batch_size=2)


def test_swinunetr_exports_and_matches_monai(tmp_path: Path) -> None:
    """SwinUNETR (feature_size 12, one Swin block per stage) through the legacy ONNX exporter: the export's own
    check is a two-window Gaussian blend of the T1 crop stretched to 80x64x64 against MONAI, and segrt's run of the
    bundle on the crop stretched along another axis (64x80x64) is MONAI's too. (The crop itself, zero-padded into
    one 64^3 window, differs by 1.2e-4: docs/volumes.md.)"""
    pytest.importorskip("einops", reason="monai.networks.nets.SwinUNETR needs einops")
    from segrt.runtime.volume_window import resize_linear, window_starts

    stretched = resize_linear(np.asarray(read_volume(T1).data, np.float32)[None], (80, 64, 64))[0]
    assert len(window_starts(stretched.shape, SWIN_WINDOW.roi_size, SWIN_WINDOW.overlap)) == 2
    np.save(tmp_path / "t1_80x64x64.npy", stretched)
    spec = dataclasses.replace(monai_nets.SWINUNETR, family=monai_nets.SwinVolumeExport(window=SWIN_WINDOW))
    cfg = ExportConfig(architecture="monai_swinunetr", encoder="small", classes=2, in_channels=1,
                       verify_image=tmp_path / "t1_80x64x64.npy")
    export_bundle(spec, cfg, tmp_path / "swin")
    verification = json.loads((tmp_path / "swin" / "segrt.json").read_text())["verification"]
    assert verification["max_abs_prob_diff"] <= 1e-4 and verification["volume_shape"] == [80, 64, 64]
    model, _ = build_module(spec, cfg)
    seg = VolumeSegmenter(tmp_path / "swin", "cpu")
    image = seg.prepare_array(np.moveaxis(stretched, 0, 1))
    theirs = monai_nets.monai_probabilities(model, image, SWIN_WINDOW, "softmax")
    assert theirs.shape == (2, 64, 80, 64)
    assert float(np.abs(seg.probabilities(image) - theirs).max()) <= 1e-4


def test_swinunetr_refuses_a_window_it_cannot_take(tmp_path: Path) -> None:
    from segrt.runtime.errors import ExportError

    spec = dataclasses.replace(monai_nets.SWINUNETR, family=monai_nets.SwinVolumeExport(window=WINDOW))
    cfg = ExportConfig(architecture="monai_swinunetr", encoder="small", classes=2, in_channels=1)
    with pytest.raises(ExportError, match=r"multiples of 32 and at least 64; got roi_size \[32, 32, 32\]"):
        export_bundle(spec, cfg, tmp_path / "swin")
    assert not (tmp_path / "swin").exists()
