"""PQ as panopticapi computes it, on hand-built cases whose values are worked out here."""

from __future__ import annotations

import numpy as np
import pytest

from segrt.benchmarks.pq import PQStat, pq_image, rgb2id, summarize
from segrt.runtime.errors import InvalidInputError

THING, STUFF, OTHER = 1, 2, 3
CATS = {THING: {"name": "car", "isthing": 1}, STUFF: {"name": "sky", "isthing": 0},
        OTHER: {"name": "person", "isthing": 1}}


def seg(i: int, cat: int, crowd: int = 0) -> dict:
    return {"id": i, "category_id": cat, "iscrowd": crowd}


def canvas() -> np.ndarray:
    return np.zeros((20, 40), np.int32)


def score(gt, gt_segs, pred, pred_segs) -> dict:
    return summarize(pq_image(gt, gt_segs, pred, pred_segs, CATS), CATS)


def test_perfect_prediction_scores_one():
    gt = canvas()
    gt[:10, :10] = 1
    gt[10:, :] = 2
    segs = [seg(1, THING), seg(2, STUFF)]
    out = score(gt, segs, gt.copy(), segs)
    assert out["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 2}
    assert out["Things"]["n"] == 1 and out["Stuff"]["n"] == 1


def test_shift_is_a_match_while_iou_stays_above_half():
    gt = canvas() + 2  # sky everywhere (700 px) but a 10x10 car: no VOID to excuse anything
    gt[:10, :10] = 1
    gt_segs = [seg(1, THING), seg(2, STUFF)]
    pred = gt.copy()
    pred[:10, :12] = 2
    pred[:10, 2:12] = 1  # the car 2 px to the right
    out = score(gt, gt_segs, pred, gt_segs)
    # car: IoU 80 / 120 = 2/3; sky: 680 shared of 700 + 700 - 680 = 720, 17/18. PQ = mean, RQ 1
    assert out["per_class"]["car"]["pq"] == pytest.approx(2 / 3)
    assert out["per_class"]["sky"]["pq"] == pytest.approx(17 / 18)
    assert out["All"]["pq"] == pytest.approx((2 / 3 + 17 / 18) / 2) and out["All"]["sq"] == out["All"]["pq"]
    assert out["All"]["rq"] == 1.0
    gt, pred = canvas(), canvas()
    gt[:10, :10] = 1
    gt[:10, 10:] = 2
    pred[:10, 6:16] = 1  # 40 px shared, 60 on sky: IoU 40 / 160 = 1/4: one FP and one FN
    stat = pq_image(gt, [seg(1, THING), seg(2, STUFF)], pred, [seg(1, THING)], CATS)
    assert (stat.per_cat[THING].tp, stat.per_cat[THING].fp, stat.per_cat[THING].fn) == (0, 1, 1)
    assert stat.per_cat[STUFF].fn == 1
    assert summarize(stat, CATS)["All"]["pq"] == 0.0


def test_shift_onto_void_is_scored_without_the_void_pixels():
    gt = canvas()
    gt[:10, :10] = 1  # everything else VOID
    pred = canvas()
    pred[:10, 2:12] = 1  # 80 px shared, 20 on VOID: IoU = 80 / (100 + 100 - 80 - 20) = 0.8
    assert score(gt, [seg(1, THING)], pred, [seg(1, THING)])["All"]["pq"] == pytest.approx(0.8)


def test_split_segment_matches_its_larger_part_only():
    gt = canvas()
    gt[:10, :20] = 1  # 200 px
    pred = canvas()
    pred[:10, :12] = 1  # 120 px: IoU 0.6, a match
    pred[:10, 12:20] = 2  # 80 px: IoU 0.4, a false positive
    out = score(gt, [seg(1, THING)], pred, [seg(1, THING), seg(2, THING)])
    # PQ = 0.6 / (1 + 0.5 * 1 + 0) = 0.4; SQ 0.6; RQ 1 / 1.5
    assert out["All"]["pq"] == pytest.approx(0.4)
    assert out["All"]["sq"] == pytest.approx(0.6)
    assert out["All"]["rq"] == pytest.approx(2 / 3)


def test_exact_halves_do_not_match():
    gt = canvas()
    gt[:10, :20] = 1
    pred = canvas()
    pred[:10, :10] = 1
    pred[:10, 10:20] = 2  # IoU exactly 0.5 each: not > 0.5
    stat = pq_image(gt, [seg(1, THING)], pred, [seg(1, THING), seg(2, THING)], CATS)
    assert (stat.per_cat[THING].tp, stat.per_cat[THING].fp, stat.per_cat[THING].fn) == (0, 2, 1)


def test_merged_prediction_matches_the_larger_ground_truth():
    gt = canvas()
    gt[:10, :12] = 1  # 120 px
    gt[:10, 12:20] = 2  # 80 px
    pred = canvas()
    pred[:10, :20] = 1  # 200 px: IoU 0.6 with the first, 0.4 with the second
    out = score(gt, [seg(1, THING), seg(2, THING)], pred, [seg(1, THING)])
    # one TP (0.6), one FN: PQ = 0.6 / 1.5
    assert out["All"]["pq"] == pytest.approx(0.4)
    assert out["per_class"]["car"]["rq"] == pytest.approx(2 / 3)


def test_crowd_regions_are_neither_missed_nor_false_positives_for_their_class():
    gt = canvas()
    gt[:10, :10] = 1
    gt[:10, 20:30] = 9  # a crowd of cars
    segs = [seg(1, THING), seg(9, THING, crowd=1)]
    pred = canvas()
    pred[:10, :10] = 1
    pred[:10, 20:28] = 2  # a car on the car crowd: ignored
    out = score(gt, segs, pred, [seg(1, THING), seg(2, THING)])
    assert out["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1}
    pred[:10, 20:28] = 3  # a person there instead: another class's crowd does not excuse it
    stat = pq_image(gt, segs, pred, [seg(1, THING), seg(3, OTHER)], CATS)
    assert stat.per_cat[OTHER].fp == 1 and stat.per_cat[THING].fn == 0
    # PQ averages car (1.0) and person (0: one FP) -> 0.5
    assert summarize(stat, CATS)["All"]["pq"] == pytest.approx(0.5)


def test_void_pixels_leave_the_union_and_excuse_mostly_void_predictions():
    gt = canvas()
    gt[:10, :10] = 1  # 100 px; everything else VOID
    pred = canvas()
    pred[:10, :15] = 1  # 150 px, 50 of them on VOID: IoU = 100 / (150 + 100 - 100 - 50) = 1
    pred[15:, :10] = 2  # 50 px all on VOID: not a false positive
    out = score(gt, [seg(1, THING)], pred, [seg(1, THING), seg(2, THING)])
    assert out["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1}
    gt[15:, 4:10] = 1  # now 30 of that segment's 50 px are not VOID (40% void): a false positive
    gt_segs = [seg(1, THING)]
    stat = pq_image(gt, gt_segs, pred, [seg(1, THING), seg(2, THING)], CATS)
    assert stat.per_cat[THING].fp == 1


def test_stats_accumulate_over_images_and_unseen_classes_are_left_out():
    gt = canvas()
    gt[:10, :10] = 1
    total = PQStat()
    total += pq_image(gt, [seg(1, THING)], gt.copy(), [seg(1, THING)], CATS)
    pred = canvas()
    pred[:10, 2:12] = 1  # IoU 0.8 (20 px on VOID)
    total += pq_image(gt, [seg(1, THING)], pred, [seg(1, THING)], CATS)
    out = summarize(total, CATS)
    # two TPs with IoU 1 and 0.8: PQ = SQ = 0.9; sky and person never seen: n = 1
    assert out["All"]["pq"] == pytest.approx(0.9) and out["All"]["n"] == 1
    assert out["Stuff"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}


def test_png_and_segments_info_must_agree():
    pred = canvas()
    pred[:5, :5] = 4
    with pytest.raises(InvalidInputError, match="not in its segments_info"):
        pq_image(canvas(), [], pred, [seg(1, THING)], CATS)
    with pytest.raises(InvalidInputError, match="not in the predicted PNG"):
        pq_image(canvas(), [], canvas(), [seg(1, THING)], CATS)


def test_rgb2id_is_cocos_encoding():
    rgb = np.array([[[1, 2, 3], [0, 0, 0]]], np.uint8)
    assert rgb2id(rgb).tolist() == [[1 + 256 * 2 + 65536 * 3, 0]]
