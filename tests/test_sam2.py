"""SAM 2 image path: segrt's SAM2ImagePredictor against sam2's own, on the same seeded hiera_t (made
non-trivial as the export does) and real photos. The bundle is exported once for the module."""

from __future__ import annotations

import copy

import numpy as np
import pytest

pytest.importorskip("sam2", reason="sam2 (pip install 'segrt[export]') is needed to export and compare SAM 2")
pytestmark = pytest.mark.slow

MIN_IOU = 0.98
IOU_PRED_TOLERANCE = 1e-3


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _prompts(h: int, w: int) -> dict[str, dict]:
    return {
        "point": {"point_coords": np.array([[0.45 * w, 0.4 * h]]), "point_labels": np.array([1])},
        "points": {"point_coords": np.array([[0.45 * w, 0.4 * h], [0.1 * w, 0.9 * h]]), "point_labels": np.array([1, 0])},
        "box": {"box": np.array([0.25 * w, 0.2 * h, 0.7 * w, 0.8 * h])},
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from segrt.export.sam2_export import build, export_sam2

    out = tmp_path_factory.mktemp("sam2") / "hiera_t"
    manifest = export_sam2("hiera_t", None, out, seed=0)
    model, _ = build("hiera_t", None, seed=0)  # the same seeded weights the bundle was traced from
    return out, manifest, model


@pytest.fixture(scope="module")
def predictor(exported):
    """One segrt predictor (one pair of ONNX Runtime sessions) for the module; tests take shallow copies, which
    share the sessions and hold their own image state."""
    from segrt.runtime.sam2 import SAM2ImagePredictor

    with SAM2ImagePredictor(exported[0], "cpu") as pred:
        yield pred


@pytest.fixture(scope="module")
def encoded(exported, predictor, photos):
    """Both predictors with each photo set once: {photo: (segrt's, sam2's)}."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor as TorchPredictor

    pairs = {}
    for name in ("astronaut", "coffee"):
        ours, theirs = copy.copy(predictor), TorchPredictor(exported[2])
        ours.set_image(photos[name])
        theirs.set_image(photos[name])
        pairs[name] = (ours, theirs)
    return pairs


def test_export_is_verified_and_recorded_untrained(exported) -> None:
    bundle, manifest, _ = exported
    assert manifest.task == "sam2" and manifest.encoder == "hiera_t"
    assert manifest.source["trained"] is False and manifest.source["seeded_tweak"]["object_score_bias"] == 10.0
    v = manifest.verification
    assert v["max_rel_error"] < 1e-3 and v["min_mask_iou"] >= MIN_IOU
    assert set(v["graph_rel_errors"]) >= {"encoder.image_embed", "encoder.high_res_feats_0", "decoder.low_res_masks",
                                          "decoder.object_score_logits"}
    assert {p.name for p in bundle.iterdir()} == {"encoder.onnx", "decoder.onnx", "sam2.json", "segrt.json"}


def test_preprocessing_matches_sam2_transforms(predictor, photos) -> None:
    """The stretch to 1024 (torchvision's antialiased bilinear) and normalisation, pixel for pixel."""
    from sam2.utils.transforms import SAM2Transforms

    for name in ("astronaut", "coffee"):
        ref = SAM2Transforms(1024, 0.0)(photos[name])[None].numpy()
        got = predictor.preprocess(photos[name])
        assert got.shape == ref.shape == (1, 3, 1024, 1024)
        assert np.abs(got - ref).max() < 1e-4


@pytest.mark.parametrize("photo", ["astronaut", "coffee"])
@pytest.mark.parametrize("prompt", ["point", "points", "box"])
@pytest.mark.parametrize("multimask", [True, False])
def test_predict_matches_sam2(encoded, photo, prompt, multimask) -> None:
    ours, theirs = encoded[photo]
    h, w = ours._orig_hw[0]
    kwargs = _prompts(h, w)[prompt]
    m_t, iou_t, low_t = theirs.predict(multimask_output=multimask, **kwargs)
    m_o, iou_o, low_o = ours.predict(multimask_output=multimask, **kwargs)
    assert m_o.shape == m_t.shape == (3 if multimask else 1, h, w) and m_o.dtype == bool
    assert low_o.shape == low_t.shape == (m_o.shape[0], 256, 256)
    for a, b in zip(m_o, m_t):
        assert 0.005 <= b.mean() <= 0.95, f"reference mask covers {b.mean():.1%}: parity on a trivial mask"
        assert _iou(a, b) >= MIN_IOU
    assert np.abs(iou_o - iou_t).max() <= IOU_PRED_TOLERANCE
    assert np.abs(low_o - low_t).max() <= 1e-3 * np.abs(low_t).max()


def test_mask_input_logits_and_normalized_coords_match_sam2(encoded) -> None:
    """A second round fed the first's low-res logits, return_logits, and prompts already in 0-1."""
    ours, theirs = encoded["astronaut"]
    point, label = np.array([[0.5, 0.45]]), np.array([1])
    first_t = theirs.predict(point, label, multimask_output=False, normalize_coords=False)
    first_o = ours.predict(point, label, multimask_output=False, normalize_coords=False)
    assert _iou(first_o[0][0], first_t[0][0]) >= MIN_IOU
    m_t, _, _ = theirs.predict(point, label, mask_input=first_t[2], multimask_output=False, return_logits=True,
                               normalize_coords=False)
    m_o, _, _ = ours.predict(point, label, mask_input=first_o[2], multimask_output=False, return_logits=True,
                             normalize_coords=False)
    assert m_o.dtype == np.float32 and m_o.shape == m_t.shape
    assert np.abs(m_o - m_t).max() <= 1e-3 * np.abs(m_t).max()


def test_batched_prompts_and_images_match_sam2(predictor, encoded, photos) -> None:
    """B boxes in one decoder call, and predict_batch over set_image_batch."""
    from segrt.runtime import InvalidInputError

    ours, theirs = encoded["coffee"]
    h, w = ours._orig_hw[0]
    boxes = np.array([[0.1 * w, 0.1 * h, 0.6 * w, 0.7 * h], [0.4 * w, 0.3 * h, 0.9 * w, 0.9 * h]])
    m_t, iou_t, _ = theirs.predict(box=boxes, multimask_output=False)
    m_o, iou_o, _ = ours.predict(box=boxes, multimask_output=False)
    assert m_o.shape == m_t.shape == (2, 1, h, w)
    assert min(_iou(a, b) for a, b in zip(m_o[:, 0], m_t[:, 0])) >= MIN_IOU
    assert np.abs(iou_o - iou_t).max() <= IOU_PRED_TOLERANCE

    # sam2's predict_batch is its predict per image on that image's features: compared with sam2's predict here
    # (the module's predictors already hold both photos), so no second sam2 encoder run
    points = {"astronaut": np.array([[200.0, 150.0]]), "coffee": np.array([[300.0, 200.0]])}
    batch = copy.copy(predictor)
    batch.set_image_batch([photos["astronaut"], photos["coffee"]])
    masks, ious, lows = batch.predict_batch(list(points.values()), [np.array([1])] * 2)
    for (name, point), m_o, iou_o in zip(points.items(), masks, ious):
        m_t, iou_t, _ = encoded[name][1].predict(point, np.array([1]))
        assert m_o.shape == m_t.shape == (3, *photos[name].shape[:2])
        assert min(_iou(a, b) for a, b in zip(m_o, m_t)) >= MIN_IOU and np.abs(iou_o - iou_t).max() <= IOU_PRED_TOLERANCE
    with pytest.raises(InvalidInputError, match="set_image_batch"):
        encoded["coffee"][0].predict_batch([points["coffee"]], [np.array([1])])


def test_bad_prompts_are_typed_errors(predictor, encoded) -> None:
    from segrt.runtime import InvalidInputError

    ours, _ = encoded["astronaut"]
    fresh = copy.copy(predictor)
    fresh.reset_predictor()
    with pytest.raises(InvalidInputError, match="no image set"):
        fresh.predict(np.array([[1.0, 1.0]]), np.array([1]))
    with pytest.raises(InvalidInputError, match="empty prompt"):
        ours.predict()
    with pytest.raises(InvalidInputError, match="point_labels"):
        ours.predict(np.array([[1.0, 1.0]]), np.array([7]))
    with pytest.raises(InvalidInputError, match="mask_input"):
        ours.predict(np.array([[1.0, 1.0]]), np.array([1]), mask_input=np.zeros((1, 64, 64)))


def test_checkpoint_of_another_variant_is_one_line(tmp_path, capsys) -> None:
    """A hiera_l state dict ({"model": ...}, as Meta ships it) given for hiera_t: exit 2, one line naming both."""
    import torch
    from segrt.runtime.cli import main

    state = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(144, 3, 7, 7)}
    state.update({f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(48)})
    ckpt = tmp_path / "sam2.1_hiera_large.pt"
    torch.save({"model": state}, ckpt)
    code = main(["export", "sam2", "--variant", "hiera_t", "--checkpoint", str(ckpt), "--out", str(tmp_path / "b")])
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if not line.startswith("segrt: [")]  # progress lines aside
    assert code == 2 and "Traceback" not in stderr and len(errors) == 1, stderr
    assert errors[0] == ("segrt: error: sam2.1_hiera_large.pt is a SAM 2 hiera_l checkpoint; you asked for "
                         "--variant hiera_t")
    assert not (tmp_path / "b").exists()
