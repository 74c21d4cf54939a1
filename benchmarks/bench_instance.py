"""Mask R-CNN latency: segrt (graph without paste, masks pasted inside their boxes) against
torchvision eager and against the naive export that pastes every mask at full resolution in-graph.

All three see the same photos at the same thread count and return the same detections: torchvision's
``box_score_thresh`` is set to the bundle's score threshold, so nobody pastes masks that are dropped.
Weights are seeded (detections are many and confident, the worst case for pasting) and labelled so.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from segrt.runtime.instance import InstanceSegmenter
from segrt.runtime.manifest import read_manifest

from .bench import BenchConfig, PeakRss, _timed, cache_dir, cold_start, photos

log = logging.getLogger("segrt")


def ensure_instance_bundle(min_size: int = 800, max_size: int = 1333) -> Path:
    from segrt.export.exporter import export_model
    from segrt.export.spec import ExportConfig

    out = cache_dir() / f"maskrcnn-{min_size}-{max_size}"
    if not (out / "segrt.json").is_file():
        log.warning("exporting maskrcnn with seeded weights into %s (once)", out)
        export_model(ExportConfig("maskrcnn", "maskrcnn_resnet50_fpn", 91, seed=0, min_size=min_size,
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


def bench_segrt_instance(bundle: Path, images: list[np.ndarray], cfg: BenchConfig) -> dict[str, Any]:
    counts: list[int] = []
    with PeakRss(gpu=cfg.torch_device == "cuda") as mem:
        det, load_ms, first_ms = cold_start(lambda: InstanceSegmenter(bundle, cfg.device, threads=cfg.threads), images[0])

        def one(i: int) -> dict[str, float]:
            t0 = time.perf_counter()
            feeds, frame = det.preprocess(det.prepare(images[i % len(images)]))
            t1 = time.perf_counter()
            out = det.infer(feeds)
            t2 = time.perf_counter()
            counts.append(len(det.postprocess(out, frame)[1]))
            t3 = time.perf_counter()
            return {"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "post": (t3 - t2) * 1e3, "e2e": (t3 - t0) * 1e3}

        stages = _timed(one, cfg)
    return {"backend": det.runner.name, "load_ms": load_ms, "first_inference_ms": first_ms, "stages": stages,
            "memory": mem.record(),
            "mean_detections": float(np.mean(counts))}


def bench_torch_instance(model: Any, images: list[np.ndarray], cfg: BenchConfig) -> dict[str, Any]:
    """torchvision's own forward, stage by stage: transform, network, postprocess (paste)."""
    import torch

    from .bench import _torch_device

    device = _torch_device(cfg)
    model = model.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.set_num_threads(cfg.threads)
    counts: list[int] = []

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

    with PeakRss() as mem:
        stages = _timed(one, cfg)
    memory = mem.record()
    if device.type == "cuda":
        memory["device_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return {"backend": f"torch-eager-{torch.__version__}-{device.type}", "stages": stages, "memory": memory,
            "mean_detections": float(np.mean(counts))}


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


def bench_in_graph_paste(path: Path, images: list[np.ndarray], cfg: BenchConfig) -> dict[str, Any]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    counts: list[int] = []

    def one(i: int) -> dict[str, float]:
        t0 = time.perf_counter()
        x = images[i % len(images)].transpose(2, 0, 1).astype(np.float32) / 255.0
        boxes, labels, scores, masks = sess.run(None, {"image": x})
        _ = masks > 0.5  # the threshold a user applies to the masks: timed with the rest
        t1 = time.perf_counter()
        counts.append(len(scores))
        return {"e2e": (t1 - t0) * 1e3}

    return {"backend": "onnxruntime-cpu, paste in graph", "stages": _timed(one, cfg),
            "mean_detections": float(np.mean(counts))}


def bench_instance(bundle: Path, cfg: BenchConfig, in_graph_paste: bool = True,
                   torch_cache: dict[Any, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One row: the bundle on ``cfg.device``, torchvision eager on the same photos (shared through
    ``torch_cache`` between precisions), and on the CPU the naive in-graph-paste export."""
    from .bench import _baseline, segrt_row

    m = read_manifest(bundle)
    images = photos(cfg.size)
    row = segrt_row(bundle, cfg, 1, lambda: bench_segrt_instance(bundle, images, cfg))
    if "skipped" in row:
        return row
    st = row["segrt"]["stages"]
    if cfg.baseline:
        model = _torch_model(bundle)
        cache = torch_cache if torch_cache is not None else {}
        ident = ("maskrcnn", m.encoder, m.num_classes, m.input.min_size, m.input.max_size, cfg.size, cfg.torch_device)
        if ident not in cache:
            cache[ident] = _baseline(lambda: bench_torch_instance(model, images, cfg))
        if "stages" in cache[ident]:
            row["torch"] = cache[ident]
            row["speedup_vs_torch"] = row["torch"]["stages"]["e2e"]["p50"] / st["e2e"]["p50"]
        else:
            row["torch_skipped"] = cache[ident]["skipped"]
        if in_graph_paste and cfg.torch_device == "cpu":
            path = bundle / "in_graph_paste.onnx"
            export_in_graph_paste(model, path)
            row["in_graph_paste"] = bench_in_graph_paste(path, images, cfg)
            row["speedup_vs_in_graph_paste"] = row["in_graph_paste"]["stages"]["e2e"]["p50"] / st["e2e"]["p50"]
    return row
