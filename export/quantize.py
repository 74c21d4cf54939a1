"""``segrt quantize``: FP16 and calibrated INT8 variants of a bundle, each behind an accuracy gate.

FP16 is ``fp16.to_fp16`` (ONNX Runtime's float16 converter, sensitive ops kept in FP32). Both start from a
plain FP32 graph: a model that already went through a float16 converter is normalised first
(``graph_normalize``). INT8 is onnxruntime.quantization's static
QDQ quantization (per-channel symmetric int8 weights; uint8 activations for ONNX Runtime's CPU
kernels, or symmetric int8 activations with ``target="tensorrt"``, the form TensorRT consumes as
explicit quantization), calibrated on images put through exactly the runtime's preprocessing; the
range table is cached beside the source bundle so a second build does not recalibrate. The variant is
compared with the FP32 bundle on held-out images; the numbers go into its manifest, and a variant that
loses more than the family's tolerance is refused (exit code 2, nothing written). SAM's ViT encoder on
the CPU is the exception: dynamically quantized, no calibration (see ``to_int8_dynamic``). Needs onnx and
onnxruntime; never torch.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from segrt.runtime.engine import sha256_file
from segrt.runtime.errors import ExportError, InvalidInputError, SegrtError
from segrt.runtime.manifest import Manifest, read_manifest, write_manifest
from segrt.runtime.tasks import task_for

from .bundle import atomic_dir
from .fp16 import to_fp16
from .graph_normalize import constants_to_initializers, normalized_copy
from .models import quant_defaults
from .progress import Progress
from .quant_gate import accuracy_gate, calibration_feeds, load_images
from .spec import QuantDefaults

log = logging.getLogger("segrt")
Target = Literal["fp16", "int8"]
Calibrator = Literal["minmax", "entropy", "percentile"]
Int8Target = Literal["cpu", "tensorrt"]
Int8Tool = Literal["ort", "modelopt"]



@dataclass(frozen=True)
class QuantizeConfig:
    precision: Target
    calib: Path | None = None  # images folder or a video; INT8 only
    samples: int = 32
    calibrator: Calibrator = "minmax"
    exclude: tuple[str, ...] = ()  # node names kept in float
    eval_images: Path | None = None  # held-out images for the gate (default: scikit-image photos)
    min_score: float | None = None  # None: the bundle's task's quantize_min_score
    fp16_io: bool = False
    #: INT8 activations: "cpu" uint8 asymmetric (ONNX Runtime's fast U8S8 kernels; measured 1.9x FP32
    #: here, where int8 symmetric activations ran 0.9x), "tensorrt" int8 symmetric (what TensorRT's
    #: explicit quantization takes). Both read the same cached calibration ranges.
    target: Int8Target = "cpu"
    extra_keep: tuple[str, ...] = field(default=())  # more op types kept in FP32 by FP16
    #: Who places the Q/DQ: ONNX Runtime's quantizer (default), or NVIDIA ModelOpt (TensorRT's form only;
    #: installed separately, see quant_modelopt). Compared in docs/quantize.md.
    int8_tool: Int8Tool = "ort"

    def __post_init__(self) -> None:
        if self.precision not in ("fp16", "int8"):
            raise InvalidInputError(f"--precision must be fp16 or int8; got {self.precision!r}")
        if self.target not in ("cpu", "tensorrt"):
            raise InvalidInputError(f"--target must be cpu or tensorrt; got {self.target!r}")
        if self.int8_tool not in ("ort", "modelopt"):
            raise InvalidInputError(f"--int8-tool must be ort or modelopt; got {self.int8_tool!r}")
        if self.int8_tool == "modelopt" and (self.precision, self.target) != ("int8", "tensorrt"):
            raise InvalidInputError("--int8-tool modelopt writes TensorRT's INT8 form: use it with --precision int8 "
                                    "--target tensorrt")
        if self.int8_tool == "modelopt" and self.calibrator == "percentile":
            raise InvalidInputError("--int8-tool modelopt calibrates with minmax or entropy; got 'percentile'")
        if self.calibrator not in ("minmax", "entropy", "percentile"):
            raise InvalidInputError(f"--calibrator must be minmax, entropy or percentile; got {self.calibrator!r}")
        if self.samples < 1:
            raise InvalidInputError(f"--samples must be >= 1; got {self.samples}")
        if self.min_score is not None and not 0 <= self.min_score <= 1:
            raise InvalidInputError(f"the tolerance must be in [0, 1]; got {self.min_score}")


def model_files(m: Manifest) -> list[str]:
    """The graphs a variant converts: the model, and for SAM the decoder too (kept float by INT8)."""
    return [m.model_file] + ([m.sam.decoder_file] if m.sam else [])


def _cache_key(src: Path, cfg: QuantizeConfig, images: list[str], op_types: list[str] | None) -> str:
    """The calibration cache's name: the model's bytes, the calibrator, the images it saw and the op types
    whose tensors it calibrated (a cache made for fewer op types lacks ranges a wider set needs)."""
    key = f"{sha256_file(src)}{(cfg.calibrator, cfg.samples, images, op_types)!r}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: Iterator[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


#: Per-channel QuantizeLinear/DequantizeLinear (their ``axis`` attribute) exist from opset 13.
QDQ_MIN_OPSET = 13


def _pre_process(src: Path, tmp: Path) -> Path:
    """onnxruntime's recommended pre-quantization pass (shape inference, graph optimisation: Conv+BN
    and similar folds so ranges are calibrated on the tensors that will really be quantized), then an
    opset upgrade to 13 where the graph is older (imported models, e.g. PP-OCR's at opset 12):
    onnxruntime writes per-channel DequantizeLinear with ``axis`` whatever the opset, which an opset-12
    graph cannot hold."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(tmp), skip_symbolic_shape=True)
        prepared = tmp
    except Exception as exc:  # an optimisation, never a reason to fail
        log.warning("quantization pre-processing failed (%s); quantizing the graph as exported", exc)
        tmp.unlink(missing_ok=True)
        prepared = src
    return _upgrade_opset(prepared, tmp)


def _upgrade_opset(path: Path, tmp: Path) -> Path:
    import onnx
    from onnx import version_converter

    head = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in head.opset_import if o.domain in ("", "ai.onnx")), QDQ_MIN_OPSET)
    if opset >= QDQ_MIN_OPSET:
        return path
    try:
        model = version_converter.convert_version(onnx.load(str(path)), QDQ_MIN_OPSET)
    except Exception as exc:  # onnx raises untyped errors for ops it cannot convert
        raise ExportError(f"INT8 needs opset {QDQ_MIN_OPSET} (per-channel DequantizeLinear); converting this "
                          f"opset-{opset} graph failed: {str(exc).splitlines()[0]}") from None
    log.info("opset %d -> %d for per-channel quantization", opset, QDQ_MIN_OPSET)
    onnx.save(model, str(tmp))
    return tmp


def _int8_family_defaults(m: Manifest, graph: Any) -> tuple[list[str], list[str] | None]:
    """Nodes the bundle's family keeps in float, and the op types it quantizes (None: ONNX Runtime's default set):
    the spec's :class:`~.spec.QuantDefaults` (Mask R-CNN: the heads float, Conv only; SAM's encoder on the static
    route: the attention products float, Conv and the weight MatMuls)."""
    q = quant_defaults(m)
    nodes = q.float_nodes(graph) if q.float_nodes else []
    return nodes, list(q.int8_op_types) if q.int8_op_types is not None else None


def to_int8_dynamic(src: Path, dst: Path, cfg: QuantizeConfig, q: QuantDefaults) -> dict[str, Any]:
    """SAM's ViT encoder on the CPU: dynamic quantization (int8 per-channel weights of every MatMul/Gemm with
    weights, activations quantized per run; the attention products stay float). ONNX Runtime's guidance for
    transformers, and the static route cannot calibrate vit_b here: ONNX Runtime's calibration session needs
    12-14 GB for one 1024x1024 sample and grows with each (OOM-killed at 24 GB with 4). Measured on vit_b:
    encoder 4.7 s -> 2.7 s on 2 cores. TensorRT cannot run it (target=tensorrt takes the static QDQ route)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    prepared = _pre_process(src, dst.with_name(f".{dst.name}.pre.onnx"))
    family = q.float_nodes(onnx.load(str(prepared), load_external_data=False)) if q.float_nodes else []
    try:
        quantize_dynamic(str(prepared), str(dst), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_exclude=sorted(set(cfg.exclude) | set(family)))
    except (ValueError, RuntimeError, KeyError) as exc:  # onnxruntime.quantization raises untyped errors
        raise ExportError(f"dynamic INT8 quantization failed: {str(exc).splitlines()[0]}") from None
    finally:
        if prepared != src:
            prepared.unlink(missing_ok=True)
    return {"method": "dynamic", "target": cfg.target, "op_types_quantized": ["MatMul", "Gemm"],
            "excluded_nodes": list(cfg.exclude) + [f"{len(family)} family defaults: {q.int8_note}"],
            "format": "MatMulInteger/DynamicQuantizeLinear, per-channel symmetric int8 weights, activations "
                      "quantized at run time (ONNX Runtime CPU; no calibration)"}


def to_int8(src: Path, dst: Path, cfg: QuantizeConfig, bundle: Path, m: Manifest) -> dict[str, Any]:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if cfg.calib is None:
        raise InvalidInputError("int8 needs --calib IMAGES_DIR|VIDEO (a few dozen images like the ones it will see)")
    names, images = load_images(cfg.calib, cfg.samples)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibrator]
    import onnx

    prepared = _pre_process(src, dst.with_name(f".{dst.name}.pre.onnx"))
    trt = cfg.target == "tensorrt"
    family, op_types = _int8_family_defaults(m, onnx.load(str(prepared), load_external_data=False))
    cache = bundle / "calibration" / f"{Path(m.model_file).stem}-{_cache_key(src, cfg, names, op_types)}.json"
    cache.parent.mkdir(exist_ok=True)
    hit = cache.is_file()
    log.info("%s calibration ranges %s", "reusing" if hit else "computing", cache)
    try:
        quantize_static(
            str(prepared), str(dst), None if hit else _Reader(calibration_feeds(bundle, m, images)),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8 if trt else QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=op_types, nodes_to_exclude=sorted(set(cfg.exclude) | set(family)),
            calibrate_method=method, calibration_cache_path=str(cache),
            # Not "CalibMaxIntermediateOutputs": onnxruntime 1.32's MinMax collector drops the samples it
            # holds at that limit without merging their ranges ("No data is collected." with 1).
            extra_options={"ActivationSymmetric": trt, "WeightSymmetric": True},
        )
    except SegrtError:
        raise
    except Exception as exc:  # onnxruntime.quantization raises untyped errors of many kinds
        hint = (" (entropy and percentile need tensors of one shape in every image; minmax does not)"
                if cfg.calibrator != "minmax" and "inhomogeneous" in str(exc) else "")
        raise ExportError(f"INT8 calibration ({cfg.calibrator}) failed: {str(exc).splitlines()[0]}{hint}") from None
    finally:
        if prepared != src:
            prepared.unlink(missing_ok=True)
    return {"calibrator": cfg.calibrator, "samples": len(images), "calibration_images": names[:8] + (["..."] if len(names) > 8 else []),
            "calibration_cache": str(cache.relative_to(bundle)), "calibration_reused": hit,
            "excluded_nodes": list(cfg.exclude) + ([f"{len(family)} family defaults: {quant_defaults(m).int8_note}"]
                                                   if family else []),
            "op_types_quantized": op_types or "ONNX Runtime's default set", "method": "static", "target": cfg.target,
            "format": "QDQ, per-channel symmetric int8 weights, " + ("symmetric int8 activations (TensorRT)" if trt
                                                                       else "asymmetric uint8 activations (ONNX Runtime CPU)")}


def _int8_modelopt(src: Path, dst: Path, cfg: QuantizeConfig, bundle: Path, m: Manifest) -> dict[str, Any]:
    """ModelOpt gets the graph the ORT tool quantizes (``_pre_process``: BatchNorm folded, opset 13+; Constant
    weights made initializers) and the same family defaults, so the two differ only in placement and calibration."""
    import onnx

    from .onnx_io import save_onnx
    from .quant_modelopt import check_available, to_int8_modelopt

    check_available()
    prepared = _pre_process(src, dst.with_name(f".{dst.name}.pre.onnx"))
    staged = dst.with_name(f".{dst.name}.modelopt-in.onnx")
    try:
        model = onnx.load(str(prepared))
        constants_to_initializers(model)
        save_onnx(model, staged)
        family = _int8_family_defaults(m, model)
        return to_int8_modelopt(staged, dst, cfg, bundle, m, family)
    finally:
        for path in {prepared, staged} - {src}:
            path.unlink(missing_ok=True)
            path.with_name(f"{path.name}.data").unlink(missing_ok=True)


def _int8(bundle: Path, tmp: Path, cfg: QuantizeConfig, m: Manifest) -> dict[str, Any]:
    """INT8 of the model file, quantized from its plain-FP32 form (normalised first if it was mixed precision)."""
    src, dst = bundle / m.model_file, tmp / m.model_file
    plain, normalized = normalized_copy(src, dst.with_name(f".{dst.name}.fp32.onnx"))
    try:
        if cfg.int8_tool == "modelopt":
            facts = _int8_modelopt(plain, dst, cfg, bundle, m)
        elif quant_defaults(m).cpu_int8 == "dynamic" and cfg.target == "cpu":
            facts = {"tool": "ort", **to_int8_dynamic(plain, dst, cfg, quant_defaults(m))}
        else:
            facts = {"tool": "ort", **to_int8(plain, dst, cfg, bundle, m)}
    finally:
        if plain != src:
            plain.unlink(missing_ok=True)
            plain.with_name(f"{plain.name}.data").unlink(missing_ok=True)
    return {**facts, **({"normalized_from_mixed_precision": normalized} if normalized else {})}


def quantize_bundle(bundle: Path, out: Path, cfg: QuantizeConfig, *, force: bool = False) -> Manifest:
    """Write a variant bundle at ``out``: converted graphs, the same manifest with ``precision`` and
    ``quantization`` (what was kept in float, calibration, gate numbers). Refused below tolerance."""
    m = read_manifest(bundle)
    if m.precision != "fp32":
        raise ExportError(f"{bundle} is already {m.precision}; quantize the FP32 bundle it came from")
    if Path(out).resolve() == Path(bundle).resolve():
        raise InvalidInputError("--out must be a new folder; the FP32 bundle is the gate's reference")
    minimum = cfg.min_score if cfg.min_score is not None else task_for(m.task).quantize_min_score
    if minimum is None:
        raise InvalidInputError(f"{m.task} bundles have no default tolerance; pass --min-score")
    progress = Progress(f"{cfg.precision} variant of {bundle.name}")
    with atomic_dir(out, force=force) as tmp:
        for name in [p.name for p in bundle.iterdir() if p.is_file()]:
            if name not in model_files(m) and not name.startswith(tuple(model_files(m))):
                shutil.copy2(bundle / name, tmp / name)
        facts: dict[str, Any] = {}
        progress(f"converting {m.model_file}" + (" (calibrating first)" if cfg.precision == "int8" else ""))
        if cfg.precision == "fp16":
            facts[m.model_file] = to_fp16(bundle / m.model_file, tmp / m.model_file, cfg, quant_defaults(m))
        else:
            facts[m.model_file] = _int8(bundle, tmp, cfg, m)
        for f in model_files(m)[1:]:
            # SAM's decoder stays FP32: it decides mask edges, and the FP16 converter leaves
            # a float/float16 Mul in it that ONNX Runtime refuses to load.
            shutil.copy2(bundle / f, tmp / f)
            facts[f] = {"kept": "fp32"}
        variant = Manifest.from_dict({**m.to_dict(), "precision": cfg.precision})
        write_manifest(tmp, variant)
        progress("accuracy gate against the fp32 bundle")
        gate = accuracy_gate(bundle, tmp, cfg.eval_images, minimum)
        log.info("accuracy gate (%s vs fp32): %s", cfg.precision, {k: v for k, v in gate.items() if k != "per_image"})
        record = {"precision": cfg.precision, "source_sha256": sha256_file(bundle / m.model_file),
                  "graphs": facts, "gate": gate}
        variant = Manifest.from_dict({**variant.to_dict(), "quantization": record})
        write_manifest(tmp, variant)
        if not gate["passed"]:
            raise ExportError(f"{cfg.precision} variant fails the accuracy gate: {gate['metric']} {gate['score']:.4f} "
                              f"< {minimum} on {gate['images']} held-out images; bundle not written "
                              "(exclude sensitive nodes with --exclude, or change the tolerance)")
        progress(f"writing the bundle to {out}")
    progress("done")
    return variant
