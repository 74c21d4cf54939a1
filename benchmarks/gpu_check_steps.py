"""The GPU check's measurements: provider parity, I/O binding on vs off, and ONNX Runtime's CUDA graphs.

Parity uses the quantize gate's own scores (each task's ``gate_score``, ``runtime/tasks``): pixel agreement of
the label maps for semantic models, mean matched mask IoU for Mask R-CNN (matched by ``runtime.matching``) and for
SAM (9 point prompts per photo), on scikit-image's photos. The reference is always the FP32 bundle on the CPU provider.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segrt.export import quant_gate
from segrt.runtime.backends import RunnerOptions
from segrt.runtime.errors import BackendUnavailableError
from segrt.runtime.loader import load
from segrt.runtime.manifest import read_manifest
from segrt.runtime.tasks import task_for

from .gpu_check_timing import interleaved



# -- before anything: is there a working CUDA provider? -------------------------------------------------
def require_cuda() -> None:
    """Stop with one line where the CUDA provider or PyTorch's CUDA is missing (this is not a GPU machine)."""
    import onnxruntime as ort

    providers = ort.get_available_providers()
    fix = "run it on an NVIDIA machine with the carried onnxruntime-gpu wheels (docs/gpu-check.md), or pass --self-test"
    if "CUDAExecutionProvider" not in providers:
        raise BackendUnavailableError(f"no CUDA here: onnxruntime {ort.__version__} from {Path(ort.__file__).parent} "
                                      f"has only {providers}; {fix}")
    try:
        import torch  # loads the CUDA and cuDNN libraries onnxruntime-gpu needs (from the nvidia-* wheels)

        torch_cuda = torch.cuda.is_available()
    except ImportError:
        torch_cuda = False
    if not torch_cuda:
        raise BackendUnavailableError(f"no CUDA here: PyTorch is missing or sees no CUDA device; {fix}")
    error = preflight("CUDAExecutionProvider")
    if error:
        raise BackendUnavailableError(f"onnxruntime's CUDA provider does not run here: {error} (onnxruntime's own "
                                      "reason is logged above)")


def preflight(provider: str) -> str | None:
    """One 1x1 convolution (cuDNN on CUDA) through ``provider`` against NumPy: None, or what went wrong. Seconds,
    where a provider whose libraries do not load would otherwise fail every step after minutes of exports."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w, x = rng.standard_normal((4, 3, 1, 1)).astype(np.float32), rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "preflight",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = min(model.ir_version, 10)
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=[provider])
        if sess.get_providers()[0] != provider:
            return f"the session fell back to {sess.get_providers()}"
        y = sess.run(None, {"x": x})[0]
    except Exception as exc:  # noqa: BLE001 - ORT's untyped pybind errors are the answer
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"[:300]
    diff = float(np.max(np.abs(y - np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x))))
    return None if diff < 1e-3 else f"a 1x1 convolution differs from NumPy by {diff:.3g}"


# -- the measurements -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    name: str  # unet, deeplabv3plus, maskrcnn, sam (or ppocr in the self-test)
    bundle: Path  # the FP32 bundle

    @property
    def task(self) -> str:
        return read_manifest(self.bundle).task


def open_model(bundle: Path, device: str, threads: int | None = None, cache: bool = False, **options: Any) -> Any:
    """A predictor for ``bundle`` on ``device``; SAM's embedding cache only with ``cache`` (timed calls encode)."""
    extra = {} if cache else task_for(read_manifest(bundle).task).uncached()
    return load(bundle, device, threads=threads, options=RunnerOptions(**options) if options else None, **extra)


def run_once(model: Any, image: np.ndarray) -> Any:
    """One end-to-end call as a user makes it: segment the photo, or for SAM encode it and ask one point."""
    return task_for(model.manifest.task).timed_call(model, image)


class _Memo:
    """The CPU reference's result per photo, computed once for all comparisons (SAM's gate score calls its
    set_image and predict_batch, passed through: it caches embeddings itself)."""

    def __init__(self, model: Any) -> None:
        self._model, self._seen = model, {}

    def __call__(self, image: np.ndarray) -> Any:
        key = id(image)
        if key not in self._seen:
            self._seen[key] = (image, self._model(image))  # holding the image keeps its id unique
        return self._seen[key][1]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def reference(family: Family, threads: int | None) -> Any:
    return _Memo(open_model(family.bundle, "cpu", threads, cache=True))


def score(ref: Any, var: Any, task: str, photos: dict[str, np.ndarray]) -> tuple[float, dict[str, Any]]:
    t = task_for(task)
    per_image = {name: t.gate_score(ref, var, image) for name, image in photos.items()}
    return float(np.mean([s[t.gate_metric] for s in per_image.values()])), per_image


def parity(family: Family, variant: Path, device: str, ref: Any, photos: dict[str, np.ndarray],
           threads: int | None = None) -> dict[str, Any]:
    """``variant`` on ``device`` against the FP32 bundle on the CPU provider."""
    task, m = family.task, read_manifest(variant)
    metric = task_for(task).gate_metric
    minimum = task_for(task).fp32_device_min if m.precision == "fp32" else task_for(task).quantize_min_score
    value, per_image = score(ref, open_model(variant, device, threads), task, photos)
    row = {"family": family.name, "precision": m.precision, "device": device, "reference": "fp32 on cpu",
           "metric": metric, "score": value, "minimum": minimum, "passed": value >= minimum, "images": len(photos),
           "per_image": per_image, "bundle": str(variant)}
    gate = m.quantization.get("gate") if m.quantization else None
    if gate:
        row["gate_on_cpu"] = {"metric": gate["metric"], "score": gate["score"], "images": gate["images"]}
    return row


def io_binding(family: Family, device: str, photos: dict[str, np.ndarray], rounds: int, deadline: float,
               threads: int | None = None) -> dict[str, Any]:
    """The same bundle with I/O binding on and off: same results, and the time of each (interleaved)."""
    on = open_model(family.bundle, device, threads, io_binding=True)
    off = open_model(family.bundle, device, threads, io_binding=False)
    task = family.task
    value, per_image = score(_Memo(on), off, task, photos)
    images = list(photos.values())
    timing = interleaved({"binding on": lambda i: run_once(on, images[i % len(images)]),
                          "binding off": lambda i: run_once(off, images[i % len(images)])},
                         rounds, warmup=2, deadline=deadline, base="binding off")
    return {"family": family.name, "device": device, "metric": task_for(task).gate_metric, "score": value,
            "minimum": task_for(task).binding_min, "passed": value >= task_for(task).binding_min, "per_image": per_image,
            "sides": timing["sides"], "ratio": timing["ratios"].get("binding on")}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]


def model_feeds(bundle: Path, photos: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The main graph's feeds for each photo, made by the runtime's own preprocessing (as calibration does)."""
    return list(quant_gate.calibration_feeds(bundle, read_manifest(bundle), photos))


def cuda_graph(family: Family, bundle: Path, photos: list[np.ndarray], device: str, rounds: int,
               deadline: float) -> dict[str, Any]:
    """The main graph under ``enable_cuda_graph``: capture on one photo, replay on another, against plain
    CUDA; or why ONNX Runtime refuses it for this model (data-dependent shapes, CPU-placed nodes)."""
    m = read_manifest(bundle)
    row: dict[str, Any] = {"family": family.name, "graph": m.model_file, "supported": False}
    if device != "cuda":
        return row | {"reason": f"CUDA graphs need the CUDA provider; this run is on {device}"}
    import onnxruntime as ort

    path = str(bundle / m.model_file)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        graph = ort.InferenceSession(path, so, providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
    except Exception as exc:  # ORT's pybind errors are untyped: its refusal is the answer  # noqa: BLE001
        return row | {"reason": f"not supported for this model: {_first_line(exc)}"}
    plain = ort.InferenceSession(path, so, providers=["CUDAExecutionProvider"])
    feeds = model_feeds(bundle, photos[:2])
    try:
        return row | _graph_replay(graph, plain, feeds, rounds, deadline)
    except Exception as exc:  # a capture that fails at run time (shape or placement)  # noqa: BLE001
        return row | {"reason": f"not supported for this model: {_first_line(exc)}"}


def _graph_replay(graph: Any, plain: Any, feeds: list[dict[str, np.ndarray]], rounds: int, deadline: float,
                  device: str = "cuda") -> dict[str, Any]:
    """Six runs alternating two photos (ONNX Runtime runs the first two plainly, captures on the third and
    replays after; inputs updated in place, outputs at fixed addresses), each against ``plain``; then time
    both through device-bound I/O, interleaved."""
    import onnxruntime as ort

    names = [o.name for o in graph.get_outputs()]
    refs = [plain.run(names, f) for f in feeds]
    ins = {k: ort.OrtValue.ortvalue_from_numpy(v, device, 0) for k, v in feeds[0].items()}
    outs = [ort.OrtValue.ortvalue_from_shape_and_type(r.shape, r.dtype, device, 0) for r in refs[0]]
    binding = graph.io_binding()
    for k, v in ins.items():
        binding.bind_ortvalue_input(k, v)
    for name, v in zip(names, outs):
        binding.bind_ortvalue_output(name, v)
    diffs = []
    for feed, ref in zip(feeds * 3, refs * 3):  # ORT runs twice, captures on the third run, then replays
        for k, v in feed.items():
            ins[k].update_inplace(v)
        graph.run_with_iobinding(binding)
        diffs.append(max(float(np.max(np.abs(o.numpy().astype(np.float64) - r))) for o, r in zip(outs, ref)))
    pbind = plain.io_binding()
    pins = {k: ort.OrtValue.ortvalue_from_numpy(v, device, 0) for k, v in feeds[0].items()}
    for k, v in pins.items():
        pbind.bind_ortvalue_input(k, v)
    for name in names:
        pbind.bind_output(name, device, 0)

    def step(session: Any, bound: Any, values: dict[str, Any], i: int) -> None:
        for k, v in feeds[i % len(feeds)].items():
            values[k].update_inplace(v)
        session.run_with_iobinding(bound)
        bound.synchronize_outputs()

    timing = interleaved({"cuda graph": lambda i: step(graph, binding, ins, i),
                          "plain cuda": lambda i: step(plain, pbind, pins, i)},
                         rounds, warmup=2, deadline=deadline, base="plain cuda")
    return {"supported": True, "max_abs_diff": max(diffs), "replays_checked": len(diffs), "sides": timing["sides"],
            "ratio": timing["ratios"].get("cuda graph")}
