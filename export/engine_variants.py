"""The FP16 variant ``segrt build --precision fp16`` builds an FP32 bundle's engine from.

TensorRT 11 has no FP16 builder flag, so an FP16 engine needs an FP16 graph. It is made exactly as
``segrt quantize --precision fp16`` makes one (``quantize_bundle``: the same converter, the same ops kept
in FP32, the same accuracy gate against the FP32 bundle) and cached inside the bundle at
:func:`segrt.runtime.variants.variant_dir` (``variants/fp16-<digest of the bundle's graphs>/``).
``quantize_bundle`` writes through ``atomic_dir``, so the folder appears complete or not at all; variants
of older graphs of the same precision are removed once the new one is in place. Needs onnx (the export
extra); a runtime-only install gets a one-line error saying what to install.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from segrt.runtime.errors import ExportError
from segrt.runtime.manifest import read_manifest
from segrt.runtime.variants import find_variant, variant_dir

log = logging.getLogger("segrt")


def ensure_fp16_variant(bundle: Path) -> Path:
    """The bundle's FP16 variant for its current graphs: the cached one, or made now (gated)."""
    bundle = Path(bundle)
    found = find_variant(bundle, "fp16")
    if found is not None:
        return found
    try:
        import onnx  # noqa: F401  (the float16 converter's dependency)
    except ImportError:
        raise ExportError("making the FP16 graph TensorRT builds from needs onnx: pip install 'segrt[export]' "
                          "(or build a bundle from `segrt quantize --precision fp16`)") from None
    from .quantize import QuantizeConfig, quantize_bundle

    m = read_manifest(bundle)
    out = variant_dir(bundle, "fp16", m)
    out.parent.mkdir(exist_ok=True)
    log.warning("making the FP16 variant of %s (converter and accuracy gate of `segrt quantize`)", bundle)
    quantize_bundle(bundle, out, QuantizeConfig(precision="fp16"))
    for stale in out.parent.glob("fp16-*"):
        if stale != out and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return out
