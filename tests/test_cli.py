"""The `segrt` command end to end, in subprocesses: outputs, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from .conftest import PPOCR, torch_reference


def segrt(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segrt.runtime.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segrt: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def ocr(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "ocr"
    proc = segrt("import", PPOCR, "--threshold", "0.3", "--classes", "background,text", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory, photos) -> Path:
    folder = tmp_path_factory.mktemp("images")
    import skimage.data

    cv2.imwrite(str(folder / "page.png"), skimage.data.page())
    cv2.imwrite(str(folder / "coffee.jpg"), photos["coffee"][:, :, ::-1])
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "notes.txt").write_text("not an image, and not picked up")
    return folder


@pytest.mark.prepost  # the NumPy-twin pass reruns it: segrt run's results go through the kernels
def test_folder_run_reports_bad_files_and_carries_on(ocr, images, tmp_path) -> None:
    proc = segrt("run", ocr, "--input", images, "--out", tmp_path / "out")
    assert proc.returncode == 2  # something failed: the exit code says so
    assert "skipped broken.png" in proc.stderr and "Traceback" not in proc.stderr
    assert "2 of 3 image(s) segmented" in proc.stdout
    for stem in ("page", "coffee"):
        labels = cv2.imread(str(tmp_path / "out" / f"{stem}.labels.png"), cv2.IMREAD_UNCHANGED)
        overlay = cv2.imread(str(tmp_path / "out" / f"{stem}.overlay.jpg"))
        assert labels.dtype == np.uint8 and labels.shape == overlay.shape[:2]
    assert not (tmp_path / "out" / "broken.labels.png").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "coffee.labels.png", "coffee.overlay.jpg", "page.labels.png", "page.overlay.jpg"
    ]


@pytest.mark.prepost  # the NumPy-twin pass reruns it: segrt run's results go through the kernels
def test_corrupt_image_exits_2_with_one_line(ocr, images, tmp_path) -> None:
    assert_one_line_error(segrt("run", ocr, "--input", images / "broken.png", "--out", tmp_path), "could not be decoded")


@pytest.mark.parametrize(
    "make_bundle, fragment",
    [
        (lambda d: None, "is not a directory"),
        (lambda d: d.mkdir(), "has no segrt.json"),
        (lambda d: (d.mkdir(), (d / "segrt.json").write_text("{not json")), "is not valid JSON"),
    ],
)
def test_bad_bundles(tmp_path, images, make_bundle, fragment: str) -> None:
    make_bundle(tmp_path / "b")
    assert_one_line_error(segrt("run", tmp_path / "b", "--input", images / "page.png", "--out", tmp_path / "o"), fragment)


def test_corrupt_model_file(ocr, images, tmp_path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ocr, bad)
    (bad / "model.onnx").write_bytes((bad / "model.onnx").read_bytes()[:1000])
    assert_one_line_error(segrt("run", bad, "--input", images / "page.png", "--out", tmp_path / "o"), "cannot load")
    (bad / "model.onnx").unlink()
    assert_one_line_error(segrt("run", bad, "--input", images / "page.png", "--out", tmp_path / "o"), "is missing")


def test_info_lists_manifest_io_and_providers(ocr) -> None:
    proc = segrt("info", ocr, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["manifest"]["classes"] == ["background", "text"]
    assert info["model"]["inputs"][0]["name"] == "x" and "CPUExecutionProvider" in info["providers"]
    assert set(info) == {"manifest", "model", "providers", "backends", "prepost"}


def test_info_prints_a_readable_summary(ocr) -> None:
    proc = segrt("info", ocr)
    assert proc.returncode == 0, proc.stderr
    rows = dict(line.split(None, 1) if line[:1].strip() else ("", line.strip()) for line in proc.stdout.splitlines())
    assert rows["task"].startswith("semantic -- label maps")
    assert rows["classes"] == "2: background, text"
    assert rows["precision"] == "fp32" and "CPUExecutionProvider" in rows["providers"]
    assert "'x': 3 channel(s) rgb nchw, its own size, padded to a multiple of 32" in rows["input"]
    assert not proc.stdout.lstrip().startswith("{")  # JSON only with --json


def test_usage_errors(tmp_path) -> None:
    assert_one_line_error(segrt("export", "segformer", "--classes", "2", "--weights", "none", "--out", tmp_path / "x"),
                          "unknown choice 'segformer'; expected one of unet, deeplabv3plus")
    assert_one_line_error(segrt("export", "unet3000", "--out", tmp_path / "x"), "(did you mean 'unet'?)")
    assert_one_line_error(segrt("exprot", "unet"), "unknown choice 'exprot'")
    # numbers are checked when the command line is parsed, not when the first image fails
    for argv, says in ((("run", tmp_path, "--input", tmp_path, "--out", tmp_path / "o", "--max-pixels", "-5"),
                        "--max-pixels: must be >= 1; got -5"),
                       (("sam", tmp_path, "--image", tmp_path / "a.png", "--everything", "--pred-iou-thresh", "7"),
                        "--pred-iou-thresh: must be in [0, 1]; got 7"),
                       (("stream", tmp_path, "--source", tmp_path, "--workers", "500"), "--workers: must be in 1..64"),
                       (("build", tmp_path, "--workspace-gb", "0"), "--workspace-gb: must be > 0"),
                       (("run", tmp_path, "--input", tmp_path, "--out", tmp_path / "o", "--threads", "two"),
                        "--threads: expected a whole number, got 'two'")):
        assert_one_line_error(segrt(*argv), says)
    assert not (tmp_path / "o").exists()
    assert_one_line_error(
        segrt("export", "unet", "--encoder", "resnet9000", "--classes", "2", "--weights", "none", "--out", tmp_path / "x"),
        "unknown encoder 'resnet9000'",
    )
    assert_one_line_error(
        segrt("export", "unet", "--classes", "2", "--weights", tmp_path / "missing.pth", "--out", tmp_path / "x"),
        "does not exist",
    )
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
# U-Net only: the CLI's export path is the same for every architecture (DeepLabV3+'s export: test_export_semantic)
@pytest.mark.parametrize("arch", ["unet"])
def test_export_then_run_matches_pytorch(tmp_path, photos, seeded, arch: str) -> None:
    """The foundation's acceptance test: a seeded checkpoint exported and run through the CLI."""
    ex = seeded(arch, "resnet18", 5)  # only for its module and checkpoint (test_export_semantic's, shared)
    bundle = tmp_path / "cli_bundle"
    proc = segrt("export", arch, "--encoder", "resnet18", "--classes", "5", "--weights", ex.checkpoint, "--out", bundle)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        cv2.imwrite(str(folder / f"{name}.png"), photos[name][:, :, ::-1])
    proc = segrt("run", bundle, "--input", folder, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    for name in ("astronaut", "coffee", "chelsea"):
        labels = cv2.imread(str(tmp_path / "out" / f"{name}.labels.png"), cv2.IMREAD_UNCHANGED)
        ref = torch_reference(ex, photos[name])
        assert (labels == ref).mean() >= 0.999, name
