"""``export_model(config, out)``: PyTorch model + local checkpoint to a verified bundle."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from segrt.runtime.errors import ExportError
from segrt.runtime.image import read_image, to_channels
from segrt.runtime.manifest import DetectionSpec, InputSpec, Manifest, OutputSpec, write_manifest

from .bundle import atomic_dir
from .models import get_spec
from .onnx_io import export_onnx
from .spec import IMAGENET_MEAN, IMAGENET_STD, ExportConfig, ModelSpec, require_export_deps
from .verify import default_photo, instance_agreement, verify_bundle
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
        state = read_state_dict(cfg.weights)
        check_classes(spec, cfg, state)
        apply_state_dict(module, state, spec.drop_prefixes)
        source = {"weights": cfg.weights.name, "sha256": sha256_file(cfg.weights), "trained": True, "seed": None}
    return module.eval(), source


def check_classes(spec: ModelSpec, cfg: ExportConfig, state: dict[str, Any]) -> None:
    """Name the class-count mismatch before the generic shape report buries it."""
    tensor = state.get(spec.classes_key) if spec.classes_key else None
    if tensor is not None and tensor.shape[0] != cfg.classes:
        raise ExportError(f"checkpoint {cfg.weights.name if cfg.weights else ''} has {tensor.shape[0]} classes "
                          f"({spec.classes_key}); you asked for --classes {cfg.classes}")


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


def make_instance_manifest(spec: ModelSpec, cfg: ExportConfig, source: dict[str, Any], facts: dict[str, Any],
                           score_threshold: float) -> Manifest:
    return Manifest(
        task="instance",
        architecture=spec.name,
        encoder=cfg.encoder,
        classes=cfg.names,
        input=InputSpec(name=spec.input_names[0], channels=3, color="rgb", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        resize="shortest_edge", stride=spec.stride, min_size=cfg.min_size, max_size=cfg.max_size),
        output=OutputSpec(name="masks", activation="none"),
        detection=DetectionSpec(size_input=spec.input_names[1], score_threshold=score_threshold,
                                graph_score_threshold=cfg.box_score_thresh, nms_threshold=cfg.box_nms_thresh,
                                max_detections=cfg.detections),
        source={**source, "export": facts},
        versions=tool_versions(),
    )


#: The instance export is refused when fewer PyTorch detections than this are reproduced.
MIN_MATCH_FRACTION = 0.95


def export_instance(spec: ModelSpec, cfg: ExportConfig, out: Path, *, force: bool = False,
                    score_threshold: float = 0.5) -> Manifest:
    """Mask R-CNN: export the graph without transform and paste, verify end to end at two sizes."""
    import torch

    from segrt.runtime.instance import InstanceSegmenter

    model, source = build_module(spec, cfg)
    graph = spec.trace_wrapper(model) if spec.trace_wrapper else model
    h, w = cfg.min_size - cfg.min_size % 32 or 32, cfg.min_size + 64 - cfg.min_size % 32
    example = (torch.rand(1, 3, h, w), torch.tensor([h - 5, w - 7]))
    with atomic_dir(out, force=force) as tmp:
        facts = export_onnx(graph, example, spec, tmp / "model.onnx", cfg.opset)
        manifest = make_instance_manifest(spec, cfg, source, facts, score_threshold)
        write_manifest(tmp, manifest)
        det = InstanceSegmenter(tmp, "cpu")
        name, photo = (str(cfg.verify_image), read_image(cfg.verify_image)) if cfg.verify_image else default_photo(3)
        photo = to_channels(photo, 3)
        checks = [instance_agreement(model, det, photo), instance_agreement(model, det, photo[::2, photo.shape[1] // 8 :])]
        log.info("verified against torchvision on %s at two sizes: %s", name, checks)
        worst = min(c["match_fraction"] for c in checks)
        if not source["trained"]:
            log.warning("random weights: detections are noise, so the %.1f%% match is recorded, not enforced",
                        100 * worst)
        elif worst < MIN_MATCH_FRACTION:
            raise ExportError(f"exported {spec.name} reproduces only {worst:.1%} of torchvision's detections "
                              f"on {name}; bundle not written")
        manifest = Manifest.from_dict({**manifest.to_dict(), "verification": {"image": name, "checks": checks}})
        write_manifest(tmp, manifest)
    return manifest


def export_model(cfg: ExportConfig, out: Path, *, force: bool = False, score_threshold: float = 0.5) -> Manifest:
    spec = get_spec(cfg.architecture)
    if spec.task == "instance":
        return export_instance(spec, cfg, out, force=force, score_threshold=score_threshold)
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
