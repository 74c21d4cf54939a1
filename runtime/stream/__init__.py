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

The package: :mod:`.sources` (cameras, files, URLs, folders), :mod:`.pipeline` (the threads and their
queues), :mod:`.sinks` (annotated frames, video files, a window). What each stage does to a frame is the
task's (``segrt.runtime.tasks``: ``task.stages(predictor, prompts)``).
"""

from __future__ import annotations

from ..sam import PromptResult
from ..bundle import Stages
from .pipeline import Stream, StreamReport, default_workers, run_stream, stream
from .sinks import Display, VideoSink, annotate
from .sources import LIVE_READ_RETRIES, FolderSource, FrameSource, VideoSource, open_source

__all__ = [
    "LIVE_READ_RETRIES",
    "Display",
    "FolderSource",
    "FrameSource",
    "PromptResult",
    "Stages",
    "Stream",
    "StreamReport",
    "VideoSink",
    "VideoSource",
    "annotate",
    "default_workers",
    "open_source",
    "run_stream",
    "stream",
]
