"""FP32 against FP16 and INT8 on the trained fixtures: accuracy from the quantize gate on the fixture's
held-out validation scenes, latency through ONNX Runtime on real photos, all in one run.

INT8 is calibrated on training-split scenes (``synth`` split "test" would work as well; "val" is the
gate's and is never calibrated on). FP16 runs on the CPU only to measure its accuracy: ONNX Runtime's
CPU kernels are FP32, so an FP16 graph there pays for casts and is not expected to be faster.

All precisions of one fixture are timed in ONE interleave (:func:`benchmarks.timing.pair_sides`): segrt
FP32, FP16 and INT8, PyTorch FP32 eager, and OpenVINO on the same INT8 QDQ graph, each round calling each
side once on the same photo. Every ratio is then a median of same-round pairs: a precision's speedup over
FP32 (infer stage, as before), its ratio against PyTorch FP32 (end to end) and OpenVINO's INT8 against
segrt's INT8. Memory and cold start are measured per side before the rounds, as in ``segrt bench``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from segrt.export.quantize import QuantizeConfig, quantize_bundle

from . import peers
from .bench import BenchConfig, add_side, build_peer, cache_dir, photos, segrt_semantic
from .pairs import fmt_ratio
from .timing import Side, pair_ratio, pair_sides

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


PRECISIONS = ("fp32", "fp16", "int8")


def _sides(v: dict[str, Any], images: list[Any], cfg: BenchConfig) -> tuple[dict[str, Side], dict[str, str]]:
    sides: dict[str, Side] = {}
    notes: dict[str, str] = {}
    for precision in PRECISIONS:
        sides[precision], seg = segrt_semantic(v[precision], images, cfg)
        if precision == "int8" and cfg.engine_peers and sides["int8"].info["backend"] == "onnxruntime-cpu":
            add_side(sides, notes, "openvino_int8", build_peer(
                lambda s=seg: peers.semantic_engine("openvino", s, images, cfg.batch, cfg.threads), cfg))
    if cfg.baseline:
        add_side(sides, notes, "torch", build_peer(
            lambda: peers.semantic_torch(v["fp32"], images, cfg.batch, cfg.threads, cfg.torch_device), cfg))
    return sides, notes


def bench_precision(name: str, cfg: BenchConfig) -> dict[str, Any]:
    v = variants(name)
    return precision_row(name, f"{v['recipe'].architecture}/{v['recipe'].encoder}", v, cfg)


def precision_row(name: str, model: str, v: dict[str, Any], cfg: BenchConfig) -> dict[str, Any]:
    """One fixture's row from its bundles ``v[precision]`` (``v["fp32"]`` the one PyTorch rebuilds)."""
    from segrt.runtime.manifest import read_manifest

    images = photos(cfg.size)
    row: dict[str, Any] = {"fixture": name, "model": model, "size": list(cfg.size), "weights": "trained fixture",
                           "precisions": {}}
    sides, notes = _sides(v, images, cfg)
    paired = pair_sides(sides, "fp32", rounds=cfg.iters, warmup=cfg.warmup, seconds=cfg.seconds)
    row["pairing"] = {k: paired[k] for k in ("rounds", "order", "reference")}
    for precision in PRECISIONS:
        gate = read_manifest(v[precision]).quantization.get("gate", {})
        entry = {"bundle": str(v[precision]), "segrt": {**sides[precision].info, "stages": paired["sides"][precision]},
                 "agreement_vs_fp32": gate.get("score", 1.0), "gate_images": gate.get("images"),
                 "pairs": {"fp32_infer": pair_ratio(paired, "fp32", precision, "infer")}}
        if "torch" in sides:
            entry["pairs"]["torch"] = pair_ratio(paired, "torch", precision)
            entry["speedup_vs_torch"] = entry["pairs"]["torch"]["median"]
        row["precisions"][precision] = entry
    for key in ("torch", "openvino_int8"):
        if key in sides:
            row[key] = {**sides[key].info, "stages": paired["sides"][key]}
    if "openvino_int8" in sides:
        row["openvino_int8"]["pair_vs_segrt_int8"] = pair_ratio(paired, "openvino_int8", "int8")
    row |= {f"{k}_skipped": note for k, note in notes.items()}
    row["int8_speedup"] = row["precisions"]["int8"]["pairs"]["fp32_infer"]["median"]
    row["fp16_speedup"] = row["precisions"]["fp16"]["pairs"]["fp32_infer"]["median"]
    return row


def markdown_precision(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"Precision variants of the trained fixtures on {m['cpu']} ({result['config']['threads']} threads), "
             f"{m['date']}, onnxruntime {m['onnxruntime']}. Inference p50 on real photos at "
             f"{result['config']['size'][0]}x{result['config']['size'][1]}; all precisions and PyTorch FP32 in one "
             "interleave, ratios are medians of same-round pairs [quartiles]; agreement: label maps against FP32 on "
             "the fixture's held-out validation scenes.", "",
             "| fixture | precision | infer p50 ms | end to end p50 ms | speedup vs fp32 (infer) | vs PyTorch FP32 (e2e) "
             "| pixel agreement vs fp32 |",
             "|---|---|---|---|---|---|---|"]
    notes = []
    for row in result["results"]:
        for p, r in row["precisions"].items():
            st = r["segrt"]["stages"]
            vs_torch = fmt_ratio(r["pairs"]["torch"]) if "torch" in r["pairs"] else "-"
            lines.append(f"| {row['fixture']} ({row['model']}) | {p} | {st['infer']['p50']:.1f} | {st['e2e']['p50']:.1f} | "
                         f"{fmt_ratio(r['pairs']['fp32_infer'])} | {vs_torch} | {r['agreement_vs_fp32']:.4f} |")
        if "openvino_int8" in row:
            ov = row["openvino_int8"]
            notes.append(f"{row['fixture']}: OpenVINO on the same INT8 graph, e2e p50 {ov['stages']['e2e']['p50']:.1f} ms, "
                         f"{fmt_ratio(ov['pair_vs_segrt_int8'])} segrt INT8's time ({ov['backend']})")
        notes += [f"{row['fixture']}: {k.removesuffix('_skipped')} skipped: {v}" for k, v in row.items()
                  if k.endswith("_skipped")]
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else [])) + "\n"
