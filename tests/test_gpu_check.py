"""`make gpu-check`'s CPU side: arguments, the carried-wheel path, the report, and the check on the CPU provider."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from segrt.benchmarks import gpu_check_report as report
from segrt.benchmarks.gpu_check_timing import interleaved
from segrt.runtime.errors import InvalidInputError

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)  # the entry script, as `python3 benchmarks/gpu_check.py` runs it


@pytest.mark.parametrize("argv, says", [
    (["bogus"], "invalid choice: 'bogus'"),
    (["run"], "the following arguments are required: --out"),
    (["run", "--out", "x", "--budget", "0"], "expected a positive integer; got '0'"),
    (["run", "--out", "x", "--families", "unet,yolo"], "families must be a comma-separated list"),
    (["prepare", "--part-bytes", "many"], "expected a positive integer; got 'many'"),
])
def test_bad_arguments_give_one_line_and_exit_2(argv, says, capsys) -> None:
    assert gpu_check.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpu-check: error: ") and says in err


def _tiny_wheel(folder: Path, size: int) -> Path:
    """A real (installable) wheel of a one-module package carrying ``size`` bytes of incompressible data."""
    name, files = "gpucheck_probe", {}
    files["gpucheck_probe/__init__.py"] = b"VALUE = 42\n"
    files["gpucheck_probe/blob.bin"] = os.urandom(size)
    info = f"{name}-1.0.dist-info"
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"

    def digest(data: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{k},{digest(v)},{len(v)}\n" for k, v in files.items()) + f"{info}/RECORD,,\n"
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in {**files, f"{info}/RECORD": record.encode()}.items():
            zf.writestr(k, v)
    return path


def test_carried_wheel_is_split_joined_verified_and_installed(tmp_path) -> None:
    src = tmp_path / "download"
    src.mkdir()
    _tiny_wheel(src, 300_000)
    (tmp_path / "whl" / "p7").mkdir(parents=True)  # left by an earlier cut into more parts
    manifest = gpu_check.split_wheels(src, tmp_path / "whl", part_bytes=120_000)
    assert not (tmp_path / "whl" / "p7").exists()
    parts = manifest["wheels"][0]["parts"]
    assert [p["file"].split("/")[0] for p in parts] == ["p1", "p2", "p3"] == manifest["folders"]
    assert max(p["size"] for p in parts) <= 120_000
    assert gpu_check.missing_parts(tmp_path / "whl", manifest) == []
    names = gpu_check.install_carried(tmp_path / "whl", tmp_path / "site", tmp_path / "scratch")
    assert names == ["gpucheck_probe-1.0-py3-none-any.whl"]
    out = subprocess.run([sys.executable, "-c", "import gpucheck_probe; print(gpucheck_probe.VALUE)"],
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}, capture_output=True, text=True)
    assert out.stdout.strip() == "42"


def test_a_lost_or_corrupt_part_is_named(tmp_path) -> None:
    src = tmp_path / "download"
    src.mkdir()
    _tiny_wheel(src, 200_000)
    gpu_check.split_wheels(src, tmp_path / "whl", part_bytes=80_000)
    part = next((tmp_path / "whl" / "p2").iterdir())
    part.write_bytes(part.read_bytes()[:-1] + b"?")
    with pytest.raises(gpu_check.CheckError, match=r"missing or corrupt: p2 \("):
        gpu_check.install_carried(tmp_path / "whl", tmp_path / "site", tmp_path / "scratch")
    (tmp_path / "whl" / "p3" / gpu_check.MANIFEST).unlink()
    with pytest.raises(gpu_check.CheckError, match="no gpu-check-wheels.json"):
        gpu_check.install_carried(tmp_path / "whl", tmp_path / "site", tmp_path / "scratch")


def test_the_segrt_shim_imports_this_source_tree(tmp_path) -> None:
    home = gpu_check.segrt_shim(tmp_path / "src")
    code = "import segrt.runtime.errors as e, pathlib; print(pathlib.Path(e.__file__).resolve().parent.parent)"
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(home)!r}); {code}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == str(ROOT), out.stderr[-300:]


def _result() -> dict:
    env = {"date": "2026-12-01T00:00:00+00:00", "gpu": "NVIDIA H200, 580.1, 143771 MiB, 9.0",
           "torch": {"device": "NVIDIA H200"}}
    res = report.new_result(env)
    res["steps"].append({"name": "parity-fp32", "budget_s": 60, "elapsed_s": 4.2, "status": "ok"})
    res["parity"].append({"family": "unet", "precision": "fp16", "device": "cuda", "reference": "fp32 on cpu",
                          "metric": "pixel_agreement", "score": 0.9912, "minimum": 0.98, "passed": True, "images": 4})
    res["cuda_graphs"].append({"family": "maskrcnn", "graph": "model.onnx", "supported": False,
                               "reason": "not supported for this model: data-dependent shapes"})
    res["timing"].append({"family": "unet", "size": "512x512", "rounds": 3, "base": "torch eager cuda",
                          "sides": {"torch eager cuda": {"p50": 4.0, "p90": 5.0}, "segrt fp32 cuda": {"p50": 2.0, "p90": 2.5}},
                          "ratios": {"segrt fp32 cuda": {"median": 2.0, "min": 1.5, "max": 2.5, "pairs": 3}}})
    return res


def test_report_schema_and_markdown(tmp_path) -> None:
    js, md = report.write(_result(), tmp_path)
    assert js.name == "2026-12-01-gpu-check-nvidia-h200.json" and md.name == "2026-12-01-gpu-check-nvidia-h200.md"
    assert json.loads(js.read_text())["schema"] == report.SCHEMA
    text = md.read_text()
    assert "| unet | fp16 | cuda | fp32 on cpu | pixel_agreement | 0.9912 | 0.98 | pass | 4 |" in text
    assert "| maskrcnn | model.onnx | no | - | - | not supported for this model: data-dependent shapes |" in text
    assert "| unet | 512x512 | segrt fp32 cuda | 2.00 | 2.50 | 2.00x (1.50-2.50, 3 pairs) |" in text
    broken = _result()
    del broken["parity"][0]["score"]
    with pytest.raises(InvalidInputError, match=r"parity\[0\] lacks score"):
        report.write(broken, tmp_path / "no")
    assert not (tmp_path / "no").exists()


def test_interleaved_rounds_rotate_the_order_and_stop_at_the_deadline() -> None:
    calls: list[str] = []
    sides = {n: (lambda i, n=n: calls.append(n)) for n in "abc"}
    out = interleaved(sides, 3, warmup=1, deadline=float("inf"), base="a")
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab"
    assert out["rounds"] == 3 and out["ratios"]["b"]["pairs"] == 3 and set(out["ratios"]) == {"b", "c"}
    assert interleaved(sides, 50, warmup=0, deadline=0.0, base="a")["rounds"] == 3  # past the deadline: 3 rounds


def test_without_cuda_the_real_check_stops_with_one_line(tmp_path, monkeypatch, capsys) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    monkeypatch.setenv(gpu_check.STAGE_ENV, "2")
    assert gpu_check.main(["run", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpu-check: error: no CUDA here") and "--self-test" in err
    assert not (tmp_path / "out").exists()


def test_self_test_runs_the_check_on_the_cpu_provider(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(gpu_check.STAGE_ENV, "2")
    monkeypatch.setenv("SEGRT_CACHE", str(tmp_path / "cache"))
    rc = gpu_check.main(["run", "--self-test", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    [js] = (tmp_path / "out").glob("*-gpu-check-*.json")
    res = json.loads(js.read_text())
    report.validate(res)
    assert rc == (1 if any(r["passed"] is False for r in res["parity"] + res["io_binding"]) else 0)
    assert [s["status"] for s in res["steps"]] == ["ok"] * 6, res["steps"]
    assert [(r["precision"], r["device"]) for r in res["parity"]] == [("fp32", "cpu"), ("fp16", "cpu")]
    assert res["parity"][0]["score"] == 1.0  # the same provider and graph: identical label maps
    assert res["io_binding"][0]["score"] == 1.0 and res["io_binding"][0]["ratio"]["pairs"] == 4
    assert res["cuda_graphs"][0]["supported"] is False and "CUDA provider" in res["cuda_graphs"][0]["reason"]
    assert res["timing"][0]["ratios"]["segrt fp16 cpu"]["pairs"] == res["timing"][0]["rounds"] == 4
    assert "gate_on_cpu" in res["parity"][1] and res["environment"]["mode"] == "self-test"


def test_graph_replay_binds_fixed_addresses_and_checks_every_replay(tmp_path) -> None:
    """The CUDA-graph step's capture/replay bookkeeping, on two CPU sessions (no graph: the same mechanics)."""
    import onnxruntime as ort

    from segrt.benchmarks.gpu_check_run import photos
    from segrt.benchmarks.gpu_check_steps import _graph_replay, model_feeds
    from segrt.export.importer import ImportConfig, import_onnx

    from .conftest import PPOCR

    import_onnx(ImportConfig(model=PPOCR, threshold=0.3), tmp_path / "ocr")
    feeds = model_feeds(tmp_path / "ocr", list(photos((64, 64), 2).values()))
    assert not np_equal(feeds[0], feeds[1])  # two different photos: a replay on stale input would be caught
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    a, b = (ort.InferenceSession(str(PPOCR), so, providers=["CPUExecutionProvider"]) for _ in range(2))
    row = _graph_replay(a, b, feeds, 4, float("inf"), device="cpu")
    assert row["supported"] is True and row["replays_checked"] == 6 and row["max_abs_diff"] < 1e-4
    assert row["ratio"]["pairs"] == 4 and set(row["sides"]) == {"cuda graph", "plain cuda"}


def np_equal(x: dict, y: dict) -> bool:
    import numpy as np

    return all(np.array_equal(x[k], y[k]) for k in x)


def test_the_provider_preflight_runs_a_real_convolution() -> None:
    from segrt.benchmarks.gpu_check_steps import preflight

    assert preflight("CPUExecutionProvider") is None
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "fell back" in preflight("CUDAExecutionProvider")
