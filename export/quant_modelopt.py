"""``segrt quantize --precision int8 --target tensorrt --int8-tool modelopt``: NVIDIA ModelOpt's ONNX PTQ.

``modelopt.onnx.quantization.quantize`` writes explicit Q/DQ placed the way TensorRT fuses (Conv/ConvTranspose
weights and inputs, the non-residual input of a residual Add, pooling, Resize; no Q/DQ around activations such
as Relu, Clip or Sigmoid, biases left float), where ONNX Runtime's quantizer puts Q/DQ on nearly every op.
Calibration runs through ONNX Runtime, on the CPU here (``calibration_eps``), on images put through the
runtime's preprocessing like the default tool's; the non-quantized remainder stays FP32 as with that tool.
Measured against it on segrt's fixtures in run 2026-12-01-int8-modelopt-vs-ort-cpu-epyc-2core of benchmarks/results/history.jsonl.
ModelOpt is not a segrt dependency: its ``[onnx]`` extra pins onnx~=1.21 and onnxruntime-gpu~=1.24 and needs
torch and cupy, so it goes in an environment of its own (see docs/quantize.md).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segrt.runtime.errors import ExportError, InvalidInputError, SegrtError
from segrt.runtime.manifest import Manifest

from .quant_gate import calibration_feeds, load_images

if TYPE_CHECKING:
    from .quantize import QuantizeConfig

#: segrt's calibrator names to ModelOpt's INT8 calibration methods (it has no percentile for INT8).
METHODS = {"minmax": "max", "entropy": "entropy"}
INSTALL = ("pip install 'nvidia-modelopt[onnx]' in an environment of its own (it pins onnx~=1.21 and "
           "onnxruntime-gpu~=1.24), or use --int8-tool ort")


def check_available() -> None:
    if importlib.util.find_spec("modelopt") is None:
        raise ExportError(f"--int8-tool modelopt needs NVIDIA ModelOpt, which is not installed: {INSTALL}")


def _reader(feeds: Any) -> Any:
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    class Reader(CalibrationDataReader):  # ModelOpt checks isinstance against ONNX Runtime's class
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self._it, None)

    return Reader()


def _eps() -> list[str]:
    import onnxruntime as ort

    return (["cuda:0"] if "CUDAExecutionProvider" in ort.get_available_providers() else []) + ["cpu"]


def to_int8_modelopt(src: Path, dst: Path, cfg: QuantizeConfig, bundle: Path, m: Manifest,
                     family: tuple[list[str], list[str] | None]) -> dict[str, Any]:
    """INT8 Q/DQ by ModelOpt; ``family`` is segrt's (nodes kept float, op types quantized) for the task."""
    check_available()
    if cfg.calib is None:
        raise InvalidInputError("int8 needs --calib IMAGES_DIR|VIDEO (a few dozen images like the ones it will see)")
    from modelopt.onnx.quantization import quantize

    names, images = load_images(cfg.calib, cfg.samples)
    kept, op_types = family
    exclude = [f"^{re.escape(n)}$" for n in sorted(set(cfg.exclude) | set(kept))]  # ModelOpt reads regexes
    try:
        quantize(str(src), quantize_mode="int8", calibration_data_reader=_reader(calibration_feeds(bundle, m, images)),
                 calibration_method=METHODS[cfg.calibrator], calibration_eps=_eps(), op_types_to_quantize=op_types,
                 nodes_to_exclude=exclude or None, high_precision_dtype="fp32", dq_only=True, output_path=str(dst),
                 log_level="WARNING")
    except SegrtError:
        raise
    except Exception as exc:  # ModelOpt raises untyped errors (and asserts) of many kinds
        raise ExportError(f"ModelOpt INT8 quantization failed ({type(exc).__name__}: "
                          f"{(str(exc).splitlines() or ['no message'])[0]}); try --int8-tool ort") from None
    if not dst.is_file():
        raise ExportError(f"ModelOpt wrote no model at {dst}; try --int8-tool ort")
    return {"tool": "modelopt", "calibrator": cfg.calibrator, "samples": len(images),
            "calibration_images": names[:8] + (["..."] if len(names) > 8 else []), "calibration_reused": False,
            "excluded_nodes": list(cfg.exclude) + ([f"{len(kept)} family defaults"] if kept else []),
            "op_types_quantized": op_types or "ModelOpt's TensorRT placement", "method": "static", "target": "tensorrt",
            "format": "QDQ (ModelOpt): per-channel symmetric int8 weights behind DequantizeLinear only, symmetric "
                      "int8 activations, float biases"}
