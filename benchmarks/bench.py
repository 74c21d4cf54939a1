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

from segrt.runtime.errors import InvalidInputError
from segrt.runtime.manifest import read_manifest
from segrt.runtime.semantic import Segmenter

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

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.iters < 1:
            raise InvalidInputError(f"need --warmup >= 0 and --iters >= 1; got {self.warmup}, {self.iters}")
        if self.threads < 1:
            raise InvalidInputError(f"--threads must be >= 1; got {self.threads}")


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


def _timed(fn: Callable[[int], dict[str, float]], cfg: BenchConfig) -> dict[str, dict[str, float]]:
    for i in range(cfg.warmup):
        fn(i)
    runs = [fn(i) for i in range(cfg.iters)]
    return {stage: percentiles([r[stage] for r in runs]) for stage in runs[0]}


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the lifetime peak is the best available
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRss:
    """Peak resident memory of this process while the block runs, sampled every 5 ms (on Linux; elsewhere
    the process's lifetime peak). ``record()``: MB before, peak, and the difference (what the block added)."""

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

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    def record(self) -> dict[str, float]:
        mb = 1024 * 1024
        return {"rss_before_mb": self.before / mb, "peak_rss_mb": self.peak / mb,
                "peak_delta_mb": (self.peak - self.before) / mb}


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


def bench_segrt(bundle: Path, images: list[np.ndarray], cfg: BenchConfig) -> dict[str, Any]:
    with PeakRss() as mem:  # load, first inference and the timed loop: what the model costs in memory
        seg, load_ms, first_ms = cold_start(lambda: Segmenter(bundle, "auto", threads=cfg.threads), images[0])

        def one(i: int) -> dict[str, float]:
            t0 = time.perf_counter()
            arr = seg.prepare(images[i % len(images)], "rgb")
            tensor, frames = seg.preprocess([arr])
            t1 = time.perf_counter()
            scores = seg.infer(tensor)
            t2 = time.perf_counter()
            seg.postprocess(scores[0], frames[0])
            t3 = time.perf_counter()
            return {"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "post": (t3 - t2) * 1e3, "e2e": (t3 - t0) * 1e3}

        stages = _timed(one, cfg)
    return {"backend": seg.runner.name, "load_ms": load_ms, "first_inference_ms": first_ms, "stages": stages,
            "memory": mem.record()}


def bench_torch(bundle: Path, images: list[np.ndarray], cfg: BenchConfig) -> dict[str, Any]:
    """PyTorch eager on the same photos: the same pad/normalise/argmax pipeline, written in torch."""
    import torch
    import torch.nn.functional as F

    from segrt.export.exporter import build_module
    from segrt.export.models import get_spec
    from segrt.export.spec import ExportConfig

    m = read_manifest(bundle)
    spec = get_spec(m.architecture)
    model, _ = build_module(spec, ExportConfig(architecture=m.architecture, encoder=m.encoder or spec.default_encoder,
                                                classes=m.num_classes, in_channels=m.input.channels))
    torch.set_num_threads(cfg.threads)
    mean = torch.tensor(m.input.mean).view(1, -1, 1, 1)
    std = torch.tensor(m.input.std).view(1, -1, 1, 1)
    stride = m.input.stride

    def one(i: int) -> dict[str, float]:
        image = images[i % len(images)]
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div_(255.0).sub_(mean).div_(std)
            h, w = image.shape[:2]
            x = F.pad(x, (0, math.ceil(w / stride) * stride - w, 0, math.ceil(h / stride) * stride - h))
            t1 = time.perf_counter()
            logits = model(x)
            t2 = time.perf_counter()
            logits[0, :, :h, :w].argmax(0).to(torch.uint8).numpy()
        t3 = time.perf_counter()
        return {"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "post": (t3 - t2) * 1e3, "e2e": (t3 - t0) * 1e3}

    with PeakRss() as mem:
        stages = _timed(one, cfg)
    return {"backend": f"torch-eager-{torch.__version__}", "stages": stages, "memory": mem.record()}


def bench_model(bundle: Path, cfg: BenchConfig) -> dict[str, Any]:
    m = read_manifest(bundle)
    images = photos(cfg.size)
    row: dict[str, Any] = {
        "model": f"{m.architecture}/{m.encoder}", "bundle": str(bundle), "precision": m.precision,
        "size": list(cfg.size), "batch": 1, "weights": "trained" if m.source.get("trained") else "seeded (untrained)",
        "segrt": bench_segrt(bundle, images, cfg),
    }
    seg_e2e = row["segrt"]["stages"]["e2e"]["p50"]
    st = row["segrt"]["stages"]
    row["prepost_share"] = (st["pre"]["p50"] + st["post"]["p50"]) / seg_e2e
    if cfg.baseline and m.architecture != "imported":
        row["torch"] = bench_torch(bundle, images, cfg)
        row["speedup_vs_torch"] = row["torch"]["stages"]["e2e"]["p50"] / seg_e2e
    return row
