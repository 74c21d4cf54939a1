"""The TensorRT runners (native and lean) without a GPU: their calls checked against the real lean bindings of
TensorRT 10.x and 11.x, their CUDA calls against the real cuda-python, their model check, refusals, data path and
lifecycle on named test doubles of what needs a GPU. None of this ran on a GPU."""

from __future__ import annotations

import ast
import functools
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segrt.runtime.backends import _trt
from segrt.runtime.backends._cuda import CudaPython
from segrt.runtime.backends._model_file import check_model_file
from segrt.runtime.backends.base import RunnerOptions
from segrt.runtime.backends.tensorrt import TensorRTRunner
from segrt.runtime.backends.tensorrt_lean import TensorRTLeanRunner
from segrt.runtime.errors import BackendUnavailableError, InferenceError, InvalidInputError, ModelFormatError

from ._trt_lean import ContextDouble, CudaDouble, EngineDouble, TensorDouble, lean_dir
from .conftest import PPOCR, conv_onnx

RUNNER_SOURCES = [Path(m.__file__) for m in (_trt, sys.modules[TensorRTRunner.__module__],
                                             sys.modules[TensorRTLeanRunner.__module__])]
#: the names the runner module gives TensorRT objects -> the real class they are (None: the module itself)
RECEIVERS = {"runtime": "Runtime", "_runtime": "Runtime", "engine": "ICudaEngine", "_engine": "ICudaEngine",
             "ctx": "IExecutionContext", "_ctx": "IExecutionContext", "trt": None, "_trt": None}
RUNNERS = (TensorRTRunner, TensorRTLeanRunner)


def _chain(node: ast.expr) -> list[str]:
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return [node.id, *reversed(names)] if isinstance(node, ast.Name) else list(reversed(names))


def _on_tensorrt(node: ast.expr) -> tuple[str, str] | None:
    """(class or "module", attribute path) when ``node`` is an attribute of a TensorRT object, else None."""
    if not isinstance(node, ast.Attribute):
        return None
    chain = _chain(node)
    at = next((i for i, n in enumerate(chain[:-1]) if n in RECEIVERS), None)
    return None if at is None else (RECEIVERS[chain[at]] or "module", ".".join(chain[at + 1:]))


def tensorrt_calls() -> dict[str, set[str]]:
    """{class or "module": attribute paths} the runner modules use on TensorRT objects, read from their source."""
    used: dict[str, set[str]] = {}
    for source in RUNNER_SOURCES:
        for node in ast.walk(ast.parse(source.read_text())):
            if (found := _on_tensorrt(node)) is not None:
                used.setdefault(found[0], set()).add(found[1])
    return used


def tensorrt_call_arities() -> dict[str, set[int]]:
    """{"Class.method": argument counts} of every call the runner modules make on a TensorRT object's method."""
    calls: dict[str, set[int]] = {}
    for source in RUNNER_SOURCES:
        for node in ast.walk(ast.parse(source.read_text())):
            found = _on_tensorrt(node.func) if isinstance(node, ast.Call) else None
            if found is not None and found[0] != "module":
                calls.setdefault(".".join(found), set()).add(len(node.args) + len(node.keywords))
    return calls


CHECK = Path(__file__).with_name("_trt_api_check.py")  # run with PYTHONPATH at one version's lean bindings


@functools.lru_cache(maxsize=None)
def _real_bindings(major: int) -> dict:
    """Run CHECK against the real lean bindings of ``major`` in their own process (one TensorRT per process)."""
    env = {**os.environ, "PYTHONPATH": str(lean_dir(major))}
    used = {k: sorted(v) for k, v in tensorrt_calls().items()}
    calls = {k: sorted(v) for k, v in tensorrt_call_arities().items()}
    out = subprocess.run([sys.executable, str(CHECK), json.dumps(used), json.dumps(calls)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=[10, 11], ids=["lean-10.x", "lean-11.x"])
def real(request) -> dict:
    return _real_bindings(request.param)


def test_the_source_scan_sees_the_calls_that_matter() -> None:
    used = tensorrt_calls()
    context = {"set_input_shape", "set_tensor_address", "execute_async_v3", "get_tensor_shape"}
    assert context <= used["IExecutionContext"]
    assert {"num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype", "get_tensor_shape",
            "get_tensor_profile_shape", "is_shape_inference_io", "create_execution_context"} <= used["ICudaEngine"]
    assert {"deserialize_cuda_engine", "engine_host_code_allowed"} <= used["Runtime"]
    assert {"Runtime", "Logger.WARNING", "TensorIOMode.INPUT", "nptype", "__version__"} <= used["module"]


def test_every_call_exists_on_the_real_classes(real) -> None:
    assert real["version"].split(".")[0] in ("10", "11")
    assert real["missing"] == [], f"TensorRT {real['version']} lacks {real['missing']}"


def test_every_call_passes_as_many_arguments_as_a_real_signature_takes(real) -> None:
    assert {"IExecutionContext.set_input_shape", "ICudaEngine.get_tensor_profile_shape"} <= set(tensorrt_call_arities())
    assert real["arity"] == [], f"TensorRT {real['version']}: {real['arity']}"


def test_no_removed_or_binding_index_call_is_used() -> None:
    avoided = _trt.REMOVED_IN_11 | _trt.BUILDER_REMOVED_IN_11 | _trt.BINDING_INDEX_API
    for source in RUNNER_SOURCES:
        attrs = {n.attr for n in ast.walk(ast.parse(source.read_text())) if isinstance(n, ast.Attribute)}
        assert not attrs & avoided, f"{source.name} uses {sorted(attrs & avoided)}"


def test_the_removed_lists_match_the_real_bindings() -> None:
    v10, v11 = _real_bindings(10), _real_bindings(11)
    assert set(v10["names"]) >= _trt.REMOVED_IN_11, "each name removed in 11 existed in 10.x"
    assert not set(v11["names"]) & _trt.REMOVED_IN_11
    assert not (set(v10["names"]) | set(v11["names"])) & _trt.BINDING_INDEX_API


def test_unavailable_reason_says_what_to_install() -> None:
    assert TensorRTRunner.unavailable_reason() == "tensorrt is not installed (pip install 'segrt[tensorrt]')"
    assert TensorRTLeanRunner.unavailable_reason() == ("tensorrt_lean is not installed "
                                                       "(pip install 'segrt[tensorrt-lean]')")


def test_lean_bindings_make_the_lean_runner_available(lean_trt) -> None:
    assert TensorRTLeanRunner.unavailable_reason() is None  # cuda-python is in the venv (torch brings it)
    assert _trt.import_first(TensorRTLeanRunner.modules, "") is lean_trt


# --- the model file check -------------------------------------------------------------------------------------

def test_real_onnx_files_pass(tmp_path) -> None:
    conv_onnx(tmp_path / "m.onnx", hw=(8, 8))
    for path in (PPOCR, tmp_path / "m.onnx"):
        check_model_file(path)


@pytest.mark.parametrize("content, problem", [
    (b"not a protobuf at all", "invalid protobuf field"), (b"", "empty"), (b"\x08\x07", "no ir_version or graph"),
])
def test_what_is_not_onnx_is_a_format_error(tmp_path, content: bytes, problem: str) -> None:
    (tmp_path / "model.onnx").write_bytes(content)
    with pytest.raises(ModelFormatError, match=f"cannot load .*not an ONNX model \\({problem}.*re-export"):
        check_model_file(tmp_path / "model.onnx")


def test_truncated_onnx_and_missing_file(tmp_path) -> None:
    (tmp_path / "model.onnx").write_bytes(PPOCR.read_bytes()[:5000])
    with pytest.raises(ModelFormatError, match="truncated"):
        check_model_file(tmp_path / "model.onnx")
    with pytest.raises(ModelFormatError, match="is missing; re-export"):
        check_model_file(tmp_path / "gone.onnx")


# --- CUDA calls against the real cuda-python (no GPU here: each fails with CUDA's own error, typed) -----------

def test_cuda_python_calls_fail_typed_without_a_gpu() -> None:
    with pytest.raises(BackendUnavailableError, match="CUDA cudaSetDevice\\(0\\) failed with cudaError"):
        CudaPython(0)
    cuda = object.__new__(CudaPython)  # past start-up: the same calls raise InferenceError, not the fall-back signal
    from cuda.bindings import runtime as rt

    cuda._rt = rt
    for call in (lambda: cuda.malloc(16), lambda: cuda.malloc_host(16), lambda: cuda.synchronize(0),
                 lambda: cuda.to_device(0, 0, 16, 0), lambda: cuda.to_host(0, 0, 16, 0),
                 lambda: cuda.capture(0, lambda: True)):
        with pytest.raises(InferenceError, match="failed with cudaError"):
            call()
    with pytest.raises(BackendUnavailableError, match="cudaStreamCreate"):
        cuda.stream_create()


def test_every_cuda_python_function_called_exists() -> None:
    """The CUDA calls the runners make (``rt.<name>`` in _cuda.py) exist in the installed cuda-python."""
    from cuda.bindings import runtime as rt

    tree = ast.parse(Path(sys.modules[CudaPython.__module__].__file__).read_text())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and _chain(n.value)[-1:] == ["_rt"]
            or isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "rt"}
    assert {"cudaMemcpyAsync", "cudaGraphInstantiate", "cudaGraphLaunch", "cudaStreamEndCapture"} <= used
    assert sorted(n for n in used if not hasattr(rt, n)) == []


# --- the engine checks and the runner on test doubles ----------------------------------------------------------

def _engine(trt, dynamic: bool = True, shape_tensor: bool = False) -> EngineDouble:
    shape = (1, 3, -1, -1) if dynamic else (1, 3, 16, 24)
    profile = ((1, 3, 32, 32), (1, 3, 64, 64), (1, 3, 128, 128)) if dynamic else ()
    return EngineDouble(trt, (TensorDouble("x", shape, True, profile, shape_tensor), TensorDouble("y", shape, False)))


def test_specs_and_profiles_from_the_engine(lean_trt) -> None:
    engine = _engine(lean_trt)
    inputs, outputs = _trt.tensor_specs(engine, lean_trt)
    assert [(s.name, s.shape, s.dtype) for s in inputs] == [("x", (1, 3, None, None), np.float32)]
    assert [s.name for s in outputs] == ["y"]
    assert _trt.input_profiles(engine, inputs)["x"][2] == (1, 3, 128, 128)
    fixed = _engine(lean_trt, dynamic=False)
    assert _trt.input_profiles(fixed, _trt.tensor_specs(fixed, lean_trt)[0])["x"] == ((1, 3, 16, 24),) * 3


def test_unsupported_engines_are_refused_at_start_up(lean_trt) -> None:
    engine = _engine(lean_trt)
    inputs, outputs = _trt.tensor_specs(engine, lean_trt)
    profiles = _trt.input_profiles(engine, inputs)
    with pytest.raises(BackendUnavailableError, match="data-dependent shape .*device='cuda'"):
        _trt.refuse_data_dependent(ContextDouble(("y",), data_dependent=True), profiles, outputs)
    with pytest.raises(BackendUnavailableError, match="refused input 'x' at its own profile shape"):
        _trt.refuse_data_dependent(ContextDouble(("y",), fail="set_input_shape"), profiles, outputs)
    _trt.refuse_data_dependent(ContextDouble(("y",)), profiles, outputs)
    with pytest.raises(BackendUnavailableError, match="shape tensor"):
        _trt.input_profiles(_engine(lean_trt, shape_tensor=True), inputs)


def test_the_doubles_only_have_methods_the_real_classes_have(lean_trt) -> None:
    for double, real in ((EngineDouble, lean_trt.ICudaEngine), (ContextDouble, lean_trt.IExecutionContext)):
        public = {n for n in vars(double) if not n.startswith("_")}
        assert public - {"shapes", "addresses"} <= set(dir(real)), double.__name__
    public = {n for n in vars(CudaDouble) if not n.startswith("_")}
    assert public == {n for n in vars(CudaPython) if not n.startswith("_")} - {"call"}


def _runner(trt, fail: str = "", cuda_fail: str = "") -> tuple[TensorRTLeanRunner, CudaDouble]:
    """A lean runner past start-up on doubles of the engine, context and CUDA (a real one needs a GPU)."""
    runner, cuda = object.__new__(TensorRTLeanRunner), CudaDouble(cuda_fail)
    engine = _engine(trt)
    runner._device, runner._host, runner._use_graph, runner._trt = {}, {}, False, trt
    runner._inputs, runner._outputs = _trt.tensor_specs(engine, trt)
    runner._profiles = _trt.input_profiles(engine, runner._inputs)
    runner._engine, runner._ctx = engine, ContextDouble(("y",), fail=fail, cuda=cuda)
    runner._cuda, runner._stream = cuda, cuda.stream_create()
    return runner, cuda


def test_infer_binds_copies_and_runs_by_name(lean_trt) -> None:
    runner, cuda = _runner(lean_trt)
    x = np.random.default_rng(0).random((1, 3, 40, 56), np.float32)
    for _ in range(2):  # buffers are allocated once per shape, then reused
        out = runner.infer({"x": x})
        np.testing.assert_array_equal(out["y"], x * 2)
    assert cuda.calls.count("malloc") == 2 and cuda.calls.count("malloc_host") == 2
    assert set(runner._ctx.addresses) == {"x", "y"} and runner._ctx.shapes["x"] == (1, 3, 40, 56)
    with pytest.raises(InvalidInputError, match="outside the engine's profile .*segrt build --min/--opt/--max"):
        runner.infer({"x": np.zeros((1, 3, 256, 64), np.float32)})


def test_cuda_graph_is_captured_per_shape_replayed_and_freed(lean_trt) -> None:
    runner, cuda = _runner(lean_trt)
    runner._use_graph = True
    small, large = np.zeros((1, 3, 32, 32), np.float32), np.zeros((1, 3, 64, 64), np.float32)
    for x in (small, small, large):
        runner.infer({"x": x})
    assert [c for c in cuda.calls if c in ("capture", "graph_launch", "graph_destroy")] == \
        ["capture", "graph_launch", "graph_destroy", "capture"]  # a new shape: the old graph goes
    runner.close()
    assert cuda.calls.count("graph_destroy") == 2


def test_a_failed_capture_is_destroyed_never_replayed(lean_trt) -> None:
    runner, cuda = _runner(lean_trt)
    runner._use_graph = True
    runs = iter([True, False, True, True])  # plain run, failed capture, plain run again, capture
    runner._ctx.execute_async_v3 = lambda stream: next(runs)
    x = np.zeros((1, 3, 32, 32), np.float32)
    with pytest.raises(InferenceError, match="captured into a CUDA graph"):
        runner.infer({"x": x})
    assert runner._graph is None and cuda.calls.count("graph_destroy") == 1
    runner.infer({"x": x})  # the same shapes: captured anew, not the failed graph replayed
    assert "graph_launch" not in cuda.calls and cuda.calls.count("capture") == 2


@pytest.mark.parametrize("fail", ["set_input_shape", "set_tensor_address", "execute_async_v3"])
def test_a_failed_tensorrt_call_after_start_up_is_an_inference_error(lean_trt, fail: str) -> None:
    runner, _ = _runner(lean_trt, fail=fail)
    with pytest.raises(InferenceError, match=fail):
        runner.infer({"x": np.zeros((1, 3, 32, 32), np.float32)})


def test_close_frees_everything_once_and_infer_after_it_is_typed(lean_trt) -> None:
    runner, cuda = _runner(lean_trt)
    with runner:
        runner.infer({"x": np.zeros((1, 3, 32, 32), np.float32)})
        ran = len(cuda.calls)
    assert cuda.calls[ran:] == ["synchronize", "free", "free", "free_host", "free_host", "stream_destroy", "close"]
    assert runner._ctx is None and runner._engine is None and not cuda.device and not cuda.host
    runner.close()  # idempotent
    assert cuda.calls[-1] == "close"
    with pytest.raises(InferenceError, match="closed; load the model again"):
        runner.infer({"x": np.zeros((1, 3, 32, 32), np.float32)})


def test_close_keeps_freeing_after_a_failure_then_says_so(lean_trt) -> None:
    runner, cuda = _runner(lean_trt, cuda_fail="free")
    runner.infer({"x": np.zeros((1, 3, 32, 32), np.float32)})
    with pytest.raises(InferenceError, match="closing failed: CUDA free failed"):
        runner.close()
    assert "stream_destroy" in cuda.calls and not cuda.host
    runner.close()  # already closed: nothing more


def test_del_never_raises_even_half_built(lean_trt) -> None:
    runner, _ = _runner(lean_trt, cuda_fail="stream_destroy")
    half = object.__new__(TensorRTRunner)  # __init__ failed before anything was set
    half.__del__(), runner.__del__()
    del runner, half
    gc.collect()


def test_start_up_checks_the_model_before_anything_else(tmp_path) -> None:
    for backend in RUNNERS:  # neither TensorRT is importable here: the model check still comes first
        with pytest.raises(ModelFormatError, match="is missing"):
            backend(tmp_path / "model.onnx", RunnerOptions())


FRESH = """
import json, sys
from pathlib import Path
from segrt.runtime.backends import select_runner
from segrt.runtime.backends.tensorrt_lean import TensorRTLeanRunner
reason = TensorRTLeanRunner.unavailable_reason()
imported = sorted(m for m in sys.modules if m.startswith("tensorrt"))
runner, skipped = select_runner(Path(sys.argv[1]), "auto")
print(json.dumps({"reason": reason, "imported_by_reason": imported, "runner": runner.name, "skipped": skipped}))
"""


def test_in_a_fresh_process_the_real_lean_runner_is_tried_then_falls_back(tmp_path) -> None:
    """No doubles: the real bindings on PYTHONPATH, ``auto`` imports them, asks the real CUDA for the GPU, and
    falls back to ONNX Runtime saying why; ``unavailable_reason`` imported nothing."""
    conv_onnx(tmp_path / "model.onnx", hw=(8, 8))
    env = {**os.environ, "PYTHONPATH": str(lean_dir(11))}
    out = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path / "model.onnx")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["reason"] is None and got["imported_by_reason"] == []
    assert got["runner"] == "onnxruntime-cpu"
    lean = next(line for line in got["skipped"] if line.startswith("tensorrt-lean: "))
    assert "CUDA" in lean and "no TensorRT engine" not in lean, lean  # the GPU query failed first
