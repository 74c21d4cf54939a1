"""Segment Anything: the image encoder and the prompt decoder as two graphs.

Built from segment-anything's own modules (``sam_model_registry``), so Meta's checkpoints load
unchanged. The encoder graph takes the normalised, padded 1024x1024 image; resizing, normalising
and padding are the runtime's. The decoder graph is segment-anything's ``SamOnnxModel`` without its
mask post-processing: no ``orig_im_size`` input (as a graph input it becomes a TensorRT shape
tensor), no upscaling and no single-mask selection. It returns all four low-res masks per prompt and
their IoU predictions; the runtime slices them as ``SamPredictor`` does and upscales outside the
graph. Prompts come in a batch (B prompts of N points each, both dynamic); a box is two corner
points labelled 2 and 3, and a prompt without a box ends with one padding point labelled -1.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from segrt.runtime.errors import ExportError
from segrt.runtime.manifest import InputSpec, Manifest, OutputSpec, SamSpec

from ..spec import ExportConfig, ExportFamily, Graph, GraphIO, ModelSpec, QuantDefaults

log = logging.getLogger("segrt")
#: A fresh export is refused when its low-res logits differ from PyTorch's by more than this
#: (max abs difference over max abs PyTorch logit) or any mask's IoU with PyTorch's is below the next.
MAX_LOGIT_REL_ERROR = 1e-3
MIN_MASK_IOU = 0.98


@dataclass(frozen=True)
class Variant:
    embed_dim: int
    depth: int
    heads: int
    global_attn: tuple[int, ...]
    official: bool = True
    #: Random init leaves mask logits within +-0.3 and IoU predictions near 0, so the automatic
    #: generator's filters (stability at logit +-1, predicted IoU 0.88) would drop every mask. The
    #: test variant's output layers are scaled to the ranges a trained SAM's span.
    sharpen: bool = False


#: segment-anything's encoders, plus ``tiny``: the same modules, shallow and narrow, for tests (no
#: official checkpoint exists for it; use ``--checkpoint none``).
VARIANTS: dict[str, Variant] = {
    "vit_b": Variant(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": Variant(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": Variant(1280, 32, 16, (7, 15, 23, 31)),
    "tiny": Variant(64, 2, 2, (1,), official=False, sharpen=True),
}
IMAGE_SIZE = 1024
EMBED_SHAPE = (256, 64, 64)
LOW_RES = 256
MASK_TOKENS = 4  # one single-mask output, then three multimask outputs
ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
DECODER_OUTPUTS = ("low_res_masks", "iou_predictions")


def build_sam(variant: str) -> Any:
    """segment-anything's ``Sam`` for ``variant`` with random weights (seed first)."""
    from segment_anything.build_sam import _build_sam

    if variant not in VARIANTS:
        raise ExportError(f"unknown SAM variant {variant!r}; valid: {', '.join(VARIANTS)}")
    v = VARIANTS[variant]
    model = _build_sam(encoder_embed_dim=v.embed_dim, encoder_depth=v.depth, encoder_num_heads=v.heads,
                       encoder_global_attn_indexes=list(v.global_attn), checkpoint=None)
    if v.sharpen:
        _sharpen(model)
    return model


def _sharpen(model: Any) -> None:
    """Mask logits to about +-10 and IoU predictions to about 0.8-1.0 (random weights otherwise
    give +-0.3 and 0)."""
    import torch

    dec = model.mask_decoder
    with torch.no_grad():
        for mlp in dec.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(30.0)
            mlp.layers[-1].bias.mul_(30.0)
        last = dec.iou_prediction_head.layers[-1]
        last.weight.mul_(2.0)
        last.bias.fill_(0.8)


def detect_variant(state: dict[str, Any]) -> str | None:
    """Which variant a state dict was saved from (by encoder width and depth), or None."""
    proj = state.get("image_encoder.patch_embed.proj.weight")
    if proj is None:
        return None
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name, v in VARIANTS.items():
        if v.embed_dim == proj.shape[0] and v.depth == depth:
            return name
    return None


def check_variant(variant: str, state: dict[str, Any], path: Path) -> None:
    """Name the variant a checkpoint really is when it does not fit the one asked for."""
    found = detect_variant(state)
    if found != variant:
        what = f"a {found} checkpoint" if found else "not a SAM checkpoint (no image_encoder.patch_embed)"
        raise ExportError(f"{path.name} is {what}; you asked for --variant {variant}")


def _encoder_class() -> type:
    import torch

    class SamEncoderGraph(torch.nn.Module):
        """Normalised, padded (1, 3, 1024, 1024) image -> (1, 256, 64, 64) image embeddings."""

        def __init__(self, sam: Any) -> None:
            super().__init__()
            self.image_encoder = sam.image_encoder

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.image_encoder(image)

    return SamEncoderGraph


def _attention(att: Any, q: Any, k: Any, v: Any) -> Any:
    """segment-anything's ``Attention.forward``; the MatMuls broadcast a batch of 1 against B."""
    import torch

    q = att._separate_heads(att.q_proj(q), att.num_heads)
    k = att._separate_heads(att.k_proj(k), att.num_heads)
    v = att._separate_heads(att.v_proj(v), att.num_heads)
    attn = torch.softmax(q @ k.permute(0, 1, 3, 2) / math.sqrt(q.shape[-1]), dim=-1)
    return att.out_proj(att._recombine_heads(attn @ v))


def embed_points(pe: Any, coords: Any, labels: Any) -> Any:
    """The prompt encoder's point embeddings without its data-dependent branches (segment-anything's and sam2's
    prompt encoders share this layout): label -1 is padding, 0/1 background/foreground, 2/3 box corners."""
    emb = pe.pe_layer._pe_encoding((coords + 0.5) / IMAGE_SIZE)
    labels = labels.unsqueeze(-1).expand_as(emb)
    emb = emb * (labels != -1) + pe.not_a_point_embed.weight * (labels == -1)
    for i in range(pe.num_point_embeddings):
        emb = emb + pe.point_embeddings[i].weight * (labels == i)
    return emb


def _two_way_block(blk: Any, queries: Any, keys: Any, query_pe: Any, key_pe: Any) -> tuple[Any, Any]:
    """``TwoWayAttentionBlock.forward``, same operations in the same order."""
    if blk.skip_first_layer_pe:
        queries = _attention(blk.self_attn, queries, queries, queries)
    else:
        q = queries + query_pe
        queries = queries + _attention(blk.self_attn, q, q, queries)
    queries = blk.norm1(queries)
    queries = blk.norm2(queries + _attention(blk.cross_attn_token_to_image, queries + query_pe, keys + key_pe, keys))
    queries = blk.norm3(queries + blk.mlp(queries))
    attn_out = _attention(blk.cross_attn_image_to_token, keys + key_pe, queries + query_pe, queries)
    return queries, blk.norm4(keys + attn_out)


def predict_masks(decoder: Any, image_embeddings: Any, image_pe: Any, sparse: Any, dense: Any) -> tuple[Any, Any]:
    """``MaskDecoder.predict_masks`` without ``repeat_interleave``: the image side stays a batch of one
    until the first image-to-token attention mixes in each prompt. The same arithmetic, but the
    prompt-independent projections of the 4096 image tokens run once per call instead of once per
    prompt, and no B copies of the embeddings are made (profiled: Tile alone was 8 % of the decoder)."""
    import torch

    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
    src = image_embeddings + dense  # (1 or B, C, h, w)
    _, c, h, w = src.shape
    t = decoder.transformer
    keys, key_pe = src.flatten(2).permute(0, 2, 1), image_pe.flatten(2).permute(0, 2, 1)
    queries = tokens
    for layer in t.layers:
        queries, keys = _two_way_block(layer, queries, keys, tokens, key_pe)
    queries = t.norm_final_attn(queries + _attention(t.final_attn_token_to_image, queries + tokens, keys + key_pe, keys))
    iou_token_out, mask_tokens_out = queries[:, 0, :], queries[:, 1 : 1 + decoder.num_mask_tokens, :]
    upscaled = decoder.output_upscaling(keys.transpose(1, 2).reshape(-1, c, h, w))
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
                           dim=1)
    b, c2, h2, w2 = upscaled.shape
    masks = (hyper_in @ upscaled.reshape(b, c2, h2 * w2)).reshape(b, -1, h2, w2)
    return masks, decoder.iou_prediction_head(iou_token_out)


def _decoder_class() -> type:
    import torch

    class SamDecoderGraph(torch.nn.Module):
        """Prompt encoder + mask decoder for a batch of prompts on one image's embeddings."""

        def __init__(self, sam: Any) -> None:
            super().__init__()
            self.prompt_encoder, self.mask_decoder = sam.prompt_encoder, sam.mask_decoder

        def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return embed_points(self.prompt_encoder, coords, labels)

        def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                    mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pe = self.prompt_encoder
            sparse = self._embed_points(point_coords, point_labels)
            dense = has_mask_input * pe.mask_downscaling(mask_input)
            dense = dense + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
            return predict_masks(self.mask_decoder, image_embeddings, pe.get_dense_pe(), sparse, dense)

    return SamDecoderGraph


def encoder_graph(sam: Any) -> Any:
    return _encoder_class()(sam).eval()


def decoder_graph(sam: Any) -> Any:
    return _decoder_class()(sam).eval()


def attention_products(model: Any) -> list[str]:
    """The encoder's q@k and attn@v MatMuls (not the linear layers), which overflow in FP16."""
    return [n.name for n in model.graph.node
            if n.op_type in ("MatMul", "Einsum") and "/attn/" in n.name and "/qkv/" not in n.name and "/proj/" not in n.name]


def build(cfg: ExportConfig) -> Any:
    return build_sam(cfg.encoder)


ENCODER = GraphIO(name="sam_encoder", input_names=ENCODER_INPUTS, output_names=ENCODER_OUTPUTS, dynamic_axes={})
DECODER = GraphIO(
    name="sam_decoder", input_names=DECODER_INPUTS, output_names=DECODER_OUTPUTS,
    dynamic_axes={"point_coords": {0: "prompts", 1: "points"}, "point_labels": {0: "prompts", 1: "points"},
                  "mask_input": {0: "mask_batch"}, "low_res_masks": {0: "prompts"}, "iou_predictions": {0: "prompts"}},
)


class SamExport(ExportFamily):
    """Two graphs (encoder.onnx, decoder.onnx), checked against segment-anything's ``SamPredictor`` on a real photo."""

    def graphs(self, spec: ModelSpec, model: Any, cfg: ExportConfig) -> list[Graph]:
        import torch

        from ..onnx_io import PROTO_LIMIT

        s = IMAGE_SIZE
        dec_example = (torch.randn(1, *EMBED_SHAPE), torch.rand(2, 3, 2) * s, torch.tensor([[1.0, 0.0, -1.0]] * 2),
                       torch.zeros(1, 1, LOW_RES, LOW_RES), torch.zeros(1))
        encoder = ENCODER
        if sum(p.numel() * p.element_size() for p in model.image_encoder.parameters()) > PROTO_LIMIT:
            # vit_h (2.5 GB): the TorchScript exporter runs a real forward while tracing and was OOM-killed at 24 GB;
            # the dynamo exporter traces with fake tensors (vit_b: 1.2 GB peak, outputs within 1e-6 of PyTorch)
            encoder = replace(ENCODER, exporter="dynamo")
        return [Graph("encoder.onnx", encoder_graph(model), (torch.randn(1, 3, s, s),), encoder, "encoder"),
                Graph("decoder.onnx", decoder_graph(model), dec_example, DECODER, "decoder")]

    def manifest(self, spec: ModelSpec, cfg: ExportConfig, source: dict[str, Any], versions: dict[str, str]) -> Manifest:
        return Manifest(
            task=spec.task, architecture=spec.name, encoder=cfg.encoder, classes=(),
            input=InputSpec(name=ENCODER_INPUTS[0], channels=3, color="rgb", mean=spec.mean, std=spec.std,
                            resize="longest_side", stride=IMAGE_SIZE, size=(IMAGE_SIZE, IMAGE_SIZE)),
            output=OutputSpec(name=ENCODER_OUTPUTS[0]),
            model_file="encoder.onnx",
            sam=SamSpec(variant=cfg.encoder, decoder_file="decoder.onnx", embedding_shape=EMBED_SHAPE,
                        low_res_size=LOW_RES, mask_tokens=MASK_TOKENS),
            source=source, versions=versions,
        )

    def verify(self, spec: ModelSpec, model: Any, bundle: Path, cfg: ExportConfig) -> dict[str, Any]:
        from segrt.runtime.image import read_image
        from segrt.runtime.sam import SamPredictor

        from ..verify import default_photo, sam_agreement

        name, photo = (str(cfg.verify_image), read_image(cfg.verify_image)) if cfg.verify_image else default_photo(3)
        checks = sam_agreement(model, SamPredictor(bundle, "cpu"), photo)
        worst_err = max(c["logit_rel_error"] for c in checks)
        worst_iou = min(c["min_mask_iou"] for c in checks)
        log.info("verified against segment-anything on %s: logit rel error %.2e, worst mask IoU %.4f",
                 name, worst_err, worst_iou)
        return {"image": name, "max_logit_rel_error": worst_err, "min_mask_iou": worst_iou, "checks": checks}

    def gate(self, spec: ModelSpec, cfg: ExportConfig, source: dict[str, Any], verification: dict[str, Any]) -> None:
        err, iou = verification["max_logit_rel_error"], verification["min_mask_iou"]
        if err > MAX_LOGIT_REL_ERROR or iou < MIN_MASK_IOU:
            raise ExportError(f"exported SAM {cfg.encoder} differs from segment-anything on {verification['image']}: "
                              f"logit relative error {err:.2e} (limit {MAX_LOGIT_REL_ERROR:g}), worst mask IoU "
                              f"{iou:.4f} (limit {MIN_MASK_IOU}); bundle not written")

    def report(self, manifest: Manifest) -> str:
        v = manifest.verification
        return (f"logit relative error {v['max_logit_rel_error']:.2e}, worst mask IoU {v['min_mask_iou']:.4f} "
                "against segment-anything")


SPEC = ModelSpec(
    name="sam", task="sam", family=SamExport(), build=build, encoders=lambda: tuple(VARIANTS), default_encoder="vit_b",
    stride=IMAGE_SIZE, input_names=ENCODER_INPUTS, output_names=ENCODER_OUTPUTS, dynamic_axes={},
    exporter="torchscript", deps={"torchvision": "torchvision", "segment_anything": "segment-anything"},
    default_classes=lambda: (), check_state=lambda cfg, state, path: check_variant(cfg.encoder, state, path),
    weights_flag="--checkpoint", weights_hint="Meta's sam_vit_*.pth",
    quant=QuantDefaults(
        float_nodes=attention_products,
        # the static route (target=tensorrt): Conv and the weight MatMuls; the attention products stay float, as in FP16
        int8_op_types=("Conv", "MatMul", "Gemm"),
        int8_note="attention products q@k and attn@v kept float",
        cpu_int8="dynamic",  # quantize.to_int8_dynamic says why
    ),
)
