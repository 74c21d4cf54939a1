"""Trained fixtures beat random weights by a wide margin, and `segrt eval` scores their bundles as
PyTorch scores the originals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segrt.benchmarks.fixture_training import build_model, validate
from segrt.benchmarks.fixtures import get_recipe

from .conftest import QUICK, Trained
from .test_cli import assert_one_line_error, segrt

pytestmark = pytest.mark.slow


def test_trained_unet_beats_random_weights_by_a_wide_margin(unet_trained: Trained) -> None:
    import torch

    recipe = get_recipe("unet").quick(**QUICK["unet"])
    torch.manual_seed(recipe.seed)
    untrained = build_model(recipe).eval()
    random_miou = validate(untrained, recipe, unet_trained.val)["miou"]
    trained_miou = unet_trained.metrics["validation"]["miou"]
    assert trained_miou >= random_miou + 0.25, (trained_miou, random_miou)
    assert trained_miou >= 0.45


def test_segrt_eval_scores_the_bundle_as_pytorch_scores_the_model(unet_trained: Trained, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    proc = segrt("eval", unet_trained.bundle, unet_trained.bundle, "--data", unet_trained.val, "--json", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    first, second = result["rows"]
    torch_miou = unet_trained.metrics["validation"]["miou"]
    assert first["accuracy"]["miou"] == pytest.approx(torch_miou, abs=0.005)
    assert first["reference"] and second["agreement"]["pixel_agreement"] == 1.0 and second["passed"]
    assert "| mIoU |" in proc.stdout and "PASS" in proc.stdout


def test_segrt_eval_instance_bundle_matches_pytorch_ap(maskrcnn: Trained, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    # torchvision's validation keeps every detection above the graph's floor (0.05): so does this run
    proc = segrt("eval", maskrcnn.bundle, "--data", maskrcnn.val, "--json", out, "--score-threshold", "0.05")
    assert proc.returncode == 0, proc.stderr
    row = json.loads(out.read_text())["rows"][0]
    torch_ap = maskrcnn.metrics["validation"]
    assert row["accuracy"]["mask"]["AP"] == pytest.approx(torch_ap["mask"]["AP"], abs=0.01)
    assert row["accuracy"]["box"]["AP"] == pytest.approx(torch_ap["box"]["AP"], abs=0.01)
    assert torch_ap["mask"]["AP"] >= 0.1, torch_ap  # the CI-sized run; untrained weights score 0.0


def test_segrt_eval_bad_data_is_one_line(unet_trained: Trained, tmp_path: Path) -> None:
    assert_one_line_error(segrt("eval", unet_trained.bundle, "--data", tmp_path), "no images/ folder")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes((unet_trained.val / "images").iterdir().__next__().read_bytes())
    assert_one_line_error(segrt("eval", unet_trained.bundle, "--data", tmp_path), "neither labels/")
