"""Latency percentiles per stage, segrt against the peers a user would pick (PyTorch eager and compiled, a
default ONNX Runtime session, OpenVINO), in interleaved pairs on the same inputs and threads.

Each row is built in two phases. First every side is built and run on its first inputs under
:class:`PeakRss`, one side after the other: that gives each side's cold start (load, first inference) and
memory, which cannot be told apart inside one interleaved loop (all sides allocate in one process at once).
Then all sides are timed together with :func:`benchmarks.pairs.interleave` (segrt the reference): each
round calls every side once on the same input, the order rotated, so machine-load changes land on all
sides. A row keeps each side's own p50/p90/p99 per stage (``row["segrt"]["stages"]``, ``row["torch"]
["stages"]``, ...), the per-round ratios of every peer (``row["pairs"][peer]``: median, quartiles, range,
pairs; peer ms / segrt ms end to end) and ``speedup_vs_<peer>`` = that MEDIAN PAIR RATIO, which the goal
verdicts use. Rows that differ only in segrt's precision each pair with their own PyTorch calls (against
PyTorch FP32): PyTorch's built module is shared between them (its cold start and memory are from that
build), its timings never are.

Timing rules: ``time.perf_counter``; warm-up rounds excluded; inputs rotated among real photos; one thread
count for every side. Weights are seeded (latency does not depend on weight values) and labelled so.
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

from . import peers
from .isolated import in_child
from .pairs import percentiles
from .timing import MIN_TIMED, PeakRss, Side, cold_start, measure_side, pair_sides
from .timing import repeat as _repeat

__all__ = ["MIN_TIMED", "PeakRss", "cold_start", "percentiles"]  # re-exported: bench_sam, bench_serving, tests

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
    iters: int = 20  # timed rounds of a row (every side once per round)
    threads: int = os.cpu_count() or 1
    baseline: bool = True  # PyTorch eager
    device: str = "auto"  # segrt's device (backends.DEVICES); PyTorch runs on "cuda" for cuda/tensorrt
    batch: int = 1
    compile: bool = False  # also time torch.compile(model), where it works
    #: --seconds: time each row for this long instead of a fixed --iters count (at least MIN_TIMED rounds)
    seconds: float | None = None
    #: the engine peers on the same ONNX (peers.ENGINE_PEERS: default ONNX Runtime, OpenVINO), where segrt runs on the CPU
    engine_peers: bool = True

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


def repeat(fn: Callable[[int], Any], cfg: BenchConfig) -> list[Any]:
    """``fn(i)`` after cfg.warmup untimed calls: cfg.iters times, or with cfg.seconds
    until that much wall time has passed (at least MIN_TIMED calls). Inputs rotate with ``i``."""
    return _repeat(fn, cfg.warmup, cfg.iters, cfg.seconds)


def time_ms(fn: Callable[[int], Any], cfg: BenchConfig) -> dict[str, float]:
    """Percentiles of ``fn(i)``'s wall time in ms, repeated as ``cfg`` says (see :func:`repeat`)."""
    def one(i: int) -> float:
        t0 = time.perf_counter()
        fn(i)
        return (time.perf_counter() - t0) * 1e3

    return percentiles(repeat(one, cfg))


def ensure_bundle(arch: str, encoder: str, classes: int) -> Path:
    """Export the seeded default model into the cache once (in a child process); later runs reuse it."""
    from segrt.export.exporter import export_model
    from segrt.export.spec import ExportConfig

    out = cache_dir() / f"{arch}-{encoder}-{classes}"
    if not (out / "segrt.json").is_file():
        log.warning("exporting %s/%s with seeded weights into %s (once)", arch, encoder, out)
        in_child(export_model, ExportConfig(architecture=arch, encoder=encoder, classes=classes, seed=0), out,
                 force=True)
    return out


# -- building the sides ------------------------------------------------------------------------------------
def segrt_semantic(bundle: Path, images: list[np.ndarray], cfg: BenchConfig) -> tuple[Side, Segmenter]:
    """segrt's side: a Segmenter on ``cfg.device`` timing a batch of ``cfg.batch`` photos (one model call)."""
    made: list[Segmenter] = []

    def build() -> peers.Built:
        seg = Segmenter(bundle, cfg.device, threads=cfg.threads)
        if seg.max_batch is not None and cfg.batch > seg.max_batch:
            raise InvalidInputError(f"{bundle} has a fixed batch of {seg.max_batch}; cannot time batch {cfg.batch}")
        made.append(seg)

        def one(i: int) -> dict[str, float]:
            t0 = time.perf_counter()
            arrs = [seg.prepare(im, "rgb") for im in peers.batch_of(images, i, cfg.batch)]
            tensor, frames = seg.preprocess(arrs)
            t1 = time.perf_counter()
            scores = seg.infer(tensor)
            t2 = time.perf_counter()
            for k, frame in enumerate(frames):
                seg.postprocess(scores[k], frame)
            t3 = time.perf_counter()
            return {"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "post": (t3 - t2) * 1e3, "e2e": (t3 - t0) * 1e3}

        return one, {"backend": seg.runner.name}

    side = measure_side(build, gpu=cfg.torch_device == "cuda")
    return side, made[0]


def build_peer(build: Callable[[], peers.Built], cfg: BenchConfig) -> Side | str:
    """A peer's side, or the row note saying why it cannot run here (no CUDA, torch.compile failing,
    OpenVINO refusing a graph)."""
    try:
        return measure_side(build, gpu=cfg.torch_device == "cuda")
    except Exception as exc:  # each peer raises its own types (inductor, OpenVINO, onnxruntime)  # noqa: BLE001
        return peers.skipped(exc)


def add_side(sides: dict[str, Side], notes: dict[str, str], key: str, built: Side | str) -> None:
    if isinstance(built, str):
        notes[key] = built
    else:
        sides[key] = built


def torch_sides(bundle: Path, images: list[np.ndarray], cfg: BenchConfig, cache: dict[Any, Any],
                sides: dict[str, Side], notes: dict[str, str]) -> None:
    """PyTorch eager (and compiled with ``cfg.compile``), built once per model x size x batch x device
    through ``cache`` and timed in this row's own pairs."""
    m = read_manifest(bundle)
    for key, compiled in [("torch", False)] + ([("torch_compile", True)] if cfg.compile else []):
        ident = (m.architecture, m.encoder, m.num_classes, cfg.size, cfg.batch, cfg.torch_device, compiled)
        if ident not in cache:
            cache[ident] = build_peer(lambda c=compiled: peers.semantic_torch(  # type: ignore[misc]
                bundle, images, cfg.batch, cfg.threads, cfg.torch_device, c), cfg)
        add_side(sides, notes, key, cache[ident])


def engine_sides(build: Callable[[str], Side | str], cfg: BenchConfig, segrt_backend: str,
                 sides: dict[str, Side], notes: dict[str, str]) -> None:
    """The engine peers on segrt's ONNX (``build(name)``: the measured side or why not), where segrt runs on
    the CPU (on a GPU their peers are other engines)."""
    if not cfg.engine_peers:
        return
    for name in peers.ENGINE_PEERS:
        if segrt_backend != "onnxruntime-cpu":
            notes[name] = f"a CPU peer; segrt ran on {segrt_backend}"
            continue
        add_side(sides, notes, name, build(name))


# -- timing them in pairs ----------------------------------------------------------------------------------
def row_identity(bundle: Path, cfg: BenchConfig, batch: int) -> dict[str, Any]:
    m = read_manifest(bundle)
    return {"model": f"{m.architecture}/{m.encoder}", "bundle": str(bundle), "precision": m.precision, "task": m.task,
            "device": cfg.device, "size": list(cfg.size), "batch": batch,
            "weights": "trained" if m.source.get("trained") else "seeded (untrained)"}


def paired_row(row: dict[str, Any], sides: dict[str, Side], notes: dict[str, str], cfg: BenchConfig,
               batch: int) -> dict[str, Any]:
    """Time ``sides`` in interleaved rounds (segrt the reference) and fill the row: each side's figures
    under its key, ``pairs`` and ``speedup_vs_<peer>`` (the median pair ratio), ``<peer>_skipped`` notes,
    the gate numbers and segrt's pre+post share."""
    paired = pair_sides(sides, "segrt", rounds=cfg.iters, warmup=cfg.warmup, seconds=cfg.seconds)
    for key, side in sides.items():
        stages = paired["sides"][key]
        row[key] = {**side.info, "stages": stages, "images_per_s": batch * stages["e2e"]["fps"], **side.done()}
    row["pairing"] = {k: paired[k] for k in ("rounds", "order", "stage", "reference")}
    row["pairs"] = paired["ratios"]
    for key, ratio in paired["ratios"].items():
        row[f"speedup_vs_{key}"] = ratio["median"]
    for key, note in notes.items():
        row[f"{key}_skipped"] = note
    m = read_manifest(row["bundle"])
    if m.quantization.get("gate"):
        g = m.quantization["gate"]
        row["gate"] = {"metric": g["metric"], "score": g["score"], "images": g["images"]}
    st = row["segrt"]["stages"]
    row["prepost_share"] = (st["pre"]["p50"] + st["post"]["p50"]) / st["e2e"]["p50"]
    return row


def bench_model(bundle: Path, cfg: BenchConfig, torch_cache: dict[Any, Any] | None = None) -> dict[str, Any]:
    """One row: ``bundle`` on ``cfg.device`` at ``cfg.size`` x ``cfg.batch`` against PyTorch (eager, and
    compiled with ``cfg.compile``) and the engine peers, all in interleaved pairs on the same inputs.
    ``torch_cache`` shares PyTorch's built module (not its timings) between rows."""
    m = read_manifest(bundle)
    images = photos(cfg.size)
    row = row_identity(bundle, cfg, cfg.batch)
    try:
        segrt_side, seg = segrt_semantic(bundle, images, cfg)
    except BackendUnavailableError as exc:
        return row | {"skipped": str(exc)}
    sides, notes = {"segrt": segrt_side}, {}
    if cfg.baseline and m.architecture != "imported":
        torch_sides(bundle, images, cfg, torch_cache if torch_cache is not None else {}, sides, notes)
    engine_sides(lambda n: build_peer(lambda: peers.semantic_engine(n, seg, images, cfg.batch, cfg.threads), cfg),
                 cfg, segrt_side.info["backend"], sides, notes)
    return paired_row(row, sides, notes, cfg, cfg.batch)


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
