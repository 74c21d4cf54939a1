"""Which ONNX graph carries a precision: the bundle's own, or a gated variant cached inside the bundle.

TensorRT 11 takes precision from the graph only (strongly typed networks), and segrt builds the same way
on TensorRT 10. An FP32 bundle's FP16 variant is a complete bundle made by ``segrt quantize``'s converter
and accuracy gate (``export.engine_variants`` calls ``quantize_bundle``) and kept at
``<bundle>/variants/<precision>-<source digest>/``: the digest covers every graph of the bundle and its
external data (:func:`..onnx_files.model_digest`), so a re-export makes a new folder and the old variant is
never used. The folder appears by one rename (the quantizer's ``atomic_dir``): present means complete.
This module only looks; making a variant needs the export extra (onnx) and lives in ``segrt.export``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import InvalidInputError, ModelFormatError
from .manifest import Manifest, read_manifest
from .onnx_files import model_digest

VARIANTS_DIR = "variants"
_ORDER = ("int8", "fp16", "fp32")  # lowest precision first: what `best` picks


def graphs(m: Manifest) -> list[str]:
    return [m.model_file] + ([m.sam.decoder_file] if m.sam else [])


def source_digest(bundle: Path, m: Manifest | None = None) -> str:
    """One digest over every graph of the bundle and its external data (what a variant is made from)."""
    m = m or read_manifest(bundle)
    h = hashlib.sha256()
    for name in graphs(m):
        h.update(f"{name}\0{model_digest(Path(bundle) / name)}\0".encode())
    return h.hexdigest()[:16]


def variant_dir(bundle: Path, precision: str, m: Manifest | None = None) -> Path:
    return Path(bundle) / VARIANTS_DIR / f"{precision}-{source_digest(bundle, m)}"


def find_variant(bundle: Path, precision: str) -> Path | None:
    """The cached variant of this precision made from the bundle's current graphs, or None."""
    d = variant_dir(bundle, precision)
    try:
        return d if read_manifest(d).precision == precision else None
    except ModelFormatError:
        return None


def is_tensorrt_qdq(m: Manifest) -> bool:
    """An INT8 bundle whose graph is Q/DQ with symmetric int8 activations (``--target tensorrt``)."""
    fact = m.quantization.get("graphs", {}).get(m.model_file, {}) if m.quantization else {}
    return m.precision == "int8" and isinstance(fact, dict) and fact.get("target") == "tensorrt"


def int8_command(bundle: Path) -> str:
    return (f"`segrt quantize {bundle} --precision int8 --target tensorrt --calib IMAGES --out {bundle}-int8`, "
            f"then `segrt build {bundle}-int8 --precision int8`")


def graph_for(bundle: Path, model_file: str, precision: str) -> Path:
    """The graph an engine of ``precision`` is built from, or a typed error saying which command makes it."""
    bundle = Path(bundle)
    m = read_manifest(bundle)
    if precision == m.precision:
        if precision == "int8" and not is_tensorrt_qdq(m):
            raise InvalidInputError(f"{bundle} is INT8 for ONNX Runtime's CPU kernels (uint8 or dynamic), which "
                                    f"TensorRT cannot build; quantize its FP32 bundle with --target tensorrt")
        return bundle / model_file
    if m.precision != "fp32":
        raise InvalidInputError(f"{bundle} is a {m.precision} bundle: build it with --precision {m.precision}, or "
                                f"build {precision} from the FP32 bundle it came from")
    found = find_variant(bundle, precision)
    if found is not None:
        return found / model_file
    if precision == "int8":
        raise InvalidInputError(f"--precision int8 needs a Q/DQ graph and {bundle} is FP32: run {int8_command(bundle)}")
    raise InvalidInputError(f"{bundle} has no FP16 variant for its current graphs yet: `segrt build {bundle} "
                            "--precision fp16` makes it (needs pip install 'segrt[export]')")


def needs_variant(bundle: Path, precision: str) -> bool:
    """True when ``precision`` is an FP16 build of an FP32 bundle whose FP16 variant is not cached yet."""
    return precision == "fp16" and read_manifest(bundle).precision == "fp32" and find_variant(bundle, "fp16") is None


def best_precision(bundle: Path) -> str:
    """``--precision best``: the lowest precision among the gated graphs already present (the bundle's own,
    when TensorRT can build it, and its cached variants). Never makes a variant."""
    m = read_manifest(bundle)
    present = {p for p in ("fp16", "int8") if m.precision == "fp32" and find_variant(bundle, p) is not None}
    if m.precision != "int8" or is_tensorrt_qdq(m):
        present.add(m.precision)
    if not present:
        raise InvalidInputError(f"{bundle} holds no graph TensorRT can build; run {int8_command(bundle)}")
    return next(p for p in _ORDER if p in present)
