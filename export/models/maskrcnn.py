"""torchvision Mask R-CNN: the network without its transform, and without mask pasting.

torchvision's ``GeneralizedRCNNTransform`` resizes with a Python-float scale factor and its
post-processing pastes every mask at full resolution; traced, the first becomes a constant and the
second makes each detection an HxW float tensor. The graph here starts at the resized, normalised,
padded image and stops at boxes (input coordinates), labels, scores and the 28x28 mask
probabilities; the runtime resizes before it and pastes each mask only inside its box after it.
``image_size`` is the resized image's (height, width) before padding: torchvision clips boxes to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..spec import ExportConfig, ModelSpec

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
)
