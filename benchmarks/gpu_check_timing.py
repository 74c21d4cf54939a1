"""Interleaved timing for the GPU check, and the PyTorch sides it is measured against.

Every side runs once per round on the same photo, the order rotating round by round (A B C, B C A, ...), so
clock drift, thermal state and a neighbour's load fall on all sides alike. Each side's callable returns only
once its results are on the host (segrt returns NumPy; the PyTorch sides copy to the CPU and synchronise), so
``perf_counter`` around it measures finished work. Ratios are per round (base time / side time) and reported as
their median with min and max.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .pairs import interleave, timed_side


def interleaved(sides: dict[str, Callable[[int], Any]], rounds: int, *, warmup: int, deadline: float,
                base: str) -> dict[str, Any]:
    """Time ``sides`` in ``rounds`` rotating rounds after ``warmup`` untimed ones (:func:`benchmarks.pairs.interleave`);
    stop early (at least 3 rounds) once ``deadline`` (a ``perf_counter`` value) has passed. Ratios: ``base`` ms
    over each other side's, round by round (> 1: that side is faster than the base)."""
    if base not in sides:
        raise ValueError(f"base side {base!r} is not among {list(sides)}")
    res = interleave({n: timed_side(fn) for n, fn in sides.items()}, reference=base, rounds=rounds, warmup=warmup,
                     deadline=deadline, per_round=True)
    ms = res["per_round"]
    ratios = {}
    for name in sides:
        if name != base:
            per = [b / s for b, s in zip(ms[base], ms[name])]
            ratios[name] = {"median": float(np.median(per)), "min": min(per), "max": max(per), "pairs": len(per)}
    return {"rounds": res["rounds"], "sides": {n: v["e2e"] for n, v in res["sides"].items()}, "ratios": ratios}


def _autocast(enabled: bool, device: str) -> Any:
    import contextlib

    import torch

    return torch.autocast(device, dtype=torch.float16) if enabled else contextlib.nullcontext()


def torch_semantic(bundle: Path, autocast: bool, device: str = "cuda") -> Callable[[np.ndarray], np.ndarray]:
    """segrt bench's PyTorch pipeline for a semantic bundle, on CUDA: normalise, pad, network, argmax, copy."""
    import torch
    import torch.nn.functional as F

    from segrt.export.exporter import build_module
    from segrt.export.models import get_spec
    from segrt.export.spec import ExportConfig
    from segrt.runtime.manifest import read_manifest

    m = read_manifest(bundle)
    spec = get_spec(m.architecture)
    net, _ = build_module(spec, ExportConfig(architecture=m.architecture, encoder=m.encoder or spec.default_encoder,
                                             classes=m.num_classes, in_channels=m.input.channels))
    net = net.to(device).eval()
    mean = torch.tensor(m.input.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(m.input.std, device=device).view(1, -1, 1, 1)
    stride = m.input.stride

    def run(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        with torch.inference_mode(), _autocast(autocast, device):
            x = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float().div_(255.0).sub_(mean).div_(std)
            x = F.pad(x, (0, math.ceil(w / stride) * stride - w, 0, math.ceil(h / stride) * stride - h))
            return net(x)[:, :, :h, :w].argmax(1).to(torch.uint8).cpu().numpy()

    return run


def torch_instance(bundle: Path, autocast: bool, device: str = "cuda") -> Callable[[np.ndarray], np.ndarray]:
    """torchvision's Mask R-CNN (transform, network, paste) with the bundle's settings, on CUDA."""
    import torch

    from .bench_instance import _torch_model

    model = _torch_model(bundle).to(device).eval()

    def run(image: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), _autocast(autocast, device):
            x = torch.from_numpy(image).to(device).permute(2, 0, 1).float().div_(255.0)
            return (model([x])[0]["masks"] > 0.5).cpu().numpy()

    return run


def torch_sam(bundle: Path, autocast: bool, device: str = "cuda") -> Callable[[np.ndarray], Any]:
    """segment-anything's predictor on the same seeded weights, on CUDA: encode, then one point prompt."""
    import torch
    from segment_anything import SamPredictor as TorchPredictor

    from segrt.export.sam_export import build
    from segrt.runtime.manifest import read_manifest

    m = read_manifest(bundle)
    model, _ = build(m.encoder or "vit_b", None, seed=int(m.source.get("seed") or 0))
    predictor = TorchPredictor(model.to(device).eval())

    def run(image: np.ndarray) -> Any:
        h, w = image.shape[:2]
        with torch.inference_mode(), _autocast(autocast, device):
            predictor.set_image(image)
            masks, _, _ = predictor.predict(np.array([[0.45 * w, 0.4 * h]]), np.array([1]))
        return masks  # NumPy: segment-anything has copied them to the host

    return run

