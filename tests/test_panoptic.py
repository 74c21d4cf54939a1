"""Panoptic fusion of the U-Net and Mask R-CNN fixtures on real photos, against an independent loop written here
from the Panoptic FPN rules; the COCO panoptic files; segrt panoptic and its one-line errors.

The fixtures share their class names (background, ellipse, rectangle, cutout), so things are named explicitly:
``ellipse`` and ``rectangle`` are things, ``background`` and ``cutout`` the semantic bundle's stuff.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from segrt.benchmarks.pq import rgb2id
from segrt.runtime.cli import main
from segrt.runtime.errors import InvalidInputError
from segrt.runtime.panoptic import PanopticSegmenter
from segrt.runtime.panoptic_fusion import FusionConfig

THINGS = ("ellipse", "rectangle")
PHOTOS = ("astronaut", "chelsea", "coffee")


def independent_fusion(label_map, masks, scores, labels, semantic_classes, instance_classes, things,
                       confidence_thr, overlap_thr, stuff_area_limit):
    """Panoptic FPN's heuristic from its rules, one instance at a time on whole-image masks."""
    stuff = [c for c in semantic_classes if c not in things]
    category = {name: i + 1 for i, name in enumerate(stuff + list(things))}
    panoptic = np.zeros(label_map.shape, np.int32)
    segments, overlapped = [], 0  # overlapped: instances dropped or clipped by the overlap rule
    for i in sorted(range(len(scores)), key=lambda k: -scores[k]):
        if scores[i] < confidence_thr:
            break
        name = instance_classes[labels[i]]
        if name not in things:
            continue
        mask = masks[i]
        area = mask.sum()
        if area == 0:
            continue
        taken = (mask & (panoptic > 0)).sum()
        overlapped += int(taken > 0)
        if taken / area > overlap_thr:
            continue
        mask = mask & (panoptic == 0)
        if mask.sum() == 0:
            continue
        panoptic[mask] = len(segments) + 1
        segments.append((len(segments) + 1, category[name], name, 1, int(mask.sum())))
    for cls, name in enumerate(semantic_classes):
        if name in things:
            continue
        mask = (label_map == cls) & (panoptic == 0)
        if mask.sum() == 0 or mask.sum() < stuff_area_limit:
            continue
        panoptic[mask] = len(segments) + 1
        segments.append((len(segments) + 1, category[name], name, 0, int(mask.sum())))
    return panoptic, segments, overlapped


@pytest.fixture(scope="module")
def pan(unet_trained, maskrcnn):
    # confidence 0.1 at load: the instance bundle keeps detections from 0.1, so stricter configs can be replayed
    with PanopticSegmenter(unet_trained.bundle, maskrcnn.bundle, THINGS, FusionConfig(0.1), "cpu") as p:
        yield p


CONFIGS = (FusionConfig(), FusionConfig(0.1, 0.5, 4096), FusionConfig(0.1, 0.2, 256), FusionConfig(0.3, 0.8, 0))


def test_fusion_equals_an_independent_loop_on_real_photos(pan, photos):
    exercised = {"instances": 0, "dropped_or_clipped": 0, "void": 0}
    for name in PHOTOS:
        photo = photos[name][:256, :320]
        sem, inst = pan.semantic(photo), pan.instance(photo)
        exercised["instances"] += len(inst)
        for cfg in CONFIGS:
            pan.config = cfg
            got = pan(photo) if cfg == CONFIGS[1] else pan.combine(sem.label_map, inst.boxes, inst.scores,
                                                                   inst.labels, inst.masks)
            ref, ref_segments, overlapped = independent_fusion(sem.label_map, inst.masks, inst.scores, inst.labels,
                                                   pan.semantic.class_names, pan.instance.class_names, THINGS,
                                                   cfg.confidence_thr, cfg.overlap_thr, cfg.stuff_area_limit)
            np.testing.assert_array_equal(got.panoptic, ref, err_msg=f"{name} {cfg}")
            assert [(s["id"], s["category_id"], s["category_name"], s["isthing"], s["area"])
                    for s in got.segments] == ref_segments
            for s in got.segments:
                ys, xs = np.nonzero(ref == s["id"])
                assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            exercised["dropped_or_clipped"] += overlapped
            exercised["void"] += int((ref == 0).sum() > 0)
    pan.config = CONFIGS[1]
    # the photos are not a degenerate case: instances were fused, some dropped or clipped, some pixels VOID
    assert exercised["instances"] >= 3 and exercised["dropped_or_clipped"] >= 1 and exercised["void"] >= 1, exercised


def test_categories_follow_the_names(pan):
    cats = [(c["id"], c["name"], c["isthing"]) for c in pan(np.zeros((64, 64, 3), np.uint8)).categories]
    assert cats == [(1, "background", 0), (2, "cutout", 0), (3, "ellipse", 1), (4, "rectangle", 1)]


def test_save_writes_coco_panoptic_files(pan, photos, tmp_path):
    res = pan(photos["chelsea"])
    paths = res.save(tmp_path, "chelsea", photos["chelsea"], file_name="chelsea.jpg")
    assert [p.name for p in paths] == ["chelsea.panoptic.png", "chelsea.panoptic.json", "chelsea.overlay.jpg"]
    png = cv2.imread(str(paths[0]), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(rgb2id(png), res.panoptic)
    info = json.loads(paths[1].read_text())
    assert info["file_name"] == "chelsea.panoptic.png" and info["image_file_name"] == "chelsea.jpg"
    for s in info["segments_info"]:
        assert s["area"] == int((res.panoptic == s["id"]).sum())
        assert ("score" in s) == bool(s["isthing"])
    assert sum(s["area"] for s in info["segments_info"]) == int((res.panoptic > 0).sum())
    assert not list(tmp_path.glob(".*"))


def test_things_are_checked_by_name(unet_trained, maskrcnn):
    with pytest.raises(InvalidInputError, match=r"unknown thing class\(es\) 'person'.*ellipse, rectangle, cutout"):
        PanopticSegmenter(unet_trained.bundle, maskrcnn.bundle, ["person"], device="cpu")
    with pytest.raises(InvalidInputError, match="below the instance graph's own score floor"):
        PanopticSegmenter(unet_trained.bundle, maskrcnn.bundle, THINGS, FusionConfig(0.01), "cpu")


def _copy_bundle(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "segrt.json").read_text())
    edit(manifest)
    (dst / "segrt.json").write_text(json.dumps(manifest))
    return dst


def _gray(m):
    m["input"].update(channels=1, color="gray", mean=[0.449], std=[0.226])


def _no_masks(m):
    m["detection"]["masks"] = ""


@pytest.mark.parametrize("case", ["things", "swapped", "no_masks", "channels", "empty_image", "missing_input",
                                  "bundle_is_out", "bundle_in_out", "out_in_bundle", "bundle_exists"])
def test_cli_refuses_bad_input_in_one_line(case, unet_trained, maskrcnn, photos, tmp_path, capsys):
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), photos["coffee"][:96, :128, ::-1])
    sem, inst, things = unet_trained.bundle, maskrcnn.bundle, "ellipse"
    if case == "things":
        things = "ellipse,car"
    elif case == "swapped":
        sem, inst = inst, sem
    elif case == "no_masks":
        inst = _copy_bundle(maskrcnn.bundle, tmp_path / "nomask", _no_masks)
    elif case == "channels":
        sem = _copy_bundle(unet_trained.bundle, tmp_path / "gray", _gray)
    elif case == "empty_image":
        image.write_bytes(b"")
    elif case == "missing_input":
        image = tmp_path / "absent.png"
    out = tmp_path / "out"
    bundle = {"bundle_is_out": out, "bundle_in_out": out / "pan", "out_in_bundle": tmp_path,
              "bundle_exists": tmp_path / "pan"}.get(case)
    save = ["--save-bundle", str(bundle)] if bundle else []
    if case == "bundle_exists":
        bundle.mkdir()
        (bundle / "keep.txt").write_text("kept")
    rc = main(["panoptic", "--semantic", str(sem), "--instance", str(inst), "--things", things,
               "--input", str(image), "--out", str(out), "--device", "cpu", *save])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("segrt: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())
    if case == "bundle_exists":
        assert "--force" in err and (bundle / "keep.txt").read_text() == "kept"


def test_cli_fuses_a_folder_and_saves_a_bundle(unet_trained, maskrcnn, photos, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("astronaut", "coffee"):
        cv2.imwrite(str(folder / f"{name}.png"), photos[name][:160, :224, ::-1])
    out, bundle = tmp_path / "out", tmp_path / "pan-bundle"
    rc = main(["panoptic", "--semantic", str(unet_trained.bundle), "--instance", str(maskrcnn.bundle),
               "--things", ",".join(THINGS), "--stuff-area-limit", "64", "--input", str(folder), "--out", str(out),
               "--save-bundle", str(bundle), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}.{s}" for n in ("astronaut", "coffee") for s in ("panoptic.png", "panoptic.json", "overlay.jpg"))
    with PanopticSegmenter(unet_trained.bundle, maskrcnn.bundle, THINGS, FusionConfig(stuff_area_limit=64), "cpu") as p:
        image = cv2.imread(str(folder / "coffee.png"))[:, :, ::-1]
        png = cv2.imread(str(out / "coffee.panoptic.png"))[:, :, ::-1]
        np.testing.assert_array_equal(rgb2id(png), p(image).panoptic)
    recipe = json.loads((bundle / "panoptic.json").read_text())
    assert recipe["things"] == list(THINGS) and recipe["stuff_area_limit"] == 64
    assert (bundle / recipe["semantic"]).resolve() == unet_trained.bundle.resolve()
    args = ["panoptic", "--semantic", str(unet_trained.bundle), "--instance", str(maskrcnn.bundle), "--things",
            ",".join(THINGS), "--stuff-area-limit", "32", "--input", str(folder), "--out", str(out),
            "--save-bundle", str(bundle), "--device", "cpu"]
    assert main(args) == 2 and "already exists; pass --force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0, capsys.readouterr().err
    assert json.loads((bundle / "panoptic.json").read_text())["stuff_area_limit"] == 32


def test_config_is_validated():
    with pytest.raises(InvalidInputError, match="overlap_thr"):
        FusionConfig(overlap_thr=1.5)
    with pytest.raises(InvalidInputError, match="stuff_area_limit"):
        replace(FusionConfig(), stuff_area_limit=-1)
