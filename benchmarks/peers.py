"""The peers a user would pick instead of segrt, each a builder of a stage closure for ``segrt bench``'s rows.

Every peer runs the same model at the same thread count on the same photos as segrt:

- ``ort_default``: a plain ``ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])`` on the bundle's
  own ONNX (what a user who skips segrt gets). The one option set is ``intra_op_num_threads`` (the row's
  thread count, so every side has the same cores); everything else is ONNX Runtime's default.
- ``openvino``: ``ov.Core().compile_model(onnx, "CPU", {"INFERENCE_NUM_THREADS": n})`` on the same ONNX
  (QDQ INT8 and FP16 graphs included), otherwise default (its inference precision hint is recorded: on CPUs
  with bf16 it may run FP32 graphs in bf16).
- ``torch`` / ``torch_compile``: the PyTorch module the bundle was exported from (seeded like it), eager or
  ``torch.compile``d, with the same pad/normalise/argmax pipeline written in torch.

The engine peers are fed by segrt's own preprocessing (``prepare`` + ``preprocess`` of the predictor segrt's
side loaded), so what differs is the engine and, for semantic rows, the post-processing: an argmax in NumPy
over the cropped scores (instance rows keep segrt's paste, which a user would otherwise have to write).
Each builder returns ``(one, info)`` for :func:`benchmarks.timing.measure_side`; a peer that cannot run
here is a row note (:func:`skipped`), never a crash.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segrt.runtime.errors import BackendUnavailableError
from segrt.runtime.manifest import read_manifest

from .timing import StageFn

Engine = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
Built = tuple[StageFn, dict[str, Any]]
ENGINE_PEERS = ("ort_default", "openvino")


def skipped(exc: BaseException) -> str:
    """A one-line row note for a peer that could not be built or run here."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return (text if isinstance(exc, BackendUnavailableError) else f"{type(exc).__name__}: {text}")[:300]


def model_path(bundle: Path) -> Path:
    return Path(bundle) / read_manifest(bundle).model_file


# -- engines: feeds -> outputs by name ---------------------------------------------------------------------
def ort_default_engine(onnx: Path, threads: int) -> tuple[Engine, str]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads  # the only non-default: the same cores as every other side
    sess = ort.InferenceSession(str(onnx), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, sess.run(names, dict(feeds))))

    return run, f"onnxruntime-{ort.__version__}-cpu, default options"


def openvino_engine(onnx: Path, threads: int) -> tuple[Engine, str]:
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        raise BackendUnavailableError("openvino is not installed (pip install 'segrt[bench]')")
    import openvino as ov

    compiled = ov.Core().compile_model(str(onnx), "CPU", {"INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    outputs = [(o, o.get_any_name()) for o in compiled.outputs]
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    hint = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = request.infer(dict(feeds))
        return {name: np.array(res[port]) for port, name in outputs}  # copied: the request reuses its buffers

    return run, f"openvino-{ov.__version__}-cpu, inference precision {hint}"


ENGINES: dict[str, Callable[[Path, int], tuple[Engine, str]]] = {
    "ort_default": ort_default_engine, "openvino": openvino_engine}


# -- semantic rows -----------------------------------------------------------------------------------------
def numpy_labels(scores: np.ndarray, frame: Any, threshold_logit: float = 0.0) -> np.ndarray:
    """(C, h, w) scores -> (H0, W0) uint8 labels the way a user writes it: crop the content box (scaled to
    the score grid), argmax (or a threshold for one channel), nearest resize to the original size."""
    sy, sx = scores.shape[1] / frame.input_hw[0], scores.shape[2] / frame.input_hw[1]
    top, left, h, w = frame.content
    crop = scores[:, round(top * sy): round((top + h) * sy), round(left * sx): round((left + w) * sx)]
    labels = (crop[0] > threshold_logit) if crop.shape[0] == 1 else crop.argmax(0)
    labels = labels.astype(np.uint8)
    if labels.shape != tuple(frame.orig_hw):
        labels = cv2.resize(labels, (frame.orig_hw[1], frame.orig_hw[0]), interpolation=cv2.INTER_NEAREST)
    return labels


def batch_of(images: list[np.ndarray], i: int, n: int) -> list[np.ndarray]:
    return [images[(i * n + k) % len(images)] for k in range(n)]


def _threshold_logit(seg: Any) -> float:
    thr = seg.manifest.output.threshold
    return float(np.log(thr) - np.log1p(-thr)) if seg.manifest.output.activation == "sigmoid" else thr


def semantic_engine(name: str, seg: Any, images: list[np.ndarray], batch: int, threads: int) -> Built:
    """Peer ``name`` (ENGINES) on segrt's Segmenter ``seg``'s ONNX: segrt's pre, the engine, NumPy argmax."""
    run, backend = ENGINES[name](model_path(seg.bundle), threads)
    feed, out_name, logit = seg.manifest.input.name, seg.manifest.output.name, _threshold_logit(seg)

    def one(i: int) -> dict[str, float]:
        t0 = time.perf_counter()
        tensor, frames = seg.preprocess([seg.prepare(im, "rgb") for im in batch_of(images, i, batch)])
        t1 = time.perf_counter()
        scores = run({feed: tensor})[out_name]
        t2 = time.perf_counter()
        for k, frame in enumerate(frames):
            numpy_labels(scores[k], frame, logit)
        t3 = time.perf_counter()
        return {"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "post": (t3 - t2) * 1e3, "e2e": (t3 - t0) * 1e3}

    return one, {"backend": backend}


def semantic_engine_labels(name: str, seg: Any, image: np.ndarray, threads: int) -> np.ndarray:
    """The label map peer ``name`` gives for one RGB ``image``: the steps its timed closure runs, kept."""
    run, _ = ENGINES[name](model_path(seg.bundle), threads)
    tensor, frames = seg.preprocess([seg.prepare(image, "rgb")])
    scores = run({seg.manifest.input.name: tensor})[seg.manifest.output.name]
    return numpy_labels(scores[0], frames[0], _threshold_logit(seg))


def torch_device(kind: str) -> Any:
    import torch

    if kind == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("PyTorch has no CUDA device here")
    return torch.device(kind)


def semantic_torch(bundle: Path, images: list[np.ndarray], batch: int, threads: int, device_kind: str,
                   compiled: bool = False) -> Built:
    """PyTorch on the same photos: the same pad/normalise/argmax pipeline, written in torch; eager, or
    ``torch.compile``d (its compile time is its first inference)."""
    import torch
    import torch.nn.functional as F

    from segrt.export.exporter import build_module
    from segrt.export.models import get_spec
    from segrt.export.spec import ExportConfig

    device = torch_device(device_kind)
    m = read_manifest(bundle)
    spec = get_spec(m.architecture)
    model, _ = build_module(spec, ExportConfig(architecture=m.architecture, encoder=m.encoder or spec.default_encoder,
                                                classes=m.num_classes, in_channels=m.input.channels))
    model = model.to(device)
    torch.set_num_threads(threads)
    mean = torch.tensor(m.input.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(m.input.std, device=device).view(1, -1, 1, 1)
    stride = m.input.stride
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    net = torch.compile(model) if compiled else model

    def one(i: int) -> dict[str, float]:
        frames = batch_of(images, i, batch)
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = torch.from_numpy(np.stack(frames)).to(device).permute(0, 3, 1, 2).float().div_(255.0).sub_(mean).div_(std)
            h, w = frames[0].shape[:2]
            x = F.pad(x, (0, math.ceil(w / stride) * stride - w, 0, math.ceil(h / stride) * stride - h))
            sync()
            t1 = time.perf_counter()
            logits = net(x)
            sync()
            t2 = time.perf_counter()
            logits[:, :, :h, :w].argmax(1).to(torch.uint8).cpu().numpy()
        t3 = time.perf_counter()
        return {"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "post": (t3 - t2) * 1e3, "e2e": (t3 - t0) * 1e3}

    kind = "compile" if compiled else "eager"
    return one, {"backend": f"torch-{kind}-{torch.__version__}-{device.type}"}


# -- instance rows -----------------------------------------------------------------------------------------
def instance_engine(name: str, det: Any, images: list[np.ndarray], threads: int,
                    counts: list[int]) -> Built:
    """Peer ``name`` on segrt's InstanceSegmenter ``det``'s ONNX (the graph without paste): segrt's pre and
    post (paste inside the boxes) around the engine; ``counts`` gets the detections per call."""
    run, backend = ENGINES[name](model_path(det.bundle), threads)
    outputs = det.detection.outputs

    def one(i: int) -> dict[str, float]:
        t0 = time.perf_counter()
        feeds, frame = det.preprocess(det.prepare(images[i % len(images)]))
        t1 = time.perf_counter()
        out = run(feeds)
        t2 = time.perf_counter()
        counts.append(len(det.postprocess(tuple(out[n] for n in outputs), frame)[1]))
        t3 = time.perf_counter()
        return {"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "post": (t3 - t2) * 1e3, "e2e": (t3 - t0) * 1e3}

    return one, {"backend": f"{backend}, segrt's pre/post"}
