"""benchmarks/results: the history (one JSON line per recorded run), the index and latest files made from it,
the folding of the old per-run files, and the ratio chart."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from segrt.benchmarks import history
from segrt.benchmarks.headlines import headline
from segrt.benchmarks.machine import describe, machine_class
from segrt.benchmarks.pairs import fmt_ratio, ratio_stats
from segrt.benchmarks.plot import bars_of, plot_results

ROOT = Path(__file__).resolve().parents[1]
#: The commit that still held the per-run files beside the history that folded them.
FOLDED_AT = "ced409ba77c9040d1e525742ef19f4b8d8d9a63d"


def test_history_lines_parse_and_their_headlines_are_derived() -> None:
    runs = history.read_history()
    ids = [r["id"] for r in runs]
    assert len(runs) >= 43 and len(set(ids)) == len(ids)
    for run in runs:
        assert run["id"].startswith(run["date"]) and run["machine"].startswith(("cpu-", "gpu-")), run["id"]
        assert isinstance(run["result"], (dict, str)) and run["what"]
        if isinstance(run["result"], dict):  # Markdown-only runs carry a headline written from their text
            assert run["headline"] == headline(run["kind"], run["result"]), run["id"]
            if isinstance(run["result"].get("machine"), dict):
                assert run["commit"] == run["result"]["machine"]["commit"]
                assert run["machine"] == machine_class(run["result"]["machine"])


def test_index_and_latest_files_are_up_to_date() -> None:
    """The committed README.md is what `history index` writes; each latest-<machine>.json is that machine's
    newest bench run, as recorded."""
    runs = history.read_history()
    assert history.INDEX.read_text() == history.render_index(runs), "run: python -m segrt.benchmarks.history index"
    latest = history.latest_runs(runs)
    assert {"cpu-epyc-2core", "cpu-xeon-2core"} <= set(latest)
    for machine, run in latest.items():
        assert json.loads((history.RESULTS / f"latest-{machine}.json").read_text()) == run["result"]
        assert (history.RESULTS / f"latest-{machine}.png").is_file()
        assert f"`{run['id']}`" in history.INDEX.read_text()


def _folded_files() -> dict[str, str]:
    """The per-run files as they were when folded: from the work tree while they are there, else from git."""
    here = sorted(p for p in history.RESULTS.glob("20*-*") if p.suffix in (".json", ".md"))
    if here:
        return {p.name: p.read_text() for p in here}
    try:
        names = subprocess.run(["git", "ls-tree", "--name-only", f"{FOLDED_AT}:benchmarks/results"], cwd=ROOT,
                               capture_output=True, text=True, check=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        pytest.skip(f"not a git checkout holding {FOLDED_AT} (a shallow clone?): the folded files are not here")
    names = [n for n in names if n.startswith("20") and n.endswith((".json", ".md"))]
    files = {}
    for name in names:  # one `git show` per file: a partial clone fetches each blob on demand or says it cannot
        shown = subprocess.run(["git", "show", f"{FOLDED_AT}:benchmarks/results/{name}"], cwd=ROOT,
                               capture_output=True, timeout=60)
        if shown.returncode != 0:
            pytest.skip(f"{name} at {FOLDED_AT} is not in this clone: {shown.stderr.decode().strip()[:200]}")
        files[name] = shown.stdout.decode()
    return files


def test_folding_the_per_run_files_was_lossless() -> None:
    """Every folded JSON equals its history line's result, every Markdown its line's markdown (or, for runs
    recorded only as Markdown, its result); no file was left out."""
    files = _folded_files()
    runs = {r["id"]: r for r in history.read_history()}
    stems = {Path(n).stem for n in files}
    assert len(stems) == 43 and stems <= set(runs)
    for name, text in files.items():
        run = runs[Path(name).stem]
        if name.endswith(".json"):
            assert run["result"] == json.loads(text), name
        elif f"{Path(name).stem}.json" in files:
            assert run["markdown"] == text, name
        else:
            assert run["result"] == text and run["markdown"] is None, name


def _synthetic_result() -> dict:
    """A result as `segrt bench --quick --json` writes it, with pairs on some rows and not on others."""
    rng = np.random.default_rng(0)
    stats = {peer: ratio_stats(list(rng.normal(mu, 0.05, 12))) for peer, mu in
             (("torch", 1.4), ("ort_default", 1.02), ("openvino", 0.97))}
    e2e = {"stages": {"e2e": {"p50": 150.0}}}
    paired = {"model": "unet/resnet34", "precision": "fp32", "size": [512, 512], "batch": 1, "segrt": e2e,
              "torch": e2e, "speedup_vs_torch": 1.3, "pairs": stats}
    old = {"model": "deeplabv3plus/resnet50", "precision": "int8", "size": [512, 512], "batch": 2, "segrt": e2e,
           "torch": e2e, "speedup_vs_torch": 1.7}
    lonely = {"model": "imported", "precision": "fp32", "size": [96, 128], "segrt": e2e}
    skipped = {"model": "unet/resnet34", "device": "tensorrt", "skipped": "no TensorRT here"}
    # SAM as bench_sam writes it: one flat pairs record per stage (its only peer is segment-anything), the
    # generator a list of settings; decoder_64 as an older run recorded it (p50 ratio only)
    amg = [{"setting": s, "points_per_side": n, "masks_segrt": k, "masks_torch": k, "speedup": 2.0,
            "pairs": ratio_stats([2.0, 2.1])} for s, n, k in (("default", 8, 0), ("relaxed", 32, 139))]
    sam = {"model": "sam/vit_b", "encoder": {"speedup": 1.6, "pairs": stats["torch"]},
           "decoder_64": {"speedup": 4.0}, "amg": amg}
    return {"machine": describe(1), "results": [paired, old, lonely, skipped], "sam": [sam]}


def test_the_chart_shows_paired_ratios_and_skips_what_is_missing(tmp_path) -> None:
    result = _synthetic_result()
    bars = bars_of(result)
    got = [(b.label, b.peer, b.stats is not None) for b in bars]
    assert got == [("unet/resnet34 fp32 512x512", "torch", True), ("unet/resnet34 fp32 512x512", "ort_default", True),
                   ("unet/resnet34 fp32 512x512", "openvino", True),
                   ("deeplabv3plus/resnet50 int8 512x512 x2", "torch", False),
                   ("imported fp32 96x128", "no peer", False),
                   ("sam/vit_b encoder", "segment-anything", True), ("sam/vit_b decoder x64", "segment-anything", False),
                   ("sam/vit_b generator default 8x8 (0 vs 0 masks)", "segment-anything", True),
                   ("sam/vit_b generator relaxed 32x32 (139 vs 139 masks)", "segment-anything", True)]
    heads = headline("bench", result)["sam/vit_b vs segment-anything"]
    assert f"encoder {fmt_ratio(result['results'][0]['pairs']['torch'])}" in heads and "decoder x64 4.00x" in heads
    assert "generator relaxed 32x32 (139 vs 139 masks) 2.05x [2.02-2.08]" in heads
    assert bars[0].value == result["results"][0]["pairs"]["torch"]["median"] and bars[3].value == 1.7
    out = tmp_path / "chart.png"
    plot_results(result, out)
    png = cv2.imread(str(out))
    assert png is not None and png.shape[0] > 300 and png.shape[1] > 900
    assert [p.name for p in tmp_path.iterdir()] == ["chart.png"]  # the temporary file was renamed


def test_a_chart_that_cannot_be_written_leaves_nothing(tmp_path) -> None:
    from segrt.runtime.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="cannot write"):
        plot_results(_synthetic_result(), tmp_path / "missing" / "chart.png")
    with pytest.raises(InvalidInputError, match="no results to plot"):
        plot_results({"machine": {}, "results": [{"skipped": "no device"}]}, tmp_path / "chart.png")
    assert not list(tmp_path.rglob("*"))


def test_add_show_index_latest_round_trip(tmp_path, capsys) -> None:
    """`history add` appends a line and rewrites the index beside it; `show` gives the result back unchanged;
    `latest` writes the machine's three files; bad input is one line and exit code 2."""
    hist = tmp_path / "history.jsonl"
    result = _synthetic_result()
    (tmp_path / "run.json").write_text(json.dumps(result))
    (tmp_path / "run.md").write_text("| the run's table |\n")
    for _ in range(2):
        assert history.main(["--history", str(hist), "add", str(tmp_path / "run.json"), "--what", "a test",
                             "--markdown", str(tmp_path / "run.md")]) == 0
    runs = history.read_history(hist)
    machine = machine_class(result["machine"])
    assert [r["id"] for r in runs] == [f"{runs[0]['date']}-bench-{machine}", f"{runs[0]['date']}-bench-{machine}-run2"]
    assert runs[1]["result"] == result and runs[1]["headline"]["unet/resnet34 fp32 512x512"].startswith("150 ms, 1.40x [")
    assert (tmp_path / "README.md").read_text() == history.render_index(runs)
    assert history.main(["--history", str(hist), "show", runs[1]["id"], "--out", str(tmp_path / "back.json")]) == 0
    assert json.loads((tmp_path / "back.json").read_text()) == result
    assert history.main(["--history", str(hist), "latest"]) == 0
    assert {p.name for p in tmp_path.glob("latest-*")} == {f"latest-{machine}.{e}" for e in ("json", "md", "png")}
    md = (tmp_path / f"latest-{machine}.md").read_text()
    assert f"](latest-{machine}.png)" in md and md.endswith("\n\n| the run's table |\n")
    capsys.readouterr()
    (tmp_path / "bad.json").write_text("[1, 2")
    for argv in (["add", str(tmp_path / "bad.json"), "--what", "x"], ["show", "no-such-run"]):
        assert history.main(["--history", str(hist), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
    assert len(history.read_history(hist)) == 2 and not list(tmp_path.glob(".*tmp*"))


def test_prepost_end_to_end_is_timed_in_interleaved_pairs(tmp_path) -> None:
    """`segrt bench --prepost`'s end-to-end rows on PP-OCR's detector: native and NumPy-twin calls alternate
    round by round on the same photo; the speedup is the median pair ratio, shown with its quartiles."""
    import skimage.data

    from segrt.benchmarks.bench_prepost import bench_end_to_end, markdown_prepost
    from segrt.export.importer import ImportConfig, import_onnx
    from segrt.runtime import kernels

    from .conftest import PPOCR

    if not kernels.native_available():
        pytest.skip("the C++ kernels are not built: --prepost times them against their twin")
    import_onnx(ImportConfig(model=PPOCR, threshold=0.3), tmp_path / "ocr")
    row = bench_end_to_end(tmp_path / "ocr", skimage.data.astronaut(), (96, 128), 3)
    stats = row["pairs"]["reference"]
    assert row["rounds"] == stats["pairs"] == 3 and kernels.active() == "native"
    assert stats["min"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["max"]
    assert row["e2e_speedup"] == stats["median"]
    for side in ("native", "reference"):
        assert set(row[side]) == {"pre", "infer", "post", "e2e"}
        assert row[side]["e2e"] >= row[side]["infer"] > 0
    table = markdown_prepost({"machine": describe(1), "native_threads": 1, "kernels": [], "end_to_end": [row]})
    assert f"| {stats['median']:.2f}x [{stats['q1']:.2f}-{stats['q3']:.2f}] |" in table


def test_machine_class_names_cpus_by_family_and_cores_and_gpus_by_model() -> None:
    cases = [("AMD EPYC 9654 96-Core Processor", 2, None, "cpu-epyc-2core"),
             ("Intel(R) Xeon(R) Gold 6348 CPU @ 2.60GHz", 16, None, "cpu-xeon-16core"),
             ("Intel(R) Xeon(R) Processor", 2, None, "cpu-xeon-2core"),
             ("AMD EPYC", 16, {"name": "NVIDIA H200", "compute_capability": "9.0"}, "gpu-h200"),
             ("ARMv8 Processor rev 1 (v8l)", 12, {"name": "Orin (nvgpu)"}, "gpu-orin-nvgpu")]
    for cpu, cores, gpu, want in cases:
        assert machine_class({"cpu": cpu, "cores": cores, "gpu": gpu}) == want
    assert machine_class() == machine_class(describe(1))  # this machine, probed or from its record


def test_a_gpu_check_result_is_filed_under_its_gpu() -> None:
    """`make gpu-check` writes an `environment`, not a `machine` record: the history takes the date, commit and
    GPU model from it."""
    from segrt.benchmarks.gpu_check_report import new_result

    result = new_result({"date": "2026-12-02T06:00:00+00:00", "gpu": "NVIDIA H200, 570.86.15, 143771 MiB, 9.0",
                         "commit": "abc1234", "cpu_cores": 16})
    result["parity"] = [{"passed": True}, {"passed": False}]
    run = history.make_run(result, "the first GPU run")
    assert (run["id"], run["kind"], run["machine"], run["commit"]) == (
        "2026-12-02-gpu-check-gpu-h200", "gpu-check", "gpu-h200", "abc1234")
    assert run["headline"]["parity"] == "1 of 2 passed"
