"""``segrt bench --stream``: the pipelined stream against a plain sequential read-infer-write loop.

Both sides do the same work per frame on the same video: decode, segment, draw the overlay with the
FPS/latency caption, encode into an MJPG .avi. The sequential loop is what a user writes first
(``load(bundle)`` with the backend's default threads, one frame at a time); the pipeline is
``segrt.runtime.stream`` with its defaults. Runs come in interleaved pairs (``benchmarks/pairs.py``: A, B,
then B, A, ...) so both sides of a ratio see the same machine state; throughput is frames over wall time,
first read to last write, and the speedup is the median of the pairs' ratios with its quartiles. Each run
also records the process's CPU time per frame.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from segrt.runtime import kernels, load
from segrt.runtime.errors import InvalidInputError
from segrt.runtime.manifest import read_manifest
from segrt.runtime.stream import Stream, VideoSink, VideoSource, annotate

from .bench import cache_dir
from .pairs import fmt_ratio, interleave

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
PPOCR = Path(__file__).resolve().parents[1] / "tests" / "data" / "ppocr_v4_det.onnx"
HD = (1920, 1080)


def require_vtest() -> Path:
    if not VTEST.is_file():
        raise InvalidInputError(f"{VTEST} is missing: apt-get install opencv-doc (Debian's OpenCV samples), or pass --source")
    return VTEST


def hd_clip(frames: int) -> Path:
    """vtest.avi upscaled to 1920x1080 (what an HD camera hands a model), cached."""
    out = cache_dir() / f"vtest-1080p-{frames}.avi"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(require_vtest()))
    tmp = out.with_name(f".{out.stem}.tmp.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), cap.get(cv2.CAP_PROP_FPS) or 10, HD)
    for _ in range(frames):
        ok, f = cap.read()
        if not ok:
            break
        writer.write(cv2.resize(f, HD, interpolation=cv2.INTER_LINEAR))
    writer.release()
    cap.release()
    tmp.replace(out)
    return out


def ocr_bundle(letterbox: tuple[int, int] | None = None) -> Path:
    """PP-OCRv4's text detector (a real trained segmentation network, Apache-2.0) as a bundle: padded
    to 32 at the frame's own size, or letterboxed into a fixed ``letterbox`` HxW (the HD setting)."""
    from segrt.export.importer import ImportConfig, import_onnx

    if not PPOCR.is_file():
        raise InvalidInputError(f"{PPOCR} is missing (it ships in the repository's tests/data)")
    name = "ppocr-det-pad" if letterbox is None else f"ppocr-det-letterbox-{letterbox[0]}x{letterbox[1]}"
    out = cache_dir() / name
    if not (out / "segrt.json").is_file():
        cfg = ImportConfig(model=PPOCR, threshold=0.3, classes=("background", "text"), size=letterbox,
                           resize="letterbox" if letterbox else None)
        import_onnx(cfg, out, force=True)
    return out


@dataclass(frozen=True)
class Clip:
    """A video and what both sides need before the clock starts: its first frame (RGB, for warm-up),
    frame size (width, height) and rate."""

    path: Path
    first: np.ndarray
    size: tuple[int, int]
    fps: float

    @classmethod
    def probe(cls, path: Path) -> Clip:
        src = VideoSource(str(path), live=False)
        try:
            first = src.read()
        finally:
            src.close()
        if first is None or src.size is None:
            raise InvalidInputError(f"{path} holds no decodable frame")
        return cls(path, first, src.size, src.fps or 10.0)

    def writer(self, out: Path) -> VideoSink:
        return VideoSink(out, self.fps, self.size)


def _cpu_seconds() -> float:
    """This process's CPU time, every thread (ONNX Runtime's pool, OpenCV's, the kernels') included."""
    t = os.times()
    return t.user + t.system


def sequential(bundle: Path, clip: Clip, frames: int, device: str, out: Path) -> dict[str, float]:
    seg = load(bundle, device)
    seg(clip.first)  # warm-up, outside the clock (the pipeline warms up too)
    cap = cv2.VideoCapture(str(clip.path))
    sink = clip.writer(out)
    n, t0, c0 = 0, time.perf_counter(), _cpu_seconds()
    while n < frames:
        ok, bgr = cap.read()
        if not ok:
            break
        t_cap = time.perf_counter()
        frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        res = seg(frame)
        res.timings["latency"] = (time.perf_counter() - t_cap) * 1e3
        sink.write(annotate(frame, res, n / max(time.perf_counter() - t0, 1e-9)))
        n += 1
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    sink.close(keep=False)
    cap.release()
    return {"frames": n, "seconds": seconds, "fps": n / seconds, "cpu_ms_per_frame": cpu / n * 1e3}


def pipelined(bundle: Path, clip: Clip, frames: int, device: str, out: Path) -> dict[str, Any]:
    s = Stream(bundle, clip.path, device=device, max_frames=frames)
    payload = s.stages.pre(clip.first)[0]
    for m in s.models:  # the same warm-up as the loop's, for every worker
        s.stages.infer(m, payload)
    sink = clip.writer(out)
    n, t0, c0 = 0, time.perf_counter(), _cpu_seconds()
    with kernels.thread_limit(1):  # drawing and encoding are the last stage, as in `segrt stream`
        for frame, res in s:
            sink.write(annotate(frame, res, n / max(time.perf_counter() - t0, 1e-9)))
            n += 1
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    sink.close(keep=False)
    r = s.report
    return {"frames": n, "seconds": seconds, "fps": n / seconds, "cpu_ms_per_frame": cpu / n * 1e3,
            "workers": r.workers, "latency_p50_ms": r.latency_p50_ms, "latency_p99_ms": r.latency_p99_ms}


REPEATS = 3


def _timed_run(run: Any, bundle: Path, clip: Clip, frames: int, device: str, tmp: Path, name: str,
               records: list[dict[str, Any]]) -> Any:
    """A side for :func:`pairs.interleave`: one whole run over the clip per call, its record kept in
    ``records``; the timed stage is wall ms per frame (``frame_ms``), so a pair's ratio is the FPS ratio."""
    def side(i: int) -> dict[str, float]:
        record = run(bundle, clip, frames, device, tmp / f"{name}{i}.avi")
        records.append(record)
        return {"frame_ms": record["seconds"] / record["frames"] * 1e3, "cpu_ms": record["cpu_ms_per_frame"]}

    return side


def bench_stream(bundle: Path, video: Path, frames: int, device: str = "cpu", repeats: int = REPEATS) -> dict[str, Any]:
    """``repeats`` interleaved pairs of runs (:func:`pairs.interleave`: sequential, pipelined, then pipelined,
    sequential, ...: neither side always runs first). The speedup is the median of the pairs' ratios
    (sequential ms per frame over pipelined, i.e. pipelined FPS over sequential); its quartiles and range are
    kept beside it (``speedup_pairs``), as are both sides' per-run records and per-frame percentiles."""
    runs: dict[str, list[dict[str, Any]]] = {"sequential": [], "pipelined": []}
    clip = Clip.probe(video)
    with tempfile.TemporaryDirectory(prefix="segrt-stream-") as tmp:
        sides = {name: _timed_run(fn, bundle, clip, frames, device, Path(tmp), name, runs[name])
                 for name, fn in (("sequential", sequential), ("pipelined", pipelined))}
        paired = interleave(sides, reference="pipelined", rounds=repeats, warmup=0, stage="frame_ms")
    fps = {k: float(np.median([r["fps"] for r in v])) for k, v in runs.items()}
    ratios = [p["fps"] / q["fps"] for q, p in zip(runs["sequential"], runs["pipelined"])]
    m = read_manifest(bundle)
    inp = m.input
    return {"bundle": bundle.name, "precision": m.precision, "video": video.name, "frame_size": list(clip.size),
            "frames": frames,
            "model_input": f"{inp.resize} {inp.size[0]}x{inp.size[1]}" if inp.size else f"{inp.resize} /{inp.stride}",
            "runs": runs, "sequential_fps": fps["sequential"], "pipelined_fps": fps["pipelined"],
            "order": "interleaved, rotated", "pair_speedups": ratios, "speedup": paired["ratios"]["sequential"]["median"],
            "speedup_pairs": paired["ratios"]["sequential"], "per_frame_ms": paired["sides"],
            "cpu_ms_per_frame": {k: float(np.median([r["cpu_ms_per_frame"] for r in v])) for k, v in runs.items()},
            "workers": runs["pipelined"][0]["workers"]}


def ocr_calibration() -> Path:
    """INT8 calibration images for PP-OCR's detector, cached: 12 frames of vtest.avi spread over its length
    (the fixed camera the stream sees, which shows almost no text), scikit-image's ``text`` photo, and four
    generated pages of printed lines on photos and paper, so the ranges also cover what the detector is for.
    Calibrated on vtest alone, the SD variant found no text at all on scikit-image's page (0 of 12,971
    FP32 text pixels); with these it agrees with FP32 on 92.8 % of that page's pixels (letterbox 98.7 %)."""
    import skimage.data

    from segrt.export.bundle import atomic_dir
    from segrt.export.quant_gate import load_images

    out = cache_dir() / "calib-ppocr"
    if out.is_dir():
        return out
    names, frames = load_images(require_vtest(), 12)
    with atomic_dir(out, force=True) as tmp:  # the folder appears complete or not at all
        for name, frame in zip(names, frames):
            cv2.imwrite(str(tmp / f"{name.replace('#', '-')}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(tmp / "skimage-text.png"), skimage.data.text())
        rng = np.random.default_rng(0)
        backgrounds = (skimage.data.coffee(), skimage.data.chelsea(), np.full((480, 640, 3), 235, np.uint8),
                       skimage.data.astronaut())
        for k, bg in enumerate(backgrounds):
            page = cv2.resize(bg, (640, 480))
            for line in range(8):
                cv2.putText(page, f"segrt streams video frames {rng.integers(1000)}", (20, 50 + 55 * line),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.6 + 0.3 * (line % 3), (0, 0, 0) if k % 2 else (255, 255, 255), 2)
            cv2.imwrite(str(tmp / f"printed-{k}.png"), cv2.cvtColor(page, cv2.COLOR_RGB2BGR))
    return out


def ocr_int8(fp32: Path) -> Path:
    """The bundle's calibrated INT8 variant (``segrt quantize``: static QDQ, ONNX Runtime's default op set,
    uint8 activations for its CPU kernels; :func:`ocr_calibration`; gated on the default held-out photos),
    cached beside it."""
    from segrt.export.quantize import QuantizeConfig, quantize_bundle

    out = fp32.with_name(f"{fp32.name}-int8")
    if not (out / "segrt.json").is_file():
        quantize_bundle(fp32, out, QuantizeConfig(precision="int8", calib=ocr_calibration(), samples=64), force=True)
    return out


def default_cases(frames: int) -> list[tuple[Path, Path]]:
    """The SD video at the model's own (padded) size and the HD version letterboxed to 544x960, each with
    the FP32 bundle and its INT8 variant (what a CPU deployment runs)."""
    sd, hd = ocr_bundle(), ocr_bundle((544, 960))
    video_sd, video_hd = require_vtest(), hd_clip(frames)
    return [(sd, video_sd), (ocr_int8(sd), video_sd), (hd, video_hd), (ocr_int8(hd), video_hd)]


GOAL = 1.3


def _speedup_text(r: dict[str, Any]) -> str:
    """``1.40x [1.35-1.44]`` (recorded before pairs: ``1.40x``)."""
    return fmt_ratio(r["speedup_pairs"]) if "speedup_pairs" in r else f"{r['speedup']:.2f}x"


def markdown_stream(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores), onnxruntime {m['onnxruntime']}, "
             f"segrt {m['segrt']} ({m['commit']}). Both sides decode, segment, draw and encode every frame; "
             "the runs alternate in interleaved pairs (the order rotated each pair), and the speedup is the median of "
             "the pairs' ratios [q1-q3] (min-max beside it).", "",
             "| bundle | precision | video | frame | model input | frames | sequential FPS | pipelined FPS (workers) | "
             "speedup: median pair ratio [q1-q3] (min-max) | CPU ms/frame seq / pipe | pipeline latency p50 / p99 (ms) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        p = r["runs"]["pipelined"][-1]
        pairs = r.get("pair_speedups") or [r["speedup"]]
        cpu = r.get("cpu_ms_per_frame")
        lines.append(f"| {r['bundle']} | {r.get('precision', 'fp32')} | {r['video']} | {r['frame_size'][0]}x{r['frame_size'][1]} | "
                     f"{r['model_input']} | {r['frames']} | {r['sequential_fps']:.1f} | {r['pipelined_fps']:.1f} ({r['workers']}) | "
                     f"{_speedup_text(r)} ({min(pairs):.2f}-{max(pairs):.2f}; {'met' if r['speedup'] >= GOAL else 'NOT met'}) | "
                     + (f"{cpu['sequential']:.0f} / {cpu['pipelined']:.0f} | " if cpu else "- | ")
                     + f"{p['latency_p50_ms']:.0f} / {p['latency_p99_ms']:.0f} |")
    lines += ["", f"Goal: pipelined throughput at least {GOAL}x the sequential loop's. CPU ms/frame is the process's CPU "
              "time (all threads) over the frames: the sequential loop's ONNX Runtime pool spins on the second core "
              "while the loop decodes, draws and encodes. File mode: every frame is processed, so pipeline latency "
              "includes time queued behind earlier frames."]
    return "\n".join(lines) + "\n"
