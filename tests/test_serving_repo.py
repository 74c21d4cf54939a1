"""``segrt triton``: the GPU model repository. Every config.pbtxt parses against Triton's own schema
(tritonclient's model_config_pb2), the ensemble's wiring is consistent, the TensorRT plan is taken
from the engine cache, and the pre/post stages around the network answer what local segrt answers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="needs segrt[serve] (tritonclient)")
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2 as mc  # noqa: E402

from segrt.runtime import load  # noqa: E402
from segrt.runtime.backends import RunnerOptions, select_runner  # noqa: E402
from segrt.runtime.image import read_image  # noqa: E402
from segrt.runtime.manifest import read_manifest  # noqa: E402
from segrt.runtime.serving.gpu_repo import write_triton_repository  # noqa: E402
from segrt.runtime.serving.repository import ServeOptions, write_serve_repository  # noqa: E402
from segrt.runtime.serving.stages import stages_for  # noqa: E402


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, unet_trained, maskrcnn, sam_tiny) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("named")
    out = {}
    for name, bundle in (("unet", unet_trained.bundle), ("mrcnn", maskrcnn.bundle), ("sam", sam_tiny.bundle)):
        (tmp / name).symlink_to(Path(bundle).resolve())
        out[name] = tmp / name
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory, bundles) -> Path:
    out = tmp_path_factory.mktemp("repo") / "models"
    write_triton_repository(list(bundles.values()), out, ServeOptions(max_batch=4, instances=2))
    return out


def configs(root: Path) -> dict[str, mc.ModelConfig]:
    return {p.parent.name: parse(p) for p in sorted(root.glob("*/config.pbtxt"))}


def test_every_config_parses_against_tritons_schema(repo, tmp_path, bundles) -> None:
    got = configs(repo)
    assert sorted(got) == sorted(["unet", "unet_pre", "unet_net", "unet_post", "mrcnn", "mrcnn_pre", "mrcnn_net",
                                  "mrcnn_post", "sam", "sam_pre", "sam_encoder", "sam_decoder", "sam_post"])
    for name, cfg in got.items():
        assert cfg.name == name
        assert (repo / name / "1").is_dir()
    net = got["unet_net"]
    assert net.backend == "onnxruntime" and net.max_batch_size == 4 and net.dynamic_batching is not None
    assert net.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU and net.instance_group[0].count == 2
    assert list(net.input[0].dims) == [3, -1, -1]  # batch axis left to Triton; H, W dynamic
    trt = net.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP32"
    assert got["mrcnn_net"].max_batch_size == 0 and got["sam_encoder"].max_batch_size == 0
    assert (repo / "unet_net" / "1" / "model.onnx").read_bytes() == (bundles["unet"] / "model.onnx").read_bytes()
    serve = tmp_path / "serve"
    write_serve_repository(list(bundles.values()), serve, ServeOptions())
    for name, cfg in configs(serve).items():
        assert cfg.backend == "python" and cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
        assert cfg.parameters["bundle"].string_value == str(bundles[name])


def test_ensembles_are_wired_consistently(repo) -> None:
    got = configs(repo)
    for name in ("unet", "mrcnn", "sam"):
        ens = got[name]
        assert ens.platform == "ensemble"
        known = {t.name for t in ens.input}
        for step in ens.ensemble_scheduling.step:
            model = got[step.model_name]
            inputs = {t.name: t for t in model.input}
            assert set(step.input_map) <= set(inputs)
            assert all(t.optional for n, t in inputs.items() if n not in step.input_map)
            assert set(step.input_map.values()) <= known, (step.model_name, set(step.input_map.values()) - known)
            assert set(step.output_map) <= {t.name for t in model.output}
            known |= set(step.output_map.values())
        assert {t.name for t in ens.output} <= known
    sam_pre = {t.name: t for t in got["sam_pre"].input}
    assert [n for n, t in sam_pre.items() if t.optional] == ["POINT_COORDS", "POINT_LABELS", "BOX"]


def test_tensorrt_plan_from_the_engine_cache(tmp_path, bundles) -> None:
    from segrt.runtime.engine import EngineKey, Profile, store_engine

    bundle = tmp_path / "unet"
    shutil.copytree(bundles["unet"], bundle)
    from segrt.runtime.onnx_files import model_digest

    def key(digest: str, max_batch: int) -> EngineKey:
        return EngineKey("model.onnx", digest, "fp16", (Profile("image", (1, 3, 64, 64), (1, 3, 256, 256),
                                                                (max_batch, 3, 512, 512)),), "10.9.0", "NVIDIA L4", "8.9")

    store_engine(bundle, key("0" * 64, 8), b"built from another export")  # stale: never served
    store_engine(bundle, key(model_digest(bundle / "model.onnx"), 4), b"takes 4 images, the repository batches 8")
    stale = write_triton_repository([bundle], tmp_path / "stale", gpu="NVIDIA L4")
    assert parse(stale / "unet_net" / "config.pbtxt").backend == "onnxruntime"
    store_engine(bundle, key(model_digest(bundle / "model.onnx"), 8), b"not a real plan: only copied")
    out = write_triton_repository([bundle], tmp_path / "repo", gpu="NVIDIA L4")
    net = parse(out / "unet_net" / "config.pbtxt")
    assert net.platform == "tensorrt_plan" and not net.HasField("optimization")
    assert (out / "unet_net" / "1" / "model.plan").read_bytes() == b"not a real plan: only copied"
    manifest = json.loads((bundle / "segrt.json").read_text())
    (bundle / "segrt.json").write_text(json.dumps({**manifest, "precision": "fp16"}))  # as `segrt quantize` marks it
    other = write_triton_repository([bundle], tmp_path / "repo2", gpu="NVIDIA A100")  # no engine for that GPU
    net = parse(other / "unet_net" / "config.pbtxt")
    assert net.backend == "onnxruntime"
    trt = net.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"


def run_stages(bundle: Path, request: dict) -> dict:
    """pre -> the bundle's network(s) on segrt's CPU runner -> post, as the ensemble chains them."""
    manifest = read_manifest(bundle)
    stages = stages_for(manifest)
    feeds = stages.pre(request)
    opts = RunnerOptions(threads=1)
    files = [manifest.model_file] + ([manifest.sam.decoder_file] if manifest.sam else [])
    for f in files:
        runner, _ = select_runner(bundle / f, "cpu", opts)
        feeds.update(runner.infer({s.name: feeds[s.name] for s in runner.input_specs()}))
    return stages.post({**request, **feeds})


def test_stages_equal_local_segrt(bundles, maskrcnn, photos) -> None:
    image = photos["chelsea"][:97, :131]
    labels = run_stages(bundles["unet"], {"IMAGE": np.stack([image, image[::-1]])})["LABELS"]
    seg = load(bundles["unet"], "cpu")
    np.testing.assert_array_equal(labels, np.stack([seg(image).label_map, seg(image[::-1]).label_map]))

    val = read_image(sorted((maskrcnn.val / "images").iterdir())[0])
    got, want = run_stages(bundles["mrcnn"], {"IMAGE": val[None]}), load(bundles["mrcnn"], "cpu")(val)
    assert len(want) > 0
    np.testing.assert_array_equal(got["BOXES"], want.boxes)
    np.testing.assert_array_equal(got["CLASSES"], want.labels)
    assert json.loads(got["MASKS_RLE"].tobytes()) == [d["segmentation"] for d in want.to_coco(0)]

    pred = load(bundles["sam"], "cpu")
    img = photos["astronaut"][:200, :240]
    pred.set_image(img)
    box = np.array([30, 20, 200, 180], np.float32)
    got = run_stages(bundles["sam"], {"IMAGE": img[None], "BOX": box, "MULTIMASK_OUTPUT": np.array([False])})
    masks, scores, _ = pred.predict(box=box, multimask_output=False)
    np.testing.assert_array_equal(got["MASKS"], masks)
    np.testing.assert_array_equal(got["SCORES"], scores)


def segrt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segrt.runtime.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("flag,value", [("--max-batch", "0"), ("--max-queue-delay-us", "-1"), ("--instances", "x"),
                                        ("--max-pixels", "0")])
def test_numeric_flags_are_checked_at_parse_time(flag, value, tmp_path, capsys) -> None:
    from segrt.runtime.cli import main

    for command in ("serve", "triton"):
        extra = ["--out", str(tmp_path / "r")] if command == "triton" else []
        with pytest.raises(SystemExit) as exit_:
            main([command, str(tmp_path), flag, value, *extra])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith(f"segrt: error: argument {flag}") and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as exit_:
        main(["serve", str(tmp_path), "--http-port", "70000"])
    assert exit_.value.code == 2 and "1-65535" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_triton_writes_atomically(tmp_path, bundles) -> None:
    from .conftest import conv_onnx

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "unet").symlink_to(bundles["unet"].resolve())  # a second "unet": the names collide
    res = segrt("triton", str(bundles["unet"]), str(tmp_path / "b" / "unet"), "--out", str(tmp_path / "repo"))
    assert res.returncode == 2 and "two bundles are named 'unet'" in res.stderr
    conv_onnx(tmp_path / "fixed.onnx")  # batch axis fixed at 1: fails after unet's models are written
    assert segrt("import", str(tmp_path / "fixed.onnx"), "--classes", "a,b,c", "--out", str(tmp_path / "fixed")
                 ).returncode == 0
    res = segrt("triton", str(bundles["unet"]), str(tmp_path / "fixed"), "--out", str(tmp_path / "repo"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "batch axis" in res.stderr
    assert not (tmp_path / "repo").exists() and not list(tmp_path.glob(".repo*"))
    res = segrt("triton", str(bundles["unet"]), "--out", str(tmp_path / "repo"))
    assert res.returncode == 0 and (tmp_path / "repo" / "unet" / "config.pbtxt").is_file(), res.stderr
    assert not list(tmp_path.glob(".repo*"))


#: A python-backend stand-in for an onnxruntime-backend network model (Triton's ONNX Runtime backend ships
#: only in NVIDIA's containers): same name, inputs and outputs, segrt's CPU runner on the copied model.onnx.
STAND_IN = '''
import json
from pathlib import Path
import numpy as np
import triton_python_backend_utils as pb_utils
from segrt.runtime.backends import RunnerOptions, select_runner
from segrt.runtime.serving.triton_model import _tensor

class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.runner, _ = select_runner(path, "cpu", RunnerOptions(threads=1))
        self.inputs = [t["name"] for t in cfg["input"]]

    def execute(self, requests):
        out = []
        for r in requests:
            feeds = {n: np.from_dlpack(pb_utils.get_input_tensor_by_name(r, n)) for n in self.inputs}
            res = self.runner.infer(feeds)
            out.append(pb_utils.InferenceResponse([_tensor(k, v) for k, v in res.items()]))
        return out
'''


def cpu_stand_ins(root: Path) -> None:
    for cfg_path in root.glob("*/config.pbtxt"):
        cfg = parse(cfg_path)
        if cfg.backend != "onnxruntime":
            continue
        cfg.backend = "python"
        cfg.ClearField("optimization")
        for group in cfg.instance_group:
            group.kind = mc.ModelInstanceGroup.KIND_CPU
            group.count = 1
        cfg_path.write_text(text_format.MessageToString(cfg))
        (cfg_path.parent / "1" / "model.py").write_text(STAND_IN)


@pytest.fixture(scope="module")
def ensemble_server(repo):
    pytest.importorskip("tritonclient.http")
    from segrt.runtime.serving.server import ServerConfig, TritonServer

    from .test_serving import free_ports

    def write(root: Path) -> None:
        shutil.copytree(repo, root, symlinks=True)
        cpu_stand_ins(root)

    http, grpc = free_ports(2)
    with TritonServer(write, ServerConfig("127.0.0.1", http, grpc)) as server:
        yield server


@pytest.mark.slow
def test_the_gpu_ensembles_run_on_triton_with_cpu_stand_ins(ensemble_server, bundles, maskrcnn, photos) -> None:
    """The repository `segrt triton` writes, served by the real server with only the network models
    swapped for CPU stand-ins: the ensembles' pre/post steps and wiring answer what local segrt answers."""
    import tritonclient.http as th

    client = th.InferenceServerClient(f"127.0.0.1:{ensemble_server.config.http_port}", network_timeout=60)

    def call(model: str, **inputs: np.ndarray):
        tensors = []
        for name, value in inputs.items():
            t = th.InferInput(name, list(value.shape), {np.uint8: "UINT8", np.float32: "FP32",
                                                        np.bool_: "BOOL"}[value.dtype.type])
            t.set_data_from_numpy(value)
            tensors.append(t)
        return client.infer(model, tensors)

    try:
        image = photos["chelsea"][:97, :131]
        seg = load(bundles["unet"], "cpu")
        got = call("unet", IMAGE=np.stack([image, image[::-1]])).as_numpy("LABELS")
        np.testing.assert_array_equal(got, np.stack([seg(image).label_map, seg(image[::-1]).label_map]))

        val = read_image(sorted((maskrcnn.val / "images").iterdir())[0])
        res, want = call("mrcnn", IMAGE=val[None]), load(bundles["mrcnn"], "cpu")(val)
        np.testing.assert_array_equal(res.as_numpy("BOXES"), want.boxes)
        np.testing.assert_array_equal(res.as_numpy("SCORES"), want.scores)
        assert json.loads(res.as_numpy("MASKS_RLE").tobytes()) == [d["segmentation"] for d in want.to_coco(0)]

        pred = load(bundles["sam"], "cpu")
        img = photos["astronaut"][:200, :240]
        pred.set_image(img)
        box = np.array([30, 20, 200, 180], np.float32)
        res = call("sam", IMAGE=img[None], BOX=box)  # the point inputs left out: optional in the ensemble
        masks, scores, _ = pred.predict(box=box)
        np.testing.assert_array_equal(res.as_numpy("MASKS"), masks)
        np.testing.assert_array_equal(res.as_numpy("SCORES"), scores)
    finally:
        client.close()
