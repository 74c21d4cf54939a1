"""The pipeline: capture -> preprocess -> inference (one or more workers) -> postprocess -> the consumer,
each stage a thread joined to the next by a bounded queue (see the package's docstring). What each stage
does to a frame is the task's (:meth:`segrt.runtime.tasks.Task.stages`)."""

from __future__ import annotations

import heapq
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import kernels
from ..errors import InvalidInputError, SegrtError
from ..bundle import Stages
from ..loader import load
from ..tasks import Task, task_for
from .sources import FrameSource, open_source

log = logging.getLogger("segrt")

Model = Any  # the task's predictor: Segmenter, InstanceSegmenter, SamPredictor...
_POLL = 0.05  # seconds between checks of the stop flag while a stage waits
_END = object()  # end of the source, passed down the pipeline


@dataclass
class StreamReport:
    source: str
    live: bool
    workers: int
    device: str
    frames_in: int = 0  # frames read from the source
    frames_out: int = 0  # results delivered
    dropped: int = 0  # live frames replaced by a newer one before anyone took them
    skipped: int = 0  # frames that could not be decoded or segmented
    seconds: float = 0.0
    fps: float = 0.0  # results per second, first read to last result
    latency_p50_ms: float = 0.0  # capture -> result
    latency_p99_ms: float = 0.0
    latency_max_ms: float = 0.0
    complete: bool = True  # False when stopped early (Ctrl-C, an error, the consumer leaving)
    expected_frames: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.frames_out} of {self.frames_in} frames in {self.seconds:.1f} s ({self.fps:.1f} FPS); "
                f"dropped {self.dropped}, skipped {self.skipped}; latency p50 {self.latency_p50_ms:.0f} ms, "
                f"p99 {self.latency_p99_ms:.0f} ms; {self.workers} worker(s) on {self.device}")


@dataclass
class _Item:
    seq: int
    index: int  # frame number in the source
    t_capture: float
    frame: np.ndarray
    payload: Any = None
    ctx: Any = None
    result: Any = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


class _Slot:
    """A one-frame mailbox: put replaces what nobody took (a drop)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._item: Any = None
        self.drops = 0

    def put(self, item: Any) -> None:
        with self._cv:
            if self._item is not None and self._item is not _END:
                self.drops += 1
            if self._item is not _END:
                self._item = item
            self._cv.notify_all()

    def get(self, timeout: float) -> Any:
        with self._cv:
            if self._item is None:
                self._cv.wait(timeout)
            item, self._item = self._item, (None if self._item is not _END else _END)
            return item


def _task_of(model: Model) -> Task:
    manifest = getattr(model, "manifest", None)
    if manifest is None:
        raise InvalidInputError(f"stream() needs a bundle path or a segrt model; got {type(model).__name__}")
    return task_for(manifest.task)


def default_workers(device: str) -> int:
    """CPU: two single-threaded sessions where there are cores for them (measured faster on 2 cores
    than one two-threaded session: less synchronisation per operator); one on a GPU."""
    return 2 if device == "cpu" and (os.cpu_count() or 1) >= 2 else 1


class Stream:
    """Iterate to get ``(frame, result)`` pairs; ``report`` holds the run's figures afterwards.

    ``model`` is a bundle path (loaded ``workers`` times, the CPU threads split between them) or a
    loaded model (one worker). ``live`` defaults to True for cameras and URLs, False for files.
    """

    def __init__(self, model: str | Path | Model, source: str | int | Path | FrameSource, *,
                 live: bool | None = None, device: str = "auto", workers: int | None = None,
                 threads: int | None = None, max_fps: float | None = None, points: np.ndarray | None = None,
                 labels: np.ndarray | None = None, box: np.ndarray | None = None, max_frames: int | None = None,
                 queue_size: int = 4, **load_kwargs: Any) -> None:
        if max_frames is not None and max_frames < 1:
            raise InvalidInputError(f"max_frames must be at least 1; got {max_frames}")
        if max_fps is not None and max_fps <= 0:
            raise InvalidInputError(f"max_fps must be positive; got {max_fps}")
        if workers is not None and workers < 1:
            raise InvalidInputError(f"workers must be at least 1; got {workers}")
        if not isinstance(model, (str, Path)) and workers not in (None, 1):
            raise InvalidInputError("several workers need the bundle path (each loads its own session)")
        self.source = open_source(source, live)  # first: a bad source fails before any model loads
        try:
            self.models = self._load(model, device, workers, threads, load_kwargs)
            self.stages: Stages = _task_of(self.models[0]).stages(self.models[0], {"points": points, "labels": labels,
                                                                                   "box": box})
        except BaseException:
            self.source.close()
            raise
        self.max_fps, self.max_frames = max_fps, max_frames
        expected = self.source.expected_frames
        if max_frames is not None:
            expected = max_frames if expected is None else min(expected, max_frames)
        self.report = StreamReport(self.source.name, self.source.live, len(self.models), self.models[0].device,
                                   expected_frames=expected)
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        n = len(self.models)
        self._slot = _Slot()
        self._pre_in: queue.Queue = queue.Queue(maxsize=queue_size)
        self._infer_in: queue.Queue = queue.Queue(maxsize=max(queue_size, n))
        self._post_in: queue.Queue = queue.Queue(maxsize=queue_size)
        self._out: queue.Queue = queue.Queue(maxsize=queue_size)
        self._credits = threading.Semaphore(n)  # live: a frame is taken only when a worker is free for it
        self._threads: list[threading.Thread] = []
        self._started = False
        self._latencies: list[float] = []

    @staticmethod
    def _load(model: str | Path | Model, device: str, workers: int | None, threads: int | None,
              load_kwargs: dict[str, Any]) -> list[Model]:
        if not isinstance(model, (str, Path)):
            return [model]  # the caller's object, left as configured
        first = load(model, device, threads=threads, **load_kwargs)
        n = workers or default_workers(first.device)
        models = [first]
        if n > 1:  # the CPU's threads split between the workers' sessions
            per = threads or max(1, (os.cpu_count() or 1) // n)
            if threads is None:
                models = [load(model, first.device, threads=per, **load_kwargs)]
            models += [load(model, first.device, threads=per, **load_kwargs) for _ in range(n - 1)]
        task = _task_of(first)
        for m in models:  # ours, not the caller's: the task may tune them for video (SAM: no embedding cache)
            task.for_stream(m)
        return models

    # queue helpers that give up when the pipeline is stopping
    def _put(self, q: queue.Queue, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue) -> Any:
        while not self._stop.is_set():
            try:
                return q.get(timeout=_POLL)
            except queue.Empty:
                continue
        return _END

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                with kernels.thread_limit(1):  # the stages are the parallelism (see kernels.thread_limit)
                    fn()
            except BaseException as exc:  # surfaced to the consumer, which re-raises it
                self._errors.append(exc)
                self._stop.set()
        return run

    # stages
    def _capture(self) -> None:
        index, period, t_next = 0, (1.0 / self.max_fps if self.max_fps else 0.0), time.perf_counter()
        try:
            while not self._stop.is_set() and (self.max_frames is None or index < self.max_frames):
                if period:
                    delay = t_next - time.perf_counter()
                    if delay > 0 and self._stop.wait(delay):
                        break
                    t_next = max(t_next + period, time.perf_counter() - period)
                try:
                    frame = self.source.read()
                except SegrtError as exc:
                    self.report.frames_in += 1
                    self.report.skipped += 1
                    log.warning("skipped frame %d: %s", index, exc)
                    index += 1
                    continue
                if frame is None:
                    break
                self.report.frames_in += 1
                item = (index, time.perf_counter(), frame)
                index += 1
                if self.source.live:
                    self._slot.put(item)
                elif not self._put(self._pre_in, item):
                    break
        finally:
            if self.source.live:
                self._slot.put(_END)
            else:
                self._put(self._pre_in, _END)

    def _preprocess(self) -> None:
        seq = 0
        while not self._stop.is_set():
            if self.source.live:
                if not self._credits.acquire(timeout=_POLL):
                    continue
                got = self._slot.get(_POLL)
                if got is None:
                    self._credits.release()
                    continue
            else:
                got = self._get(self._pre_in)
            if got is _END:
                break
            index, t_cap, frame = got
            item = _Item(seq, index, t_cap, frame)
            seq += 1
            t0 = time.perf_counter()
            try:
                item.payload, item.ctx = self.stages.pre(frame)
            except SegrtError as exc:
                item.error = str(exc)
            item.timings["pre"] = (time.perf_counter() - t0) * 1e3
            if not self._put(self._infer_in, item):
                return
        for _ in self.models:
            self._put(self._infer_in, _END)

    def _infer(self, model: Model) -> None:
        while True:
            item = self._get(self._infer_in)
            if item is _END:
                break
            if item.error is None:
                t0 = time.perf_counter()
                try:
                    item.payload = self.stages.infer(model, item.payload)
                except SegrtError as exc:
                    item.error = str(exc)
                item.timings["infer"] = (time.perf_counter() - t0) * 1e3
            if not self._put(self._post_in, item):
                return
        self._put(self._post_in, _END)

    def _postprocess(self) -> None:
        ends = 0
        while ends < len(self.models):
            item = self._get(self._post_in)
            if item is _END:
                if self._stop.is_set():
                    return
                ends += 1
                continue
            if item.error is None:
                t0 = time.perf_counter()
                try:
                    item.result = self.stages.post(item.payload, item.ctx)
                except SegrtError as exc:
                    item.error = str(exc)
                item.timings["post"] = (time.perf_counter() - t0) * 1e3
            item.payload = item.ctx = None
            if not self._put(self._out, item):
                return
        self._put(self._out, _END)

    def start(self) -> Stream:
        if self._started:
            raise InvalidInputError("a Stream runs once; create a new one")
        self._started = True
        self._t0 = time.perf_counter()
        targets = [("capture", self._capture), ("preprocess", self._preprocess), ("postprocess", self._postprocess)]
        targets += [(f"infer-{i}", lambda m=m: self._infer(m)) for i, m in enumerate(self.models)]
        for name, fn in targets:
            t = threading.Thread(target=self._guard(fn), name=f"segrt-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __iter__(self) -> Iterator[tuple[np.ndarray, Any]]:
        if not self._started:
            self.start()
        pending: list[tuple[int, int, _Item]] = []
        want = 0
        t_last = self._t0
        try:
            while True:
                item = self._get(self._out)
                if item is _END:
                    break
                heapq.heappush(pending, (item.seq, id(item), item))
                while pending and pending[0][0] == want:
                    _, _, ready = heapq.heappop(pending)
                    want += 1
                    if self.source.live:
                        self._credits.release()
                    if ready.error is not None:
                        self.report.skipped += 1
                        log.warning("skipped frame %d: %s", ready.index, ready.error)
                        continue
                    t_last = time.perf_counter()
                    latency = (t_last - ready.t_capture) * 1e3
                    self._latencies.append(latency)
                    ready.result.timings = {**ready.timings, "latency": latency, "frame": float(ready.index)}
                    self.report.frames_out += 1
                    yield ready.frame, ready.result
            if self._errors:
                raise self._errors[0]
        except BaseException:  # the consumer left (GeneratorExit), Ctrl-C, or a stage failed
            self.report.complete = False
            raise
        finally:
            self._finish(t_last)

    def _finish(self, t_last: float) -> None:
        if self._stop.is_set() or self._errors:
            self.report.complete = False
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self.source.close()
        r = self.report
        r.dropped = self._slot.drops
        r.seconds = max(t_last - self._t0, 0.0)
        r.fps = r.frames_out / r.seconds if r.seconds > 0 else 0.0
        if self._latencies:
            lat = np.asarray(self._latencies)
            r.latency_p50_ms, r.latency_p99_ms = (float(v) for v in np.percentile(lat, [50, 99]))
            r.latency_max_ms = float(lat.max())
        if r.expected_frames is not None and r.complete and r.frames_in < r.expected_frames:
            log.warning("source %s ended after %d of %d frames", r.source, r.frames_in, r.expected_frames)

    def close(self) -> None:
        """Stop the pipeline (safe to call twice)."""
        if not self._started:
            self.source.close()
        elif not self._stop.is_set():
            self.report.complete = False
            self._finish(time.perf_counter())

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream(model: str | Path | Model, source: str | int | Path | FrameSource, *, live: bool | None = None,
           **kwargs: Any) -> Stream:
    """``for frame, result in stream(bundle, "video.mp4"): ...``; see :class:`Stream`."""
    return Stream(model, source, live=live, **kwargs)


def run_stream(model: str | Path | Model, source: str | int | Path | FrameSource,
               callback: Callable[[np.ndarray, Any], None], **kwargs: Any) -> StreamReport:
    """The callback form: ``callback(frame, result)`` per frame in order; returns the report."""
    s = Stream(model, source, **kwargs)
    for frame, result in s:
        callback(frame, result)
    return s.report
