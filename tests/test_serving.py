"""``segrt serve``: a real Triton server (nvidia-pytriton's tritonserver 2.51, python backend) on
127.0.0.1 with free ports, queried over HTTP and gRPC with tritonclient, compared with local segrt."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("pytriton") is None:  # its binary only: importing it needs its own deps
    pytest.skip("segrt serve needs nvidia-pytriton's tritonserver (make installs it)", allow_module_level=True)
th = pytest.importorskip("tritonclient.http")
tg = pytest.importorskip("tritonclient.grpc")

from segrt.benchmarks.bench_serving import free_ports  # noqa: E402
from segrt.runtime import load  # noqa: E402
from segrt.runtime.serving.repository import ServeOptions, write_serve_repository  # noqa: E402
from segrt.runtime.serving.server import ServerConfig, TritonServer  # noqa: E402

MAX_PIXELS = 400_000
#: Servers and the SAM export: the suite's first pass runs these, the NumPy-twin pass (-m "not slow") skips them.
pytestmark = pytest.mark.slow


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT does not count
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def named(tmp: Path, name: str, bundle: Path) -> Path:
    """The model name is the bundle's folder name: give each fixture bundle its own."""
    link = tmp / name
    link.symlink_to(Path(bundle).resolve())
    return link


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, unet_trained, maskrcnn, sam_tiny) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("served")
    return {"unet": named(tmp, "unet", unet_trained.bundle), "mrcnn": named(tmp, "mrcnn", maskrcnn.bundle),
            "sam": named(tmp, "sam", sam_tiny.bundle)}


@pytest.fixture(scope="module")
def server(bundles):
    http, grpc = free_ports(2)
    options = ServeOptions(max_batch=8, max_queue_delay_us=50_000, max_pixels=MAX_PIXELS, threads=1)
    srv = TritonServer(lambda root: write_serve_repository(list(bundles.values()), root, options),
                       ServerConfig("127.0.0.1", http, grpc))
    with srv:
        pgid = srv.process.pid
        yield srv
    assert not group_alive(pgid) and port_free(http) and port_free(grpc)  # shutdown left no process


@pytest.fixture(scope="module")
def clients(server):
    http = th.InferenceServerClient(f"127.0.0.1:{server.config.http_port}", network_timeout=60, connection_timeout=60,
                                    concurrency=16)
    grpc = tg.InferenceServerClient(server.config.grpc_url)
    yield {"http": (th, http), "grpc": (tg, grpc)}
    http.close()
    grpc.close()


def infer(clients, proto: str, model: str, **inputs: np.ndarray):
    mod, client = clients[proto]
    tensors = []
    for name, value in inputs.items():
        t = mod.InferInput(name, list(value.shape), {np.uint8: "UINT8", np.float32: "FP32", np.int32: "INT32",
                                                     np.bool_: "BOOL"}[value.dtype.type])
        t.set_data_from_numpy(value)
        tensors.append(t)
    return client.infer(model, tensors, client_timeout=60) if proto == "grpc" else client.infer(model, tensors)


def test_ready_and_bound_to_loopback(server, bundles) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{server.config.url}/v2/health/ready", timeout=5) as r:
        assert r.status == 200
    for name in bundles:
        with urllib.request.urlopen(f"{server.config.url}/v2/models/{name}/ready", timeout=5) as r:
            assert r.status == 200
    listening = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
    mine = [line for line in listening.splitlines() if f"pid={server.process.pid}," in line]
    assert len(mine) == 2 and all(line.split()[3].replace("[::ffff:", "").startswith("127.0.0.1") for line in mine), mine


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_unet_equals_local(server, clients, bundles, unet_trained, proto) -> None:
    from segrt.runtime.image import read_image

    seg = load(bundles["unet"], "cpu")
    scenes = [read_image(p) for p in sorted((unet_trained.val / "images").iterdir())[:2]]  # what it was trained on
    for image in (scenes[0], np.ascontiguousarray(scenes[1][:93, :77])):  # two sizes, odd ones too
        got = infer(clients, proto, "unet", IMAGE=image[None]).as_numpy("LABELS")
        want = seg(image).label_map
        assert got.shape == (1, *image.shape[:2]) and got.dtype == np.uint8
        np.testing.assert_array_equal(got[0], want)
        assert len(np.unique(want)) > 1  # a real label map, not one class everywhere


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_maskrcnn_equals_local(server, clients, bundles, maskrcnn, proto) -> None:
    from segrt.runtime.image import read_image

    det = load(bundles["mrcnn"], "cpu")
    image = read_image(sorted((maskrcnn.val / "images").iterdir())[0])
    res = infer(clients, proto, "mrcnn", IMAGE=image[None])
    want = det(image)
    assert len(want) > 0
    np.testing.assert_array_equal(res.as_numpy("BOXES"), want.boxes)
    np.testing.assert_array_equal(res.as_numpy("SCORES"), want.scores)
    np.testing.assert_array_equal(res.as_numpy("CLASSES"), want.labels)
    rles = json.loads(res.as_numpy("MASKS_RLE").tobytes())
    assert rles == [d["segmentation"] for d in want.to_coco(image_id=0)]


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_sam_equals_local(server, clients, bundles, photos, proto) -> None:
    pred = load(bundles["sam"], "cpu")
    image = photos["astronaut"][:200, :240]
    pred.set_image(image)
    coords, labels, box = np.array([[120, 90], [40, 150]], np.float32), np.array([1, 0], np.int32), \
        np.array([30, 20, 200, 180], np.float32)
    res = infer(clients, proto, "sam", IMAGE=image[None], POINT_COORDS=coords, POINT_LABELS=labels, BOX=box)
    masks, scores, _ = pred.predict(coords, labels, box)
    np.testing.assert_array_equal(res.as_numpy("MASKS"), masks)
    np.testing.assert_array_equal(res.as_numpy("SCORES"), scores)
    single = infer(clients, proto, "sam", IMAGE=image[None], POINT_COORDS=coords[:1], POINT_LABELS=labels[:1],
                   MULTIMASK_OUTPUT=np.array([False]))
    m1, s1, _ = pred.predict(coords[:1], labels[:1], multimask_output=False)
    np.testing.assert_array_equal(single.as_numpy("MASKS"), m1)
    np.testing.assert_array_equal(single.as_numpy("SCORES"), s1)


def test_sixteen_concurrent_requests_are_batched(server, clients, bundles, photos) -> None:
    _, grpc = clients["grpc"]
    before = grpc.get_inference_statistics("unet", as_json=True)["model_stats"][0]
    images = [np.ascontiguousarray(np.roll(photos["coffee"][:96, :128], 7 * i, axis=1)) for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda im: infer(clients, "grpc", "unet", IMAGE=im[None]).as_numpy("LABELS")[0], images))
    after = grpc.get_inference_statistics("unet", as_json=True)["model_stats"][0]
    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert inferences == 16 and executions < inferences, (inferences, executions)
    seg = load(bundles["unet"], "cpu")
    for im, labels in zip(images, got):
        np.testing.assert_array_equal(labels, seg(im).label_map)


BAD = [
    ("unet", {"IMAGE": np.zeros((1, 32, 32, 3), np.float32)}, "data-type"),
    ("unet", {"IMAGE": np.zeros((1, 32, 32), np.uint8)}, "shape"),
    ("unet", {"IMAGE": np.zeros((1, 32, 32, 4), np.uint8)}, "shape"),
    ("unet", {"IMAGE": np.zeros((1, 700, 700, 3), np.uint8)}, f"at most {MAX_PIXELS} pixels"),
    ("mrcnn", {"IMAGE": np.zeros((2, 64, 64, 3), np.uint8)}, "shape"),
    ("sam", {"IMAGE": np.zeros((1, 64, 64, 3), np.uint8), "POINT_COORDS": np.array([[500.0, 5.0]], np.float32),
             "POINT_LABELS": np.array([1], np.int32)}, "outside the 64x64 image"),
    ("no_such_model", {"IMAGE": np.zeros((1, 32, 32, 3), np.uint8)}, "unknown model"),
]


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_bad_requests_get_errors_and_the_server_keeps_serving(server, clients, bundles, photos, proto) -> None:
    from tritonclient.utils import InferenceServerException

    for model, inputs, message in BAD:
        with pytest.raises(InferenceServerException) as err:
            infer(clients, proto, model, **inputs)
        assert message in str(err.value), (model, str(err.value))
        if proto == "http":  # 400, and 404 for the unknown model
            assert err.value.status() in ("400", "404"), (model, err.value.status())
        else:
            assert err.value.status() in ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"), err.value.status()
    image = photos["coffee"][:64, :64]  # still serving, still right
    np.testing.assert_array_equal(infer(clients, proto, "unet", IMAGE=image[None]).as_numpy("LABELS")[0],
                                  load(bundles["unet"], "cpu")(image).label_map)


def test_server_killed_mid_request_gives_the_client_an_error(tmp_path, bundles, photos) -> None:
    http, grpc = free_ports(2)
    srv = TritonServer(lambda root: write_serve_repository([bundles["unet"]], root, ServeOptions(threads=1)),
                       ServerConfig("127.0.0.1", http, grpc))
    srv.start()
    srv.wait_ready()
    pgid, workspace = srv.process.pid, srv.workspace
    big = np.ascontiguousarray(np.tile(photos["astronaut"], (3, 3, 1)))  # 1536x1536: seconds here
    outcome: dict = {}

    def call() -> None:
        t0 = time.monotonic()
        client = tg.InferenceServerClient(f"127.0.0.1:{grpc}")
        try:
            infer({"grpc": (tg, client)}, "grpc", "unet", IMAGE=big[None])
            outcome["result"] = "answered"
        except Exception as exc:  # noqa: BLE001 - any client error is the expected outcome
            outcome["error"] = str(exc)
        outcome["seconds"] = time.monotonic() - t0
        client.close()

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.6)
    os.killpg(pgid, signal.SIGKILL)
    worker.join(90)
    srv.stop()
    assert not worker.is_alive() and "error" in outcome, outcome
    assert outcome["seconds"] < 60
    assert not group_alive(pgid) and not workspace.exists() and port_free(http) and port_free(grpc)


def test_segrt_serve_stops_cleanly_on_sigterm(tmp_path, bundles) -> None:
    http, grpc = free_ports(2)
    before = set(Path("/tmp").glob("segrt-triton-*"))
    proc = subprocess.Popen([sys.executable, "-m", "segrt.runtime.cli", "serve", str(bundles["unet"]),
                             "--http-port", str(http), "--grpc-port", str(grpc), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    assert "serving unet" in line and f"127.0.0.1:{http}" in line, line
    workspaces = set(Path("/tmp").glob("segrt-triton-*")) - before
    servers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(servers) == 1 and len(workspaces) == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not group_alive(int(servers[0])) and port_free(http) and port_free(grpc)
    assert not any(w.exists() for w in workspaces)


def test_segrt_bench_serving_times_http_and_grpc_against_in_process(tmp_path, bundles) -> None:
    """`segrt bench --serving`: its own server (stopped after), every served answer checked against in-process
    segrt at warm-up, and one row per concurrency with each mode's p50 and its ratio to in-process."""
    from segrt.runtime.cli import main

    out = tmp_path / "serving.json"
    rc = main(["bench", "--serving", str(bundles["unet"]), "--size", "64x96", "--clients", "1,2", "--rounds", "2",
               "--per-round", "2", "--json", str(out), "--markdown", str(tmp_path / "serving.md")])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["model"] == "unet" and result["image_hw"] == [64, 96] and result["rounds"] == 2
    assert [row["clients"] for row in result["rows"]] == [1, 2]
    for row in result["rows"]:
        for mode in ("http", "grpc"):
            ratio = row[mode]["p50_vs_inprocess"]
            assert 0 < ratio["min"] <= ratio["median"] <= ratio["max"]
            assert row[mode]["p50_ms"] > 0 and row[mode]["throughput_rps"] > 0
    assert "| 2 | grpc |" in (tmp_path / "serving.md").read_text()
