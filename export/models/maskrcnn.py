"""torchvision Mask R-CNN: the network without its transform, and without mask pasting.

torchvision's ``GeneralizedRCNNTransform`` resizes with a Python-float scale factor and its
post-processing pastes every mask at full resolution; traced, the first becomes a constant and the
second makes each detection an HxW float tensor. The graph here starts at the resized, normalised,
padded image and stops at boxes (input coordinates), labels, scores and the 28x28 mask
probabilities; the runtime resizes before it and pastes each mask only inside its box after it.
``image_size`` is the resized image's (height, width) before padding: torchvision clips boxes to it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from segrt.runtime.errors import ExportError
from segrt.runtime.manifest import DetectionSpec, InputSpec, Manifest, OutputSpec

from ..spec import TORCHVISION_DEPS, ExportConfig, ExportFamily, Graph, ModelSpec, QuantDefaults

log = logging.getLogger("segrt")
#: The instance export is refused when fewer PyTorch detections than this are reproduced.
MIN_MATCH_FRACTION = 0.95

ARCHS = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")
OUTPUTS = ("boxes", "labels", "scores", "masks")


def build_torchvision(arch: str, num_classes: int, min_size: int = 800, max_size: int = 1333, **kwargs: Any) -> Any:
    """torchvision's model with random weights (no download): the checkpoint is loaded afterwards."""
    import torchvision.models.detection as det

    return getattr(det, arch)(weights=None, weights_backbone=None, num_classes=num_classes,
                              min_size=min_size, max_size=max_size, **kwargs)


def coco_names() -> tuple[str, ...]:
    """COCO's 91 category names (index 0 is the background), as torchvision's weights record them."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    return tuple(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


def _merge_levels_by_gather(levels: Any, unmerged_results: list[Any]) -> Any:
    """What torchvision's ``_onnx_merge_levels`` computes, as one Gather instead of a ScatterElements
    per FPN level over (N, 256, 7, 7) floats (profiled: 15 % of the whole graph on ONNX Runtime CPU).
    Level k's results belong at ``where(levels == k)``; the inverse of that permutation gathers them."""
    import torch

    perm = torch.cat([torch.where(levels == k)[0] for k in range(len(unmerged_results))])
    order = torch.ones_like(perm).cumsum(0) - 1  # arange(N), traced with a dynamic N
    inverse = torch.zeros_like(perm).scatter(0, perm, order)
    return torch.cat(unmerged_results, 0)[inverse]


@contextmanager
def _fast_roi_merge() -> Iterator[None]:
    from torchvision.ops import poolers

    original = poolers._onnx_merge_levels
    poolers._onnx_merge_levels = _merge_levels_by_gather
    try:
        yield
    finally:
        poolers._onnx_merge_levels = original


def _graph_class() -> type:
    import torch
    from torchvision.models.detection.image_list import ImageList

    class MaskRCNNGraph(torch.nn.Module):
        """backbone -> RPN -> ROI heads on one prepared image; the trace-friendly export wrapper."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.backbone, self.rpn, self.roi_heads = model.backbone, model.rpn, model.roi_heads

        def forward(self, image: torch.Tensor, image_size: torch.Tensor) -> tuple[torch.Tensor, ...]:
            images = ImageList(image, [(image_size[0], image_size[1])])
            features = self.backbone(image)
            proposals, _ = self.rpn(images, features)
            with _fast_roi_merge():  # only used while tracing; eager torchvision indexes directly
                detections, _ = self.roi_heads(features, proposals, images.image_sizes)
            d = detections[0]
            return d["boxes"], d["labels"], d["scores"], d["masks"]

    return MaskRCNNGraph


def build_model(cfg: ExportConfig) -> Any:
    """The full torchvision model (what checkpoints load into and what parity compares against)."""
    return build_torchvision(cfg.encoder, cfg.classes, cfg.min_size, cfg.max_size,
                             box_score_thresh=cfg.box_score_thresh, box_nms_thresh=cfg.box_nms_thresh,
                             box_detections_per_img=cfg.detections)


def graph(model: Any) -> Any:
    return _graph_class()(model).eval()


def instance_heads(model: Any) -> list[str]:
    """Mask R-CNN: everything outside the backbone + FPN (RPN, RoI heads, the If branches). The backbone
    is most of the compute; the heads do box arithmetic in image coordinates (up to 1333 px), where FP16's
    11-bit mantissa moves a coordinate by up to half a pixel, and NMS/TopK on FP16 scores reorders ties."""
    from ..graph_normalize import all_nodes

    return [n.name for n in all_nodes(model.graph) if n.name and not n.name.startswith("/backbone/")]


class MaskRCNNExport(ExportFamily):
    """The graph without transform and paste, verified end to end (torchvision's own resize and paste) at two sizes."""

    def graphs(self, spec: ModelSpec, model: Any, cfg: ExportConfig) -> list[Graph]:
        import torch

        h, w = cfg.min_size - cfg.min_size % 32 or 32, cfg.min_size + 64 - cfg.min_size % 32
        example = (torch.rand(1, 3, h, w), torch.tensor([h - 5, w - 7]))
        return [Graph("model.onnx", graph(model), example, spec)]

    def manifest(self, spec: ModelSpec, cfg: ExportConfig, source: dict[str, Any], versions: dict[str, str]) -> Manifest:
        return Manifest(
            task=spec.task,
            architecture=spec.name,
            encoder=cfg.encoder,
            classes=cfg.names,
            input=InputSpec(name=spec.input_names[0], channels=3, color="rgb", mean=spec.mean, std=spec.std,
                            resize="shortest_edge", stride=spec.stride, min_size=cfg.min_size, max_size=cfg.max_size),
            output=OutputSpec(name="masks", activation="none"),
            detection=DetectionSpec(size_input=spec.input_names[1], score_threshold=cfg.score_threshold,
                                    graph_score_threshold=cfg.box_score_thresh, nms_threshold=cfg.box_nms_thresh,
                                    max_detections=cfg.detections),
            source=source,
            versions=versions,
        )

    def verify(self, spec: ModelSpec, model: Any, bundle: Path, cfg: ExportConfig) -> dict[str, Any]:
        from segrt.runtime.image import read_image, to_channels
        from segrt.runtime.instance import InstanceSegmenter

        from ..verify import default_photo, instance_agreement

        det = InstanceSegmenter(bundle, "cpu")
        name, photo = (str(cfg.verify_image), read_image(cfg.verify_image)) if cfg.verify_image else default_photo(3)
        photo = to_channels(photo, 3)
        checks = [instance_agreement(model, det, photo), instance_agreement(model, det, photo[::2, photo.shape[1] // 8 :])]
        log.info("verified against torchvision on %s at two sizes: %s", name, checks)
        return {"image": name, "checks": checks}

    def gate(self, spec: ModelSpec, cfg: ExportConfig, source: dict[str, Any], verification: dict[str, Any]) -> None:
        worst = min(c["match_fraction"] for c in verification["checks"])
        if not source["trained"]:
            log.warning("random weights: detections are noise, so the %.1f%% match is recorded, not enforced",
                        100 * worst)
        elif worst < MIN_MATCH_FRACTION:
            raise ExportError(f"exported {spec.name} reproduces only {worst:.1%} of torchvision's detections "
                              f"on {verification['image']}; bundle not written")


SPEC = ModelSpec(
    name="maskrcnn",
    task="instance",
    build=build_model,
    encoders=lambda: ARCHS,
    default_encoder="maskrcnn_resnet50_fpn",
    stride=32,
    input_names=("image", "image_size"),
    output_names=OUTPUTS,
    dynamic_axes={"image": {2: "height", 3: "width"}, "boxes": {0: "detections"}, "labels": {0: "detections"},
                  "scores": {0: "detections"}, "masks": {0: "detections"}},
    exporter="torchscript",
    classes_key="roi_heads.box_predictor.cls_score.weight",
    trace_wrapper=graph,
    deps=TORCHVISION_DEPS,
    default_classes=coco_names,
    quant=QuantDefaults(
        float_nodes=instance_heads,
        fp16_summary="nodes outside /backbone/ (RPN, RoI heads, NMS branches)",
        # Only the backbone + FPN (the heads' box arithmetic and score ordering are what INT8 breaks), and there
        # only Conv: on the full ``maskrcnn`` fixture (40 held-out scenes) ONNX Runtime's default op set (residual
        # Adds, MaxPool, Resize too) scored mask IoU 0.853 against FP32, Conv alone 0.876, at the same speed
        # (seeded R50-FPN at 800 px: 806 vs 809 ms, 1.22x FP32). Keeping the FPN float too scored 0.889 but
        # gave back most of the gain (1.08x): its 3x3 convs at stride 4 are a large share of the compute.
        int8_op_types=("Conv",),
        int8_note="RPN, RoI heads and NMS branches outside /backbone/ kept float; in the backbone + FPN only Conv "
                  "is quantized (residual Adds, max-pool and the FPN's upsampling stay float)",
    ),
    family=MaskRCNNExport(),
)
