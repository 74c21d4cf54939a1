"""`segrt bench` on a real imported network: the result's schema and its arithmetic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from segrt.benchmarks.bench import BenchConfig, bench_model, percentiles
from segrt.benchmarks.limits import count_onnx_flops
from segrt.benchmarks.report import markdown
from segrt.benchmarks.machine import describe
from segrt.export.importer import ImportConfig, import_onnx
from segrt.runtime.cli import main
from segrt.runtime.errors import InvalidInputError
from segrt.runtime.manifest import read_manifest

from .conftest import PPOCR


def test_percentiles_match_numpy() -> None:
    samples = [float(v) for v in np.random.default_rng(0).gamma(2.0, 5.0, 200)]
    p = percentiles(samples)
    assert p["p50"] == pytest.approx(np.median(samples)) and p["p99"] >= p["p90"] >= p["p50"]
    assert p["fps"] == pytest.approx(1000 / np.mean(samples))


def test_bench_row_on_a_real_model(tmp_path) -> None:
    import_onnx(ImportConfig(model=PPOCR, threshold=0.3), tmp_path / "ocr")
    row = bench_model(tmp_path / "ocr", BenchConfig(size=(96, 128), warmup=1, iters=4, threads=1, baseline=False))
    stages = row["segrt"]["stages"]
    assert set(stages) == {"pre", "infer", "post", "e2e"}
    assert stages["e2e"]["mean"] == pytest.approx(sum(stages[s]["mean"] for s in ("pre", "infer", "post")), rel=0.05)
    assert row["segrt"]["load_ms"] > 0 and "torch" not in row
    assert set(row["segrt"]["memory"]) == {"rss_before_mb", "peak_rss_mb", "peak_delta_mb"}
    table = markdown({"machine": describe(1), "results": [row]})
    assert "| imported/None | fp32 | 96x128 | 1 |" in table
    import cv2

    from segrt.benchmarks.plot import plot_results

    plot_results({"machine": describe(1), "results": [row, row]}, tmp_path / "chart.png")
    png = cv2.imread(str(tmp_path / "chart.png"))
    assert png is not None and png.shape[0] > 200 and png.shape[1] > 600
    assert not list(tmp_path.glob(".*tmp*"))


def test_bad_bench_arguments(capsys) -> None:
    with pytest.raises(InvalidInputError, match="--iters >= 1"):
        BenchConfig(iters=0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(InvalidInputError, match="--seconds must be a positive number"):
            BenchConfig(seconds=bad)
    assert main(["bench"]) == 2  # neither bundles nor --quick
    with pytest.raises(SystemExit) as exc:  # a count or a duration, not both
        main(["bench", "--quick", "--iters", "5", "--seconds", "2"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_seconds_budget_replaces_the_count() -> None:
    """--iters N runs exactly N timed calls after the warm-up; --seconds S runs until S have passed (and at
    least MIN_TIMED calls, so a slow model still gets percentiles), inputs rotating with the call index."""
    import time

    from segrt.benchmarks.bench import MIN_TIMED, repeat

    calls: list[int] = []
    runs = repeat(lambda i: calls.append(i) or i, BenchConfig(warmup=2, iters=5))
    assert runs == [0, 1, 2, 3, 4] and calls == [0, 1, 0, 1, 2, 3, 4]
    t0 = time.perf_counter()
    runs = repeat(lambda i: time.sleep(0.01) or i, BenchConfig(warmup=0, iters=1, seconds=0.15))
    assert time.perf_counter() - t0 >= 0.15 and runs == list(range(len(runs))) and len(runs) > MIN_TIMED
    assert len(repeat(lambda i: time.sleep(0.1), BenchConfig(warmup=0, seconds=0.01))) == MIN_TIMED


def test_compare_two_recorded_results(capsys, tmp_path) -> None:
    """The recorded run 3 and run 4 results (from the history): ratios are after / before p50, rows matched by model."""
    import json

    from segrt.benchmarks import history

    results = tmp_path
    before, after = results / "run3.json", results / "run4.json"
    for run, out in (("2026-11-24-cpu-xeon-2core-run3", before), ("2026-11-24-cpu-xeon-2core-run4", after)):
        assert history.main(["show", run, "--out", str(out)]) == 0
    assert main(["bench", "--compare", str(before), str(after)]) == 0
    out = capsys.readouterr().out
    b = {r["model"]: r for r in json.loads(before.read_text())["results"]}
    a = {r["model"]: r for r in json.loads(after.read_text())["results"]}
    for model in b:
        ratio = a[model]["segrt"]["stages"]["e2e"]["p50"] / b[model]["segrt"]["stages"]["e2e"]["p50"]
        assert f"| {model} | fp32 | 512x512 | 1 | onnxruntime-cpu | e2e |" in out and f"| {ratio:.3f} |" in out
    assert main(["bench", "--compare", str(before), str(results / "missing.json")]) == 2


def test_peak_memory_shows_a_model_loading_in_a_fresh_process(tmp_path) -> None:
    """Process RSS only shows growth where the heap has no freed pages to reuse, so this runs in a new
    interpreter (in this test process, earlier tests leave over a GB free for the model to reuse)."""
    import json
    import subprocess
    import sys

    import_onnx(ImportConfig(model=PPOCR, threshold=0.3), tmp_path / "ocr")
    code = ("import json; from pathlib import Path; from segrt.benchmarks.bench import BenchConfig, bench_model; "
            f"row = bench_model(Path({str(tmp_path / 'ocr')!r}), BenchConfig(size=(96, 128), warmup=1, iters=4, "
            "threads=1, baseline=False)); print(json.dumps(row['segrt']['memory']))")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    mem = json.loads(ran.stdout.splitlines()[-1])
    # Loading PP-OCR (4.7 MB of weights) and running it must show up in the sampled peak.
    assert mem["rss_before_mb"] > 20 and 2 < mem["peak_delta_mb"] < 500, mem


def test_sweep_devices_precisions_sizes_batches_in_one_call(unet_trained, tmp_path, monkeypatch) -> None:
    """One `segrt bench` call: every device x precision x size x batch gets a row; a device this machine
    lacks gives a row that says why; variants are made (and gated) once; PyTorch is timed once per
    size x batch and its ratio sits beside every segrt figure."""
    import json

    monkeypatch.setenv("SEGRT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sweep.json"
    args = ["bench", str(unet_trained.bundle), "--device", "cpu,tensorrt", "--precision", "fp32,fp16", "--size", "64x64",
            "96x128", "--batch", "1,2", "--warmup", "0", "--iters", "2", "--threads", "1", "--json", str(out),
            "--markdown", str(tmp_path / "sweep.md")]
    assert main(args) == 0
    result = json.loads(out.read_text())
    rows = result["results"]
    assert len(rows) == 16 and result["config"]["batches"] == [1, 2]
    assert {(r["device"], r["precision"], tuple(r["size"]), r["batch"]) for r in rows} == {
        (d, p, z, b) for d in ("cpu", "tensorrt") for p in ("fp32", "fp16") for z in ((64, 64), (96, 128)) for b in (1, 2)}
    for r in rows:
        if r["device"] == "tensorrt":  # no TensorRT on this machine class: said, not crashed
            assert "segrt" not in r and "tensorrt" in r["skipped"]
            continue
        e2e = r["segrt"]["stages"]["e2e"]
        # the verdict's ratio is the median of this row's own same-round pairs, against PyTorch FP32
        assert r["pairs"]["torch"]["pairs"] == r["pairing"]["rounds"] == 2
        assert r["speedup_vs_torch"] == r["pairs"]["torch"]["median"]
        assert r["pairs"]["torch"]["min"] <= r["speedup_vs_torch"] <= r["pairs"]["torch"]["max"]
        assert r["segrt"]["images_per_s"] == pytest.approx(r["batch"] * e2e["fps"])
        assert (r["precision"] == "fp16") == ("gate" in r)
        # the limit: this row's FLOPs at its size, counted independently here from the timed graph
        # (padded input = the size: both are multiples of the U-Net's stride 32), against the run's peak
        lim, h, w = r["limit"], *r["size"]
        graph = Path(r["bundle"]) / read_manifest(r["bundle"]).model_file
        assert lim["gflop"] == pytest.approx(count_onnx_flops(graph, {"image": (1, 3, h, w)}).flops / 1e9, rel=1e-3)
        peak = result["peak"]["int8_gops" if r["precision"] == "int8" else "fp32_gflops"]
        rate = lim["gflop"] * r["batch"] / (r["segrt"]["stages"]["infer"]["p50"] / 1e3)
        assert lim["percent_of_peak"] == pytest.approx(100 * rate / peak)
    assert result["peak"]["fp32_gflops"] == max(result["peak"]["runs"][k]["fp32_gflops"] for k in ("before", "after"))
    by_key = {(r["precision"], tuple(r["size"]), r["batch"]): r for r in rows if r["device"] == "cpu"}
    for z in ((64, 64), (96, 128)):
        for b in (1, 2):
            fp32, fp16 = by_key[("fp32", z, b)], by_key[("fp16", z, b)]
            # PyTorch's module is built once (same cold start), but each row times it in its own pairs
            assert fp32["torch"]["load_ms"] == fp16["torch"]["load_ms"]
            assert fp32["torch"]["stages"] != fp16["torch"]["stages"]
            assert fp16["gate"]["score"] > 0.9
    (variant,) = list((tmp_path / "cache" / "bench" / "variants").iterdir())  # fp16 made once
    # a variant bundle named without --precision is timed as what it is
    assert main(["bench", str(variant), "--size", "64x64", "--warmup", "0", "--iters", "1", "--threads", "1",
                 "--baseline", "none", "--json", str(tmp_path / "one.json")]) == 0
    (row,) = json.loads((tmp_path / "one.json").read_text())["results"]
    assert row["precision"] == "fp16" and row["gate"]["score"] > 0.9
    table = (tmp_path / "sweep.md").read_text()
    assert "| tensorrt: skipped |" in table and "| fp16 | 96x128 | 2 |" in table


def test_sweep_arguments_are_checked() -> None:
    for bad in (["--batch", "0"], ["--batch", "a"], ["--precision", "int4"], ["--device", "tpu"],
                ["--baseline", "none,torch"]):
        with pytest.raises(SystemExit) as exc:
            main(["bench", "--quick", *bad])
        assert exc.value.code == 2


def test_device_memory_is_absent_not_invented_without_a_gpu() -> None:
    """On a machine without an NVIDIA driver (or without nvidia-ml-py) the GPU sampler turns itself off:
    the record has no device figures rather than zeros, and describe() says there is no GPU."""
    import shutil

    from segrt.benchmarks.bench import PeakRss

    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA driver; the GPU figures are exercised by `segrt bench --device cuda`")
    with PeakRss(gpu=True) as mem:
        np.ones((256, 1024, 1024), np.uint8).sum()  # 256 MB touched: host memory still measured
    rec = mem.record()
    assert "device_peak_mb" not in rec and rec["peak_delta_mb"] > 100
    assert describe(1)["gpu"] is None


def test_stream_bench_pairs_sequential_and_pipelined_runs(tmp_path) -> None:
    """`segrt bench --stream` on PP-OCR's detector over a short real-photo clip: both sides process every
    frame; the speedup is the median of the per-pair ratios, with the CPU time each side spent."""
    import json

    import cv2
    import skimage.data

    import_onnx(ImportConfig(model=PPOCR, threshold=0.3, classes=("background", "text")), tmp_path / "ocr")
    photo = skimage.data.astronaut()
    clip = tmp_path / "pan.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 256))
    for i in range(12):
        writer.write(np.ascontiguousarray(photo[8 * i : 256 + 8 * i, 8 * i : 320 + 8 * i, ::-1]))
    writer.release()
    out = tmp_path / "stream.json"
    assert main(["bench", "--stream", str(tmp_path / "ocr"), "--source", str(clip), "--stream-frames", "12",
                 "--json", str(out), "--markdown", str(tmp_path / "stream.md")]) == 0
    (r,) = json.loads(out.read_text())["results"]
    seq, pipe = r["runs"]["sequential"], r["runs"]["pipelined"]
    assert len(seq) == len(pipe) == len(r["pair_speedups"]) == 3
    assert all(run["frames"] == 12 and run["cpu_ms_per_frame"] > 0 for run in seq + pipe)
    assert r["pair_speedups"] == pytest.approx([p["fps"] / q["fps"] for q, p in zip(seq, pipe)])
    assert r["speedup"] == pytest.approx(float(np.median(r["pair_speedups"])))
    assert r["precision"] == "fp32" and r["workers"] == (2 if (os.cpu_count() or 1) >= 2 else 1)
    row = next(line for line in (tmp_path / "stream.md").read_text().splitlines() if line.startswith("| ocr |"))
    assert f"{r['speedup']:.2f}x" in row and ("NOT met" in row) == (r["speedup"] < 1.3)


def test_a_sam_bundle_is_refused_before_anything_is_timed(sam_tiny, tmp_path, capsys, monkeypatch) -> None:
    """`segrt bench A SAM_BUNDLE` timed A, then failed on the SAM bundle and threw A's row away: every bundle's
    task is now checked first, and a SAM bundle is refused in one line naming the mode that times SAM."""
    from segrt.benchmarks import bench

    import_onnx(ImportConfig(model=PPOCR, threshold=0.3), tmp_path / "ocr")
    timed: list[object] = []
    monkeypatch.setattr(bench, "bench_model", lambda *a, **k: timed.append(a) or {})
    out = tmp_path / "result.json"
    assert main(["bench", str(tmp_path / "ocr"), str(sam_tiny.bundle), "--baseline", "none", "--warmup", "0",
                 "--iters", "1", "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sam bundles" in err[0] and "--sam" in err[0], err
    assert not timed and not out.exists()


def test_pair_sides_keeps_each_round_together() -> None:
    """pair_ratio divides the two calls of the same round: with per-input costs that differ 10x from input to
    input, a ratio built from calls of different rounds (or from the warm-up) could not come out exactly 2."""
    from segrt.benchmarks.timing import Side, pair_ratio, pair_sides

    cost = [1.0, 10.0, 100.0, 3.0, 30.0]
    sides = {"a": Side(lambda i: {"e2e": cost[i % 5]}, {}), "b": Side(lambda i: {"e2e": 2 * cost[i % 5]}, {}),
             "c": Side(lambda i: {"e2e": 5.0}, {})}
    paired = pair_sides(sides, "a", rounds=7, warmup=2)
    assert [s["e2e"] for s in paired["samples"]["a"]] == [cost[i % 5] for i in range(7)]  # warm-up dropped
    assert pair_ratio(paired, "b", "a") == {"median": 2.0, "q1": 2.0, "q3": 2.0, "min": 2.0, "max": 2.0, "pairs": 7}
    assert paired["ratios"]["b"]["median"] == 2.0
    assert pair_ratio(paired, "c", "b")["max"] == pytest.approx(2.5) and pair_ratio(paired, "c", "b")["min"] == pytest.approx(0.025)


def test_engine_peers_run_segrts_model(unet_trained, photos) -> None:
    """The default-options ONNX Runtime session and OpenVINO read the bundle's own ONNX: on a trained U-Net and a
    real photo their label maps agree with segrt's Segmenter, so the peers time the same model."""
    pytest.importorskip("openvino")  # the OpenVINO peer: segrt[bench] (make installs it)
    from segrt.benchmarks.peers import semantic_engine_labels
    from segrt.runtime.semantic import Segmenter

    seg = Segmenter(unet_trained.bundle, "cpu", threads=1)
    image = photos["astronaut"][:200, :232]  # not a multiple of the stride: the crop is exercised
    ours = seg(image).label_map
    assert len(np.unique(ours)) > 1  # a trained model: the comparison is not all background
    for peer in ("ort_default", "openvino"):
        theirs = semantic_engine_labels(peer, seg, image, threads=1)
        assert theirs.shape == ours.shape and theirs.dtype == ours.dtype
        assert float((theirs == ours).mean()) >= 0.99, peer


def test_quick_row_pairs_every_peer(unet_trained) -> None:
    """A tiny bench_model row: segrt, PyTorch eager, default ONNX Runtime and OpenVINO, each with its own
    stages and memory, and per-peer pair ratios whose median is the row's speedup."""
    pytest.importorskip("openvino")  # the OpenVINO peer: segrt[bench] (make installs it)
    row = bench_model(unet_trained.bundle, BenchConfig(size=(64, 64), warmup=1, iters=3, threads=1))
    assert not [k for k in row if k.endswith("_skipped")], row
    assert set(row["pairs"]) == {"torch", "ort_default", "openvino"} and row["pairing"]["rounds"] == 3
    for peer, ratio in row["pairs"].items():
        assert ratio["pairs"] == 3 and ratio["min"] <= ratio["q1"] <= ratio["median"] <= ratio["q3"] <= ratio["max"]
        assert row[f"speedup_vs_{peer}"] == ratio["median"]
        assert set(row[peer]["stages"]) == {"pre", "infer", "post", "e2e"} and row[peer]["memory"]["peak_rss_mb"] > 0
        assert row[peer]["load_ms"] > 0 and row[peer]["first_inference_ms"] > 0
    assert "openvino" in row["openvino"]["backend"] and "default options" in row["ort_default"]["backend"]
    table = markdown({"machine": describe(1), "results": [row]})
    line = next(x for x in table.splitlines() if x.startswith("| unet/"))
    from segrt.benchmarks.pairs import fmt_ratio

    assert all(fmt_ratio(row["pairs"][p]) in line for p in row["pairs"])
    assert line.count("|") == table.splitlines()[3].count("|")  # every cell of the header is filled


def test_precision_rows_pair_every_precision_in_one_interleave(unet_trained, tmp_path, monkeypatch) -> None:
    """`segrt bench --precisions`' row: FP32, FP16 and INT8 of one trained bundle, PyTorch FP32 and OpenVINO on
    the INT8 graph in one interleave; every ratio pairs calls of the same rounds."""
    pytest.importorskip("openvino")  # the OpenVINO peer: segrt[bench] (make installs it)
    from segrt.benchmarks.bench import precision_variant
    from segrt.benchmarks.bench_precision import markdown_precision, precision_row

    monkeypatch.setenv("SEGRT_CACHE", str(tmp_path / "cache"))
    v = {p: precision_variant(unet_trained.bundle, p) for p in ("fp32", "fp16", "int8")}
    row = precision_row("unet", "unet/resnet18", v, BenchConfig(size=(64, 64), warmup=1, iters=3, threads=1))
    assert not [k for k in row if k.endswith("_skipped")], row
    for r in row["precisions"].values():
        assert r["pairs"]["torch"]["pairs"] == r["pairs"]["fp32_infer"]["pairs"] == 3
        assert r["speedup_vs_torch"] == r["pairs"]["torch"]["median"]
    assert row["precisions"]["fp32"]["pairs"]["fp32_infer"]["median"] == 1.0  # a side against itself
    assert row["int8_speedup"] == row["precisions"]["int8"]["pairs"]["fp32_infer"]["median"]
    assert row["precisions"]["int8"]["agreement_vs_fp32"] > 0.9
    assert row["openvino_int8"]["pair_vs_segrt_int8"]["pairs"] == 3
    table = markdown_precision({"machine": describe(1), "config": {"threads": 1, "size": [64, 64]}, "results": [row]})
    assert table.count("| unet (unet/resnet18) |") == 3 and "OpenVINO on the same INT8 graph" in table
