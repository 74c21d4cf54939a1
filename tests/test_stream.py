"""Streaming: file sources give every frame in order and the same answers as frame-by-frame calls;
live sources stay fresh (bounded latency, counted drops); every way out shuts the pipeline down."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from segrt.runtime import load
from segrt.runtime.cli import main
from segrt.runtime.errors import InvalidInputError
from segrt.runtime.stream import FrameSource, run_stream, stream

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
needs_vtest = pytest.mark.skipif(not VTEST.is_file(), reason="vtest.avi absent (apt-get install opencv-doc)")


def _segrt_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("segrt-")]


def _no_threads_left(timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _segrt_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _segrt_threads()


def _frames(path: Path, n: int | None = None) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while n is None or len(out) < n:
        ok, f = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    return out


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """24 frames of vtest.avi (pedestrians, a real video), re-encoded losslessly enough to decode the same
    way twice; or, without opencv-doc, 24 frames of a real photo panning, so the file tests still run."""
    out = tmp_path_factory.mktemp("clip") / "clip.avi"
    if VTEST.is_file():
        frames = _frames(VTEST, 24)
    else:
        import skimage.data

        photo = skimage.data.astronaut()
        frames = [np.ascontiguousarray(photo[40 + 4 * i : 328 + 4 * i, 20 + 4 * i : 404 + 4 * i]) for i in range(24)]  # inside 512x512
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return out


class Camera(FrameSource):
    """A live source faster than any model here: a frame every ``period`` seconds for ``seconds``,
    delivered on time like a camera driver (a real photo shifted one pixel per frame)."""

    live = True

    def __init__(self, image: np.ndarray, period: float = 0.005, seconds: float = 3.0) -> None:
        self.image, self.period, self.seconds = image, period, seconds
        self.name, self.fps = "camera", 1.0 / period
        self.started: float | None = None
        self.count = 0

    def read(self) -> np.ndarray | None:
        now = time.perf_counter()
        if self.started is None:
            self.started = now
        if now - self.started >= self.seconds:
            return None
        due = self.started + self.count * self.period
        if due > now:
            time.sleep(due - now)
        self.count += 1
        return np.roll(self.image, self.count, axis=1)


# -- file mode -------------------------------------------------------------------------------------
@pytest.mark.prepost  # the NumPy-twin pass reruns it: stage threads call the pre/post kernels
def test_file_mode_gives_every_frame_in_order_identical_to_frame_by_frame(unet_trained, clip) -> None:
    frames = _frames(clip)
    ref = load(unet_trained.bundle, "cpu", threads=1)
    s = stream(unet_trained.bundle, clip, device="cpu", workers=2)
    got = list(s)
    assert len(got) == len(frames) == 24
    assert [int(r.timings["frame"]) for _, r in got] == list(range(24))
    for (frame, result), expected in zip(got, frames):
        np.testing.assert_array_equal(frame, expected)
        np.testing.assert_array_equal(result.label_map, ref(expected).label_map)
    r = s.report
    assert (r.frames_in, r.frames_out, r.dropped, r.skipped, r.complete) == (24, 24, 0, 0, True)
    assert r.fps > 0 and 0 < r.latency_p50_ms <= r.latency_p99_ms <= r.latency_max_ms
    assert _no_threads_left()


def test_callback_form_and_loaded_model(unet_trained, clip) -> None:
    seg = load(unet_trained.bundle, "cpu")
    seen: list[int] = []
    report = run_stream(seg, clip, lambda frame, res: seen.append(int(res.timings["frame"])), max_frames=6)
    assert seen == list(range(6))
    assert (report.frames_in, report.frames_out, report.workers) == (6, 6, 1)
    with pytest.raises(InvalidInputError, match="bundle path"):
        stream(seg, clip, workers=2)


class Recorded(FrameSource):
    """Frames from a list; records the kernels' thread count on the thread that reads them."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames, self.name, self.threads = list(frames), "list", []

    def read(self) -> np.ndarray | None:
        from segrt.runtime import kernels

        self.threads.append(kernels.impl().kernel_threads())
        return self.frames.pop(0) if self.frames else None


@pytest.mark.prepost  # the NumPy-twin pass reruns it: stage threads call the pre/post kernels
def test_stage_threads_run_kernels_single_threaded(unet_trained, clip) -> None:
    """The pipeline is the parallelism: its threads cap the C++ kernels at one thread each (measured on the
    1080p stream: 2-3 ms of CPU a frame less); the caller's thread keeps its own setting."""
    from segrt.runtime import kernels

    frames = _frames(clip, 3)
    src = Recorded(frames)
    before = kernels.impl().kernel_threads()
    assert [r.label_map.shape for _, r in stream(load(unet_trained.bundle, "cpu"), src)] == [f.shape[:2] for f in frames]
    assert set(src.threads) == {1} and kernels.impl().kernel_threads() == before


def test_consumer_leaving_early_stops_every_thread(unet_trained, clip) -> None:
    s = stream(unet_trained.bundle, clip, device="cpu", workers=2, queue_size=2)
    for i, _ in enumerate(s):
        if i == 2:
            break
    s.close()
    assert _no_threads_left()
    assert s.report.frames_out == 3 and not s.report.complete


# -- live mode -------------------------------------------------------------------------------------
def test_live_source_faster_than_the_model_stays_fresh(unet_trained, photos) -> None:
    camera = Camera(photos["astronaut"][:256, :320].copy(), period=0.004, seconds=3.0)
    s = stream(unet_trained.bundle, camera, device="cpu", workers=2)
    results = [r for _, r in s]
    rep = s.report
    assert rep.live and rep.complete
    # Nothing is lost silently: every frame read was either segmented or dropped as stale.
    assert rep.frames_in == camera.count == rep.frames_out + rep.dropped + rep.skipped
    assert rep.dropped > rep.frames_out > 5
    # Bounded: a frame is taken only when a worker is free, so no result is much older than one inference,
    # and latency does not grow over the run (a queue of every frame would grow it linearly).
    work = max(r.timings["pre"] + r.timings["infer"] + r.timings["post"] for r in results)
    lat = np.array([r.timings["latency"] for r in results])
    assert lat.max() <= 2 * work + 100, (lat.max(), work)
    third = len(lat) // 3
    assert lat[-third:].mean() <= 1.5 * lat[:third].mean() + 50
    frames = [int(r.timings["frame"]) for r in results]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)
    assert _no_threads_left()


# -- the command -----------------------------------------------------------------------------------
@needs_vtest
def test_cli_semantic_over_vtest_writes_a_playable_video_and_log(unet_trained, tmp_path, capsys) -> None:
    out, log = tmp_path / "out.mp4", tmp_path / "frames.jsonl"
    rc = main(["stream", str(unet_trained.bundle), "--source", str(VTEST), "--frames", "30", "--out", str(out),
               "--log", str(log), "-q"])
    assert rc == 0
    said = capsys.readouterr().out
    assert "30 of 30 frames" in said and f"video {out} (30 frames, mp4v)" in said  # the codec is named
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    assert int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little") in (b"mp4v", b"FMP4")  # MPEG-4 part 2 either way
    ok, first = cap.read()
    assert ok and first.shape == (576, 768, 3)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [rec["frame"] for rec in lines[:-1]] == list(range(30))
    assert lines[-1]["report"]["frames_out"] == 30 and lines[-1]["report"]["complete"]
    assert sum(lines[0]["classes"].values()) == 576 * 768
    assert not list(tmp_path.glob(".*tmp*"))


@needs_vtest
def test_cli_instance_over_vtest(maskrcnn, tmp_path) -> None:
    out, log = tmp_path / "out.avi", tmp_path / "frames.jsonl"
    rc = main(["stream", str(maskrcnn.bundle), "--source", str(VTEST), "--frames", "12", "--out", str(out),
               "--log", str(log), "-q"])
    assert rc == 0
    assert len(_frames(out)) == 12
    det = load(maskrcnn.bundle, "cpu")
    lines = [json.loads(line) for line in log.read_text().splitlines()][:-1]
    for rec, frame in zip(lines, _frames(VTEST, 12)):
        expected = det(frame)
        assert [i["label"] for i in rec["instances"]] == expected.labels.tolist()
        np.testing.assert_allclose([i["score"] for i in rec["instances"]], expected.scores, atol=1e-4)


def test_sam_stream_applies_fixed_prompts_to_every_frame(sam_tiny, clip) -> None:
    frames = _frames(clip, 4)
    h, w = frames[0].shape[:2]
    point = np.array([[w / 2, h / 2]])
    s = stream(sam_tiny.bundle, clip, device="cpu", workers=1, points=point, labels=np.array([1]), max_frames=4)
    got = list(s)
    pred = load(sam_tiny.bundle, "cpu")
    for (_, res), frame in zip(got, frames):
        pred.set_image(frame)
        masks, iou, _ = pred.predict(point, np.array([1]), multimask_output=False)
        np.testing.assert_array_equal(res.masks, masks)
        np.testing.assert_allclose(res.scores, iou, rtol=1e-5)
    assert len(got) == 4 and got[0][1].overlay(frames[0]).shape == (h, w, 3)


# -- bad input -------------------------------------------------------------------------------------
def test_bad_sources_and_outputs_are_one_line_errors(unet_trained, sam_tiny, clip, tmp_path, capsys) -> None:
    bundle = str(unet_trained.bundle)
    cases = [
        (["--source", str(tmp_path / "missing.mp4")], "is not a camera index"),
        (["--source", str(clip), "--out", str(tmp_path / "no" / "dir" / "x.mp4")], "does not exist"),
        (["--source", str(clip), "--out", str(tmp_path / "x.gif")], "must end in"),
        (["--source", str(clip), "--point", "5,5"], "SAM bundles only"),
    ]
    for extra, message in cases:
        assert main(["stream", bundle, *extra, "-q"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_:  # checked when the command line is parsed
        main(["stream", bundle, "--source", str(clip), "--max-fps", "0", "-q"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--max-fps: must be > 0; got 0" in err and err.count("\n") == 1
    assert main(["stream", str(sam_tiny.bundle), "--source", str(clip), "-q"]) == 2
    assert "needs fixed prompts" in capsys.readouterr().err
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    assert main(["stream", bundle, "--source", str(not_video), "-q"]) == 2
    assert "cannot open video source" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*tmp*")) and _no_threads_left()


def test_truncated_video_ends_cleanly_with_what_it_had(unet_trained, clip, tmp_path) -> None:
    cut = tmp_path / "cut.avi"
    data = clip.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    s = stream(unet_trained.bundle, cut, device="cpu", workers=1)
    got = list(s)
    assert 0 < len(got) < 24 and s.report.frames_out == len(got) == s.report.frames_in
    assert _no_threads_left()


def test_corrupt_images_in_a_folder_are_counted_skips(unet_trained, photos, tmp_path, capsys) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i:03d}.png"), photos["astronaut"][:128, :160, ::-1])
    (folder / "001b.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out.mp4"
    rc = main(["stream", str(unet_trained.bundle), "--source", str(folder), "--out", str(out), "-q"])
    assert rc == 2
    text = capsys.readouterr().out
    assert "3 of 4 frames" in text and "skipped 1" in text
    assert len(_frames(out)) == 3
    shutil.rmtree(folder)
