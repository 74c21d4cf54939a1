"""Mask2Former (transformers' ``Mask2FormerForUniversalSegmentation``): one graph, class and mask logits out.

The graph takes the normalised image and returns ``class_logits`` (B, Q, C + 1; the last class is "no
object") and ``mask_logits`` (B, Q, H/4, W/4); semantic, instance and panoptic results are made from them
outside the graph, by ``segrt.runtime.mask2former_post`` (transformers' three ``post_process_*`` in NumPy).

Dynamic height and width (mmdeploy #2632): traced as transformers writes it, the pixel decoder's deformable
attention divides its sampling offsets by ``torch.tensor([[w, h], ...])`` of the feature maps' sizes, which the
tracer records as a constant: the graph then runs at other sizes and answers wrongly (mask logits off by 0.05
at 192x256 after tracing at 256x320). :func:`dynamic_offsets` builds that normaliser from the traced sizes
while exporting; the verification runs two input sizes, neither the traced one.

Encoders: ``swin-tiny`` is the published Swin-T Mask2Former (for a local checkpoint of its weights: a state
dict of ``Mask2FormerForUniversalSegmentation``); ``swin-mini`` is a seeded small configuration (2 blocks per
stage, 16 queries, 3 decoder layers) that builds without any download, for tests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from segrt.runtime.errors import ExportError
from segrt.runtime.manifest import InputSpec, Manifest, OutputSpec

from ..spec import ExportConfig, ExportFamily, Graph, ModelSpec

log = logging.getLogger("segrt")
OUTPUTS = ("class_logits", "mask_logits")
#: transformers' post-processing resizes mask logits to 384x384 "for all models": the bundle's input size
INPUT_SIZE = (384, 384)
#: sizes the export is checked at: the bundle's own and a non-square one (the graph was traced at neither)
CHECK_SIZES = ((384, 384), (320, 448))
#: a fresh export whose logits differ from PyTorch's by more than this (relative to their largest) is refused
MAX_REL_LOGIT_DIFF = 1e-3
TRANSFORMERS_DEPS = {"transformers": "transformers"}

#: Mask2Former settings per encoder name; the backbone is transformers' Swin (the backbone Mask2Former supports)
CONFIGS: dict[str, dict[str, Any]] = {
    "swin-tiny": {"backbone": {"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24]}, "head": {}},
    "swin-mini": {
        "backbone": {"embed_dim": 32, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 4, 8]},
        "head": {"feature_size": 64, "mask_feature_size": 64, "hidden_dim": 64, "encoder_feedforward_dim": 128,
                 "encoder_layers": 2, "decoder_layers": 3, "num_attention_heads": 4, "dim_feedforward": 128,
                 "num_queries": 16},
    },
}


def hf_config(encoder: str, classes: int) -> Any:
    """transformers' ``Mask2FormerConfig`` for ``encoder`` with ``classes`` labels, built locally (no download)."""
    from transformers import Mask2FormerConfig, SwinConfig

    settings = CONFIGS[encoder]
    backbone = SwinConfig(window_size=7, image_size=224, out_features=["stage1", "stage2", "stage3", "stage4"],
                          **settings["backbone"])
    return Mask2FormerConfig(backbone_config=backbone, use_timm_backbone=False, num_labels=classes,
                             **settings["head"])


def build_model(cfg: ExportConfig) -> Any:
    """The full transformers model with seeded weights (a checkpoint is loaded into it afterwards)."""
    from transformers import Mask2FormerForUniversalSegmentation

    return Mask2FormerForUniversalSegmentation(hf_config(cfg.encoder, cfg.classes))


def _graph_class() -> type:
    import torch

    class Mask2FormerGraph(torch.nn.Module):
        """image -> (class logits, mask logits): the last decoder layer's predictions, no auxiliary outputs."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with dynamic_offsets():  # traced by torch.onnx.export; eager, the same arithmetic as transformers'
                out = self.model(pixel_values=image)
            return out.class_queries_logits, out.masks_queries_logits

    return Mask2FormerGraph


def graph(model: Any) -> Any:
    return _graph_class()(model).eval()


def _offset_normalizer(shapes: list[tuple[Any, Any]], like: Any) -> Any:
    """``[[w, h], ...]`` per feature level, stacked from the sizes themselves (traced: from the graph's shapes)."""
    import torch

    return torch.stack([torch.stack([torch.as_tensor(w), torch.as_tensor(h)]) for h, w in shapes]).to(like.dtype)


def _deformable_attention(self: Any, hidden_states: Any, attention_mask: Any = None, encoder_hidden_states: Any = None,
                          encoder_attention_mask: Any = None, position_embeddings: Any = None,
                          reference_points: Any = None, spatial_shapes_list: Any = None,
                          level_start_index: Any = None, output_attentions: bool = False) -> tuple[Any, Any]:
    """transformers' ``Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention.forward`` (2-d reference
    points, the only kind its pixel decoder makes), with :func:`_offset_normalizer` for its constant."""
    from torch import nn
    from transformers.models.mask2former import modeling_mask2former as m2f

    if position_embeddings is not None:
        hidden_states = hidden_states + position_embeddings
    batch, queries, _ = hidden_states.shape
    _, length, _ = encoder_hidden_states.shape
    value = self.value_proj(encoder_hidden_states)
    if attention_mask is not None:
        value = value.masked_fill(attention_mask[..., None], 0.0)
    value = value.view(batch, length, self.n_heads, self.d_model // self.n_heads)
    offsets = self.sampling_offsets(hidden_states).view(batch, queries, self.n_heads, self.n_levels, self.n_points, 2)
    weights = self.attention_weights(hidden_states).view(batch, queries, self.n_heads, self.n_levels * self.n_points)
    weights = nn.functional.softmax(weights, -1).view(batch, queries, self.n_heads, self.n_levels, self.n_points)
    norm = _offset_normalizer(spatial_shapes_list, offsets)
    locations = reference_points[:, :, None, :, None, :] + offsets / norm[None, None, None, :, None, :]
    out = m2f.multi_scale_deformable_attention(value, spatial_shapes_list, locations, weights)
    return self.output_proj(out), weights


@contextmanager
def dynamic_offsets() -> Iterator[None]:
    """While exporting: the deformable attention with its offset normaliser traced from the feature sizes."""
    from transformers.models.mask2former import modeling_mask2former as m2f

    cls = m2f.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention
    original = cls.forward
    cls.forward = _deformable_attention
    try:
        yield
    finally:
        cls.forward = original


def check_state(cfg: ExportConfig, state: dict[str, Any], path: Path) -> None:
    """A checkpoint's class head has ``classes + 1`` rows (the last: no object); refuse another count by name."""
    head = state.get("class_predictor.weight")
    if head is None:
        raise ExportError(f"{path.name} has no class_predictor.weight: not a Mask2FormerForUniversalSegmentation "
                          "state dict")
    if head.shape[0] != cfg.classes + 1:
        raise ExportError(f"checkpoint {path.name} has {head.shape[0] - 1} classes (class_predictor.weight: "
                          f"{head.shape[0]} rows, the last is no-object); you asked for --classes {cfg.classes}")


def torch_logits(model: Any, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """transformers' eager class and mask logits for one input tensor (the runtime's preprocessing)."""
    import torch

    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(tensor))
    return out.class_queries_logits.numpy(), out.masks_queries_logits.numpy()


def logit_agreement(model: Any, runner: Any, tensor: np.ndarray) -> dict[str, Any]:
    """ONNX Runtime against PyTorch on the same input: largest absolute and relative differences per output."""
    ref = torch_logits(model, tensor)
    got = runner.infer({"image": tensor})
    check: dict[str, Any] = {"input_size": [int(tensor.shape[2]), int(tensor.shape[3])]}
    for name, r in zip(OUTPUTS, ref):
        diff = float(np.abs(got[name] - r).max())
        check[name] = {"shape": list(got[name].shape), "max_abs_diff": diff,
                       "max_rel_diff": diff / max(float(np.abs(r).max()), 1e-12)}
    return check


class Mask2FormerExport(ExportFamily):
    """One graph traced at 256x320 with the dynamic offset normaliser; checked at :data:`CHECK_SIZES`."""

    def check(self, spec: ModelSpec, cfg: ExportConfig) -> None:
        if cfg.in_channels != 3:
            raise ExportError(f"mask2former takes RGB images; got --in-channels {cfg.in_channels}")

    def graphs(self, spec: ModelSpec, model: Any, cfg: ExportConfig) -> list[Graph]:
        import torch

        return [Graph("model.onnx", graph(model), (torch.rand(1, 3, 256, 320),), spec)]

    def manifest(self, spec: ModelSpec, cfg: ExportConfig, source: dict[str, Any], versions: dict[str, str]) -> Manifest:
        return Manifest(
            task=spec.task,
            architecture=spec.name,
            encoder=cfg.encoder,
            classes=cfg.names,
            input=InputSpec(name=spec.input_names[0], channels=3, color="rgb", mean=spec.mean, std=spec.std,
                            resize="stretch", size=INPUT_SIZE, stride=spec.stride),
            output=OutputSpec(name=OUTPUTS[1], activation="none"),
            source=source,
            versions=versions,
        )

    def verify(self, spec: ModelSpec, model: Any, bundle: Path, cfg: ExportConfig) -> dict[str, Any]:
        from dataclasses import replace

        from segrt.runtime import prepost
        from segrt.runtime.backends import OrtCpuRunner, RunnerOptions
        from segrt.runtime.image import read_image, to_channels
        from segrt.runtime.manifest import read_manifest

        from ..verify import default_photo

        name, photo = (str(cfg.verify_image), read_image(cfg.verify_image)) if cfg.verify_image else default_photo(3)
        photo = to_channels(photo, 3)
        spec_in = read_manifest(bundle).input
        runner = OrtCpuRunner(bundle / "model.onnx", RunnerOptions())
        checks = []
        for size in CHECK_SIZES:
            tensor, _ = prepost.preprocess([photo], replace(spec_in, size=size))
            checks.append(logit_agreement(model, runner, tensor))
        runner.close()
        log.info("verified against transformers on %s at %s: %s", name, CHECK_SIZES, checks)
        return {"image": name, "checks": checks}

    def gate(self, spec: ModelSpec, cfg: ExportConfig, source: dict[str, Any], verification: dict[str, Any]) -> None:
        worst = max(c[o]["max_rel_diff"] for c in verification["checks"] for o in OUTPUTS)
        if worst > MAX_REL_LOGIT_DIFF:
            raise ExportError(f"exported {spec.name} differs from transformers by {worst:.3g} (relative logits) on "
                              f"{verification['image']}; bundle not written (limit {MAX_REL_LOGIT_DIFF})")

    def report(self, manifest: Manifest) -> str:
        checks = manifest.verification["checks"]
        return ", ".join(f"{c['input_size'][0]}x{c['input_size'][1]}: mask logits max diff "
                         f"{c['mask_logits']['max_abs_diff']:.2g}" for c in checks)


SPEC = ModelSpec(
    name="mask2former",
    task="universal",
    family=Mask2FormerExport(),
    build=build_model,
    encoders=lambda: tuple(CONFIGS),
    default_encoder="swin-tiny",
    stride=32,
    output_names=OUTPUTS,
    dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "class_logits": {0: "batch"},
                  "mask_logits": {0: "batch", 2: "mask_height", 3: "mask_width"}},
    exporter="torchscript",
    trace_wrapper=graph,
    check_state=check_state,
    deps=TRANSFORMERS_DEPS,
)
