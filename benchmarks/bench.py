"""Latency percentiles per stage, segrt against PyTorch eager in the same run, same inputs and threads.

Timing rules: ``time.perf_counter``; warm-up excluded; inputs rotated among real photos; one thread
count for both. Weights are seeded (latency does not depend on weight values) and labelled so.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segrt.runtime.errors import BackendUnavailableError, InvalidInputError
from segrt.runtime.manifest import read_manifest
from segrt.runtime.semantic import Segmenter
from segrt.runtime.tasks import task_for

log = logging.getLogger("segrt")

#: The quick default set: (architecture, encoder, classes).
QUICK_MODELS = (("unet", "resnet34", 21), ("deeplabv3plus", "resnet50", 21))
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
GOAL_SPEEDUP = 1.5
GOAL_PREPOST_SHARE = 0.15


@dataclass(frozen=True)
class BenchConfig:
    size: tuple[int, int] = (512, 512)
    warmup: int = 3
    iters: int = 20
    threads: int = os.cpu_count() or 1
    baseline: bool = True
    device: str = "auto"  # segrt's device (backends.DEVICES); PyTorch runs on "cuda" for cuda/tensorrt
    batch: int = 1
    compile: bool = False  # also time torch.compile(model), where it works
    #: --seconds: time each row for this long instead of a fixed --iters count (at least MIN_TIMED runs)
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.iters < 1:
            raise InvalidInputError(f"need --warmup >= 0 and --iters >= 1; got {self.warmup}, {self.iters}")
        if self.seconds is not None and not (math.isfinite(self.seconds) and self.seconds > 0):
            raise InvalidInputError(f"--seconds must be a positive number; got {self.seconds}")
        if self.threads < 1:
            raise InvalidInputError(f"--threads must be >= 1; got {self.threads}")
        if self.batch < 1:
            raise InvalidInputError(f"--batch values must be >= 1; got {self.batch}")

    @property
    def torch_device(self) -> str:
        return "cuda" if self.device in ("cuda", "tensorrt") else "cpu"


def cache_dir() -> Path:
    return Path(os.environ.get("SEGRT_CACHE", Path.home() / ".cache" / "segrt")) / "bench"


def photos(size: tuple[int, int]) -> list[np.ndarray]:
    """Real CC0 photos resized to ``size``: rotated through the iterations so no cache is timed."""
    import skimage.data

    return [cv2.resize(getattr(skimage.data, n)(), (size[1], size[0]), interpolation=cv2.INTER_AREA) for n in PHOTOS]


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    a = np.asarray(samples_ms)
    return {
        "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()), "fps": float(1000.0 / a.mean()),
    }


#: --seconds still takes this many timed runs, so p50/p90 never rest on one or two samples
MIN_TIMED = 3


def repeat(fn: Callable[[int], Any], cfg: BenchConfig) -> list[Any]:
    """``fn(i)`` after cfg.warmup untimed calls: cfg.iters times, or with cfg.seconds
    until that much wall time has passed (at least MIN_TIMED calls). Inputs rotate with ``i``."""
    for i in range(cfg.warmup):
        fn(i)
    if cfg.seconds is None:
        return [fn(i) for i in range(cfg.iters)]
    runs, start = [], time.perf_counter()
    while len(runs) < MIN_TIMED or time.perf_counter() - start < cfg.seconds:
        runs.append(fn(len(runs)))
    return runs


def time_ms(fn: Callable[[int], Any], cfg: BenchConfig) -> dict[str, float]:
    """Percentiles of ``fn(i)``'s wall time in ms, repeated as ``cfg`` says (see :func:`repeat`)."""
    def one(i: int) -> float:
        t0 = time.perf_counter()
        fn(i)
        return (time.perf_counter() - t0) * 1e3

    return percentiles(repeat(one, cfg))


def _timed(fn: Callable[[int], dict[str, float]], cfg: BenchConfig) -> dict[str, dict[str, float]]:
    runs = repeat(fn, cfg)
    return {stage: percentiles([r[stage] for r in runs]) for stage in runs[0]}


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the lifetime peak is the best available
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _gpu_used_bytes() -> Callable[[], int] | None:
    """This process's device memory on GPU 0 through NVML (nvidia-ml-py), or None where there is none. It
    counts what ONNX Runtime's and PyTorch's allocators reserved, as nvidia-smi shows it."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # no module, no driver, no GPU: all mean "not measured"  # noqa: BLE001
        return None
    pid = os.getpid()

    def used() -> int:
        try:
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except pynvml.NVMLError:  # a transient driver error: this sample counts nothing
            return 0
        return sum(p.usedGpuMemory or 0 for p in procs if p.pid == pid)

    return used


class PeakRss:
    """Peak resident memory of this process while the block runs, sampled every 5 ms (on Linux; elsewhere
    the process's lifetime peak), and with ``gpu=True`` its peak device memory (NVML, every 5 ms).
    ``record()``: MB before, peak, and the difference (what the block added)."""

    def __init__(self, gpu: bool = False) -> None:
        self._gpu = _gpu_used_bytes() if gpu else None
        self.gpu_before = self.gpu_peak = self._gpu() if self._gpu else 0

    def __enter__(self) -> PeakRss:
        import threading

        self.before = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())
            if self._gpu:
                self.gpu_peak = max(self.gpu_peak, self._gpu())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    def record(self) -> dict[str, float]:
        mb = 1024 * 1024
        out = {"rss_before_mb": self.before / mb, "peak_rss_mb": self.peak / mb,
               "peak_delta_mb": (self.peak - self.before) / mb}
        if self._gpu:
            out |= {"device_before_mb": self.gpu_before / mb, "device_peak_mb": self.gpu_peak / mb}
        return out


def ensure_bundle(arch: str, encoder: str, classes: int) -> Path:
    """Export the seeded default model into the cache once; later runs reuse it."""
    from segrt.export.exporter import export_model
    from segrt.export.spec import ExportConfig

    out = cache_dir() / f"{arch}-{encoder}-{classes}"
    if not (out / "segrt.json").is_file():
        log.warning("exporting %s/%s with seeded weights into %s (once)", arch, encoder, out)
        export_model(ExportConfig(architecture=arch, encoder=encoder, classes=classes, seed=0), out, force=True)
    return out


def cold_start(make: Callable[[], Any], image: np.ndarray) -> tuple[Any, float, float]:
    """Build a model and run it once: (model, load ms, first-inference ms), the cold-start costs."""
    t0 = time.perf_counter()
    model = make()
    load_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    model(image)
    return model, load_ms, (time.perf_counter() - t0) * 1e3


def _batch(images: list[np.ndarray], i: int, n: int) -> list[np.ndarray]:
    return [images[(i * n + k) % len(images)] for k in range(n)]


def bench_segrt(bundle: Path, images: list[np.ndarray], cfg: BenchConfig) -> dict[str, Any]:
    """segrt's stages for a batch of ``cfg.batch`` photos (one model call), on ``cfg.device``."""
    with PeakRss(gpu=cfg.torch_device == "cuda") as mem:  # load, first inference and the timed loop
        seg, load_ms, first_ms = cold_start(lambda: Segmenter(bundle, cfg.device, threads=cfg.threads), images[0])
        if seg.max_batch is not None and cfg.batch > seg.max_batch:
            raise InvalidInputError(f"{bundle} has a fixed batch of {seg.max_batch}; cannot time batch {cfg.batch}")

        def one(i: int) -> dict[str, float]:
            t0 = time.perf_counter()
            arrs = [seg.prepare(im, "rgb") for im in _batch(images, i, cfg.batch)]
            tensor, frames = seg.preprocess(arrs)
            t1 = time.perf_counter()
            scores = seg.infer(tensor)
            t2 = time.perf_counter()
            for k, frame in enumerate(frames):
                seg.postprocess(scores[k], frame)
            t3 = time.perf_counter()
            return {"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "post": (t3 - t2) * 1e3, "e2e": (t3 - t0) * 1e3}

        stages = _timed(one, cfg)
    return {"backend": seg.runner.name, "load_ms": load_ms, "first_inference_ms": first_ms, "stages": stages,
            "images_per_s": cfg.batch * stages["e2e"]["fps"], "memory": mem.record()}


def _torch_device(cfg: BenchConfig) -> Any:
    import torch

    if cfg.torch_device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("PyTorch has no CUDA device here")
    return torch.device(cfg.torch_device)


def bench_torch(bundle: Path, images: list[np.ndarray], cfg: BenchConfig, compiled: bool = False) -> dict[str, Any]:
    """PyTorch on the same photos: the same pad/normalise/argmax pipeline, written in torch; eager, or
    ``torch.compile``d (its compile time is reported as its first inference)."""
    import torch
    import torch.nn.functional as F

    from segrt.export.exporter import build_module
    from segrt.export.models import get_spec
    from segrt.export.spec import ExportConfig

    device = _torch_device(cfg)
    m = read_manifest(bundle)
    spec = get_spec(m.architecture)
    model, _ = build_module(spec, ExportConfig(architecture=m.architecture, encoder=m.encoder or spec.default_encoder,
                                                classes=m.num_classes, in_channels=m.input.channels))
    model = model.to(device)
    torch.set_num_threads(cfg.threads)
    mean = torch.tensor(m.input.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(m.input.std, device=device).view(1, -1, 1, 1)
    stride = m.input.stride
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    net = torch.compile(model) if compiled else model

    def one(i: int) -> dict[str, float]:
        batch = _batch(images, i, cfg.batch)
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = torch.from_numpy(np.stack(batch)).to(device).permute(0, 3, 1, 2).float().div_(255.0).sub_(mean).div_(std)
            h, w = batch[0].shape[:2]
            x = F.pad(x, (0, math.ceil(w / stride) * stride - w, 0, math.ceil(h / stride) * stride - h))
            sync()
            t1 = time.perf_counter()
            logits = net(x)
            sync()
            t2 = time.perf_counter()
            logits[:, :, :h, :w].argmax(1).to(torch.uint8).cpu().numpy()
        t3 = time.perf_counter()
        return {"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "post": (t3 - t2) * 1e3, "e2e": (t3 - t0) * 1e3}

    first_ms = None
    if compiled:
        t0 = time.perf_counter()
        one(0)  # compiles (minutes on a small CPU); excluded from the percentiles like any warm-up
        first_ms = (time.perf_counter() - t0) * 1e3
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakRss() as mem:
        stages = _timed(one, cfg)
    memory = mem.record()
    if device.type == "cuda":
        memory["device_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    kind = "compile" if compiled else "eager"
    return {"backend": f"torch-{kind}-{torch.__version__}-{device.type}", "stages": stages,
            "images_per_s": cfg.batch * stages["e2e"]["fps"], "memory": memory,
            **({"first_inference_ms": first_ms} if compiled else {})}


def _baseline(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A PyTorch side that cannot run here (no CUDA, torch.compile failing) is a row note, not a crash."""
    try:
        return fn()
    except BackendUnavailableError as exc:
        return {"skipped": str(exc)}
    except Exception as exc:  # torch.compile/inductor raise many types; "where it works"  # noqa: BLE001
        return {"skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}


def segrt_row(bundle: Path, cfg: BenchConfig, batch: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A result row's identity, segrt's figures from ``run()`` (or why the device could not run it), the
    variant's gate numbers and the pre+post share."""
    m = read_manifest(bundle)
    row: dict[str, Any] = {
        "model": f"{m.architecture}/{m.encoder}", "bundle": str(bundle), "precision": m.precision, "task": m.task,
        "device": cfg.device, "size": list(cfg.size), "batch": batch,
        "weights": "trained" if m.source.get("trained") else "seeded (untrained)",
    }
    try:
        row["segrt"] = run()
    except BackendUnavailableError as exc:
        return row | {"skipped": str(exc)}
    if m.quantization.get("gate"):
        g = m.quantization["gate"]
        row["gate"] = {"metric": g["metric"], "score": g["score"], "images": g["images"]}
    st = row["segrt"]["stages"]
    row["prepost_share"] = (st["pre"]["p50"] + st["post"]["p50"]) / st["e2e"]["p50"]
    return row


def bench_model(bundle: Path, cfg: BenchConfig, torch_cache: dict[Any, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One row: ``bundle`` on ``cfg.device`` at ``cfg.size`` x ``cfg.batch``, and PyTorch on the same inputs
    (eager, and compiled with ``cfg.compile``). ``torch_cache`` shares PyTorch's figures between rows that
    differ only in segrt's precision (the ratio is always against PyTorch FP32)."""
    m = read_manifest(bundle)
    images = photos(cfg.size)
    row = segrt_row(bundle, cfg, cfg.batch, lambda: bench_segrt(bundle, images, cfg))
    if "skipped" in row:
        return row
    seg_e2e = row["segrt"]["stages"]["e2e"]["p50"]
    if cfg.baseline and m.architecture != "imported":
        cache = torch_cache if torch_cache is not None else {}
        sides = [("torch", False)] + ([("torch_compile", True)] if cfg.compile else [])
        for key, compiled in sides:
            ident = (m.architecture, m.encoder, m.num_classes, cfg.size, cfg.batch, cfg.torch_device, compiled)
            if ident not in cache:
                cache[ident] = _baseline(lambda c=compiled: bench_torch(bundle, images, cfg, c))  # type: ignore[misc]
            row[key] = cache[ident]
            if "stages" in row[key]:
                row[f"speedup_vs_{key}"] = row[key]["stages"]["e2e"]["p50"] / seg_e2e
        if "skipped" in row["torch"]:
            row["torch_skipped"] = row.pop("torch")["skipped"]
    return row


def precision_variant(bundle: Path, precision: str) -> Path:
    """``bundle`` in ``precision``: itself when it already is, else a gated variant made once into the cache
    (INT8 calibrated on scikit-image photos that the gate and the timing do not use). The gate reports,
    never refuses, here: its numbers go into the row."""
    from segrt.export.quantize import QuantizeConfig, quantize_bundle
    from segrt.runtime.engine import sha256_file

    m = read_manifest(bundle)
    if m.precision == precision:
        return bundle
    if m.precision != "fp32":
        raise InvalidInputError(f"{bundle} is {m.precision}; give its FP32 bundle to time other precisions")
    out = cache_dir() / "variants" / f"{Path(bundle).name}-{sha256_file(Path(bundle) / m.model_file)[:12]}-{precision}"
    if not (out / "segrt.json").is_file():
        log.warning("making the %s variant of %s into %s (once)", precision, bundle, out)
        calib = _calibration_photos() if precision == "int8" and task_for(m.task).int8_calibrated else None
        quantize_bundle(Path(bundle), out, QuantizeConfig(precision, calib=calib, samples=8, min_score=0.0), force=True)
    return out


CALIB_PHOTOS = ("hubble_deep_field", "immunohistochemistry", "coins", "camera", "moon", "page")


def _calibration_photos() -> Path:
    import skimage.data

    out = cache_dir() / "calib-skimage"
    if not out.is_dir():
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for name in CALIB_PHOTOS:
            image = np.asarray(getattr(skimage.data, name)())
            rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[:, :, ::-1]
            cv2.imwrite(str(tmp / f"{name}.png"), rgb)
        tmp.rename(out)
    return out
