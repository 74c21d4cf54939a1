"""Mixed-precision graphs back to plain FP32, before segrt's FP16 converter and INT8 quantizer.

Many published ONNX models have already been through a float16 converter with ``keep_io_types``: FP32
inputs and outputs, FP16 weights, FP16 compute between a ``Cast(to=FLOAT16)`` after each input and a
``Cast(to=FLOAT)`` before each output, and more Cast pairs around the ops the converter kept in FP32.
Fed to a converter again, such a graph breaks it (ONNX Runtime's float16 converter names its new input
Cast like the old one: "not in SSA form"; onnxruntime.quantization puts a QuantizeLinear on a float16
tensor, which ONNX Runtime refuses, or calibrates through casts and loses the gate). So the graph is
made plain FP32 first: every FP16 weight and constant is widened to FP32 (exact: every float16 value is
a float32 value), every ``Cast(to=FLOAT16)`` becomes ``Cast(to=FLOAT)``, and then every Cast from FP32
to FP32 (the old round trips) is dropped. The result computes what the FP16 graph computed, in FP32,
from the same (FP16-rounded) weights; the FP16 converter then re-decides what runs in FP16. A graph
whose inputs or outputs are float16 is refused: it is an FP16 variant already, not a source.
Needs onnx; never torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segrt.runtime.errors import ExportError

from .onnx_io import PROTO_LIMIT, save_onnx


def all_nodes(graph: Any) -> Iterator[Any]:
    """Every node, including those inside If/Loop branches (torchvision's batched NMS has them)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.g.node else []) + list(attr.graphs):
                yield from all_nodes(sub)


def topological_sort(graph: Any) -> None:
    """ONNX Runtime's float16 converter appends the Casts it adds at the end of the node list (in its output,
    and so in the models published from it); ONNX wants producers first. A stable sort of the top-level graph (a node with branches also waits for what they read)."""
    nodes = list(graph.node)
    produced = {o for n in nodes for o in n.output}
    reads = []
    for node in nodes:
        inner = [n for attr in node.attribute for sub in ([attr.g] if attr.g.node else []) + list(attr.graphs)
                 for n in all_nodes(sub)]
        reads.append({i for i in list(node.input) + [i for n in inner for i in n.input] if i in produced}
                     - {o for n in inner for o in n.output})
    ready: set[str] = set()
    ordered: list[Any] = []
    pending = list(range(len(nodes)))
    while pending:
        now = [k for k in pending if reads[k] <= ready]
        if not now:
            raise ExportError("the graph has a cycle; report this with the model")
        ordered += [nodes[k] for k in now]
        ready |= {o for k in now for o in nodes[k].output}
        taken = set(now)
        pending = [k for k in pending if k not in taken]
    del graph.node[:]
    graph.node.extend(ordered)


#: Attributes holding an element type that the widening rewrites (Cast, EyeLike, Random*, ...).
_DTYPE_ATTRS = ("to", "dtype")


def _graphs(graph: Any) -> Iterator[Any]:
    """The graph and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graphs(sub)


def _fp16_io(model: Any) -> list[str]:
    from onnx import TensorProto

    return [v.name for v in list(model.graph.input) + list(model.graph.output)
            if v.type.tensor_type.elem_type == TensorProto.FLOAT16]


def has_float16(model: Any) -> bool:
    """Whether any weight, constant, cast target or annotated tensor of the graph is float16."""
    from onnx import TensorProto

    fp16 = TensorProto.FLOAT16
    for graph in _graphs(model.graph):
        if any(t.data_type == fp16 for t in graph.initializer):
            return True
        if any(v.type.tensor_type.elem_type == fp16 for v in [*graph.value_info, *graph.input, *graph.output]):
            return True
        for node in graph.node:
            for attr in node.attribute:
                if (attr.HasField("t") and attr.t.data_type == fp16) or (attr.name in _DTYPE_ATTRS and attr.i == fp16):
                    return True
    return bool(_fp16_io(model))


def _widen_tensor(tensor: Any) -> None:
    """An FP16 TensorProto rewritten in place as the FP32 tensor of the same values."""
    import numpy as np
    from onnx import numpy_helper

    wide = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name)
    tensor.CopyFrom(wide)


def _widen(model: Any) -> int:
    """Every float16 weight, Constant value and dtype attribute of every (sub)graph, and the float16 inputs and
    outputs of subgraphs (Loop/Scan bodies), made FP32; how many."""
    from onnx import TensorProto

    fp16, count = TensorProto.FLOAT16, 0
    for graph in _graphs(model.graph):
        del graph.value_info[:]  # re-inferred below; stale float16 annotations would contradict the graph
        for v in [*graph.input, *graph.output] if graph is not model.graph else []:
            if v.type.tensor_type.elem_type == fp16:
                v.type.tensor_type.elem_type = TensorProto.FLOAT
        for tensor in graph.initializer:
            if tensor.data_type == fp16:
                _widen_tensor(tensor)
                count += 1
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t") and attr.t.data_type == fp16:
                    _widen_tensor(attr.t)
                    count += 1
                elif attr.name in _DTYPE_ATTRS and attr.i == fp16:
                    attr.i = TensorProto.FLOAT
                    count += 1
    return count


def _elem_types(model: Any) -> dict[str, int]:
    """Element type of every top-level tensor ONNX shape inference can type."""
    import onnx

    # past 2 GB shape inference cannot take the model in memory: the types the graph declares then
    inferred = onnx.shape_inference.infer_shapes(model) if model.ByteSize() < PROTO_LIMIT else model
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _is_float_identity(node: Any, types: dict[str, int]) -> bool:
    from onnx import TensorProto

    return (node.op_type == "Cast" and types.get(node.input[0]) == TensorProto.FLOAT
            and any(a.name == "to" and a.i == TensorProto.FLOAT for a in node.attribute))


def _rename(graph: Any, names: dict[str, str], *, outputs: bool = False) -> None:
    """Inputs (and with ``outputs`` the outputs) of every node, subgraphs' outer-scope reads included,
    renamed through ``names``, following chains."""
    def resolve(name: str) -> str:
        while name in names:
            name = names[name]
        return name

    for node in all_nodes(graph):
        node.input[:] = [resolve(i) if i else i for i in node.input]
        if outputs:
            node.output[:] = [resolve(o) if o else o for o in node.output]


def _drop_float_casts(model: Any, types: dict[str, int]) -> int:
    """Casts from FP32 to FP32 removed from the top-level graph; how many. Their readers read the cast's
    input; one that writes a graph output has its input's producer write that output instead (leftover
    converter names such as ``graph_output_cast_0`` would collide with the FP16 converter's own), or,
    where its input is a graph input or weight, becomes an Identity."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    fixed = outputs | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    casts = [n for n in graph.node if _is_float_identity(n, types)]
    inner = {n.output[0]: n.input[0] for n in casts if n.output[0] not in outputs}
    _rename(graph, inner)
    onto: dict[str, str] = {}
    gone = {id(n) for n in casts if n.output[0] in inner}
    for node in (n for n in casts if n.output[0] in outputs):
        if node.input[0] in fixed or node.input[0] in onto:  # a second output of the same tensor: an Identity
            node.op_type = "Identity"
            del node.attribute[:]
        else:
            onto[node.input[0]] = node.output[0]
            gone.add(id(node))
    kept = [n for n in graph.node if id(n) not in gone]
    del graph.node[:]
    graph.node.extend(kept)
    _rename(graph, onto, outputs=True)
    return len(gone)


def normalize_to_fp32(model: Any) -> dict[str, Any] | None:
    """Rewrite a mixed-precision model as plain FP32 in place; what was done, or None if it had no FP16."""
    import onnx

    if not has_float16(model):
        return None
    if _fp16_io(model):
        raise ExportError(f"the model's inputs/outputs {_fp16_io(model)} are float16: it is an FP16 model already; "
                          "quantize the FP32 model it came from (or convert it with keep_io_types=True)")
    widened = _widen(model)
    topological_sort(model.graph)  # ONNX Runtime's converter leaves its Casts at the end of the node list
    try:
        dropped = _drop_float_casts(model, _elem_types(model))
        if model.ByteSize() < PROTO_LIMIT:  # past 2 GB neither can take the model in memory
            onnx.checker.check_model(model)
            onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"making the mixed-precision graph plain FP32 failed: {str(exc).splitlines()[0]}; "
                          "report it with the model") from None
    return {"float16_tensors_widened": widened, "fp32_round_trip_casts_dropped": dropped}


def constants_to_initializers(model: Any) -> int:
    """Top-level Constant nodes holding a tensor made initializers of the same name, in place; how many. ONNX
    Runtime 1.32's pre-processing does this, 1.24's (what ModelOpt pins) does not, and ModelOpt stores int8
    weights behind a DequantizeLinear only when they are initializers (else FP32 Constant -> Q -> DQ)."""
    from onnx import TensorProto

    kept, moved = [], 0
    for node in model.graph.node:
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            tensor = TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
            moved += 1
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return moved


def normalized_copy(src: Path, tmp: Path) -> tuple[Path, dict[str, Any] | None]:
    """``src`` itself when it is plain FP32; otherwise its normalised copy written at ``tmp``."""
    import onnx

    if not has_float16(onnx.load(str(src), load_external_data=False)):  # external weights keep their types
        return src, None
    model = onnx.load(str(src))
    facts = normalize_to_fp32(model)
    save_onnx(model, tmp)
    return tmp, facts
