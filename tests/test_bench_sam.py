"""bench_sam's generator rows on the reduced seeded SAM: the relaxed row's masks really reach NMS and RLE on
both sides (>= 50 each), the row carries interleaved-pair statistics, and segrt's masks are
segment-anything's (RLEs decoded and matched by IoU, independently of the row's own agreement figures)."""

from __future__ import annotations

import numpy as np
import pytest
from segrt.benchmarks.bench import BenchConfig
from segrt.benchmarks.bench_sam import (
    AMG_MIN_MASKS,
    AMG_OUTPUT,
    AMG_RELAXED,
    generator_row,
    markdown_sam_rows,
    rle_agreement,
)
from segrt.runtime import SamPredictor

pytestmark = pytest.mark.slow
#: 5x5 points (75 candidates, every one kept by the relaxed filters on the tiny model): the fewest above 50 masks,
#: so segment-anything's generator (it upscales every candidate) stays a few seconds per call
POINTS = 5


@pytest.fixture(scope="module")
def relaxed(sam_tiny, photos):
    """The relaxed generator row on the astronaut (2 interleaved pairs) and both sides' last COCO-RLE records."""
    outputs: dict = {}
    row = generator_row(SamPredictor(sam_tiny.bundle, "cpu"), sam_tiny.model, photos["astronaut"], "relaxed", POINTS,
                        AMG_RELAXED, BenchConfig(iters=2, warmup=0, threads=2), outputs)
    return row, outputs["segrt"], outputs["torch"]


def _decode(records: list[dict]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return np.stack([mask_utils.decode(r["segmentation"]).astype(bool) for r in records])


def test_relaxed_masks_match_segment_anything(relaxed) -> None:
    row, ours, theirs = relaxed
    assert min(len(ours), len(theirs)) >= AMG_MIN_MASKS
    assert abs(len(ours) - len(theirs)) <= 0.02 * len(theirs)
    assert ours[0]["segmentation"]["size"] == list(row["image"])  # COCO RLE of the whole photo
    a, b = _decode(ours), _decode(theirs)
    inter = a.reshape(len(a), -1).astype(np.float32) @ b.reshape(len(b), -1).astype(np.float32).T
    union = a.sum(axis=(1, 2))[:, None] + b.sum(axis=(1, 2))[None, :] - inter
    iou = inter / np.maximum(union, 1)
    best = iou.max(axis=0)  # each of segment-anything's masks: its best segrt match
    assert (best >= 0.9).mean() >= 0.98 and best.min() >= 0.5
    # matched masks are the same records: predicted IoU and prompt point
    for j, i in enumerate(iou.argmax(axis=0)):
        if best[j] >= 0.9:
            assert abs(ours[i]["predicted_iou"] - theirs[j]["predicted_iou"]) < 1e-3
            assert ours[i]["point_coords"] == theirs[j]["point_coords"]
    # the row's agreement figures are this computation's
    agree = row["mask_agreement"]
    assert agree == rle_agreement(ours, theirs)
    assert agree["min_best_iou"] == pytest.approx(float(best.min()), abs=1e-6)
    assert agree["matched_0.9"] == pytest.approx(float((best >= 0.9).mean()))
    identical = {r["segmentation"]["counts"] for r in ours} & {r["segmentation"]["counts"] for r in theirs}
    assert agree["identical_rles"] == len(identical) >= 0.5 * len(theirs)


def test_relaxed_generator_row_has_pairs_and_masks(relaxed) -> None:
    row, ours, theirs = relaxed
    assert row["masks_reach_nms_ok"] is True
    assert (row["masks_segrt"], row["masks_torch"]) == (len(ours), len(theirs))
    assert row["thresholds"] == AMG_RELAXED and row["points_per_side"] == POINTS and row["output_mode"] == AMG_OUTPUT
    pairs = row["pairs"]
    assert pairs["pairs"] == 2 and pairs["min"] <= pairs["q1"] <= pairs["median"] <= pairs["q3"] <= pairs["max"]
    assert row["speedup"] == pairs["median"] > 0
    for side in ("segrt", "torch"):
        assert 0 < row[side]["p50"] <= row[side]["p90"] <= row[side]["p99"]
    assert set(row["segrt_stages_ms"]) == {"encoder", "decoder", "postprocess"}
    assert sum(row["segrt_stages_ms"].values()) <= row["segrt"]["p99"] * 1.01  # stages lie inside the call


def test_markdown_rows_show_the_pair_ratio(relaxed) -> None:
    """A row's Markdown cell is 'median [q1-q3] (pairs)', with each side's p50 (p90 / p99)."""
    amg = relaxed[0]
    stage = {k: amg[k] for k in ("segrt", "torch", "pairs", "speedup")}
    lines = markdown_sam_rows([{"model": "sam/tiny", "encoder": stage, "decoder_1": stage, "decoder_64": stage,
                                "amg": [amg]}])
    p = amg["pairs"]
    assert f"{p['median']:.2f}x [{p['q1']:.2f}-{p['q3']:.2f}] (2)" in lines[2]
    assert f"{amg['segrt']['p50']:.0f} ({amg['segrt']['p90']:.0f} / {amg['segrt']['p99']:.0f})" in lines[2]
    assert lines[-1].startswith(f"| sam/tiny | automatic masks, relaxed ({POINTS}² points; iou 0.05, stability 0.0, "
                                f"nms 1.0; {len(relaxed[1])} vs {len(relaxed[2])} masks)")
    assert "the goal is for 32x32" in lines[-1]
