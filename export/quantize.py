"""``segrt quantize``: FP16 and calibrated INT8 variants of a bundle, each behind an accuracy gate.

FP16 uses onnxconverter-common with numerically sensitive ops kept in FP32 (LayerNorm, Softmax,
reductions, and for SAM's encoder the attention products). INT8 is onnxruntime.quantization's static
QDQ quantization (per-channel symmetric int8 weights; uint8 activations for ONNX Runtime's CPU
kernels, or symmetric int8 activations with ``target="tensorrt"``, the form TensorRT consumes as
explicit quantization), calibrated on images put through exactly the runtime's preprocessing; the
range table is cached beside the source bundle so a second build does not recalibrate. The variant is
compared with the FP32 bundle on held-out images; the numbers go into its manifest, and a variant that
loses more than the family's tolerance is refused (exit code 2, nothing written). Needs onnx,
onnxruntime and onnxconverter-common; never torch.
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
from segrt.runtime.errors import ExportError, InvalidInputError
from segrt.runtime.manifest import Manifest, read_manifest, write_manifest

from .bundle import atomic_dir
from .quant_gate import accuracy_gate, calibration_feeds, load_images

log = logging.getLogger("segrt")
Target = Literal["fp16", "int8"]
Calibrator = Literal["minmax", "entropy", "percentile"]
Int8Target = Literal["cpu", "tensorrt"]
#: Kept in FP32 by the FP16 conversion (onnxconverter-common's own list is added to these).
FP16_KEEP_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceMax", "Pow", "Sqrt", "Exp",
                 "Log", "Erf", "CumSum", "NonMaxSuppression", "RoiAlign", "TopK")

#: Default tolerances per family: semantic pixel agreement, instance/SAM mean matched mask IoU.
DEFAULT_MIN = {"semantic": 0.98, "instance": 0.85, "sam": 0.90}


@dataclass(frozen=True)
class QuantizeConfig:
    precision: Target
    calib: Path | None = None  # images folder or a video; INT8 only
    samples: int = 32
    calibrator: Calibrator = "minmax"
    exclude: tuple[str, ...] = ()  # node names kept in float
    eval_images: Path | None = None  # held-out images for the gate (default: scikit-image photos)
    min_score: float | None = None  # None: DEFAULT_MIN for the bundle's task
    fp16_io: bool = False
    #: INT8 activations: "cpu" uint8 asymmetric (ONNX Runtime's fast U8S8 kernels; measured 1.9x FP32
    #: here, where int8 symmetric activations ran 0.9x), "tensorrt" int8 symmetric (what TensorRT's
    #: explicit quantization takes). Both read the same cached calibration ranges.
    target: Int8Target = "cpu"
    extra_keep: tuple[str, ...] = field(default=())  # more op types kept in FP32 by FP16

    def __post_init__(self) -> None:
        if self.precision not in ("fp16", "int8"):
            raise InvalidInputError(f"--precision must be fp16 or int8; got {self.precision!r}")
        if self.precision == "int8" and self.calib is None:
            raise InvalidInputError("int8 needs --calib IMAGES_DIR|VIDEO (a few dozen images like the ones it will see)")
        if self.target not in ("cpu", "tensorrt"):
            raise InvalidInputError(f"--target must be cpu or tensorrt; got {self.target!r}")
        if self.calibrator not in ("minmax", "entropy", "percentile"):
            raise InvalidInputError(f"--calibrator must be minmax, entropy or percentile; got {self.calibrator!r}")
        if self.samples < 1:
            raise InvalidInputError(f"--samples must be >= 1; got {self.samples}")
        if self.min_score is not None and not 0 <= self.min_score <= 1:
            raise InvalidInputError(f"the tolerance must be in [0, 1]; got {self.min_score}")


def model_files(m: Manifest) -> list[str]:
    """The graphs a variant converts: the model, and for SAM the decoder too (kept float by INT8)."""
    return [m.model_file] + ([m.sam.decoder_file] if m.sam else [])


def _attention_products(model: Any) -> list[str]:
    """SAM encoder: the q@k and attn@v MatMuls (not the linear layers), which overflow in FP16."""
    return [n.name for n in model.graph.node
            if n.op_type in ("MatMul", "Einsum") and "/attn/" in n.name and "/qkv/" not in n.name and "/proj/" not in n.name]


def to_fp16(src: Path, dst: Path, cfg: QuantizeConfig, task: str) -> dict[str, Any]:
    import onnx
    from onnxconverter_common import float16

    from .onnx_io import save_onnx

    model = onnx.load(str(src))
    ops = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_OPS) | set(cfg.extra_keep))
    nodes = sorted(set(cfg.exclude) | (set(_attention_products(model)) if task == "sam" else set()))
    # The exporter's value_info annotations go first: with them the converter types the Cast after a
    # kept-FP32 node as float16 and ONNX Runtime refuses the graph (seen on U-Net's Resize and
    # DeepLab's ReduceMean); it re-infers them itself.
    del model.graph.value_info[:]
    converted = float16.convert_float_to_float16(model, keep_io_types=not cfg.fp16_io, op_block_list=ops,
                                                 node_block_list=nodes, disable_shape_infer=False)
    if not cfg.fp16_io:
        _float_outputs(converted)
    save_onnx(converted, dst)
    return {"kept_fp32_ops": ops, "kept_fp32_nodes": nodes, "io": "fp16" if cfg.fp16_io else "fp32"}


def _float_outputs(model: Any) -> None:
    """FP32 I/O was asked: cast any output the converter left in float16 back to float32."""
    import onnx
    from onnx import TensorProto, helper

    for out in model.graph.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        inner = f"{out.name}__fp16"
        for node in model.graph.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
            node.input[:] = [inner if i == out.name else i for i in node.input]
        model.graph.node.append(helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT,
                                                 name=f"{out.name}_to_fp32"))
        out.type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.checker.check_model(model)


def _cache_key(src: Path, cfg: QuantizeConfig, images: list[str]) -> str:
    """The calibration cache's name: the model's bytes, the calibrator and the images it saw."""
    key = f"{sha256_file(src)}{(cfg.calibrator, cfg.samples, images)!r}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: Iterator[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _pre_process(src: Path, tmp: Path) -> Path:
    """onnxruntime's recommended pre-quantization pass (shape inference, graph optimisation: Conv+BN
    and similar folds so ranges are calibrated on the tensors that will really be quantized)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(tmp), skip_symbolic_shape=True)
        return tmp
    except Exception as exc:  # an optimisation, never a reason to fail
        log.warning("quantization pre-processing failed (%s); quantizing the graph as exported", exc)
        tmp.unlink(missing_ok=True)
        return src


def to_int8(src: Path, dst: Path, cfg: QuantizeConfig, bundle: Path, m: Manifest) -> dict[str, Any]:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    assert cfg.calib is not None
    names, images = load_images(cfg.calib, cfg.samples)
    cache = bundle / "calibration" / f"{Path(m.model_file).stem}-{_cache_key(src, cfg, names)}.json"
    cache.parent.mkdir(exist_ok=True)
    hit = cache.is_file()
    log.info("%s calibration ranges %s", "reusing" if hit else "computing", cache)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibrator]
    prepared = _pre_process(src, dst.with_name(f".{dst.name}.pre.onnx"))
    trt = cfg.target == "tensorrt"
    quantize_static(
        str(prepared), str(dst), None if hit else _Reader(calibration_feeds(bundle, m, images)),
        quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8 if trt else QuantType.QUInt8, weight_type=QuantType.QInt8,
        nodes_to_exclude=list(cfg.exclude), calibrate_method=method,
        extra_options={"ActivationSymmetric": trt, "WeightSymmetric": True}, calibration_cache_path=str(cache),
    )
    if prepared != src:
        prepared.unlink(missing_ok=True)
    return {"calibrator": cfg.calibrator, "samples": len(images), "calibration_images": names[:8] + (["..."] if len(names) > 8 else []),
            "calibration_cache": str(cache.relative_to(bundle)), "calibration_reused": hit,
            "excluded_nodes": list(cfg.exclude), "target": cfg.target,
            "format": "QDQ, per-channel symmetric int8 weights, " + ("symmetric int8 activations (TensorRT)" if trt
                                                                       else "asymmetric uint8 activations (ONNX Runtime CPU)")}


def quantize_bundle(bundle: Path, out: Path, cfg: QuantizeConfig, *, force: bool = False) -> Manifest:
    """Write a variant bundle at ``out``: converted graphs, the same manifest with ``precision`` and
    ``quantization`` (what was kept in float, calibration, gate numbers). Refused below tolerance."""
    m = read_manifest(bundle)
    if m.precision != "fp32":
        raise ExportError(f"{bundle} is already {m.precision}; quantize the FP32 bundle it came from")
    if Path(out).resolve() == Path(bundle).resolve():
        raise InvalidInputError("--out must be a new folder; the FP32 bundle is the gate's reference")
    minimum = cfg.min_score if cfg.min_score is not None else DEFAULT_MIN[m.task]
    with atomic_dir(out, force=force) as tmp:
        for name in [p.name for p in bundle.iterdir() if p.is_file()]:
            if name not in model_files(m) and not name.startswith(tuple(model_files(m))):
                shutil.copy2(bundle / name, tmp / name)
        facts: dict[str, Any] = {}
        if cfg.precision == "fp16":
            facts[m.model_file] = to_fp16(bundle / m.model_file, tmp / m.model_file, cfg, m.task)
        else:
            facts[m.model_file] = to_int8(bundle / m.model_file, tmp / m.model_file, cfg, bundle, m)
        for f in model_files(m)[1:]:
            # SAM's decoder stays FP32: it decides mask edges, and onnxconverter-common's FP16 pass leaves
            # a float/float16 Mul in it that ONNX Runtime refuses to load.
            shutil.copy2(bundle / f, tmp / f)
            facts[f] = {"kept": "fp32"}
        variant = Manifest.from_dict({**m.to_dict(), "precision": cfg.precision})
        write_manifest(tmp, variant)
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
    return variant
