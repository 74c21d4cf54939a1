"""One contract test run against every backend available here; selection and fallback."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from segrt.runtime import engine
from segrt.runtime.backends import BACKENDS, RunnerOptions, select_runner
from segrt.runtime.backends._trt import tensor_specs
from segrt.runtime.backends.tensorrt import TensorRTRunner
from segrt.runtime.backends.tensorrt_lean import TensorRTLeanRunner
from segrt.runtime.errors import BackendUnavailableError, InferenceError, InvalidInputError, ModelFormatError

from ._trt_lean import EngineDouble, TensorDouble
from .conftest import PPOCR, conv_onnx

BAD_FEEDS = [
    ({"img": np.zeros((1, 3, 16, 24), np.float32)}, "expected inputs"),
    ({"image": np.zeros((1, 3, 16, 24), np.float64)}, "must be float32"),
    ({"image": np.zeros((3, 16, 24), np.float32)}, "must have rank 4"),
    ({"image": np.zeros((1, 3, 16, 25), np.float32)}, "axis 3 must be 24"),
]


@pytest.fixture(scope="module")
def fixed_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "fixed.onnx"
    conv_onnx(path, hw=(16, 24))
    return path


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
class TestRunnerContract:
    @pytest.fixture(autouse=True)
    def _available(self, backend) -> None:
        reason = backend.unavailable_reason()
        if reason:
            pytest.skip(f"{backend.name} unavailable here: {reason}")

    def test_specs_and_inference(self, backend, fixed_model) -> None:
        runner = backend(fixed_model, RunnerOptions(threads=1))
        (inp,) = runner.input_specs()
        assert (inp.name, inp.shape, inp.dtype) == ("image", (1, 3, 16, 24), np.float32)
        x = np.random.default_rng(0).normal(size=(1, 3, 16, 24)).astype(np.float32)
        out = runner.infer({"image": x})
        assert set(out) == {"scores"} and out["scores"].shape == (1, 3, 16, 24)

    def test_dynamic_model_on_a_real_network(self, backend) -> None:
        runner = backend(PPOCR, RunnerOptions())
        assert runner.input_specs()[0].is_dynamic
        out = runner.infer({"x": np.zeros((1, 3, 64, 96), np.float32)})
        assert out["sigmoid_0.tmp_0"].shape == (1, 1, 64, 96)

    @pytest.mark.parametrize("feeds, message", BAD_FEEDS)
    def test_bad_feeds_are_typed_errors(self, backend, fixed_model, feeds, message: str) -> None:
        with pytest.raises(InvalidInputError, match=message):
            backend(fixed_model, RunnerOptions()).infer(feeds)

    def test_close_and_with(self, backend, fixed_model) -> None:
        x = {"image": np.zeros((1, 3, 16, 24), np.float32)}
        with backend(fixed_model, RunnerOptions(threads=1)) as runner:
            assert runner.infer(x)["scores"].shape == (1, 3, 16, 24)
        runner.close()  # idempotent
        with pytest.raises(InferenceError, match="closed; load the model again"):
            runner.infer(x)

    def test_corrupt_model_is_a_format_error(self, backend, tmp_path) -> None:
        bad = tmp_path / "model.onnx"
        bad.write_bytes(b"not a protobuf at all")
        with pytest.raises(ModelFormatError, match="cannot load"):
            backend(bad, RunnerOptions())


GPU_DOUBLE = engine.GpuIdentity("test double of a GPU (there is none here)", "8.9")


@pytest.fixture
def trt_without_gpu(lean_trt, monkeypatch):
    """The real TensorRT 11 lean bindings, also standing in for ``tensorrt`` (the full library cannot install here;
    its runtime classes are these), and a test double for the GPU query (no GPU here)."""
    monkeypatch.setitem(sys.modules, "tensorrt", lean_trt)
    monkeypatch.setattr(engine, "gpu_identity", lambda device_id=0: GPU_DOUBLE)
    return lean_trt


@pytest.mark.parametrize("backend", [TensorRTRunner, TensorRTLeanRunner], ids=lambda b: b.name)
class TestTensorRTContractWithoutGpu:
    """The contract checks of the TensorRT runners that need no GPU, with the real bindings (a deserialized engine
    needs a GPU: the specs come from a double of it answering like the engine built from ``fixed_model``)."""

    @pytest.mark.parametrize("feeds, message", BAD_FEEDS)
    def test_bad_feeds_are_typed_errors(self, backend, trt_without_gpu, feeds, message: str) -> None:
        runner = object.__new__(backend)  # past start-up, which needs a GPU
        built = EngineDouble(trt_without_gpu, (TensorDouble("image", (1, 3, 16, 24), True),
                                               TensorDouble("scores", (1, 3, 16, 24), False)))
        runner._inputs, runner._outputs = tensor_specs(built, trt_without_gpu)
        with pytest.raises(InvalidInputError, match=message):
            runner.infer(feeds)

    def test_corrupt_or_missing_model_is_a_format_error(self, backend, trt_without_gpu, tmp_path) -> None:
        bad = tmp_path / "model.onnx"
        bad.write_bytes(b"not a protobuf at all")
        with pytest.raises(ModelFormatError, match="cannot load"):
            backend(bad, RunnerOptions())
        with pytest.raises(ModelFormatError, match="is missing"):
            backend(tmp_path / "gone.onnx", RunnerOptions())

    def test_a_model_without_an_engine_says_which_build_to_run(self, backend, trt_without_gpu, fixed_model) -> None:
        lean = " --version-compatible --exclude-lean-runtime" if backend is TensorRTLeanRunner else ""
        with pytest.raises(BackendUnavailableError, match=f"no TensorRT engine for fixed.onnx .*TensorRT "
                           f"{trt_without_gpu.__version__}.*run `segrt build {fixed_model.parent}.*{lean}"):
            backend(fixed_model, RunnerOptions())

    def test_auto_falls_back_past_it_and_says_why(self, backend, trt_without_gpu, fixed_model) -> None:
        runner, skipped = select_runner(fixed_model, "auto")
        assert runner.name == "onnxruntime-cpu"
        assert any(line.startswith(f"{backend.name}: no TensorRT engine") for line in skipped), skipped


def test_auto_falls_back_and_says_why(fixed_model) -> None:
    runner, skipped = select_runner(fixed_model, "auto")
    unavailable = [b for b in BACKENDS if not b.is_available()]
    assert len(skipped) == len(unavailable)
    for line, backend in zip(skipped, unavailable):
        assert line.startswith(backend.name) and backend.unavailable_reason() in line
    assert runner.device == next(b for b in BACKENDS if b.is_available()).device


@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_explicit_unavailable_device_raises(fixed_model, device: str) -> None:
    if any(b.device == device and b.is_available() for b in BACKENDS):
        pytest.skip(f"{device} is available here")
    with pytest.raises(BackendUnavailableError, match=f"no backend for device '{device}'"):
        select_runner(fixed_model, device)


def test_unknown_device_and_bad_options(fixed_model) -> None:
    with pytest.raises(InvalidInputError, match="device must be one of auto, cpu, cuda, tensorrt"):
        select_runner(fixed_model, "gpu")
    with pytest.raises(InvalidInputError, match="threads must be >= 1"):
        RunnerOptions(threads=0)


@pytest.fixture
def io_model(request):
    """The model by name, the Mask R-CNN fixture resolved here, at set-up (its training is bounded by its steps,
    not by the per-test clock, which times only test bodies)."""
    return request.param, (request.getfixturevalue("maskrcnn") if request.param == "maskrcnn" else None)


@pytest.mark.parametrize("io_model", ["ppocr", "maskrcnn"], indirect=True)
def test_io_binding_gives_the_same_outputs(io_model, photos) -> None:
    """The IOBinding path (what the CUDA and TensorRT providers use: outputs allocated by ONNX Runtime on the
    provider's device, copied to the host in one step) run on the CPU provider, where it can be checked
    here: identical outputs to session.run, including Mask R-CNN's data-dependent detection count."""
    from segrt.runtime import load
    from segrt.runtime.backends import RunnerOptions
    from segrt.runtime.backends.ort import OrtCpuRunner

    model, trained = io_model
    if model == "ppocr":
        path = PPOCR
        feeds = {"x": np.random.default_rng(0).random((1, 3, 96, 128), np.float32)}
    else:
        bundle = trained.bundle
        path = bundle / "model.onnx"
        det = load(bundle, "cpu")
        feeds, _ = det.preprocess(det.prepare(photos["coffee"]))
    plain = OrtCpuRunner(path, RunnerOptions(threads=1))
    bound = OrtCpuRunner(path, RunnerOptions(threads=1, io_binding=True))
    assert plain._bind_device is None and bound._bind_device == "cpu"
    a, b = plain.infer(feeds), bound.infer(feeds)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape and np.array_equal(a[name], b[name]), name
    if model == "maskrcnn":
        assert min(v.shape[0] for v in a.values()) > 0  # detections: something data-dependent was bound
        # the loaders take the options too (threads kept): same detections through the bound path
        det2 = load(bundle, "cpu", threads=1, options=RunnerOptions(io_binding=True))
        assert det2.runner._bind_device == "cpu" and det2.runner._session.get_session_options().intra_op_num_threads == 1
        r1, r2 = det(photos["coffee"]), det2(photos["coffee"])
        assert np.array_equal(r1.boxes, r2.boxes) and np.array_equal(r1.scores, r2.scores)


def test_predictors_close_their_runners(tmp_path, photos) -> None:
    """``with load(bundle) as seg`` frees the backend on exit; a call after that is a typed error, not a crash."""
    from segrt.export.importer import ImportConfig, import_onnx
    from segrt.runtime import load

    import_onnx(ImportConfig(model=PPOCR, threshold=0.3), tmp_path / "b")
    with load(tmp_path / "b", device="cpu") as seg:
        assert seg(photos["coffee"]).label_map.shape == photos["coffee"].shape[:2]
    with pytest.raises(InferenceError, match="closed"):
        seg(photos["coffee"])
    seg.close()  # idempotent
