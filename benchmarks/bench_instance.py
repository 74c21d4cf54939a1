"""Mask R-CNN latency: segrt (graph without paste, masks pasted inside their boxes) against torchvision
eager, the naive export that pastes every mask at full resolution in-graph, and the engine peers (default
ONNX Runtime, OpenVINO) on segrt's own graph with segrt's pre/post, in interleaved pairs (see
:mod:`benchmarks.bench`: sides built and measured for memory one by one, then timed round by round).

All see the same photos at the same thread count and return the same detections: torchvision's
``box_score_thresh`` is set to the bundle's score threshold, so nobody pastes masks that are dropped.
Weights are seeded (detections are many and confident, the worst case for pasting) and labelled so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from segrt.runtime.errors import BackendUnavailableError
from segrt.runtime.instance import InstanceSegmenter
from segrt.runtime.manifest import read_manifest

from . import peers
from .bench import BenchConfig, add_side, build_peer, cache_dir, engine_sides, paired_row, photos, row_identity
from .isolated import in_child
from .timing import Side, measure_side

log = logging.getLogger("segrt")


def ensure_instance_bundle(min_size: int = 800, max_size: int = 1333) -> Path:
    from segrt.export.exporter import export_model
    from segrt.export.spec import ExportConfig

    out = cache_dir() / f"maskrcnn-{min_size}-{max_size}"
    if not (out / "segrt.json").is_file():
        log.warning("exporting maskrcnn with seeded weights into %s (once)", out)
        in_child(export_model, ExportConfig("maskrcnn", "maskrcnn_resnet50_fpn", 91, seed=0, min_size=min_size,
                                            max_size=max_size), out, force=True)
    return out


def _torch_model(bundle: Path) -> Any:
    from segrt.export.exporter import build_module
    from segrt.export.models import get_spec
    from segrt.export.spec import ExportConfig

    m = read_manifest(bundle)
    assert m.detection is not None and m.input.min_size and m.input.max_size
    cfg = ExportConfig("maskrcnn", m.encoder or "maskrcnn_resnet50_fpn", m.num_classes, seed=m.source.get("seed") or 0,
                       min_size=m.input.min_size, max_size=m.input.max_size,
                       box_score_thresh=m.detection.score_threshold, box_nms_thresh=m.detection.nms_threshold,
                       detections=m.detection.max_detections)
    model, _ = build_module(get_spec("maskrcnn"), cfg)
    return model


def _counted(counts: list[int]) -> Callable[[], dict[str, Any]]:
    """The side's mean detections per image over the calls since the last look."""
    def done() -> dict[str, Any]:
        mean = float(np.mean(counts)) if counts else float("nan")
        counts.clear()
        return {"mean_detections": mean}
    return done


def segrt_instance(bundle: Path, images: list[np.ndarray], cfg: BenchConfig) -> tuple[Side, InstanceSegmenter]:
    counts: list[int] = []
    made: list[InstanceSegmenter] = []

    def build() -> peers.Built:
        det = InstanceSegmenter(bundle, cfg.device, threads=cfg.threads)
        made.append(det)

        def one(i: int) -> dict[str, float]:
            t0 = time.perf_counter()
            feeds, frame = det.preprocess(det.prepare(images[i % len(images)]))
            t1 = time.perf_counter()
            out = det.infer(feeds)
            t2 = time.perf_counter()
            counts.append(len(det.postprocess(out, frame)[1]))
            t3 = time.perf_counter()
            return {"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "post": (t3 - t2) * 1e3, "e2e": (t3 - t0) * 1e3}

        return one, {"backend": det.runner.name}

    side = measure_side(build, gpu=cfg.torch_device == "cuda")
    side.done = _counted(counts)
    return side, made[0]


def torch_instance(model: Any, images: list[np.ndarray], cfg: BenchConfig, counts: list[int]) -> peers.Built:
    """torchvision's own forward, stage by stage: transform, network, postprocess (paste)."""
    import torch

    device = peers.torch_device(cfg.torch_device)
    model = model.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.set_num_threads(cfg.threads)

    def one(i: int) -> dict[str, float]:
        image = images[i % len(images)]
        with torch.inference_mode():
            t0 = time.perf_counter()
            x = [torch.from_numpy(image).to(device).permute(2, 0, 1).float().div_(255.0)]
            sizes = [tuple(t.shape[-2:]) for t in x]
            il, _ = model.transform(x)
            sync()
            t1 = time.perf_counter()
            feats = model.backbone(il.tensors)
            props, _ = model.rpn(il, feats)
            dets, _ = model.roi_heads(feats, props, il.image_sizes)
            sync()
            t2 = time.perf_counter()
            dets = model.transform.postprocess(dets, il.image_sizes, sizes)
            (dets[0]["masks"] > 0.5).cpu().numpy()
            t3 = time.perf_counter()
        counts.append(len(dets[0]["scores"]))
        return {"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "post": (t3 - t2) * 1e3, "e2e": (t3 - t0) * 1e3}

    return one, {"backend": f"torch-eager-{torch.__version__}-{device.type}"}


def export_in_graph_paste(model: Any, path: Path) -> None:
    """The naive export: torchvision's whole model (transform and paste included), traced."""
    import warnings

    import torch

    if path.is_file():
        return
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, ([torch.rand(3, 480, 640)],), str(tmp), opset_version=18, dynamo=False,
                          input_names=["image"], output_names=["boxes", "labels", "scores", "masks"],
                          dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "n"}, "labels": {0: "n"},
                                        "scores": {0: "n"}, "masks": {0: "n"}})
    tmp.replace(path)


def in_graph_paste(path: Path, images: list[np.ndarray], cfg: BenchConfig, counts: list[int]) -> peers.Built:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def one(i: int) -> dict[str, float]:
        t0 = time.perf_counter()
        x = images[i % len(images)].transpose(2, 0, 1).astype(np.float32) / 255.0
        boxes, labels, scores, masks = sess.run(None, {"image": x})
        _ = masks > 0.5  # the threshold a user applies to the masks: timed with the rest
        t1 = time.perf_counter()
        counts.append(len(scores))
        return {"e2e": (t1 - t0) * 1e3}

    return one, {"backend": "onnxruntime-cpu, paste in graph"}


def _counted_side(build: Callable[[list[int]], peers.Built], cfg: BenchConfig) -> Side | str:
    counts: list[int] = []
    side = build_peer(lambda: build(counts), cfg)
    if isinstance(side, Side):
        side.done = _counted(counts)
    return side


def bench_instance(bundle: Path, cfg: BenchConfig, in_graph_paste_side: bool = True,
                   torch_cache: dict[Any, Any] | None = None) -> dict[str, Any]:
    """One row: the bundle on ``cfg.device`` in interleaved pairs with torchvision eager (its built model
    shared through ``torch_cache`` between precisions, its timings never), the engine peers and, on the CPU,
    the naive in-graph-paste export."""
    m = read_manifest(bundle)
    images = photos(cfg.size)
    row = row_identity(bundle, cfg, 1)
    try:
        segrt_side, det = segrt_instance(bundle, images, cfg)
    except BackendUnavailableError as exc:
        return row | {"skipped": str(exc)}
    sides, notes = {"segrt": segrt_side}, {}
    if cfg.baseline:
        cache = torch_cache if torch_cache is not None else {}
        ident = ("maskrcnn", m.encoder, m.num_classes, m.input.min_size, m.input.max_size, cfg.size, cfg.torch_device)
        if ident not in cache:
            models: list[Any] = []  # built inside the side's build, so its load time and memory count it
            side = _counted_side(lambda c: torch_instance(models.append(_torch_model(bundle)) or models[0], images,
                                                          cfg, c), cfg)
            cache[ident] = (models[0] if models else None, side)
        add_side(sides, notes, "torch", cache[ident][1])
        if in_graph_paste_side and cfg.torch_device == "cpu" and cache[ident][0] is not None:
            path = bundle / "in_graph_paste.onnx"
            export_in_graph_paste(cache[ident][0], path)
            add_side(sides, notes, "in_graph_paste", _counted_side(lambda c: in_graph_paste(path, images, cfg, c), cfg))
    engine_sides(lambda n: _counted_side(lambda c: peers.instance_engine(n, det, images, cfg.threads, c), cfg), cfg,
                 segrt_side.info["backend"], sides, notes)
    return paired_row(row, sides, notes, cfg, 1)
