"""``segrt stream``: segment a camera, video, URL or folder with bounded latency (no torch)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from . import kernels
from .backends import DEVICES
from .cli import int_at_least, positive_number
from .errors import InvalidInputError
from .sam_cli import box_arg, point_arg
from .stream import Display, Stream, VideoSink, annotate
from .tasks import Task, task_for

#: inference workers a stream may start (each holds a model session; more than this is a typo, not a plan)
MAX_WORKERS = 64


def frame_record(result: Any, task: Task) -> dict[str, Any]:
    """One line of ``--log``: the frame, its timings and what was found (the task's ``frame_record``)."""
    t = result.timings
    rec: dict[str, Any] = {"frame": int(t["frame"]), "latency_ms": round(t["latency"], 2)}
    rec.update({f"{k}_ms": round(v, 2) for k, v in t.items() if k in ("pre", "infer", "post")})
    rec.update(task.frame_record(result))
    return rec


class JsonLog:
    """Line-per-frame log through a temporary file, renamed when the run ends (also on Ctrl-C)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self._fh = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise InvalidInputError(f"cannot write log {str(path)!r}: {exc.strerror}") from None

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._fh.close()
        os.replace(self.tmp, self.path)


def _prompts(args: argparse.Namespace) -> dict[str, Any]:
    points = labels = box = None
    if args.point:
        points = np.array([p[:2] for p in args.point], np.float64)
        labels = np.array([int(p[2]) if len(p) == 3 else 1 for p in args.point])
    if args.box:
        box = np.array(args.box, np.float64)
    return {"points": points, "labels": labels, "box": box}


def cmd_stream(args: argparse.Namespace) -> int:
    live = True if args.live else False if args.all_frames else None
    source: Any = int(args.source) if args.source.isdigit() else args.source
    s = Stream(args.bundle, source, live=live, device=args.device, workers=args.workers, threads=args.threads,
               max_fps=args.max_fps, max_frames=args.frames, **_prompts(args))
    sink = log = display = None
    interrupted = False
    try:
        if args.out is not None:
            sink = _open_sink(args.out, s)
        if args.log is not None:
            log = JsonLog(args.log)
        if args.show:
            display = Display(f"segrt {args.bundle.name}")
        total = s.report.expected_frames
        task = task_for(s.models[0].manifest.task)
        # drawing and encoding are the pipeline's last stage: kernels single-threaded like the others
        with tqdm(total=total, unit="frame", file=sys.stderr, disable=args.quiet) as bar, kernels.thread_limit(1):
            for frame, result in s:
                if sink is not None or display is not None:
                    picture = annotate(frame, result, bar.format_dict.get("rate"))
                    if sink is not None:
                        sink.write(picture)
                    if display is not None and not display.show(picture):
                        break
                if log is not None:
                    log.write(frame_record(result, task))
                bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        s.close()
        if sink is not None:
            sink.close(keep=True)
        if display is not None:
            display.close()
        if log is not None:
            log.write({"report": s.report.to_dict()})
            log.close()
    r = s.report
    print(f"segrt: {r.summary()}" + (f"; video {args.out} ({sink.frames} frames, {sink.fourcc})" if sink is not None else ""))
    if args.report is not None:
        from .manifest import write_json_atomic

        write_json_atomic(args.report, r.to_dict())
    if interrupted:
        return 130
    return 2 if r.skipped else 0


def _open_sink(path: Path, s: Stream) -> VideoSink:
    # A file plays back at its own rate; a live source at the rate it is sampled.
    fps = s.source.fps if s.source.fps and not s.source.live else (s.max_fps or s.source.fps or 25.0)
    if s.source.size is None:  # folders: the first frame's size
        return _LazySink(path, fps)  # type: ignore[return-value]
    return VideoSink(path, fps, s.source.size)


class _LazySink:
    """A sink whose size is the first frame's (folders, sources that do not report a size)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps, self._sink = path, fps, None
        if not Path(path).parent.is_dir():
            raise InvalidInputError(f"cannot write {str(path)!r}: folder {str(Path(path).parent)!r} does not exist")

    @property
    def frames(self) -> int:
        return self._sink.frames if self._sink else 0

    @property
    def fourcc(self) -> str:
        return self._sink.fourcc if self._sink else "no frames"

    def write(self, rgb: np.ndarray) -> None:
        if self._sink is None:
            self._sink = VideoSink(self.path, self.fps, (rgb.shape[1], rgb.shape[0]))
        self._sink.write(rgb)

    def close(self, keep: bool = True) -> None:
        if self._sink is not None:
            self._sink.close(keep)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stream", help="segment a camera, video file, URL or image folder with bounded latency")
    p.set_defaults(func=cmd_stream)
    p.add_argument("bundle", type=Path)
    p.add_argument("--source", required=True, help="camera index (0), /dev/videoN, video file, rtsp:// URL or folder")
    p.add_argument("--out", type=Path, help="write the annotated video here (.mp4 or .avi)")
    p.add_argument("--show", action="store_true", help="show the annotated frames in a window (q quits)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--live", action="store_true", help="newest-frame policy: drop stale frames (cameras, URLs)")
    mode.add_argument("--all-frames", action="store_true", help="process every frame in order (files, folders)")
    p.add_argument("--max-fps", type=positive_number, help="read the source at most this often")
    p.add_argument("--frames", type=int_at_least(1), help="stop after this many frames")
    p.add_argument("--workers", type=int_at_least(1, MAX_WORKERS), help="inference workers, at most "
                   f"{MAX_WORKERS} (default: 2 single-threaded on a CPU, 1 on a GPU)")
    p.add_argument("--threads", type=int_at_least(1), help="inference threads per worker")
    p.add_argument("--log", type=Path, help="per-frame JSON lines, the run's report last")
    p.add_argument("--report", type=Path, help="write the run's report as JSON")
    p.add_argument("--point", type=point_arg, action="append", help="SAM bundles: X,Y[,LABEL], applied to every frame")
    p.add_argument("--box", type=box_arg, help="SAM bundles: X0,Y0,X1,Y1, applied to every frame")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
