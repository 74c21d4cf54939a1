"""Segment Anything latency: segrt against segment-anything's own ``SamPredictor`` and
``SamAutomaticMaskGenerator`` on the same seeded weights, photos and thread count.

Three measurements, each with segment-anything in the same run: the image encoder (``set_image``,
preprocessing included, segrt's embedding cache off), the decoder for one prompt and for a batch of
64 prompts (upscaled to the photo, as ``predict``/``predict_torch`` return them), and automatic mask
generation end to end. Weights are seeded (latency does not depend on their values) and labelled so;
with seeded weights few masks pass the generator's default filters, which is recorded beside it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from segrt.runtime.sam import SamPredictor
from segrt.runtime.sam_amg import SamAutomaticMaskGenerator, build_point_grid

from .bench import BenchConfig, cache_dir, time_ms

log = logging.getLogger("segrt")
SAM_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # native sizes: 512x512 to 427x640
GOAL_ENCODER = 2.0
GOAL_AMG = 3.0
QUICK_SAM_POINTS = 8  # --quick: an 8x8 grid (64 prompts, one decoder batch) for the generator row


def ensure_sam_bundle(variant: str, seed: int = 0) -> Path:
    from segrt.export.sam_export import export_sam

    out = cache_dir() / f"sam-{variant}-seed{seed}"
    if not (out / "segrt.json").is_file():
        log.warning("exporting SAM %s with seeded weights into %s (once)", variant, out)
        export_sam(variant, None, out, seed=seed, force=True)
    return out


def _photos() -> list[np.ndarray]:
    import skimage.data

    return [getattr(skimage.data, n)() for n in SAM_PHOTOS]


def _ratio(torch_ms: dict[str, float], ours_ms: dict[str, float]) -> float:
    return torch_ms["p50"] / ours_ms["p50"]


def bench_sam(variant: str, cfg: BenchConfig, amg_points: int = 32, precisions: tuple[str, ...] = ("fp32",)) -> dict[str, Any]:
    import torch
    from segment_anything import SamAutomaticMaskGenerator as TorchGenerator
    from segment_anything import SamPredictor as TorchPredictor
    from segrt.export.sam_export import build

    bundle = ensure_sam_bundle(variant)
    model, _ = build(variant, None, seed=0)
    torch.set_num_threads(cfg.threads)
    images = _photos()
    ours = SamPredictor(bundle, cfg.device, threads=cfg.threads, cache_bytes=0)
    theirs = TorchPredictor(model)
    # seconds per call: the encoder and the 64-prompt decoder get a fifth of the calls and (at most) one warm-up
    slow = replace(cfg, iters=max(2, cfg.iters // 5), warmup=min(cfg.warmup, 1))
    row: dict[str, Any] = {"model": f"sam/{variant}", "bundle": str(bundle), "weights": "seeded (untrained)",
                           "backend": ours.encoder.name, "photos": list(SAM_PHOTOS)}
    with torch.inference_mode():
        pre = []

        def ours_enc(i: int) -> None:
            ours.set_image(images[i % len(images)])
            pre.append(ours.timings["preprocess"] * 1e3)

        row["encoder"] = {"segrt": time_ms(ours_enc, slow),
                          "torch": time_ms(lambda i: theirs.set_image(images[i % len(images)]), slow)}
        row["encoder"]["segrt_preprocess_ms"] = float(np.median(pre))
        row["encoder"]["speedup"] = _ratio(row["encoder"]["torch"], row["encoder"]["segrt"])
        for precision in [p for p in precisions if p != "fp32"]:
            from segrt.runtime.manifest import read_manifest

            from .bench import precision_variant

            vb = precision_variant(bundle, precision)
            other = SamPredictor(vb, cfg.device, threads=cfg.threads, cache_bytes=0)
            timing = time_ms(lambda i, o=other: o.set_image(images[i % len(images)]), slow)
            gate = read_manifest(vb).quantization["gate"]
            row.setdefault("encoder_variants", {})[precision] = {
                "segrt": timing, "speedup": _ratio(row["encoder"]["torch"], timing), "bundle": str(vb),
                "method": read_manifest(vb).quantization["graphs"]["encoder.onnx"].get("method", "static"),
                "gate": {"metric": gate["metric"], "score": gate["score"], "images": gate["images"]}}
            del other

        image = images[0]
        ours.set_image(image)
        theirs.set_image(image)
        h, w = image.shape[:2]
        point = (np.array([[0.45 * w, 0.4 * h]]), np.array([1]))
        row["decoder_1"] = {"segrt": time_ms(lambda i: ours.predict(*point), cfg),
                            "torch": time_ms(lambda i: theirs.predict(*point), cfg)}
        grid = build_point_grid(8) * np.array([w, h])
        coords, labels = grid[:, None, :], np.ones((64, 1), np.int64)
        t_coords = torch.as_tensor(theirs.transform.apply_coords(coords, (h, w)), dtype=torch.float)
        t_labels = torch.ones(64, 1, dtype=torch.int)
        batch = replace(slow, warmup=1)
        row["decoder_64"] = {"segrt": time_ms(lambda i: ours.predict_batch(coords, labels, return_logits=True), batch),
                             "torch": time_ms(lambda i: theirs.predict_torch(t_coords, t_labels, return_logits=True), batch)}
        for key in ("decoder_1", "decoder_64"):
            row[key]["speedup"] = _ratio(row[key]["torch"], row[key]["segrt"])

        gen = SamAutomaticMaskGenerator(ours, points_per_side=amg_points)
        ref = TorchGenerator(model, points_per_side=amg_points)
        t0 = time.perf_counter()
        masks_ours = gen.generate(image)
        ours_ms = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        masks_ref = ref.generate(image)
        ref_ms = (time.perf_counter() - t0) * 1e3
    row["amg"] = {"points_per_side": amg_points, "image": list(image.shape[:2]), "segrt_ms": ours_ms,
                  "torch_ms": ref_ms, "speedup": ref_ms / ours_ms, "masks_segrt": len(masks_ours),
                  "masks_torch": len(masks_ref), "segrt_stages_ms": {k: v * 1e3 for k, v in gen.timings.items()}}
    return row


def markdown_sam_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | stage | segrt p50 ms | segment-anything p50 ms | speedup | goal |", "|---|---|---|---|---|---|"]
    for row in rows:
        enc = row["encoder"]
        lines.append(f"| {row['model']} | encoder (set_image) | {enc['segrt']['p50']:.0f} | {enc['torch']['p50']:.0f} | "
                     f"{enc['speedup']:.2f}x | {GOAL_ENCODER}x: {'met' if enc['speedup'] >= GOAL_ENCODER else 'NOT met'} |")
        for precision, v in row.get("encoder_variants", {}).items():
            lines.append(f"| {row['model']} | encoder {precision} ({v['method']}; {v['gate']['metric']} "
                         f"{v['gate']['score']:.3f} vs fp32) | {v['segrt']['p50']:.0f} | {enc['torch']['p50']:.0f} | "
                         f"{v['speedup']:.2f}x | {GOAL_ENCODER}x: {'met' if v['speedup'] >= GOAL_ENCODER else 'NOT met'} |")
        for key, what in (("decoder_1", "decoder, 1 prompt"), ("decoder_64", "decoder, 64 prompts")):
            d = row[key]
            lines.append(f"| {row['model']} | {what} | {d['segrt']['p50']:.1f} | {d['torch']['p50']:.1f} | "
                         f"{d['speedup']:.2f}x | |")
        a = row["amg"]
        lines.append(f"| {row['model']} | automatic masks ({a['points_per_side']}² points; {a['masks_segrt']} vs "
                     f"{a['masks_torch']} masks) | {a['segrt_ms']:.0f} | {a['torch_ms']:.0f} | {a['speedup']:.2f}x | "
                     + (f"{GOAL_AMG}x: {'met' if a['speedup'] >= GOAL_AMG else 'NOT met'} |" if a["points_per_side"] == 32
                        else "(the goal is for 32x32 points) |"))
    return lines


def markdown_sam(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"SAM on {m.get('cpu', '?')} ({result['config']['threads']} threads), {m.get('date', '')}; "
             "seeded weights, same weights and photos for both", "", *markdown_sam_rows(result["results"])]
    return "\n".join(lines) + "\n"
