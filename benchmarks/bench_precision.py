"""FP32 against FP16 and INT8 on the trained fixtures: accuracy from the quantize gate on the fixture's
held-out validation scenes, latency through ONNX Runtime on real photos, all in one run.

INT8 is calibrated on training-split scenes (``synth`` split "test" would work as well; "val" is the
gate's and is never calibrated on). FP16 runs on the CPU only to measure its accuracy: ONNX Runtime's
CPU kernels are FP32, so an FP16 graph there pays for casts and is not expected to be faster.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from segrt.export.quantize import QuantizeConfig, quantize_bundle

from .bench import BenchConfig, bench_segrt, cache_dir, photos

log = logging.getLogger("segrt")
GOAL_INT8_SPEEDUP = 1.5
GOAL_INT8_AGREEMENT = 0.99
CALIB_SAMPLES = 32


def calibration_folder(size: int) -> Path:
    from . import synth

    out = cache_dir() / f"calib-synthetic-train-{size}"
    if not (out / "images").is_dir():
        synth.write_dataset(out, synth.SynthConfig(count=CALIB_SAMPLES, size=(size, size), split="train", seed=1))
    return out / "images"


def variants(name: str, force: bool = False) -> dict[str, Any]:
    """The fixture's FP32 bundle and its gated FP16 and INT8 variants (cached beside it)."""
    from .fixtures import build_fixture, export_fixture, get_recipe

    recipe = get_recipe(name)
    fixture = build_fixture(recipe)
    fp32 = export_fixture(fixture)
    held_out = fixture.val_dir / "images"
    out: dict[str, Any] = {"fp32": fp32, "val": held_out, "recipe": recipe}
    for precision in ("fp16", "int8"):
        target = fp32.parent / f"bundle-{precision}"
        if force or not (target / "segrt.json").is_file():
            cfg = QuantizeConfig(precision, calib=calibration_folder(recipe.size) if precision == "int8" else None,
                                 samples=CALIB_SAMPLES, eval_images=held_out, min_score=0.0)  # report, never refuse
            quantize_bundle(fp32, target, cfg, force=True)
        out[precision] = target
    return out


def bench_precision(name: str, cfg: BenchConfig) -> dict[str, Any]:
    from segrt.runtime.manifest import read_manifest

    v = variants(name)
    images = photos(cfg.size)
    row: dict[str, Any] = {"fixture": name, "model": f"{v['recipe'].architecture}/{v['recipe'].encoder}",
                           "size": list(cfg.size), "weights": "trained fixture", "precisions": {}}
    for precision in ("fp32", "fp16", "int8"):
        timing = bench_segrt(v[precision], images, replace(cfg, baseline=False))
        gate = read_manifest(v[precision]).quantization.get("gate", {})
        row["precisions"][precision] = {"bundle": str(v[precision]), "segrt": timing,
                                        "agreement_vs_fp32": gate.get("score", 1.0), "gate_images": gate.get("images")}
    e2e = {p: r["segrt"]["stages"]["infer"]["p50"] for p, r in row["precisions"].items()}
    row["int8_speedup"] = e2e["fp32"] / e2e["int8"]
    row["fp16_speedup"] = e2e["fp32"] / e2e["fp16"]
    return row


def markdown_precision(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"Precision variants of the trained fixtures on {m['cpu']} ({result['config']['threads']} threads), "
             f"{m['date']}, onnxruntime {m['onnxruntime']}. Inference p50 on real photos at "
             f"{result['config']['size'][0]}x{result['config']['size'][1]}; agreement: label maps against FP32 on the "
             "fixture's held-out validation scenes.", "",
             "| fixture | precision | infer p50 ms | end to end p50 ms | speedup vs fp32 (infer) | pixel agreement vs fp32 |",
             "|---|---|---|---|---|---|"]
    for row in result["results"]:
        base = row["precisions"]["fp32"]["segrt"]["stages"]["infer"]["p50"]
        for p, r in row["precisions"].items():
            st = r["segrt"]["stages"]
            lines.append(f"| {row['fixture']} ({row['model']}) | {p} | {st['infer']['p50']:.1f} | {st['e2e']['p50']:.1f} | "
                         f"{base / st['infer']['p50']:.2f}x | {r['agreement_vs_fp32']:.4f} |")
    return "\n".join(lines) + "\n"
