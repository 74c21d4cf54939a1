"""``segrt import --task volume`` of real 3-D ONNX networks and ``segrt eval`` of volume bundles, against MONAI.

The networks are seeded ``monai.networks.nets.UNet``s written by ``torch.onnx.export`` (no segrt exporter: a
plain ONNX as a user brings one), NCDHW with dynamic D/H/W, the same module wrapped NDHWC, and one fixed at
32^3. Each is imported from the command line, ``segrt run`` on the MNI T1 crop, and compared with MONAI's
pipeline over the PyTorch module (``NormalizeIntensity``, ``sliding_window_inference`` or ``Resize``).
``segrt eval`` scores against the MNI grey-matter map thresholded at probability 0.5; its numbers are compared
with MONAI's ``compute_dice`` / ``compute_hausdorff_distance(percentile=95)`` on the same prediction.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from segrt.runtime.cli import main  # noqa: E402
from segrt.runtime.manifest import read_manifest  # noqa: E402
from segrt.runtime.volume_io import read_volume  # noqa: E402
from segrt.runtime.volume_predict import VolumeSegmenter  # noqa: E402

DATA = Path(__file__).parent / "data"
T1, GM = DATA / "mni_t1_crop.nii.gz", DATA / "mni_gm_crop.nii.gz"
PPOCR = DATA / "ppocr_v4_det.onnx"
ROI = (32, 32, 32)
SW = ["--size", "32x32x32", "--overlap", "0.25", "--blend", "gaussian", "--sw-batch-size", "2",
      "--activation", "softmax", "--intensity", "zscore"]
pytestmark = pytest.mark.slow


def seeded_unet(classes: int = 3):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=3, in_channels=1, out_channels=classes, channels=(8, 16, 32), strides=(2, 2),
                num_res_units=2).eval()


class Channels_last(torch.nn.Module):
    """The same network taking and returning NDHWC tensors."""

    def __init__(self, net) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)


def to_onnx(module, path: Path, example_shape: tuple[int, ...], dynamic: dict | None) -> Path:
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(example_shape),), str(path), input_names=["image"],
                          output_names=["logits"], opset_version=18, dynamic_axes=dynamic, dynamo=False)
    return path


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("onnx3d")
    net = seeded_unet()
    ncdhw = {"image": {0: "n", 2: "d", 3: "h", 4: "w"}, "logits": {0: "n", 2: "d", 3: "h", 4: "w"}}
    ndhwc = {"image": {0: "n", 1: "d", 2: "h", 3: "w"}, "logits": {0: "n", 1: "d", 2: "h", 3: "w"}}
    return {"net": net,
            "ncdhw": to_onnx(net, root / "unet3d.onnx", (1, 1, *ROI), ncdhw),
            "ndhwc": to_onnx(Channels_last(net), root / "unet3d_ndhwc.onnx", (1, *ROI, 1), ndhwc),
            "fixed": to_onnx(net, root / "unet3d_fixed.onnx", (1, 1, *ROI), None)}


def monai_zscored() -> torch.Tensor:
    from monai.transforms import NormalizeIntensity

    return NormalizeIntensity()(torch.from_numpy(np.asarray(nib.load(T1).dataobj, np.float32)[None]))


def monai_sliding_window(net) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        out = sliding_window_inference(monai_zscored()[None], ROI, 2, lambda x: torch.softmax(net(x), 1),
                                       overlap=0.25, mode="gaussian", sigma_scale=0.125)
    return out[0].numpy()


def monai_resized(net) -> np.ndarray:
    from monai.transforms import Resize

    image = monai_zscored()
    with torch.no_grad():
        probs = torch.softmax(net(Resize(ROI, mode="trilinear")(image)[None]), 1)[0]
    return Resize(image.shape[1:], mode="trilinear")(probs).numpy()


def assert_labels_equal_argmax(labels: np.ndarray, probs: np.ndarray, diff: float) -> None:
    """Labels equal MONAI's argmax wherever its two best classes are further apart than the measured difference."""
    top2 = np.sort(probs, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 2 * diff
    assert clear.mean() > 0.999
    assert np.array_equal(labels[clear], np.argmax(probs, 0)[clear])


def import_and_run(model: Path, tmp_path: Path, *flags: str) -> tuple[Path, np.ndarray]:
    bundle, out = tmp_path / "bundle", tmp_path / "out"
    assert main(["import", str(model), "--task", "volume", *flags, "--out", str(bundle)]) == 0
    assert main(["run", str(bundle), "--input", str(T1), "--out", str(out)]) == 0
    ref, got = nib.load(T1), nib.load(out / "mni_t1_crop.labels.nii.gz")
    assert got.shape == ref.shape and np.array_equal(got.affine, ref.affine)
    assert got.header.get_zooms() == ref.header.get_zooms()
    return bundle, np.asarray(got.dataobj)


@pytest.mark.parametrize("layout", ["ncdhw", "ndhwc"])
def test_import_sliding_window_runs_end_to_end_equal_to_monai(nets, tmp_path: Path, layout: str) -> None:
    bundle, labels = import_and_run(nets[layout], tmp_path, "--layout", layout, *SW, "--classes", "bg,grey,white")
    manifest = read_manifest(bundle)
    assert manifest.task == "volume" and manifest.classes == ("bg", "grey", "white")
    assert manifest.volume["window"] == {"roi_size": [32, 32, 32], "overlap": 0.25, "mode": "gaussian",
                                         "sigma_scale": 0.125, "sw_batch_size": 2, "padding_mode": "constant",
                                         "cval": 0.0}
    assert manifest.volume["layout"] == layout and manifest.volume["intensity"]["policy"] == "zscore"
    seg = VolumeSegmenter(bundle, "cpu")
    ours = seg.probabilities(seg.prepare(read_volume(T1)))
    theirs = monai_sliding_window(nets["net"])
    diff = float(np.abs(ours - theirs).max())
    assert ours.shape == theirs.shape == (3, 48, 56, 40) and diff <= 1e-4
    assert_labels_equal_argmax(labels, theirs, diff)


def test_import_resize_of_a_fixed_graph_equals_monai_resize(nets, tmp_path: Path) -> None:
    bundle, labels = import_and_run(nets["fixed"], tmp_path, "--inference", "resize", "--activation", "softmax",
                                    "--intensity", "zscore")
    assert read_manifest(bundle).volume["size"] == [32, 32, 32]  # read from the graph
    seg = VolumeSegmenter(bundle, "cpu")
    ours, theirs = seg.probabilities(seg.prepare(read_volume(T1))), monai_resized(nets["net"])
    diff = float(np.abs(ours - theirs).max())
    assert diff <= 1e-4
    assert_labels_equal_argmax(labels, theirs, diff)


@pytest.mark.parametrize("which, flags, says", [
    ("ppocr", ["--task", "volume", "--layout", "ndhwc", "--size", "32x32x32"], "a 3-D network takes a rank-5"),
    ("ncdhw", ["--task", "semantic"], "a 3-D network: import it with --task volume"),
    ("ppocr", ["--layout", "ndhwc"], "--layout ndhwc is a 3-D layout"),
    ("fixed", ["--task", "volume", "--size", "64x64x64"], "--size 64x64x64 disagrees with the model's fixed input"),
    ("fixed", ["--task", "volume", "--sw-batch-size", "2"], "batch axis is fixed at 1"),
    ("ncdhw", ["--task", "volume"], "spatial size is dynamic"),
    ("ncdhw", ["--task", "volume", "--size", "32x32"], "a volume model's size is DxHxW"),
    ("ncdhw", ["--task", "volume", "--size", "32x32x32", "--mean", "0.5", "--std", "0.5"], "--mean, --std do not apply"),
    ("ppocr", ["--overlap", "0.5"], "--overlap does not apply to --task semantic"),
    ("ncdhw", ["--task", "volume", "--size", "32x32x32", "--inference", "resize", "--blend", "gaussian"],
     "--blend does not apply to --inference resize"),
    ("ncdhw", ["--task", "volume", "--size", "32x32x32", "--percentiles", "1,99"], "goes with --intensity percentile"),
    ("ncdhw", ["--task", "volume", "--size", "32x32x32", "--classes", "a,b"], "--classes names 2 classes"),
    ("ncdhw", ["--task", "volume", "--size", "32x32x32", "--overlap", "1"], "--overlap: must be >= 0 and < 1"),
])
def test_bad_import_flags_are_one_line_exit_2(nets, tmp_path: Path, capfd, which: str, flags: list, says: str) -> None:
    model = PPOCR if which == "ppocr" else nets[which]
    capfd.readouterr()
    try:
        code = main(["import", str(model), *flags, "--out", str(tmp_path / "b")])
    except SystemExit as exc:  # argparse's own checks: the same one line, exit 2
        code = exc.code
    lines = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("segrt: error: ") and says in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written


def grey_matter_truth() -> np.ndarray:
    """The MNI grey-matter probability map (uint8, 0-255 for 0-1) above probability 0.5."""
    return (np.asarray(nib.load(GM).dataobj) > 127).astype(np.uint8)


@pytest.fixture(scope="module")
def gm_bundle(nets, tmp_path_factory) -> Path:
    """A two-class imported bundle: the seeded UNet, so its labels overlap grey matter partly."""
    root = tmp_path_factory.mktemp("gm")
    onnx = to_onnx(seeded_unet(2), root / "unet2.onnx", (1, 1, *ROI),
                   {"image": {0: "n", 2: "d", 3: "h", 4: "w"}, "logits": {0: "n", 2: "d", 3: "h", 4: "w"}})
    assert main(["import", str(onnx), "--task", "volume", *SW, "--classes", "background,grey_matter",
                 "--out", str(root / "bundle")]) == 0
    return root / "bundle"


def eval_data(root: Path, images: str = "images", labels: str = "labels", image_name: str = "mni.nii.gz",
              label_name: str = "mni.nii.gz") -> Path:
    (root / images).mkdir(parents=True)
    (root / labels).mkdir(parents=True)
    shutil.copyfile(T1, root / images / image_name)
    t1 = nib.load(T1)
    nib.save(nib.Nifti1Image(grey_matter_truth(), t1.affine, t1.header), root / labels / label_name)
    return root


def monai_scores(pred: np.ndarray, truth: np.ndarray, spacing: tuple) -> tuple[float, float]:
    from monai.metrics import compute_dice, compute_hausdorff_distance

    def onehot(a):
        return torch.from_numpy(np.stack([a == 0, a == 1])[None].astype(np.float32))

    dice = compute_dice(onehot(pred), onehot(truth), include_background=False)[0, 0]
    hd = compute_hausdorff_distance(onehot(pred), onehot(truth), percentile=95, spacing=spacing)[0, 0]
    return float(dice), float(hd)


@pytest.mark.parametrize("layout", [("images", "labels", "mni.nii.gz", "mni.nii.gz"),
                                    ("imagesTs", "labelsTs", "mni_0000.nii.gz", "mni.nii.gz")])  # Decathlon/nnU-Net
def test_eval_dice_and_hd95_equal_monai(gm_bundle, tmp_path: Path, layout: tuple) -> None:
    data = eval_data(tmp_path / "data", *layout)
    assert main(["eval", str(gm_bundle), str(gm_bundle), "--data", str(data), "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["task"] == "volume" and result["images"] == 1
    first, second = result["rows"]
    pred = VolumeSegmenter(gm_bundle, "cpu")(T1).labels
    dice, hd = monai_scores(pred, grey_matter_truth(), read_volume(T1).spacing)
    assert 0.05 < dice < 0.95 and 0 < hd < 100  # a partial overlap, so both numbers say something
    grey = first["accuracy"]["labels"]["grey_matter"]
    assert grey["dice"] == pytest.approx(dice, abs=1e-6) and grey["hd95_mm"] == pytest.approx(hd, rel=1e-5)
    assert grey["dice_cases"] == grey["hd95_cases"] == 1
    case = first["accuracy"]["cases"][0]
    assert case["case"] == layout[2].split(".")[0]
    assert case["labels"]["grey_matter"]["predicted_voxels"] == int((pred == 1).sum())
    assert case["labels"]["grey_matter"]["truth_voxels"] == int(grey_matter_truth().sum())
    assert first["accuracy"]["mean_dice"] == grey["dice"]
    assert second["agreement"] == {"voxel_agreement": 1.0, "min_case_voxel_agreement": 1.0} and second["passed"]


def test_eval_of_a_label_that_is_absent_follows_monai(gm_bundle, tmp_path: Path) -> None:
    """An empty truth: Dice and HD95 NaN in MONAI; the summary counts no defined case (null in the JSON)."""
    data = eval_data(tmp_path / "data")
    t1 = nib.load(T1)
    nib.save(nib.Nifti1Image(np.zeros(t1.shape, np.uint8), t1.affine), data / "labels" / "mni.nii.gz")
    assert main(["eval", str(gm_bundle), "--data", str(data), "--json", str(tmp_path / "e.json")]) == 0
    grey = json.loads((tmp_path / "e.json").read_text())["rows"][0]["accuracy"]["labels"]["grey_matter"]
    pred = VolumeSegmenter(gm_bundle, "cpu")(T1).labels
    dice, hd = monai_scores(pred, np.zeros(t1.shape, np.uint8), (1.0, 1.0, 1.0))
    assert np.isnan(dice) and np.isnan(hd)
    assert grey == {"dice": None, "dice_cases": 0, "hd95_mm": None, "hd95_cases": 0}


@pytest.mark.parametrize("case, says", [
    ("missing", "no label volume for mni.nii.gz"),
    ("shape", "has shape (48, 56, 20); its image mni.nii.gz has (48, 56, 40)"),
    ("value", "holds value 3; the bundle's class ids are 0..1"),
    ("affine", "has another affine than mni.nii.gz"),
    ("layout", "has no images/ + labels/"),
    ("channels", "holds nnU-Net channel files"),
])
def test_bad_eval_data_is_one_line_exit_2(gm_bundle, tmp_path: Path, capfd, case: str, says: str) -> None:
    data = eval_data(tmp_path / "data")
    label = data / "labels" / "mni.nii.gz"
    t1 = nib.load(T1)
    if case == "missing":
        label.unlink()
    elif case == "shape":
        nib.save(nib.Nifti1Image(grey_matter_truth()[:, :, :20], t1.affine), label)
    elif case == "value":
        nib.save(nib.Nifti1Image(grey_matter_truth() * 3, t1.affine), label)
    elif case == "affine":
        nib.save(nib.Nifti1Image(grey_matter_truth(), np.diag([2.0, 1, 1, 1])), label)
    elif case == "layout":
        (data / "labels").rename(data / "truth")
    else:
        for c in ("0000", "0001"):
            shutil.copyfile(T1, data / "images" / f"mri_{c}.nii.gz")
    capfd.readouterr()
    assert main(["eval", str(gm_bundle), "--data", str(data), "--json", str(tmp_path / "e.json")]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segrt: error: ") and says in lines[0], lines
    assert not (tmp_path / "e.json").exists()


def test_eval_of_a_dicom_series_case_on_an_anisotropic_grid(gm_bundle, tmp_path: Path) -> None:
    """An image may be a DICOM series folder (images/<case>/); HD95 takes the label volume's spacing (0.9, 1.1, 2.5)."""
    from .test_volume import tilted_affine, write_series

    data, aff = np.asarray(nib.load(T1).dataobj).astype(np.int16), tilted_affine()
    write_series(tmp_path / "data" / "images" / "ct", data, aff)
    (tmp_path / "data" / "labels").mkdir()
    nib.save(nib.Nifti1Image(grey_matter_truth(), aff), tmp_path / "data" / "labels" / "ct.nii.gz")
    assert main(["eval", str(gm_bundle), "--data", str(tmp_path / "data"), "--json", str(tmp_path / "e.json")]) == 0
    grey = json.loads((tmp_path / "e.json").read_text())["rows"][0]["accuracy"]["labels"]["grey_matter"]
    pred = VolumeSegmenter(gm_bundle, "cpu")(tmp_path / "data" / "images" / "ct").labels
    dice, hd = monai_scores(pred, grey_matter_truth(), (0.9, 1.1, 2.5))
    assert grey["dice"] == pytest.approx(dice, abs=1e-6) and grey["hd95_mm"] == pytest.approx(hd, rel=1e-5)
