"""SAM 2 (2.1) image path: the image encoder and the prompt decoder as two graphs.

Built from Meta's ``sam2`` package (its SAM 2.1 configs), so the official ``sam2.1_hiera_*.pt`` checkpoints
(``{"model": state_dict}``) load unchanged. The encoder graph takes the normalised 1024x1024 image (stretched,
not padded: sam2's own preprocessing) and returns what sam2's ``SAM2ImagePredictor.set_image`` keeps: the
64x64 image embedding (``no_mem_embed`` already added) and the two high-resolution levels after the mask
decoder's ``conv_s0``/``conv_s1``. The vision positional encodings are not outputs: the prompt decoder's dense
PE is a constant of the graph, and the sine encodings only the video path (memory attention) needs depend on
nothing but the feature shapes.

The decoder graph is the prompt encoder + mask decoder for a batch of prompts (B prompts of N points, both
dynamic): no upscaling, no single-mask selection, no shape-tensor inputs. It returns all four low-res masks,
their IoU predictions and the object score logit; the runtime selects masks as sam2 does (multimask, or the
single mask with sam2's dynamic fallback on low stability) and upscales outside the graph. A box is two corner
points labelled 2 and 3 placed first; every prompt ends with one padding point labelled -1, as sam2's predictor
always pads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segrt.runtime.errors import ExportError
from segrt.runtime.manifest import InputSpec, Manifest, OutputSpec

from ..spec import ExportConfig, ExportFamily, Graph, GraphIO, ModelSpec
from .sam import _attention, _two_way_block, embed_points

log = logging.getLogger("segrt")
#: A fresh export is refused when a graph output differs from sam2's by more than this (max abs difference
#: over max abs sam2 value) or when a mask's IoU with sam2's predictor is below the next.
MAX_REL_ERROR = 1e-3
MIN_MASK_IOU = 0.98


@dataclass(frozen=True)
class Variant:
    config: str  # inside the sam2 package
    embed_dim: int  # Hiera's first-stage width
    blocks: int  # Hiera blocks over all stages


VARIANTS: dict[str, Variant] = {
    "hiera_t": Variant("configs/sam2.1/sam2.1_hiera_t.yaml", 96, 12),
    "hiera_s": Variant("configs/sam2.1/sam2.1_hiera_s.yaml", 96, 16),
    "hiera_b+": Variant("configs/sam2.1/sam2.1_hiera_b+.yaml", 112, 24),
    "hiera_l": Variant("configs/sam2.1/sam2.1_hiera_l.yaml", 144, 48),
}
IMAGE_SIZE = 1024
LOW_RES = 256
MASK_TOKENS = 4
ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embed", "high_res_feats_0", "high_res_feats_1")
DECODER_INPUTS = ("image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels",
                  "mask_input", "has_mask_input")
DECODER_OUTPUTS = ("low_res_masks", "iou_predictions", "object_score_logits")
#: seeded weights only: sam2's object-score head says "no object" and the mask logits are near zero, so every
#: mask would be empty; these make the untrained model say "object" and give masks of a fair part of the frame.
SEEDED_OBJECT_BIAS = 10.0
SEEDED_HYPER_SCALE = 20.0


def build_sam2_model(variant: str, seeded: bool) -> Any:
    """sam2's ``SAM2Base`` for ``variant`` in eval mode with random weights (seed first); ``seeded``: made
    non-trivial (see :data:`SEEDED_OBJECT_BIAS`)."""
    from sam2.build_sam import build_sam2

    if variant not in VARIANTS:
        raise ExportError(f"unknown SAM 2 variant {variant!r}; valid: {', '.join(VARIANTS)}")
    model = build_sam2(VARIANTS[variant].config, ckpt_path=None, device="cpu", mode="eval")
    # inference only: without this, tracing the encoder keeps every activation for a backward pass (hiera_t: a
    # 3.9 GB peak instead of 1.8 GB)
    model.requires_grad_(False)
    if seeded:
        make_seeded_nontrivial(model)
    return model


def make_seeded_nontrivial(model: Any) -> None:
    """The object-score head's last bias to +10 ("object present") and the hypernetwork MLPs' last weights x20
    (mask logits far from the threshold). For untrained exports and test fixtures only."""
    import torch

    dec = model.sam_mask_decoder
    with torch.no_grad():
        head = dec.pred_obj_score_head
        (head.layers[-1] if hasattr(head, "layers") else head).bias.fill_(SEEDED_OBJECT_BIAS)
        for mlp in dec.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(SEEDED_HYPER_SCALE)


def detect_variant(state: dict[str, Any]) -> str | None:
    """Which variant a state dict was saved from (Hiera's width and block count), or None."""
    proj = state.get("image_encoder.trunk.patch_embed.proj.weight")
    if proj is None:
        return None
    blocks = len({k.split(".")[3] for k in state if k.startswith("image_encoder.trunk.blocks.")})
    return next((n for n, v in VARIANTS.items() if v.embed_dim == proj.shape[0] and v.blocks == blocks), None)


def check_variant(variant: str, state: dict[str, Any], path: Path) -> None:
    """Name the variant a checkpoint really is when it does not fit the one asked for."""
    found = detect_variant(state)
    if found != variant:
        what = f"a SAM 2 {found} checkpoint" if found else "not a SAM 2 checkpoint (no image_encoder.trunk.patch_embed)"
        raise ExportError(f"{path.name} is {what}; you asked for --variant {variant}")


def _encoder_class() -> type:
    import torch

    class Sam2EncoderGraph(torch.nn.Module):
        """(1, 3, 1024, 1024) normalised image -> image_embed (1, 256, 64, 64), high_res_feats_0 (1, 32, 256,
        256), high_res_feats_1 (1, 64, 128, 128): ``SAM2ImagePredictor.set_image``'s features."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            m = self.model
            fpn = m.forward_image(image)["backbone_fpn"][-m.num_feature_levels:]
            embed = fpn[-1]
            if m.directly_add_no_mem_embed:
                embed = embed + m.no_mem_embed.reshape(1, -1, 1, 1)
            return embed, fpn[0], fpn[1]

    return Sam2EncoderGraph


def predict_masks(dec: Any, embed: Any, image_pe: Any, sparse: Any, dense: Any, feat_s0: Any, feat_s1: Any
                  ) -> tuple[Any, Any, Any]:
    """sam2's ``MaskDecoder.predict_masks`` without ``repeat_interleave`` (as SAM 1's graph): the image side
    stays a batch of one until the first image-to-token attention mixes in each prompt."""
    import torch

    tokens = torch.cat([dec.obj_score_token.weight, dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat((tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
    src = embed + dense
    _, c, h, w = src.shape
    t = dec.transformer
    keys, key_pe = src.flatten(2).permute(0, 2, 1), image_pe.flatten(2).permute(0, 2, 1)
    queries = tokens
    for layer in t.layers:
        queries, keys = _two_way_block(layer, queries, keys, tokens, key_pe)
    queries = t.norm_final_attn(queries + _attention(t.final_attn_token_to_image, queries + tokens, keys + key_pe, keys))
    mask_tokens_out = queries[:, 2 : 2 + dec.num_mask_tokens, :]
    dc1, ln1, act1, dc2, act2 = dec.output_upscaling
    upscaled = act1(ln1(dc1(keys.transpose(1, 2).reshape(-1, c, h, w)) + feat_s1))
    upscaled = act2(dc2(upscaled) + feat_s0)
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1)
    b, c2, h2, w2 = upscaled.shape
    # constant trailing sizes, so the graph's output shape is (prompts, 4, 256, 256), not four symbols
    masks = (hyper_in @ upscaled.reshape(b, c2, h2 * w2)).reshape(-1, MASK_TOKENS, LOW_RES, LOW_RES)
    return masks, dec.iou_prediction_head(queries[:, 1, :]), dec.pred_obj_score_head(queries[:, 0, :])


def _decoder_class() -> type:
    import torch

    class Sam2DecoderGraph(torch.nn.Module):
        """sam2's prompt encoder + mask decoder for B prompts of N points on one image's features."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.prompt_encoder, self.mask_decoder = model.sam_prompt_encoder, model.sam_mask_decoder

        def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return embed_points(self.prompt_encoder, coords, labels)

        def forward(self, image_embed: torch.Tensor, high_res_feats_0: torch.Tensor, high_res_feats_1: torch.Tensor,
                    point_coords: torch.Tensor, point_labels: torch.Tensor, mask_input: torch.Tensor,
                    has_mask_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            pe = self.prompt_encoder
            sparse = self._embed_points(point_coords, point_labels)
            dense = has_mask_input * pe.mask_downscaling(mask_input)
            dense = dense + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
            return predict_masks(self.mask_decoder, image_embed, pe.get_dense_pe(), sparse, dense,
                                 high_res_feats_0, high_res_feats_1)

    return Sam2DecoderGraph


def encoder_graph(model: Any) -> Any:
    return _encoder_class()(model).eval()


def decoder_graph(model: Any) -> Any:
    return _decoder_class()(model).eval()


def build(cfg: ExportConfig) -> Any:
    return build_sam2_model(cfg.encoder, seeded=cfg.weights is None)


ENCODER = GraphIO(name="sam2_encoder", input_names=ENCODER_INPUTS, output_names=ENCODER_OUTPUTS, dynamic_axes={})
DECODER = GraphIO(
    name="sam2_decoder", input_names=DECODER_INPUTS, output_names=DECODER_OUTPUTS,
    dynamic_axes={"point_coords": {0: "prompts", 1: "points"}, "point_labels": {0: "prompts", 1: "points"},
                  "mask_input": {0: "mask_batch"}, "low_res_masks": {0: "prompts"}, "iou_predictions": {0: "prompts"},
                  "object_score_logits": {0: "prompts"}},
)


def decoder_example(model: Any) -> tuple[Any, ...]:
    """Random features of the encoder's shapes and two prompts of three points (a point, a background point,
    the padding point)."""
    import torch

    dim = model.sam_mask_decoder.transformer_dim
    side = IMAGE_SIZE // 16
    feats = (torch.randn(1, dim, side, side), torch.randn(1, dim // 8, 4 * side, 4 * side),
             torch.randn(1, dim // 4, 2 * side, 2 * side))
    return (*feats, torch.rand(2, 3, 2) * IMAGE_SIZE, torch.tensor([[1.0, 0.0, -1.0]] * 2),
            torch.zeros(1, 1, LOW_RES, LOW_RES), torch.zeros(1))


class Sam2Export(ExportFamily):
    """Two graphs (encoder.onnx, decoder.onnx), each checked against the sam2 modules, and the bundle against
    sam2's ``SAM2ImagePredictor`` on a real photo."""

    def graphs(self, spec: ModelSpec, model: Any, cfg: ExportConfig) -> list[Graph]:
        import torch

        image = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
        return [Graph("encoder.onnx", encoder_graph(model), (image,), ENCODER, "encoder"),
                Graph("decoder.onnx", decoder_graph(model), decoder_example(model), DECODER, "decoder")]

    def manifest(self, spec: ModelSpec, cfg: ExportConfig, source: dict[str, Any], versions: dict[str, str]) -> Manifest:
        if not source.get("trained"):
            source = {**source, "seeded_tweak": {"object_score_bias": SEEDED_OBJECT_BIAS,
                                                 "hypernetwork_last_weight_scale": SEEDED_HYPER_SCALE}}
        return Manifest(
            task=spec.task, architecture=spec.name, encoder=cfg.encoder, classes=(),
            input=InputSpec(name=ENCODER_INPUTS[0], channels=3, color="rgb", mean=spec.mean, std=spec.std,
                            resize="stretch", stride=IMAGE_SIZE, size=(IMAGE_SIZE, IMAGE_SIZE)),
            output=OutputSpec(name=ENCODER_OUTPUTS[0]), model_file="encoder.onnx", source=source, versions=versions,
        )

    def verify(self, spec: ModelSpec, model: Any, bundle: Path, cfg: ExportConfig) -> dict[str, Any]:
        from segrt.runtime.image import read_image

        from ..sam2_export import agreement, write_sidecar
        from ..verify import default_photo

        write_sidecar(model, bundle, cfg.encoder)  # the runtime's constants, before the bundle is opened
        name, photo = (str(cfg.verify_image), read_image(cfg.verify_image)) if cfg.verify_image else default_photo(3)
        graphs, checks = agreement(model, bundle, photo)
        worst_err = max(graphs.values())
        worst_iou = min(c["min_mask_iou"] for c in checks)
        log.info("verified against sam2 on %s: worst output rel error %.2e, worst mask IoU %.4f", name, worst_err,
                 worst_iou)
        return {"image": name, "max_rel_error": worst_err, "graph_rel_errors": graphs, "min_mask_iou": worst_iou,
                "checks": checks}

    def gate(self, spec: ModelSpec, cfg: ExportConfig, source: dict[str, Any], verification: dict[str, Any]) -> None:
        err, iou = verification["max_rel_error"], verification["min_mask_iou"]
        if err > MAX_REL_ERROR or iou < MIN_MASK_IOU:
            raise ExportError(f"exported SAM 2 {cfg.encoder} differs from sam2 on {verification['image']}: output "
                              f"relative error {err:.2e} (limit {MAX_REL_ERROR:g}), worst mask IoU {iou:.4f} (limit "
                              f"{MIN_MASK_IOU}); bundle not written")

    def report(self, manifest: Manifest) -> str:
        v = manifest.verification
        return f"output relative error {v['max_rel_error']:.2e}, worst mask IoU {v['min_mask_iou']:.4f} against sam2"


SPEC = ModelSpec(
    name="sam2", task="sam2", family=Sam2Export(), build=build, encoders=lambda: tuple(VARIANTS),
    default_encoder="hiera_t", stride=IMAGE_SIZE, input_names=ENCODER_INPUTS, output_names=ENCODER_OUTPUTS,
    dynamic_axes={}, exporter="torchscript",
    deps={"torchvision": "torchvision", "sam2": "sam2", "hydra": "hydra-core", "iopath": "iopath"},
    default_classes=lambda: (), check_state=lambda cfg, state, path: check_variant(cfg.encoder, state, path),
    weights_flag="--checkpoint", weights_hint="Meta's sam2.1_hiera_*.pt",
)
