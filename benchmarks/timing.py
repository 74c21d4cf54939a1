"""Timing helpers of ``segrt bench``: percentiles, repeated calls, peak memory, and sides measured cold then
timed in interleaved pairs.

A :class:`Side` is one contender of a row: its stage closure ``one(i) -> {pre, infer, post, e2e}`` (ms) and
what was measured when it was built (load, first inference, memory). :func:`measure_side` builds it under
:class:`PeakRss` and runs its first calls there, BEFORE any timed round: inside one interleaved loop every
side's allocations land in the same process at the same time, so memory is only separable per side at build
time. :func:`pair_sides` then times all sides with :func:`benchmarks.pairs.interleave` on the same inputs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .pairs import MIN_ROUNDS, interleave, ratio_stats

StageFn = Callable[[int], Mapping[str, float]]


#: --seconds still takes this many timed runs, so p50/p90 never rest on one or two samples
MIN_TIMED = MIN_ROUNDS


def repeat(fn: Callable[[int], Any], warmup: int, iters: int, seconds: float | None = None) -> list[Any]:
    """``fn(i)`` after ``warmup`` untimed calls: ``iters`` times, or with ``seconds`` until that much wall
    time has passed (at least MIN_TIMED calls). Inputs rotate with ``i``."""
    for i in range(warmup):
        fn(i)
    if seconds is None:
        return [fn(i) for i in range(iters)]
    runs, start = [], time.perf_counter()
    while len(runs) < MIN_TIMED or time.perf_counter() - start < seconds:
        runs.append(fn(len(runs)))
    return runs


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


def cold_start(make: Callable[[], Any], image: np.ndarray) -> tuple[Any, float, float]:
    """Build a model and run it once: (model, load ms, first-inference ms), the cold-start costs."""
    t0 = time.perf_counter()
    model = make()
    load_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    model(image)
    return model, load_ms, (time.perf_counter() - t0) * 1e3


@dataclass
class Side:
    """One contender of a row: ``one(i)`` times input ``i`` stage by stage; ``info`` is what the row shows
    beside its timings (backend, load_ms, first_inference_ms, memory, and any side-specific figures);
    ``done()`` adds figures gathered while it was timed (e.g. mean detections)."""

    one: StageFn
    info: dict[str, Any]
    done: Callable[[], dict[str, Any]] = field(default=lambda: {})


def measure_side(build: Callable[[], tuple[StageFn, dict[str, Any]]], gpu: bool = False,
                 first_calls: int = 2) -> Side:
    """Build a side under :class:`PeakRss` and run its first ``first_calls`` inputs there: load ms (the
    build), first inference ms (call 0: lazy allocations, torch.compile's compile) and the memory of load +
    first calls. The interleaved rounds come after, with their own warm-up."""
    with PeakRss(gpu=gpu) as mem:
        t0 = time.perf_counter()
        one, info = build()
        load_ms = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        one(0)
        first_ms = (time.perf_counter() - t0) * 1e3
        for i in range(1, first_calls):
            one(i)
    return Side(one, {"load_ms": load_ms, "first_inference_ms": first_ms, "memory": mem.record(), **info})


def pair_sides(sides: Mapping[str, Side], reference: str, rounds: int, warmup: int,
               seconds: float | None = None) -> dict[str, Any]:
    """:func:`benchmarks.pairs.interleave` over the sides' closures, every side's per-round figures kept so
    that any two sides can be paired afterwards (:func:`pair_ratio`): ``result["samples"][name]`` is the
    list of that side's timed rounds, in round order."""
    logs: dict[str, list[Mapping[str, float]]] = {name: [] for name in sides}

    def recorded(name: str, fn: StageFn) -> StageFn:
        def call(i: int) -> Mapping[str, float]:
            out = fn(i)
            logs[name].append(out)
            return out
        return call

    result = interleave({n: recorded(n, s.one) for n, s in sides.items()}, reference=reference, rounds=rounds,
                        warmup=warmup, seconds=seconds)
    result["samples"] = {n: log[warmup:] for n, log in logs.items()}  # one call per side per round
    return result


def pair_ratio(paired: Mapping[str, Any], numerator: str, denominator: str, stage: str = "e2e") -> dict[str, float]:
    """Median (quartiles, range) of ``numerator`` ms / ``denominator`` ms over the rounds of one
    :func:`pair_sides` run: the two calls of each ratio ran in the same round."""
    num, den = paired["samples"][numerator], paired["samples"][denominator]
    return ratio_stats([a[stage] / b[stage] for a, b in zip(num, den)])
