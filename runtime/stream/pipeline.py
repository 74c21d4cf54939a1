"""Camera and video pipelines: ``for frame, result in stream(bundle, source): ...``.

Frames flow capture -> preprocess -> inference (one or more workers) -> postprocess -> the consumer,
each stage a thread joined to the next by a bounded queue, so decoding, pre/post-processing and
inference overlap (OpenCV and ONNX Runtime release the GIL while they work).

* File and folder sources process every frame, in order (the consumer reorders what parallel
  inference workers finish out of order).
* Live sources (cameras, network streams) keep only the newest frame: the capture thread replaces an
  unclaimed frame instead of queueing it (a drop, counted), and the preprocess stage takes a frame only
  when an inference worker is free, so a result is never older than the frames in flight.

Per-run figures (frames in/out, drops, sustained FPS, capture-to-result latency) are in
:class:`StreamReport`; :func:`run_stream` is the callback form and ``segrt stream`` the command.
"""

from __future__ import annotations

import heapq
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np

from . import kernels, prepost
from .errors import BackendUnavailableError, InvalidInputError, SegrtError
from .image import IMAGE_SUFFIXES, list_images, read_image, to_display_rgb
from .instance import InstanceResult, InstanceSegmenter
from .loader import load
from .sam import SamPredictor, to_uint8_rgb
from .semantic import SegmentationResult, Segmenter

log = logging.getLogger("segrt")

Model = Union[Segmenter, InstanceSegmenter, SamPredictor]
_POLL = 0.05  # seconds between checks of the stop flag while a stage waits
_END = object()  # end of the source, passed down the pipeline
#: Consecutive failed reads after which a live source counts as broken.
LIVE_READ_RETRIES = 25


# -- sources ---------------------------------------------------------------------------------------
class FrameSource:
    """Where frames come from. ``read()`` returns the next 8-bit RGB (or 16-bit/grayscale) frame, or
    None at the end; a frame that cannot be decoded raises :class:`InvalidInputError` (counted as a
    skip). ``live`` sources are sampled (newest frame wins), others are processed in full."""

    name: str = "source"
    live: bool = False
    fps: float = 0.0  # the source's nominal rate (0 when unknown)
    expected_frames: int | None = None
    size: tuple[int, int] | None = None  # (width, height) when the source knows it before the first frame

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class VideoSource(FrameSource):
    """A camera index, /dev/videoN, a video file or an rtsp/http URL, through OpenCV."""

    def __init__(self, spec: str | int, live: bool | None = None) -> None:
        target: str | int = spec
        is_device = isinstance(spec, int) or bool(re.fullmatch(r"\d+|/dev/video\d+", str(spec)))
        is_url = isinstance(spec, str) and "://" in spec
        if isinstance(spec, str) and spec.isdigit():
            target = int(spec)
        if not (is_device or is_url) and not Path(str(spec)).is_file():
            raise InvalidInputError(f"source {str(spec)!r} is not a camera index, /dev/videoN, URL, file or folder")
        self.name = str(spec)
        self.live = (is_device or is_url) if live is None else live
        self._cap = cv2.VideoCapture(target)
        if not self._cap.isOpened():
            raise InvalidInputError(f"cannot open video source {self.name!r} (not a video OpenCV can decode, "
                                    "or the device/stream is unavailable)")
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        w, h = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.size = (w, h) if w > 0 and h > 0 else None
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.expected_frames = count if count > 0 and not (is_device or is_url) else None
        self._failures = 0

    def read(self) -> np.ndarray | None:
        while True:
            ok, frame = self._cap.read()
            if ok and frame is not None and frame.size:
                self._failures = 0
                return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if frame.ndim == 3 and frame.shape[2] == 3 else frame
            if not self.live:
                return None
            self._failures += 1  # a camera or network stream can hiccup; a run of failures ends it
            if self._failures >= LIVE_READ_RETRIES:
                log.warning("source %s stopped delivering frames", self.name)
                return None
            time.sleep(0.02)

    def close(self) -> None:
        self._cap.release()


class FolderSource(FrameSource):
    """The images of a folder in name order, as a file-like (every frame) source."""

    def __init__(self, folder: Path, live: bool = False) -> None:
        self.name, self.live = str(folder), live
        self._paths = list_images(folder)
        if not self._paths:
            raise InvalidInputError(f"folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.expected_frames = len(self._paths)
        self._next = 0

    def read(self) -> np.ndarray | None:
        if self._next >= len(self._paths):
            return None
        path = self._paths[self._next]
        self._next += 1
        return read_image(path)  # InvalidInputError for a corrupt file: the pipeline counts a skip


def open_source(spec: str | int | Path | FrameSource, live: bool | None = None) -> FrameSource:
    """A :class:`FrameSource` for a camera index, /dev/videoN, file, URL or folder (or pass one through)."""
    if isinstance(spec, FrameSource):
        if live is not None:
            spec.live = live
        return spec
    if isinstance(spec, Path) or (isinstance(spec, str) and "://" not in spec and Path(spec).is_dir()):
        path = Path(spec)
        if path.is_dir():
            return FolderSource(path, live=bool(live))
    return VideoSource(str(spec) if isinstance(spec, Path) else spec, live)


# -- what each task does per stage -----------------------------------------------------------------
@dataclass
class PromptResult:
    """One frame of a SAM stream: the best mask per prompt."""

    masks: np.ndarray  # (P, H, W) bool
    scores: np.ndarray  # (P,) predicted IoU
    points: np.ndarray | None
    box: np.ndarray | None
    timings: dict[str, float] = field(default_factory=dict)

    def overlay(self, image: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        out = prepost.overlay_masks(to_display_rgb(read_image(image)), self.masks, alpha)
        if self.points is not None:
            for x, y in np.asarray(self.points).reshape(-1, 2):
                cv2.circle(out, (int(round(x)), int(round(y))), 5, (255, 255, 0), -1)
        if self.box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in self.box)
            cv2.rectangle(out, (x0, y0), (x1, y1), (255, 255, 0), 2)
        return out


class Stages:
    """pre (on the preprocess thread) -> infer (on a worker, with that worker's model) -> post."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def pre(self, frame: np.ndarray) -> tuple[Any, Any]:
        raise NotImplementedError

    def infer(self, model: Model, payload: Any) -> Any:
        raise NotImplementedError

    def post(self, raw: Any, ctx: Any) -> Any:
        raise NotImplementedError


class SemanticStages(Stages):
    model: Segmenter

    def pre(self, frame):
        tensor, frames = self.model.preprocess([self.model.prepare(frame)])
        return tensor, frames[0]

    def infer(self, model, payload):
        return model.infer(payload)

    def post(self, raw, ctx):
        return SegmentationResult(self.model.postprocess(raw[0], ctx), self.model.class_names)


class InstanceStages(Stages):
    model: InstanceSegmenter

    def pre(self, frame):
        return self.model.preprocess(self.model.prepare(frame))

    def infer(self, model, payload):
        return model.infer(payload)

    def post(self, raw, ctx):
        boxes, scores, labels, masks = self.model.postprocess(raw, ctx)
        return InstanceResult(boxes, scores, labels, masks, self.model.class_names)


class SamStages(Stages):
    """Fixed prompts re-applied to every frame: the encoder and decoder run on the worker."""

    model: SamPredictor

    def __init__(self, model: SamPredictor, points: np.ndarray | None, labels: np.ndarray | None,
                 box: np.ndarray | None) -> None:
        super().__init__(model)
        if points is None and box is None:
            raise InvalidInputError("a SAM stream needs fixed prompts: --point X,Y and/or --box X0,Y0,X1,Y1")
        self.points, self.labels, self.box = points, labels, box

    def pre(self, frame):
        return to_uint8_rgb(read_image(frame, max_pixels=self.model.max_pixels)), None

    def infer(self, model, payload):
        model.set_image(payload)
        masks, iou, _ = model.predict(self.points, self.labels, self.box, multimask_output=False)
        return masks, iou

    def post(self, raw, ctx):
        masks, iou = raw
        return PromptResult(masks, iou, self.points, self.box)


def stages_for(model: Model, points=None, labels=None, box=None) -> Stages:
    if isinstance(model, SamPredictor):
        return SamStages(model, points, labels, box)
    if points is not None or box is not None:
        raise InvalidInputError("--point/--box prompts apply to SAM bundles only")
    if isinstance(model, InstanceSegmenter):
        return InstanceStages(model)
    if isinstance(model, Segmenter):
        return SemanticStages(model)
    raise InvalidInputError(f"stream() needs a bundle path or a segrt model; got {type(model).__name__}")


# -- the pipeline ----------------------------------------------------------------------------------
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
            self.stages = stages_for(self.models[0], points, labels, box)
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
        if isinstance(first, SamPredictor):
            for m in models:  # ours: every video frame is new, so hashing and keeping embeddings only costs
                m.cache.max_bytes = 0
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


# -- drawing and writing ---------------------------------------------------------------------------
def annotate(frame: np.ndarray, result: Any, fps: float | None = None) -> np.ndarray:
    """The result's overlay on ``frame`` (8-bit RGB) with FPS and latency in the corner."""
    out = result.overlay(frame)
    lat = result.timings.get("latency")
    text = " | ".join(t for t in (f"{fps:.1f} FPS" if fps else "", f"{lat:.0f} ms" if lat is not None else "") if t)
    if text:
        cv2.putText(out, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return out


_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


class VideoSink:
    """Writes 8-bit RGB frames to a video through a temporary file renamed on :meth:`close`, so the
    path holds either nothing or a finalized, playable file."""

    def __init__(self, path: Path, fps: float, size_wh: tuple[int, int]) -> None:
        self.path = Path(path)
        fourcc = _FOURCC.get(self.path.suffix.lower())
        if fourcc is None:
            raise InvalidInputError(f"output video must end in {', '.join(_FOURCC)}; got {str(path)!r}")
        if not self.path.parent.is_dir():
            raise InvalidInputError(f"cannot write {str(path)!r}: folder {str(self.path.parent)!r} does not exist")
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix}")
        self.size, self.fourcc = size_wh, fourcc  # mp4v: PyPI's OpenCV has no H.264 encoder (browsers want avc1)
        self._writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*fourcc), fps or 25.0, size_wh)
        if not self._writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise InvalidInputError(f"cannot write video {str(path)!r} (folder not writable, or no {fourcc} encoder)")
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self, keep: bool = True) -> None:
        self._writer.release()
        if keep and self.frames:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


class Display:
    """``--show``: an OpenCV window (needs opencv-python with GUI support, not the headless build)."""

    def __init__(self, title: str) -> None:
        self.title = title
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise BackendUnavailableError("--show needs OpenCV with GUI support (pip install opencv-python, "
                                          "not opencv-python-headless) and a display") from None

    def show(self, rgb: np.ndarray) -> bool:
        cv2.imshow(self.title, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def close(self) -> None:
        cv2.destroyWindow(self.title)


__all__ = [
    "FolderSource",
    "FrameSource",
    "PromptResult",
    "Stream",
    "StreamReport",
    "VideoSink",
    "VideoSource",
    "annotate",
    "open_source",
    "run_stream",
    "stream",
]
