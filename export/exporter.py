"""``export_model(config, out)``: PyTorch model + local checkpoint to a verified bundle."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from segrt.runtime.errors import ExportError
from segrt.runtime.manifest import InputSpec, Manifest, OutputSpec, write_manifest

from .bundle import atomic_dir
from .models import get_spec
from .onnx_io import export_onnx
from .spec import IMAGENET_MEAN, IMAGENET_STD, ExportConfig, ModelSpec, require_export_deps
from .verify import verify_bundle
from .weights import apply_state_dict, read_state_dict, sha256_file

log = logging.getLogger("segrt")
_VERSIONED = ("segrt", "torch", "torchvision", "segmentation-models-pytorch", "onnx", "onnxruntime", "onnxslim")
#: A fresh export that agrees with PyTorch on fewer pixels than this is refused.
MIN_PIXEL_AGREEMENT = 0.999


def tool_versions() -> dict[str, str]:
    found = {}
    for dist in _VERSIONED:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found


def build_module(spec: ModelSpec, cfg: ExportConfig) -> tuple[Any, dict[str, Any]]:
    """The eval-mode module with its weights, and the manifest's ``source`` record."""
    require_export_deps()
    spec.check_encoder(cfg.encoder)
    import torch

    torch.manual_seed(cfg.seed)
    module = spec.build(cfg)
    if cfg.weights is None:
        source: dict[str, Any] = {"weights": None, "sha256": None, "trained": False, "seed": cfg.seed}
    else:
        apply_state_dict(module, read_state_dict(cfg.weights), spec.drop_prefixes)
        source = {"weights": cfg.weights.name, "sha256": sha256_file(cfg.weights), "trained": True, "seed": None}
    return module.eval(), source


def make_manifest(spec: ModelSpec, cfg: ExportConfig, source: dict[str, Any], facts: dict[str, Any]) -> Manifest:
    rgb = cfg.in_channels == 3
    mean = IMAGENET_MEAN if rgb else (sum(IMAGENET_MEAN) / 3,) * cfg.in_channels
    std = IMAGENET_STD if rgb else (sum(IMAGENET_STD) / 3,) * cfg.in_channels
    return Manifest(
        task=spec.task,
        architecture=spec.name,
        encoder=cfg.encoder,
        classes=cfg.names,
        input=InputSpec(
            name=spec.input_names[0],
            channels=cfg.in_channels,
            color="gray" if cfg.in_channels == 1 else "rgb",
            mean=mean,
            std=std,
            intensity=cfg.intensity,
            resize="pad",
            stride=spec.stride,
        ),
        output=OutputSpec(name=spec.output_names[0], activation="softmax" if cfg.classes > 1 else "sigmoid"),
        source={**source, "export": facts},
        versions=tool_versions(),
    )


def export_model(cfg: ExportConfig, out: Path, *, force: bool = False) -> Manifest:
    spec = get_spec(cfg.architecture)
    if cfg.in_channels not in (1, 3) and cfg.verify_image is None:
        raise ExportError(f"--in-channels {cfg.in_channels} needs --verify-image (a {cfg.in_channels}-channel image)")
    module, source = build_module(spec, cfg)
    if not source["trained"]:
        log.warning("exporting %s with seeded random weights (seed %d): the model is untrained", spec.name, cfg.seed)
    import torch

    example = (torch.rand(1, cfg.in_channels, 2 * max(spec.stride, 32), 3 * max(spec.stride, 32)),)
    with atomic_dir(out, force=force) as tmp:
        facts = export_onnx(module, example, spec, tmp / "model.onnx", cfg.opset)
        manifest = make_manifest(spec, cfg, source, facts)
        write_manifest(tmp, manifest)
        check = verify_bundle(tmp, module, cfg.verify_image)
        log.info("verified against PyTorch: %s", check)
        if check["pixel_agreement"] < MIN_PIXEL_AGREEMENT:
            raise ExportError(
                f"exported {spec.name} agrees with PyTorch on only {check['pixel_agreement']:.4%} of pixels "
                f"(max abs logit diff {check['max_abs_logit_diff']:.3g}); bundle not written"
            )
        manifest = Manifest.from_dict({**manifest.to_dict(), "verification": check})
        write_manifest(tmp, manifest)
    return manifest
