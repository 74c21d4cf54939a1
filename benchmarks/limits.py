"""The limit: a model's FLOPs and the share of this machine's measured peak that a bench row reaches.

Three pieces, so a row can say "41 % of this CPU's peak" beside "1.5x PyTorch":

* **FLOPs, counted once at export** with PyTorch's counter (``torch.utils.flop_counter.FlopCounterMode``) on each
  graph's export example and stored in the manifest's ``compute`` (``segrt.export.flops.export_compute``, called by
  ``exporter.export_bundle``). A convnet with dynamic H/W scales with the graph input's pixels, SAM's encoder is
  fixed at 1024 and its decoder adds a fixed amount per prompt (:class:`~segrt.runtime.manifest.GraphCompute`).
  Bundles without the section (imported ONNX, older caches) are counted from the ONNX graph itself where shape
  inference leaves the compute nodes' shapes static (``count_onnx_flops``), else "not counted".
* **The peak**, measured in the same run: a 2048^3 GEMM through ONNX Runtime at the bench's thread count, FP32
  (MatMul) and INT8 (MatMulInteger and QLinearMatMul, u8 x s8; the faster), NumPy's FP32 matmul for reference
  (``measure_peak``).
* **A row's figures** (``limits``): GFLOP per image at the row's size, GFLOP/s of the infer stage and end to end,
  and the infer stage's percent of the peak of the row's precision.

FLOPs follow PyTorch's convention: a multiply-add is 2 FLOPs; only convolutions and matrix products count
(bias adds, norms, activations and resizes do not).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from segrt.runtime.errors import InvalidInputError
from segrt.runtime.manifest import GraphCompute, Manifest, read_manifest


ONNX_COUNTER = "onnx graph (Conv, ConvTranspose, MatMul, Gemm, Einsum and their integer forms: MACs x 2)"
#: the compute ops the ONNX count knows: op type -> (index of the first operand, index of the second/weight)
COMPUTE_OPS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3), "ConvTranspose": (0, 1),
               "MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "Gemm": (0, 1), "Einsum": (0, 1)}


# --- FLOPs from the ONNX graph, for bundles without the section ---------------------------------------------------

@dataclass(frozen=True)
class OnnxCount:
    """FLOPs of a graph's top-level compute nodes whose shapes are static; ``uncounted`` names the others (dynamic
    shapes after inference, or compute inside If/Loop branches)."""

    flops: int
    counted: int
    uncounted: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.uncounted


def count_onnx_flops(path: str | os.PathLike[str], input_shapes: Mapping[str, Sequence[int]] | None = None) -> OnnxCount:
    """Count ``path``'s FLOPs after ONNX shape inference, with ``input_shapes`` fixing graph inputs' dims first.
    Weights are not read (external data stays on disk): only their shapes matter."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for inp in model.graph.input:
        if inp.name in (input_shapes or {}):
            dims = inp.type.tensor_type.shape.dim
            for dim, value in zip(dims, input_shapes[inp.name], strict=True):
                dim.Clear()
                dim.dim_value = int(value)
    del model.graph.value_info[:]  # inferred again at these input shapes
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = _static_shapes(model.graph)
    flops, counted, uncounted = 0, 0, []
    for node in model.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            if _has_compute(node):
                uncounted.append(f"{node.op_type}:{node.name}")
            continue
        if node.op_type not in COMPUTE_OPS:
            continue
        value = node_flops(node, shapes)
        if value is None:
            uncounted.append(f"{node.op_type}:{node.name}")
        else:
            flops, counted = flops + value, counted + 1
    return OnnxCount(flops, counted, tuple(uncounted))


def _static_shapes(graph: Any) -> dict[str, tuple[int, ...]]:
    """Every value's shape where all its dims are known."""
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor = info.type.tensor_type
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            shapes[info.name] = tuple(d.dim_value for d in tensor.shape.dim)
    return shapes


def _has_compute(node: Any) -> bool:
    import onnx

    subgraphs = [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    subgraphs += [g for a in node.attribute if a.type == onnx.AttributeProto.GRAPHS for g in a.graphs]
    return any(n.op_type in COMPUTE_OPS or _has_compute(n) for g in subgraphs for n in g.node)


def node_flops(node: Any, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """2 x the multiply-adds of one compute node, or None when an operand's or the output's shape is unknown."""
    first, second = COMPUTE_OPS[node.op_type]
    a, b, out = (shapes.get(n) for n in (node.input[first], node.input[second], node.output[0]))
    if a is None or b is None or out is None:
        return None
    if node.op_type == "ConvTranspose":  # weight [Cin, Cout/groups, k...]: every input pixel meets every tap
        return 2 * a[0] * prod(a[2:]) * prod(b)
    if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):  # weight [Cout, Cin/groups, k...]
        return 2 * out[0] * prod(out[2:]) * prod(b)
    if node.op_type == "Gemm":
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        return 2 * prod(out) * (a[0] if trans_a else a[-1])
    if node.op_type == "Einsum":
        return _einsum_flops(node, a, b)
    return 2 * prod(out) * a[-1]  # MatMul family: every output element is a K-long dot product


def _einsum_flops(node: Any, a: tuple[int, ...], b: tuple[int, ...]) -> int | None:
    equation = next(at.s.decode() for at in node.attribute if at.name == "equation").replace(" ", "")
    operands = equation.split("->")[0].split(",")
    if len(operands) != 2 or "." in equation or len(operands[0]) != len(a) or len(operands[1]) != len(b):
        return None
    sizes = dict(zip(operands[0], a, strict=True)) | dict(zip(operands[1], b, strict=True))
    return 2 * prod(sizes.values())


@lru_cache(maxsize=64)
def _cached_onnx_count(path: str, mtime_ns: int, shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> OnnxCount:
    return count_onnx_flops(path, dict(shapes))


# --- FLOPs at a bench row's size ----------------------------------------------------------------------------------

def graph_input_hw(manifest: Manifest, size: Sequence[int]) -> tuple[int, int]:
    """The model graph's input H x W for an image of ``size`` (H, W): padded, resized or fixed as the runtime does."""
    from segrt.runtime.prepost import plan_frame

    return plan_frame(int(size[0]), int(size[1]), manifest.input).input_hw


def image_flops(bundle_or_manifest: str | os.PathLike[str] | Manifest, size: Sequence[int], *,
                graph: str | None = None, prompts: int = 1) -> tuple[float | None, str]:
    """FLOPs of one image (one call of ``graph`` with ``prompts`` prompts for a prompt graph) at ``size`` (H, W),
    and how they were obtained. ``graph``: a graph file of the bundle (default its ``model_file``)."""
    bundle, manifest = _bundle_and_manifest(bundle_or_manifest)
    file = graph or manifest.model_file
    entry = manifest.compute.get(file)
    if entry is not None:
        return _from_manifest(entry, graph_input_hw(manifest, size), prompts)
    if bundle is None:
        return None, f"not counted ({file}: manifest has no compute section and no bundle path was given)"
    return _from_onnx(bundle / file, manifest, size, is_model=file == manifest.model_file, prompts=prompts)


def _bundle_and_manifest(obj: str | os.PathLike[str] | Manifest) -> tuple[Path | None, Manifest]:
    if isinstance(obj, Manifest):
        return None, obj
    return Path(obj), read_manifest(obj)


def _from_manifest(entry: GraphCompute, hw: tuple[int, int], prompts: int) -> tuple[float, str]:
    base = f"{entry.counter} at {'x'.join(map(str, entry.at))}"
    if entry.scales == "pixels":
        scale = hw[0] * hw[1] / (entry.at[0] * entry.at[1])
        flops = entry.fixed + (entry.flops - entry.fixed) * scale
        fixed = f", {entry.fixed / 1e9:.3g} GFLOP of it fixed" if entry.fixed else ""
        return flops, f"{base}, scaled by pixels to {hw[0]}x{hw[1]} (x{scale:.4g}{fixed})"
    if entry.scales == "prompts":
        if prompts < 1:
            raise InvalidInputError(f"prompts must be >= 1; got {prompts}")
        return float(entry.flops + entry.per_prompt * (prompts - 1)), f"{base} (prompts x points), at {prompts} prompt(s)"
    return float(entry.flops), f"{base}, fixed (the same at every image size)"


def _from_onnx(path: Path, manifest: Manifest, size: Sequence[int], *, is_model: bool,
               prompts: int) -> tuple[float | None, str]:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        shapes = _fallback_shapes(onnx.load(str(path), load_external_data=False).graph.input, manifest, size,
                                  is_model, prompts)
        count = _cached_onnx_count(str(path), path.stat().st_mtime_ns, tuple(shapes.items()))
    except (OSError, ValueError, DecodeError, onnx.onnx_cpp2py_export.shape_inference.InferenceError) as exc:
        # not ONNX (a panoptic bundle's model file is JSON), unreadable, or shapes that do not infer
        return None, f"not counted ({path.name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if not count.complete:
        return None, f"not counted ({path.name}: {len(count.uncounted)} compute node(s) without static shapes)"
    where = ", ".join(f"{name} {list(dims)}" for name, dims in shapes.items())
    return float(count.flops), f"{ONNX_COUNTER}, {count.counted} nodes" + (f", at {where}" if where else "")


def _fallback_shapes(inputs: Any, manifest: Manifest, size: Sequence[int], is_model: bool,
                     prompts: int) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for the graph's dynamic inputs: the model's image input at the row's size (batch 1); any
    other dynamic dim 1, except a "prompts" axis (``prompts``)."""
    shapes = {}
    for index, inp in enumerate(inputs):
        dims = inp.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            continue
        if is_model and index == 0 and len(dims) == 4:
            (h, w), c = graph_input_hw(manifest, size), manifest.input.channels
            shapes[inp.name] = (1, c, h, w) if manifest.input.layout == "nchw" else (1, h, w, c)
        else:
            shapes[inp.name] = tuple(d.dim_value if d.HasField("dim_value") else prompts if d.dim_param == "prompts"
                                     else 1 for d in dims)
    return shapes


# --- the machine's peak -------------------------------------------------------------------------------------------

def _best_seconds(fn: Callable[[], Any], reps: int) -> float:
    fn()  # warm-up: first-run allocations and packing
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _gemm_model(op: str, n: int, weight: np.ndarray) -> bytes:
    """A one-node ONNX graph ``Y = A x W`` (n x n, W an initializer as a model's weights are)."""
    from onnx import TensorProto, helper, numpy_helper

    scalar = lambda v, dt, name: numpy_helper.from_array(np.array(v, dt), name)  # noqa: E731
    a_type = TensorProto.FLOAT if op == "MatMul" else TensorProto.UINT8
    out_type = {"MatMul": TensorProto.FLOAT, "MatMulInteger": TensorProto.INT32, "QLinearMatMul": TensorProto.UINT8}[op]
    inits = [numpy_helper.from_array(weight, "W")]
    inputs = ["A", "W"]
    if op == "QLinearMatMul":
        inits += [scalar(0.02, np.float32, "a_s"), scalar(128, np.uint8, "a_z"), scalar(0.02, np.float32, "w_s"),
                  scalar(0, np.int8, "w_z"), scalar(4.0, np.float32, "y_s"), scalar(128, np.uint8, "y_z")]
        inputs = ["A", "a_s", "a_z", "W", "w_s", "w_z", "y_s", "y_z"]
    graph = helper.make_graph([helper.make_node(op, inputs, ["Y"])], "gemm",
                              [helper.make_tensor_value_info("A", a_type, [n, n])],
                              [helper.make_tensor_value_info("Y", out_type, [n, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def _ort_gemm_rate(op: str, a: np.ndarray, weight: np.ndarray, threads: int, reps: int) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(_gemm_model(op, a.shape[0], weight), so, providers=["CPUExecutionProvider"])
    seconds = _best_seconds(lambda: session.run(None, {"A": a}), reps)
    return 2 * a.shape[0] ** 3 / seconds / 1e9


def measure_peak(threads: int | None = None, n: int = 2048, reps: int = 3) -> dict[str, Any]:
    """This CPU's GEMM peak through ONNX Runtime (the engine segrt runs) at ``threads`` (default: all cores):
    ``fp32_gflops`` (the faster of ONNX Runtime's MatMul, ``ort_fp32_gflops``, and NumPy's BLAS matmul,
    ``numpy_fp32_gflops``: the machine's peak is the best GEMM measured, and on 2026-12-02 ONNX Runtime's 2048^3
    MatMul ran below its own convolutions, 117 vs 128 GFLOP/s, NumPy 138), ``int8_gops`` (the faster of
    MatMulInteger and QLinearMatMul, u8 x s8, the form ONNX Runtime's QDQ Conv/MatMul run as) and ``how``."""
    threads = (os.cpu_count() or 1) if threads is None else threads
    if threads < 1 or n < 64 or reps < 1:
        raise InvalidInputError(f"need threads >= 1, n >= 64 and reps >= 1; got {threads}, {n}, {reps}")
    rng = np.random.default_rng(0)
    a, w = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a8, w8 = rng.integers(0, 256, (n, n), dtype=np.uint8), rng.integers(-127, 128, (n, n), dtype=np.int8)
    fp32 = _ort_gemm_rate("MatMul", a, w, threads, reps)
    int8 = {op: _ort_gemm_rate(op, a8, w8, threads, reps) for op in ("MatMulInteger", "QLinearMatMul")}
    numpy_fp32 = 2 * n**3 / _best_seconds(lambda: a @ w, reps) / 1e9
    best_int8 = max(int8, key=int8.get)
    return {"fp32_gflops": max(fp32, numpy_fp32), "ort_fp32_gflops": fp32, "int8_gops": int8[best_int8],
            "numpy_fp32_gflops": numpy_fp32,
            "int8_by_op": int8, "threads": threads,
            "how": (f"ONNX Runtime CPU, {n}x{n}x{n} GEMM, weights as initializers, {threads} intra-op threads, best "
                    f"of {reps} after a warm-up: FP32 the faster of MatMul ({fp32:.0f}) and NumPy's matmul; INT8 u8 x s8 {best_int8} (faster of MatMulInteger "
                    f"{int8['MatMulInteger']:.0f}, QLinearMatMul {int8['QLinearMatMul']:.0f} GOP/s); NumPy FP32 "
                    f"matmul {numpy_fp32:.0f} GFLOP/s (its BLAS's own threads)")}


# --- a bench row's figures ----------------------------------------------------------------------------------------

def _peak_for(peak: Mapping[str, Any], precision: str) -> tuple[float, str]:
    """The peak a row of ``precision`` is measured against: INT8 rows the INT8 peak; FP16 rows an FP16 peak where one
    was measured (a GPU), else FP32's (ONNX Runtime's CPU has no FP16 GEMM: it runs FP16 graphs' MatMuls in FP32)."""
    if precision == "int8":
        return float(peak["int8_gops"]), "int8"
    if precision == "fp16" and peak.get("fp16_gflops"):
        return float(peak["fp16_gflops"]), "fp16"
    if precision not in ("fp32", "fp16"):
        raise InvalidInputError(f"precision must be fp32, fp16 or int8; got {precision!r}")
    return float(peak["fp32_gflops"]), "fp32"


def limits(bundle_or_manifest: str | os.PathLike[str] | Manifest, size: Sequence[int], batch: int, e2e_ms: float,
           infer_ms: float, peak: Mapping[str, Any], precision: str, *, graph: str | None = None,
           prompts: int = 1) -> dict[str, Any]:
    """A bench row's distance to the limit. ``size``: the row's image (H, W); ``e2e_ms``/``infer_ms``: one call of
    ``batch`` images (p50), end to end and the infer stage; ``peak``: ``measure_peak()``'s dict; ``precision``: the
    row's. Returns ``gflop`` (per image at that size), ``gflops_per_s`` {infer, e2e}, ``percent_of_peak`` (the
    infer stage against the peak of the row's precision), ``peak`` {precision, value} and ``flops_how``; the
    figures are None when the graph could not be counted."""
    if batch < 1 or e2e_ms <= 0 or infer_ms <= 0:
        raise InvalidInputError(f"need batch >= 1 and positive times; got batch {batch}, e2e {e2e_ms}, infer {infer_ms} ms")
    peak_value, peak_kind = _peak_for(peak, precision)
    flops, how = image_flops(bundle_or_manifest, size, graph=graph, prompts=prompts)
    row: dict[str, Any] = {"gflop": None, "gflops_per_s": {"infer": None, "e2e": None}, "percent_of_peak": None,
                           "peak": {"precision": peak_kind, "value": peak_value}, "flops_how": how}
    if flops is None:
        return row
    infer_rate = flops * batch / (infer_ms * 1e-3) / 1e9
    row.update(gflop=flops / 1e9, percent_of_peak=100 * infer_rate / peak_value,
               gflops_per_s={"infer": infer_rate, "e2e": flops * batch / (e2e_ms * 1e-3) / 1e9})
    return row



def main(argv: Sequence[str] | None = None) -> int:
    """``python -m segrt.benchmarks.limits [BUNDLE ...] [--size HxW] [--threads N]``: the peak, and each bundle's
    GFLOP per image at that size, as JSON."""
    import argparse
    import json
    import sys

    from segrt.runtime.errors import SegrtError

    parser = argparse.ArgumentParser(prog="python -m segrt.benchmarks.limits", description=main.__doc__)
    parser.add_argument("bundles", nargs="*")
    parser.add_argument("--size", default="512x512", help="image H x W (default 512x512)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        parts = args.size.lower().split("x")
        if len(parts) != 2 or not all(v.isdigit() and int(v) > 0 for v in parts):
            raise InvalidInputError(f"--size must be HxW with positive sides, e.g. 512x512; got {args.size!r}")
        size = (int(parts[0]), int(parts[1]))
        counts = {b: image_flops(b, size) for b in args.bundles}  # bad bundles fail before the peak is timed
        report = {"peak": measure_peak(args.threads), "size": list(size),
                  "bundles": {b: {"gflop": None if f is None else f / 1e9, "how": how} for b, (f, how) in counts.items()}}
    except SegrtError as exc:
        print(f"segrt: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
