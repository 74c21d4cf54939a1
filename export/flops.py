"""FLOPs counted once at export with PyTorch's counter (``torch.utils.flop_counter.FlopCounterMode``) on each graph's
export example: the manifest's ``compute`` section, which ``segrt bench`` turns into GFLOP/s and % of the machine's
peak (benchmarks/limits.py, which also counts bundles without the section from their ONNX graph)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from segrt.runtime.manifest import GraphCompute

COUNTER = "torch.utils.flop_counter"


def count_torch_flops(module: Any, example: Sequence[Any]) -> int:
    """PyTorch's own count of one forward of ``module`` on ``example`` (no grad)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*example)
    return int(counter.get_total_flops())


def graph_compute(module: Any, example: Sequence[Any], io: Any) -> GraphCompute:
    """One graph's manifest entry. ``io`` names the inputs and their dynamic axes (a ``GraphIO`` or ``ModelSpec``):
    an image input with dynamic H and W is counted at the example and at twice its width, and the part that does
    not grow with pixels is kept as ``fixed`` (0 for a convnet; Mask R-CNN's RoI heads); inputs with a dynamic axis 0
    named "prompts" are counted at one and two prompts (the decoder is linear in them); anything else is fixed.

    Only a rank-4 (N, C, H, W) input scales by pixels. A rank-5 volume input (N, C, D, H, W; MONAI's nets, dynamic
    D/H/W) is recorded as ``fixed`` at the example's (D, H, W): the runtime calls the graph on sliding-window
    patches of the manifest's roi_size (or the one resize size) only, so one call costs the same at every volume
    size; ``benchmarks/limits.py`` has no per-voxel scaling to read."""
    axes = io.dynamic_axes.get(io.input_names[0], {})
    shape = tuple(int(d) for d in example[0].shape)
    if len(shape) == 4 and 2 in axes and 3 in axes:
        return _pixel_compute(module, example, shape[-2:])
    prompt_inputs = [i for i, name in enumerate(io.input_names) if io.dynamic_axes.get(name, {}).get(0) == "prompts"]
    if prompt_inputs:
        return _prompt_compute(module, example, prompt_inputs)
    return GraphCompute(count_torch_flops(module, example), shape[2:] if len(shape) == 5 else shape[-2:], "fixed")


def _pixel_compute(module: Any, example: Sequence[Any], at: tuple[int, ...]) -> GraphCompute:
    import torch

    batch = int(example[0].shape[0])
    wide = (torch.cat([example[0], example[0]], dim=3), *example[1:])
    flops, flops_wide = count_torch_flops(module, example) // batch, count_torch_flops(module, wide) // batch
    fixed = min(max(2 * flops - flops_wide, 0), flops)  # f(P) = fixed + k P: f(2P) - f(P) = k P
    return GraphCompute(flops, at, "pixels", fixed=fixed)


def _prompt_compute(module: Any, example: Sequence[Any], prompt_inputs: list[int]) -> GraphCompute:
    import torch

    one = tuple(x[:1] if i in prompt_inputs else x for i, x in enumerate(example))
    two = tuple(torch.cat([x, x]) if i in prompt_inputs else x for i, x in enumerate(one))
    flops_one, flops_two = count_torch_flops(module, one), count_torch_flops(module, two)
    points = int(example[prompt_inputs[0]].shape[1]) if example[prompt_inputs[0]].ndim > 1 else 1
    return GraphCompute(flops_one, (1, points), "prompts", per_prompt=flops_two - flops_one)


def export_compute(graphs: Sequence[Any]) -> dict[str, GraphCompute]:
    """The manifest's ``compute``: each traced graph (``spec.Graph``: file, module, example, io) counted on its
    export example, keyed by its file."""
    return {g.file: graph_compute(g.module, g.example, g.io) for g in graphs}
