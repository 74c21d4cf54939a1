"""Segment Anything latency: segrt against segment-anything's own ``SamPredictor`` and
``SamAutomaticMaskGenerator`` on the same seeded weights, photos and thread count.

Every comparison is a run of interleaved pairs (:mod:`benchmarks.pairs`): segrt's call and
segment-anything's alternate on the same input, and ``speedup`` is the median of the per-pair ratios
(segment-anything ms / segrt ms) with its quartiles and range. The stages: the image encoder
(``set_image``, preprocessing included, segrt's embedding cache off) and its FP16/INT8 variants, each
paired with segment-anything's encoder; the decoder for one prompt and for a batch of 64 (upscaled to the
photo, as ``predict``/``predict_torch`` return them); and automatic mask generation end to end, twice:

- ``default``: segment-anything's default filters. With seeded weights no mask survives them.
- ``relaxed``: :data:`AMG_RELAXED` on both sides, so that masks reach NMS and COCO RLE (output_mode
  ``coco_rle`` on both sides). The seeded vit_b's masks all span the whole photo (its logits are noise
  around 0), so box NMS at 0.7 keeps one of them; ``box_nms_thresh=1.0`` keeps every candidate while NMS
  still runs over them all. ``masks_reach_nms_ok`` checks that both sides return at least
  :data:`AMG_MIN_MASKS`; ``mask_agreement`` matches the two sides' RLEs by IoU.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from segrt.runtime.sam import SamPredictor
from segrt.runtime.sam_amg import SamAutomaticMaskGenerator, build_point_grid

from .bench import BenchConfig, cache_dir
from .isolated import in_child
from .pairs import fmt_ratio, interleave, timed_side

log = logging.getLogger("segrt")
SAM_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # native sizes: 512x512 to 427x640
GOAL_ENCODER = 2.0
GOAL_AMG = 3.0
#: --quick: the default-threshold generator row on an 8x8 grid (64 prompts, one decoder batch); the relaxed
#: row stays at 32x32 points (one 32x32 pair is ~20 s for segrt and ~140 s for segment-anything on 2 cores)
QUICK_SAM_POINTS = 8
#: Generator filters relaxed equally on both sides (see the module docstring): every candidate whose predicted
#: IoU passes reaches NMS, and every one NMS keeps is upscaled and RLE-encoded.
AMG_RELAXED = {"pred_iou_thresh": 0.05, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
AMG_DEFAULT = {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "box_nms_thresh": 0.7}  # segment-anything's
AMG_MIN_MASKS = 50
AMG_OUTPUT = "coco_rle"


def ensure_sam_bundle(variant: str, seed: int = 0) -> Path:
    from segrt.export.sam_export import export_sam

    out = cache_dir() / f"sam-{variant}-seed{seed}"
    if not _current(out):
        log.warning("exporting SAM %s with seeded weights into %s (once)", variant, out)
        in_child(export_sam, variant, None, out, seed=seed, force=True)
    return out


def _current(bundle: Path) -> bool:
    """The cached bundle exists and carries the encoder's FLOP count (a bundle exported before the manifest's
    ``compute`` section gives the encoder row no limit: it is exported again)."""
    from segrt.runtime.manifest import read_manifest

    return (bundle / "segrt.json").is_file() and "encoder.onnx" in read_manifest(bundle).compute


def _photos() -> list[np.ndarray]:
    import skimage.data

    return [getattr(skimage.data, n)() for n in SAM_PHOTOS]


def paired(ours: Any, theirs: Any, cfg: BenchConfig) -> dict[str, Any]:
    """``ours(i)`` and ``theirs(i)`` in interleaved pairs (cfg's rounds or seconds, warm-up): each side's
    percentiles, the pair ratios (segment-anything / segrt) and ``speedup``, their median."""
    res = interleave({"segrt": timed_side(ours), "torch": timed_side(theirs)}, reference="segrt",
                     rounds=cfg.iters, warmup=cfg.warmup, seconds=cfg.seconds)
    pairs = res["ratios"]["torch"]
    return {"segrt": res["sides"]["segrt"]["e2e"], "torch": res["sides"]["torch"]["e2e"], "pairs": pairs,
            "speedup": pairs["median"]}


def bench_sam(variant: str, cfg: BenchConfig, amg_points: int = 32, precisions: tuple[str, ...] = ("fp32",),
              amg_rounds: int = 2, default_amg_points: int | None = None, amg_warmup: int | None = None
              ) -> dict[str, Any]:
    """One row of SAM stages; the generator rows take ``amg_rounds`` pairs after ``amg_warmup`` warm-up pairs
    (default one, none with ``amg_rounds`` 1; the encoder and decoder rows before them have warmed both sides).
    The relaxed generator row runs at ``amg_points``, the default one at ``default_amg_points`` (default the
    same). The 64-prompt decoder takes half the pairs of ``cfg`` (at least the encoder's)."""
    import torch
    from segment_anything import SamPredictor as TorchPredictor
    from segrt.export.sam_export import build

    bundle = ensure_sam_bundle(variant)
    model, _ = build(variant, None, seed=0)
    torch.set_num_threads(cfg.threads)
    images = _photos()
    ours = SamPredictor(bundle, cfg.device, threads=cfg.threads, cache_bytes=0)
    theirs = TorchPredictor(model)
    # seconds per call: the encoder and the 64-prompt decoder get a fifth of the pairs and (at most) one warm-up
    slow = replace(cfg, iters=max(2, cfg.iters // 5), warmup=min(cfg.warmup, 1))
    row: dict[str, Any] = {"model": f"sam/{variant}", "bundle": str(bundle), "weights": "seeded (untrained)",
                           "backend": ours.encoder.name, "photos": list(SAM_PHOTOS), "timing": "interleaved pairs"}
    with torch.inference_mode():
        row["encoder"] = _encoder(ours, theirs, images, slow)
        for precision in [p for p in precisions if p != "fp32"]:
            row.setdefault("encoder_variants", {})[precision] = _encoder_variant(bundle, precision, theirs, images, slow)
        row.update(_decoders(ours, theirs, images[0], cfg, replace(slow, iters=max(slow.iters, cfg.iters // 2),
                                                                   warmup=1)))
        if amg_warmup is None:
            amg_warmup = min(cfg.warmup, 1) if amg_rounds > 1 else 0
        gen_cfg = replace(cfg, iters=amg_rounds, warmup=amg_warmup, seconds=None)
        row["amg"] = [generator_row(ours, model, images[0], "default", default_amg_points or amg_points, AMG_DEFAULT,
                                    gen_cfg),
                      generator_row(ours, model, images[0], "relaxed", amg_points, AMG_RELAXED, gen_cfg)]
    row["amg"][0]["photo"] = row["amg"][1]["photo"] = SAM_PHOTOS[0]
    return row


def _encoder(ours: SamPredictor, theirs: Any, images: list[np.ndarray], cfg: BenchConfig) -> dict[str, Any]:
    pre: list[float] = []

    def ours_enc(i: int) -> None:
        ours.set_image(images[i % len(images)])
        pre.append(ours.timings["preprocess"] * 1e3)

    enc = paired(ours_enc, lambda i: theirs.set_image(images[i % len(images)]), cfg)
    return enc | {"segrt_preprocess_ms": float(np.median(pre))}


def _encoder_variant(bundle: Path, precision: str, theirs: Any, images: list[np.ndarray], cfg: BenchConfig
                     ) -> dict[str, Any]:
    """An FP16/INT8 variant's encoder paired with segment-anything's (FP32) encoder."""
    from segrt.runtime.manifest import read_manifest

    from .bench import precision_variant

    vb = precision_variant(bundle, precision)
    other = SamPredictor(vb, cfg.device, threads=cfg.threads, cache_bytes=0)
    timing = paired(lambda i: other.set_image(images[i % len(images)]),
                    lambda i: theirs.set_image(images[i % len(images)]), cfg)
    quant = read_manifest(vb).quantization
    gate = quant["gate"]
    return timing | {"bundle": str(vb), "method": quant["graphs"]["encoder.onnx"].get("method", "static"),
                     "gate": {"metric": gate["metric"], "score": gate["score"], "images": gate["images"]}}


def _decoders(ours: SamPredictor, theirs: Any, image: np.ndarray, cfg: BenchConfig, batch: BenchConfig
              ) -> dict[str, Any]:
    """The decoder for one point and for 64 points in one call, on one photo's embedding."""
    import torch

    ours.set_image(image)
    theirs.set_image(image)
    h, w = image.shape[:2]
    point = (np.array([[0.45 * w, 0.4 * h]]), np.array([1]))
    grid = build_point_grid(8) * np.array([w, h])
    coords, labels = grid[:, None, :], np.ones((64, 1), np.int64)
    t_coords = torch.as_tensor(theirs.transform.apply_coords(coords, (h, w)), dtype=torch.float)
    t_labels = torch.ones(64, 1, dtype=torch.int)
    return {"decoder_1": paired(lambda i: ours.predict(*point), lambda i: theirs.predict(*point), cfg),
            "decoder_64": paired(lambda i: ours.predict_batch(coords, labels, return_logits=True),
                                 lambda i: theirs.predict_torch(t_coords, t_labels, return_logits=True), batch)}


def generator_row(ours: SamPredictor, model: Any, image: np.ndarray, setting: str, points: int,
                  thresholds: dict[str, float], cfg: BenchConfig, outputs: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """segrt's generator and segment-anything's on the same photo every pair, same ``thresholds``; each
    side's mask count (from the last call), segrt's stages and the two sides' RLE agreement. ``outputs``, if
    given, receives the last call's records of each side (``"segrt"``, ``"torch"``)."""
    from segment_anything import SamAutomaticMaskGenerator as TorchGenerator

    kw = {"points_per_side": points, "output_mode": AMG_OUTPUT, **thresholds}
    gen, ref = SamAutomaticMaskGenerator(ours, **kw), TorchGenerator(model, **kw)
    out: dict[str, Any] = {} if outputs is None else outputs
    stages: list[dict[str, float]] = []

    def ours_call(i: int) -> None:
        out["segrt"] = gen.generate(image)
        stages.append({k: v * 1e3 for k, v in gen.timings.items()})

    def ref_call(i: int) -> None:
        out["torch"] = ref.generate(image)

    timing = paired(ours_call, ref_call, cfg)
    n_ours, n_ref = len(out["segrt"]), len(out["torch"])
    return {"setting": setting, "points_per_side": points, "output_mode": AMG_OUTPUT, "thresholds": dict(thresholds),
            "image": list(image.shape[:2]), **timing, "masks_segrt": n_ours, "masks_torch": n_ref,
            "masks_reach_nms_ok": min(n_ours, n_ref) >= AMG_MIN_MASKS, "min_masks": AMG_MIN_MASKS,
            "mask_agreement": rle_agreement(out["segrt"], out["torch"]),
            "segrt_stages_ms": {k: float(np.median([s[k] for s in stages])) for k in stages[0]}}


def rle_agreement(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each segment-anything mask's best IoU among segrt's (COCO RLEs, pycocotools): how many segrt masks
    are byte-identical RLEs of one of theirs, the lowest best IoU and the share matched at IoU >= 0.9."""
    from pycocotools import mask as mask_utils

    if not ours or not theirs:
        return {"identical_rles": 0, "min_best_iou": None, "matched_0.9": None}
    a, b = [r["segmentation"] for r in ours], [r["segmentation"] for r in theirs]
    iou = mask_utils.iou(a, b, [0] * len(b))  # (len(ours), len(theirs))
    best = np.asarray(iou).max(axis=0)
    identical = len({s["counts"] for s in a} & {s["counts"] for s in b})
    return {"identical_rles": identical, "min_best_iou": float(best.min()), "matched_0.9": float((best >= 0.9).mean())}


def _goal(speedup: float, goal: float) -> str:
    return f"{goal}x: {'met' if speedup >= goal else 'NOT met'}"


def _cells(stage: dict[str, Any], digits: int) -> str:
    """``p50 (p90 / p99)`` of each side, then the median pair ratio [quartiles]."""
    side = lambda s: f"{s['p50']:.{digits}f} ({s['p90']:.{digits}f} / {s['p99']:.{digits}f})"  # noqa: E731
    return f"{side(stage['segrt'])} | {side(stage['torch'])} | {fmt_ratio(stage['pairs'])} ({stage['pairs']['pairs']})"


def _amg_line(model: str, a: dict[str, Any]) -> str:
    t = a["thresholds"]
    what = (f"automatic masks, {a['setting']} ({a['points_per_side']}² points; iou {t['pred_iou_thresh']}, "
            f"stability {t['stability_score_thresh']}, nms {t['box_nms_thresh']}; {a['masks_segrt']} vs "
            f"{a['masks_torch']} masks{'' if a['masks_reach_nms_ok'] or a['setting'] == 'default' else ', < 50'})")
    goal = _goal(a["speedup"], GOAL_AMG) if a["points_per_side"] == 32 else "(the goal is for 32x32 points)"
    return f"| {model} | {what} | {_cells(a, 0)} | {goal} |"


def markdown_sam_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | stage | segrt p50 (p90 / p99) ms | segment-anything p50 (p90 / p99) ms | speedup: median pair "
             "ratio [q1-q3] (pairs) | goal |", "|---|---|---|---|---|---|"]
    for row in rows:
        enc, m = row["encoder"], row["model"]
        lines.append(f"| {m} | encoder (set_image) | {_cells(enc, 0)} | {_goal(enc['speedup'], GOAL_ENCODER)} |")
        for precision, v in row.get("encoder_variants", {}).items():
            lines.append(f"| {m} | encoder {precision} ({v['method']}; {v['gate']['metric']} {v['gate']['score']:.3f} "
                         f"vs fp32) | {_cells(v, 0)} | {_goal(v['speedup'], GOAL_ENCODER)} |")
        for key, what in (("decoder_1", "decoder, 1 prompt"), ("decoder_64", "decoder, 64 prompts")):
            lines.append(f"| {m} | {what} | {_cells(row[key], 1)} | |")
        lines += [_amg_line(m, a) for a in row["amg"]]
    return lines


def markdown_sam(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"SAM on {m.get('cpu', '?')} ({result['config']['threads']} threads), {m.get('date', '')}; "
             "seeded weights, same weights and photos for both; interleaved pairs, speedup = median pair ratio",
             "", *markdown_sam_rows(result["results"])]
    return "\n".join(lines) + "\n"
