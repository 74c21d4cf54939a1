"""FP16 variants: ONNX Runtime's float16 converter (onnxruntime.transformers, the maintained fork of
onnxconverter-common's) with numerically sensitive ops kept in FP32 (LayerNorm, Softmax, reductions, and for
SAM's encoder the attention products, for Mask R-CNN everything outside the backbone), after the graph has
been made plain FP32 (``graph_normalize``: models published after a float16 converter break it otherwise).
Any converter failure is an ExportError of one line. Needs onnx and onnxruntime; never torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from segrt.runtime.errors import ExportError

from .graph_normalize import all_nodes, normalize_to_fp32, topological_sort

if TYPE_CHECKING:
    from .quantize import QuantizeConfig
    from .spec import QuantDefaults

#: Kept in FP32 by the FP16 conversion (the converter's own list is added to these).
FP16_KEEP_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceMax", "Pow", "Sqrt", "Exp",
                 "Log", "Erf", "CumSum", "NonMaxSuppression", "RoiAlign", "TopK")


def _repair_outer_scope_reads(model: Any) -> list[str]:
    """The converter does not see that a subgraph (an If branch) reads a value of the outer graph: it casts
    that value to FP16 for the outer consumers and the branch, kept FP32, then gets FP16 and ONNX Runtime
    refuses the graph ("Tensor element type mismatch"). Point those reads back at the FP32 value."""
    from onnx import TensorProto

    producer = {o: n for n in model.graph.node for o in n.output}
    repaired = []
    for node in model.graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.g.node else []) + list(attr.graphs):
                local = {o for n in all_nodes(sub) for o in n.output} | {i.name for i in sub.initializer}
                for inner in all_nodes(sub):
                    for k, name in enumerate(inner.input):
                        cast = producer.get(name)
                        if (name and name not in local and cast is not None and cast.op_type == "Cast"
                                and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in cast.attribute)):
                            inner.input[k] = cast.input[0]
                            repaired.append(inner.name)
    return repaired


def convert(model: Any, cfg: QuantizeConfig, ops: list[str], nodes: list[str]) -> tuple[Any, int]:
    """The converter, its repairs and the checker; whatever they raise becomes one ExportError line."""
    import warnings

    from onnxruntime.transformers import float16

    try:
        with warnings.catch_warnings():  # one "will be truncated" warning per tiny weight
            warnings.simplefilter("ignore", UserWarning)
            converted = float16.convert_float_to_float16(model, keep_io_types=not cfg.fp16_io, op_block_list=ops,
                                                         node_block_list=nodes, disable_shape_infer=False)
        repaired = _repair_outer_scope_reads(converted)
        topological_sort(converted.graph)
        if not cfg.fp16_io:
            _float_outputs(converted)
    except ExportError:
        raise
    except Exception as exc:  # onnx's checker and the converter raise untyped errors of many kinds
        raise ExportError(f"FP16 conversion failed ({type(exc).__name__}: {str(exc).splitlines()[0]}); keep the "
                          "node it names in FP32 with --exclude NODE, or report it with the model") from None
    return converted, len(repaired)


def to_fp16(src: Path, dst: Path, cfg: QuantizeConfig, family: QuantDefaults) -> dict[str, Any]:
    """``family``: the bundle's quantization defaults (the nodes its family keeps in FP32)."""
    import onnx
    from onnxruntime.transformers import float16

    from .onnx_io import save_onnx

    model = onnx.load(str(src))
    normalized = normalize_to_fp32(model)
    ops = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_OPS) | set(cfg.extra_keep))
    nodes = sorted(set(cfg.exclude) | (set(family.float_nodes(model)) if family.float_nodes else set()))
    # The exporter's value_info annotations go first: with them the converter types the Cast after a
    # kept-FP32 node as float16 and ONNX Runtime refuses the graph (seen on U-Net's Resize and
    # DeepLab's ReduceMean); it re-infers them itself.
    del model.graph.value_info[:]
    converted, repaired = convert(model, cfg, ops, nodes)
    save_onnx(converted, dst)
    kept = [f"{len(nodes)} {family.fp16_summary}"] if family.fp16_summary else nodes
    return {"converter": "onnxruntime.transformers.float16", "kept_fp32_ops": ops, "kept_fp32_nodes": kept,
            "outer_scope_reads_repaired": repaired, "io": "fp16" if cfg.fp16_io else "fp32",
            **({"normalized_from_mixed_precision": normalized} if normalized else {})}


def _float_outputs(model: Any) -> None:
    """FP32 I/O was asked: cast any output the converter left in float16 back to float32."""
    import onnx
    from onnx import TensorProto, helper

    for out in model.graph.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        inner = f"{out.name}__fp16"
        for node in model.graph.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
            node.input[:] = [inner if i == out.name else i for i in node.input]
        model.graph.node.append(helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT,
                                                 name=f"{out.name}_to_fp32"))
        out.type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.checker.check_model(model)


