"""A panoptic bundle through the commands that dispatch to its task: segrt run, info, eval (PQ), stream."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from segrt.benchmarks.pq import rgb2id
from segrt.runtime.cli import main
from segrt.runtime.panoptic import write_panoptic_bundle
from segrt.runtime.panoptic_fusion import FusionConfig

THINGS = ("ellipse", "rectangle")


@pytest.fixture(scope="module")
def panoptic_run(unet_trained, maskrcnn, photos, tmp_path_factory):
    """A panoptic bundle, three photos (cropped small) and what `segrt run` wrote for them."""
    root = tmp_path_factory.mktemp("panoptic")
    bundle = write_panoptic_bundle(root / "bundle", unet_trained.bundle, maskrcnn.bundle, THINGS,
                                   FusionConfig(stuff_area_limit=256))
    images = root / "images"
    images.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        cv2.imwrite(str(images / f"{name}.png"), photos[name][:192, :256, ::-1])
    out = root / "run"
    assert main(["run", str(bundle), "--input", str(images), "--out", str(out), "--device", "cpu"]) == 0
    return bundle, images, out


def _truth(root, images, run, shift: int = 0):
    """COCO panoptic ground truth made from the run's own predictions (optionally shifted right)."""
    (root / "panoptic").mkdir(parents=True)
    (root / "images").symlink_to(images)
    anns, cats = [], None
    for i, img in enumerate(sorted(images.iterdir()), 1):
        info = json.loads((run / f"{img.stem}.panoptic.json").read_text())
        cats = info["categories"]
        png = cv2.imread(str(run / info["file_name"]))
        if shift:
            png = np.roll(png, shift, axis=1)
            png[:, :shift] = 0
            ids = rgb2id(png[:, :, ::-1])
            for s in info["segments_info"]:
                s["area"] = int((ids == s["id"]).sum())
            info["segments_info"] = [s for s in info["segments_info"] if s["area"]]
        cv2.imwrite(str(root / "panoptic" / info["file_name"]), png)
        anns.append({"image_id": i, "file_name": info["file_name"], "segments_info": info["segments_info"]})
    images_json = [{"id": i, "file_name": p.name} for i, p in enumerate(sorted(images.iterdir()), 1)]
    (root / "panoptic.json").write_text(json.dumps({"images": images_json, "annotations": anns, "categories": cats}))
    return root


def test_run_writes_coco_panoptic_for_each_image(panoptic_run):
    _, images, out = panoptic_run
    for img in images.iterdir():
        info = json.loads((out / f"{img.stem}.panoptic.json").read_text())
        ids = rgb2id(cv2.imread(str(out / f"{img.stem}.panoptic.png"))[:, :, ::-1])
        assert sorted(s["id"] for s in info["segments_info"]) == sorted(set(np.unique(ids).tolist()) - {0})
        assert (out / f"{img.stem}.overlay.jpg").is_file()


def test_info_names_both_networks(panoptic_run, capsys):
    assert main(["info", str(panoptic_run[0])]) == 0
    text = capsys.readouterr().out
    assert "panoptic" in text and "semantic inputs" in text and "instance inputs" in text


def test_eval_of_the_prediction_against_itself_is_one_and_shifted_less(panoptic_run, tmp_path, capsys):
    bundle, images, out = panoptic_run
    same = _truth(tmp_path / "same", images, out)
    assert main(["eval", str(bundle), "--data", str(same), "--json", str(tmp_path / "same.json")]) == 0
    acc = json.loads((tmp_path / "same.json").read_text())["rows"][0]["accuracy"]
    assert acc["All"]["pq"] == 1.0 and acc["All"]["sq"] == 1.0 and acc["All"]["rq"] == 1.0
    shifted = _truth(tmp_path / "shifted", images, out, shift=12)
    assert main(["eval", str(bundle), "--data", str(shifted), "--json", str(tmp_path / "shifted.json")]) == 0
    acc = json.loads((tmp_path / "shifted.json").read_text())["rows"][0]["accuracy"]
    assert 0 < acc["All"]["pq"] < 1 and acc["All"]["sq"] < 1
    assert "| PQ | SQ |" in capsys.readouterr().out


def test_eval_refuses_data_without_panoptic_truth(panoptic_run, unet_trained, capsys):
    assert main(["eval", str(panoptic_run[0]), "--data", str(unet_trained.val)]) == 2
    assert "panoptic.json" in capsys.readouterr().err


def test_stream_over_a_folder(panoptic_run, tmp_path):
    bundle, images, out = panoptic_run
    log = tmp_path / "frames.jsonl"
    assert main(["stream", str(bundle), "--source", str(images), "--log", str(log), "--all-frames",
                 "--device", "cpu", "-q"]) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()][:-1]
    assert len(lines) == 3
    for rec, img in zip(lines, sorted(images.iterdir())):
        info = json.loads((out / f"{img.stem}.panoptic.json").read_text())
        assert rec["segments"] == [{k: s[k] for k in ("id", "category_name", "area")} for s in info["segments_info"]]
