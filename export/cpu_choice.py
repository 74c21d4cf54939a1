"""``segrt build BUNDLE --device cpu``: time ONNX Runtime's CPU provider against OpenVINO's CPU plugin on each of
the bundle's graphs, check that they answer alike, and record the faster one in ``cpu_engine.json``.

The input is the bundle's example, made into each graph's feeds by the runtime's own preprocessing (the task's
``timed_call``, run once on ONNX Runtime with each graph's feeds recorded): ``--image``, else the photo the export
was verified on (``verification.image``: a file, or ``skimage.data.<name>`` where scikit-image is installed), else a
seeded image at the model's size (``input.size``; else where its FLOPs were counted; else 512x512).

The two engines run the same feeds as interleaved pairs (:func:`segrt.benchmarks.pairs.interleave`: ONNX Runtime,
OpenVINO, the order rotated each round); the ratio is OpenVINO's time over ONNX Runtime's in the same round.
OpenVINO is chosen only when it is clearly faster (median pair ratio < 1 and its upper quartile < 1) and its
outputs agree (:func:`output_agreement`); otherwise ONNX Runtime stays.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from segrt.benchmarks.pairs import interleave, timed_side
from segrt.runtime.backends import RunnerOptions
from segrt.runtime.backends.openvino import OpenVinoCpuRunner
from segrt.runtime.backends.ort import OrtCpuRunner
from segrt.runtime.cpu_engine import FORMAT_VERSION, OPENVINO_CPU, ORT_CPU, cpu_model
from segrt.runtime.errors import BackendUnavailableError, InvalidInputError
from segrt.runtime.image import read_image
from segrt.runtime.manifest import Manifest, read_manifest
from segrt.runtime.tasks import task_for
from segrt.runtime.variants import graphs

#: an output agrees when its max abs difference is within this fraction of the reference output's range (max -
#: min): logits, probabilities, boxes (under 1 px for images up to 1000 px), and integer labels exactly
MAX_RELATIVE_DIFF = 1e-3
#: ... or, for per-class scores (N, C > 1, H, W), when the channel argmax is equal on this fraction of pixels
MIN_ARGMAX_AGREEMENT = 0.999
#: ... or, for probabilities (float, every value in [0, 1]), when no value moves more than this and this fraction
#: stays on the same side of 0.5: Mask R-CNN's 28x28 mask probabilities, measured 1.1e-3 apart (seeded weights,
#: 100 detections), which moves no mask pixel a threshold keeps
MAX_PROBABILITY_DIFF = 1e-2
DEFAULT_SIDE = 512
DEFAULT_PAIRS = 10
RULE = (f"openvino-cpu when its median pair ratio (its time / onnxruntime-cpu's) < 1 and q3 < 1 and every output "
        f"agrees (max abs diff <= {MAX_RELATIVE_DIFF:g} x range, or channel argmax agreement >= "
        f"{MIN_ARGMAX_AGREEMENT}, or probabilities within {MAX_PROBABILITY_DIFF:g} with >= {MIN_ARGMAX_AGREEMENT} on "
        f"the same side of 0.5; same shapes); else onnxruntime-cpu")


def require_openvino() -> None:
    reason = OpenVinoCpuRunner.unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError("segrt build --device cpu times OpenVINO against ONNX Runtime, and openvino "
                                      "is not installed: pip install 'segrt[openvino]'")


# -- the example input -----------------------------------------------------------------------------------
def _seeded_image(m: Manifest) -> tuple[str, np.ndarray]:
    compute = m.compute.get(m.model_file)
    if m.input.size is not None:
        h, w = m.input.size
    elif compute is not None and len(compute.at) == 2:
        h, w = compute.at
    else:
        h, w = DEFAULT_SIDE, DEFAULT_SIDE
    shape = (h, w) if m.input.channels == 1 else (h, w, m.input.channels)
    return f"seeded {h}x{w}", np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def _verification_image(m: Manifest) -> tuple[str, np.ndarray] | None:
    name = m.verification.get("image") if isinstance(m.verification, dict) else None
    if not isinstance(name, str):
        return None
    if name.startswith("skimage.data."):
        try:
            import skimage.data
        except ImportError:
            return None
        loader = getattr(skimage.data, name.removeprefix("skimage.data."), None)
        return (name, loader()) if callable(loader) else None
    return (name, read_image(name)) if Path(name).is_file() else None


def example_image(m: Manifest, image_path: Path | None = None) -> tuple[str, np.ndarray]:
    """``(what it is, image)``: ``--image``, else the export's verification photo, else a seeded image."""
    if image_path is not None:
        return str(image_path), read_image(image_path)
    return _verification_image(m) or _seeded_image(m)


def graph_feeds(bundle: Path, m: Manifest, image: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Each graph's feeds for one example call of the task (ONNX Runtime on the CPU), by graph file."""
    task = task_for(m.task)
    predictor = task.load(bundle, device="cpu", **task.uncached())
    files, runners = graphs(m), list(task.runners(predictor).values())
    if len(files) != len(runners):
        raise InvalidInputError(f"{bundle}: {len(files)} graphs but the {m.task} predictor holds {len(runners)} runners")
    seen: dict[str, dict[str, np.ndarray]] = {}
    for file, runner in zip(files, runners):
        runner.infer = _recording(runner.infer, file, seen)
    try:
        task.timed_call(predictor, image)
    finally:
        for runner in runners:
            runner.close()
    missing = [f for f in files if f not in seen]
    if missing:
        raise InvalidInputError(f"{bundle}: the {m.task} task's example call never ran {', '.join(missing)}")
    return seen


def _recording(infer: Any, file: str, seen: dict[str, dict[str, np.ndarray]]) -> Any:
    def call(feeds: Any) -> dict[str, np.ndarray]:
        seen.setdefault(file, {k: np.array(v) for k, v in feeds.items()})  # the first call's feeds
        return infer(feeds)

    return call


# -- agreement ---------------------------------------------------------------------------------------------
def _one_output(a: np.ndarray, b: np.ndarray | None) -> dict[str, Any]:
    if b is None or a.shape != b.shape:
        return {"passed": False, "shapes": [list(a.shape), None if b is None else list(b.shape)]}
    if a.size == 0:
        return {"passed": True, "max_abs_diff": 0.0, "range": 0.0, "relative": 0.0, "shape": list(a.shape)}
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    diff, spread = float(np.abs(a64 - b64).max()), float(a64.max() - a64.min())
    relative = diff / spread if spread > 0 else (0.0 if diff == 0 else float("inf"))
    out = {"passed": relative <= MAX_RELATIVE_DIFF, "max_abs_diff": diff, "range": spread, "relative": relative,
           "shape": list(a.shape)}
    if out["passed"] or not np.issubdtype(a.dtype, np.floating):
        return out
    if a.ndim == 4 and a.shape[1] > 1:
        out["argmax_agreement"] = float((a.argmax(1) == b.argmax(1)).mean())
        out["passed"] = out["argmax_agreement"] >= MIN_ARGMAX_AGREEMENT
    if not out["passed"] and a64.min() >= 0 and a64.max() <= 1:
        out["half_agreement"] = float(((a64 > 0.5) == (b64 > 0.5)).mean())
        out["passed"] = diff <= MAX_PROBABILITY_DIFF and out["half_agreement"] >= MIN_ARGMAX_AGREEMENT
    return out


def output_agreement(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, Any]:
    """Every output of ``other`` against ``reference`` (same shapes, so Mask R-CNN's detection counts equal)."""
    outputs = {name: _one_output(np.asarray(ref), other.get(name)) for name, ref in reference.items()}
    worst = max((o.get("relative", float("inf")) for o in outputs.values()), default=0.0)
    return {"passed": all(o["passed"] for o in outputs.values()), "max_relative_diff": worst, "outputs": outputs}


# -- timing and the choice -----------------------------------------------------------------------------------
def choose(ratio: dict[str, float], agrees: bool) -> str:
    """OpenVINO only when clearly faster (median and q3 of its pair ratio below 1) and its outputs agree."""
    return OPENVINO_CPU if agrees and ratio["median"] < 1 and ratio["q3"] < 1 else ORT_CPU


def measure_graph(path: Path, feeds: dict[str, np.ndarray], pairs: int, threads: int | None) -> dict[str, Any]:
    """One graph: agreement on ``feeds``, then ``pairs`` interleaved rounds (one untimed first)."""
    options = RunnerOptions(threads=threads)
    with OrtCpuRunner(path, options) as ort_runner, OpenVinoCpuRunner(path, options) as ov_runner:
        agreement = output_agreement(ort_runner.infer(feeds), ov_runner.infer(feeds))
        timed = interleave({ORT_CPU: timed_side(lambda i: ort_runner.infer(feeds)),
                            OPENVINO_CPU: timed_side(lambda i: ov_runner.infer(feeds))},
                           reference=ORT_CPU, rounds=pairs, warmup=1)
    ratio = timed["ratios"][OPENVINO_CPU]
    return {"backend": choose(ratio, agreement["passed"]),
            "p50_ms": {name: timed["sides"][name]["e2e"]["p50"] for name in (ORT_CPU, OPENVINO_CPU)},
            "ratio": ratio, "pairs": timed["rounds"], "threads": threads, "agreement": agreement}


def _versions() -> dict[str, str]:
    import onnxruntime
    import openvino

    from segrt.runtime import __version__

    return {"segrt": __version__, "onnxruntime": onnxruntime.__version__, "openvino": openvino.get_version()}


def measure_bundle(bundle: Path, pairs: int = DEFAULT_PAIRS, threads: int | None = None,
                   image_path: Path | None = None) -> dict[str, Any]:
    """The ``cpu_engine.json`` record for ``bundle`` on this machine (not written)."""
    require_openvino()
    if pairs < 1:
        raise InvalidInputError(f"pairs must be >= 1; got {pairs}")
    m = read_manifest(bundle)
    source, image = example_image(m, image_path)
    feeds = graph_feeds(Path(bundle), m, image)
    per_graph = {f: measure_graph(Path(bundle) / f, feeds[f], pairs, threads) for f in graphs(m)}
    return {"format_version": FORMAT_VERSION, "cpu": cpu_model(), "machine": platform.machine(),
            "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": _versions(),
            "input": {"source": source, "shape": list(image.shape)}, "rule": RULE, "graphs": per_graph}


__all__ = ["choose", "example_image", "graph_feeds", "measure_bundle", "measure_graph", "output_agreement",
           "require_openvino"]
