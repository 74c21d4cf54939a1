"""Mask2Former: the ONNX export against transformers at sizes it was not traced at, and segrt's NumPy
post-processing against transformers' three ``post_process_*`` on the same ONNX logits, on real photos.

The model is the seeded ``swin-mini`` configuration. Seeded, every query predicts nearly the same uniform class
distribution and nothing passes transformers' 0.5 score threshold, so the fixture checkpoint sharpens three
weights before export (recorded here, not in the package): the class head x30 with its bias zeroed, the mask
embedder's last layer x10 and the query features x10. Segments then survive in every photo (asserted: no
comparison of empty outputs).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from segrt.runtime import mask2former_post as post  # noqa: E402
from segrt.runtime import prepost  # noqa: E402
from segrt.runtime.backends import OrtCpuRunner, RunnerOptions  # noqa: E402
from segrt.runtime.manifest import read_manifest  # noqa: E402

CLASSES = ("sky", "person", "cat", "cup", "table")
PHOTOS = ("astronaut", "coffee", "chelsea")
FUSE = {0}  # "sky": fused into one segment, as stuff


def sharpened(model) -> None:
    with torch.no_grad():
        model.class_predictor.weight *= 30.0
        model.class_predictor.bias.zero_()
        last = model.get_submodule("model.transformer_module.decoder.mask_predictor.mask_embedder.2.0")
        last.weight *= 10.0
        last.bias *= 10.0
        model.model.transformer_module.queries_features.weight *= 10.0


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> SimpleNamespace:
    from segrt.export.exporter import export_model
    from segrt.export.models.mask2former import build_model
    from segrt.export.spec import ExportConfig

    tmp = tmp_path_factory.mktemp("mask2former")
    cfg = ExportConfig(architecture="mask2former", encoder="swin-mini", classes=len(CLASSES), class_names=CLASSES)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    sharpened(model)
    ckpt = tmp / "swin-mini-seeded.pt"
    torch.save(model.state_dict(), ckpt)
    from dataclasses import replace

    manifest = export_model(replace(cfg, weights=ckpt), tmp / "bundle")
    runner = OrtCpuRunner(tmp / "bundle" / "model.onnx", RunnerOptions())
    return SimpleNamespace(bundle=tmp / "bundle", manifest=manifest, model=model, runner=runner)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    import cv2
    import skimage.data

    out = {}
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        scale = 256 / max(img.shape[:2])
        out[name] = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    return out


def onnx_logits(ex: SimpleNamespace, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tensor, _ = prepost.preprocess([image], read_manifest(ex.bundle).input)
    out = ex.runner.infer({"image": tensor})
    return out["class_logits"], out["mask_logits"]


def hf_outputs(classes: np.ndarray, masks: np.ndarray) -> SimpleNamespace:
    return SimpleNamespace(class_queries_logits=torch.from_numpy(classes), masks_queries_logits=torch.from_numpy(masks))


def processor():
    from transformers import Mask2FormerImageProcessor

    return Mask2FormerImageProcessor()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# -- export ----------------------------------------------------------------------------------------------
def test_export_matches_transformers_at_untraced_sizes(exported, photos):
    """Traced at 256x320; verified at 384x384 and 320x448 by the exporter, and here at a third size."""
    from segrt.export.models.mask2former import logit_agreement

    checks = exported.manifest.verification["checks"]
    assert [c["input_size"] for c in checks] == [[384, 384], [320, 448]]
    q = exported.model.config.num_queries
    for c in checks:
        assert c["class_logits"]["shape"] == [1, q, len(CLASSES) + 1]
        assert c["mask_logits"]["shape"] == [1, q, c["input_size"][0] // 4, c["input_size"][1] // 4]
        assert c["mask_logits"]["max_rel_diff"] < 1e-4 and c["class_logits"]["max_rel_diff"] < 1e-4
    spec = read_manifest(exported.bundle).input
    from dataclasses import replace

    tensor, _ = prepost.preprocess([photos["coffee"]], replace(spec, size=(288, 512)))
    third = logit_agreement(exported.model, exported.runner, tensor)
    assert third["mask_logits"]["shape"] == [1, q, 72, 128]
    assert third["mask_logits"]["max_rel_diff"] < 1e-4, third


def test_checkpoint_of_another_class_count_is_refused(exported, tmp_path):
    from dataclasses import replace

    from segrt.export.exporter import export_model
    from segrt.export.spec import ExportConfig
    from segrt.runtime.errors import ExportError

    ckpt = Path(exported.bundle).parent / "swin-mini-seeded.pt"
    cfg = ExportConfig(architecture="mask2former", encoder="swin-mini", classes=3, weights=ckpt)
    with pytest.raises(ExportError, match="has 5 classes .*--classes 3"):
        export_model(replace(cfg), tmp_path / "b")
    assert not (tmp_path / "b").exists()


# -- post-processing parity ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PHOTOS)
def test_semantic_equals_transformers(exported, photos, name):
    image = photos[name]
    classes, masks = onnx_logits(exported, image)
    ref = processor().post_process_semantic_segmentation(hf_outputs(classes, masks), target_sizes=[image.shape[:2]],
                                                         return_segmentation_scores=True)[0]
    scores = post.semantic_scores(classes[0], masks[0], image.shape[:2])
    ref_scores = ref.segmentation_scores.numpy()
    assert np.abs(scores - ref_scores).max() < 1e-5 * max(1.0, float(np.abs(ref_scores).max()))
    got, want = post.semantic_map(classes[0], masks[0], image.shape[:2]), ref.segmentation.numpy()
    assert got.shape == want.shape == image.shape[:2]
    assert (got == want).mean() >= 0.999
    for c in np.unique(want):
        assert iou(got == c, want == c) >= 0.98


@pytest.mark.parametrize("name", PHOTOS)
def test_semantic_of_several_classes_equals_transformers(exported, photos, name):
    """Seeded queries mostly agree on one class, so the photos' semantic maps hold one class; here each query's
    class logits are rolled by its index (the same logits go to both sides), so classes compete."""
    image = photos[name]
    classes, masks = onnx_logits(exported, image)
    rolled = np.stack([np.roll(classes[0, q, :-1], q) for q in range(classes.shape[1])])
    classes = np.concatenate([rolled, classes[0, :, -1:]], 1)[None]
    want = processor().post_process_semantic_segmentation(hf_outputs(classes, masks),
                                                          target_sizes=[image.shape[:2]])[0].numpy()
    got = post.semantic_map(classes[0], masks[0], image.shape[:2])
    assert len(np.unique(want)) >= 2
    assert (got == want).mean() >= 0.999
    for c in np.unique(want):
        assert iou(got == c, want == c) >= 0.98


def match_segments(want: list[dict], want_masks: np.ndarray, got: list[dict], got_masks: np.ndarray) -> list[float]:
    """Each reference segment's partner (same label, score within 1e-5), and their mask IoUs."""
    assert len(got) == len(want) > 0
    free, ious = list(range(len(got))), []
    for i, w in enumerate(want):
        j = next(j for j in free if got[j]["label_id"] == w["label_id"] and abs(got[j]["score"] - w["score"]) <= 1e-5)
        free.remove(j)
        ious.append(iou(want_masks[i], got_masks[j]))
    return ious


@pytest.mark.parametrize("name", PHOTOS)
def test_instance_equals_transformers(exported, photos, name):
    image = photos[name]
    classes, masks = onnx_logits(exported, image)
    ref = processor().post_process_instance_segmentation(hf_outputs(classes, masks), target_sizes=[image.shape[:2]],
                                                         return_binary_maps=True)[0]
    got = post.instance_segments(classes[0], masks[0], target_size=image.shape[:2])
    assert got.masks.shape[1:] == image.shape[:2]
    ious = match_segments(ref["segments_info"], ref["segmentation"].numpy() > 0.5, got.segments, got.masks)
    assert min(ious) >= 0.98, ious
    assert [s["id"] for s in got.segments] == list(range(len(got.segments)))
    assert all(a["score"] >= b["score"] for a, b in zip(got.segments, got.segments[1:]))


@pytest.mark.parametrize("name", PHOTOS)
def test_panoptic_equals_transformers(exported, photos, name):
    image = photos[name]
    classes, masks = onnx_logits(exported, image)
    ref = processor().post_process_panoptic_segmentation(hf_outputs(classes, masks), target_sizes=[image.shape[:2]],
                                                         label_ids_to_fuse=FUSE)[0]
    got = post.panoptic_segments(classes[0], masks[0], label_ids_to_fuse=FUSE, target_size=image.shape[:2])
    want_map = ref["segmentation"].numpy()
    assert len(ref["segments_info"]) >= 2
    assert [(s["id"], s["label_id"], s["was_fused"]) for s in got.segments] == \
        [(s["id"], s["label_id"], s["was_fused"]) for s in ref["segments_info"]]
    assert np.allclose([s["score"] for s in got.segments], [s["score"] for s in ref["segments_info"]], atol=1e-5)
    assert (got.segmentation == want_map).mean() >= 0.999
    for s in ref["segments_info"]:
        assert iou(got.segmentation == s["id"], want_map == s["id"]) >= 0.98


def test_panoptic_without_segments_is_all_minus_one(exported, photos):
    """Above every score nothing is kept: transformers answers a map of -1 and no segments; so does segrt."""
    image = photos["chelsea"]
    classes, masks = onnx_logits(exported, image)
    ref = processor().post_process_panoptic_segmentation(hf_outputs(classes, masks), threshold=1.0,
                                                         target_sizes=[image.shape[:2]])[0]
    got = post.panoptic_segments(classes[0], masks[0], threshold=1.0, target_size=image.shape[:2])
    assert ref["segments_info"] == got.segments == []
    assert np.array_equal(got.segmentation, ref["segmentation"].numpy().astype(np.int32))


def test_resizes_equal_torch():
    """The two resamplings under every result, against torch.nn.functional.interpolate on random maps."""
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 24, 40)).astype(np.float32)
    for size in ((384, 384), (17, 100), (24, 40)):
        ref = torch.nn.functional.interpolate(torch.from_numpy(maps)[None], size=size, mode="bilinear",
                                              align_corners=False)[0].numpy()
        assert np.abs(post.resize_bilinear(maps, size) - ref).max() <= 1e-5 * np.abs(ref).max()
        near = torch.nn.functional.interpolate(torch.from_numpy(maps)[None], size=size, mode="nearest")[0].numpy()
        assert np.array_equal(post.resize_nearest(maps, size), near)


# -- the bundle as a predictor and through segrt run -----------------------------------------------------
def test_universal_segmenter_equals_transformers(exported, photos):
    """The Python API end to end (its own preprocessing) against transformers' panoptic and semantic results."""
    from segrt.runtime.tasks.mask2former import UniversalSegmenter

    image = photos["coffee"]
    seg = UniversalSegmenter(exported.bundle, "cpu", stuff=["sky"])
    res = seg(image)
    outputs = hf_outputs(*onnx_logits(exported, image))
    proc = processor()
    pan = proc.post_process_panoptic_segmentation(outputs, target_sizes=[image.shape[:2]], label_ids_to_fuse=FUSE)[0]
    want = np.maximum(pan["segmentation"].numpy(), 0)
    assert len(res.panoptic.segments) >= 2
    assert (res.panoptic.panoptic == want).mean() >= 0.999
    for s in res.panoptic.segments:
        ref = next(r for r in pan["segments_info"] if r["id"] == s["id"])
        assert s["category_id"] == ref["label_id"] + 1 and s["isthing"] == int(not ref["was_fused"])
        assert s["area"] == int((res.panoptic.panoptic == s["id"]).sum())
    sem = proc.post_process_semantic_segmentation(outputs, target_sizes=[image.shape[:2]])[0].numpy()
    assert (res.label_map == sem).mean() >= 0.999
    ins = proc.post_process_instance_segmentation(outputs, target_sizes=[image.shape[:2]])[0]
    assert len(res.instances.segments) == len(ins["segments_info"]) > 0
    seg.close()


def test_unknown_stuff_name_is_refused(exported):
    from segrt.runtime.errors import InvalidInputError
    from segrt.runtime.tasks.mask2former import UniversalSegmenter

    with pytest.raises(InvalidInputError, match="stuff class.*grass unknown; valid: sky, person"):
        UniversalSegmenter(exported.bundle, "cpu", stuff=["grass"])


def test_segrt_run_writes_semantic_instance_and_panoptic(exported, photos, tmp_path):
    import json
    import subprocess
    import sys

    import cv2

    image = photos["chelsea"]
    cv2.imwrite(str(tmp_path / "cat.png"), image[:, :, ::-1])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "segrt.runtime.cli", "run", str(exported.bundle), "--input",
                           str(tmp_path / "cat.png"), "--out", str(out), "--device", "cpu"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    classes, masks = onnx_logits(exported, image)
    labels = cv2.imread(str(out / "cat.labels.png"), cv2.IMREAD_UNCHANGED)
    assert (labels == post.semantic_map(classes[0], masks[0], image.shape[:2])).mean() >= 0.999
    png = cv2.imread(str(out / "cat.panoptic.png"))[:, :, ::-1].astype(np.int64)
    ids = png[:, :, 0] + 256 * png[:, :, 1] + 65536 * png[:, :, 2]
    want = post.panoptic_segments(classes[0], masks[0], target_size=image.shape[:2])
    assert np.array_equal(ids, np.maximum(want.segmentation, 0))
    info = json.loads((out / "cat.panoptic.json").read_text())
    assert [s["id"] for s in info["segments_info"]] == [s["id"] for s in want.segments]
    instances = json.loads((out / "cat.instances.json").read_text())["instances"]
    ref = processor().post_process_instance_segmentation(hf_outputs(classes, masks), target_sizes=[image.shape[:2]])[0]
    assert len(instances) == len(ref["segments_info"]) > 0
    assert (out / "cat.overlay.jpg").is_file()
