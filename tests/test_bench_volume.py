"""``segrt bench --volume`` on a tiny volume: one row per network with both sides' p50, the median pair ratio and
its quartiles, parity of the blended probabilities against MONAI (<= 1e-4) and peak RSS measured in child
processes; the row's parity figure is checked against an independent MONAI run on the same input."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")

from segrt.benchmarks import bench_volume as bv  # noqa: E402
from segrt.benchmarks.machine import describe  # noqa: E402
from segrt.runtime.volume_window import WindowSpec, window_starts  # noqa: E402

pytestmark = pytest.mark.slow
TINY = bv.VolumeBenchConfig(size=40, rounds=2, warmup=0, threads=2, window=WindowSpec((32, 32, 32), 0.25, "gaussian",
                                                                                      sw_batch_size=2))


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """The bench cache (the tiny export) in this module's own folder, for the row and the children alike."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGRT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def row(cache) -> dict:
    return bv.bench_volume_model("monai_unet", TINY)


def test_row_has_both_sides_pairs_and_parity(row) -> None:
    assert row["model"] == "monai_unet" and row["shape"] == [40, 40, 40] and row["rounds"] == 2
    assert row["windows"] == len(window_starts((40, 40, 40), (32, 32, 32), 0.25)) == 8
    for side in ("segrt", "monai"):
        assert row[side]["e2e"]["p50"] > 0
    pairs = row["pairs"]["monai"]
    assert pairs["pairs"] == 2 and pairs["q1"] <= pairs["median"] <= pairs["q3"]
    assert row["speedup_vs_monai"] == pairs["median"]
    assert row["parity"]["max_abs_prob_diff"] <= 1e-4 and row["parity"]["voxel_agreement"] > 0.999
    assert row["segrt"]["backend"].endswith("cpu")


def test_parity_figure_is_an_independent_monai_run() -> None:
    """The row's inputs rebuilt here: MONAI's blend of the PyTorch module vs segrt's of the cached bundle."""
    from segrt.export.exporter import build_module
    from segrt.export.models.monai_nets import monai_probabilities
    from segrt.runtime.volume_predict import VolumeSegmenter

    seg = VolumeSegmenter(bv.volume_bundle("monai_unet", TINY), "cpu")
    image = seg.prepare_array(bv.stretched_t1(TINY.size))
    assert image.shape == (1, 40, 40, 40) and abs(float(image.mean())) < 1e-4  # z-scored
    model, _ = build_module(bv.volume_spec("monai_unet", TINY), bv.export_config("monai_unet", TINY))
    theirs = monai_probabilities(model, image, TINY.window, "softmax")
    ours = seg.probabilities(image)
    assert theirs.shape == ours.shape == (2, 40, 40, 40)
    assert float(np.abs(ours - theirs).max()) <= 1e-4


def test_peak_rss_is_measured_in_children(row) -> None:
    mem = row["memory"]
    for side in ("segrt", "monai"):
        m = mem[side]
        assert "skipped" not in m, m
        assert m["peak_rss_mb"] >= m["rss_before_mb"] > 0
    assert mem["segrt"]["torch_imported"] is False and mem["monai"]["torch_imported"] is True
    assert mem["segrt"]["peak_rss_mb"] < mem["monai"]["rss_before_mb"]  # no torch, no MONAI in segrt's process
    # the blended output (2 x 40^3 float32) and the weight sum at least: the call's increment is real
    assert mem["segrt"]["peak_delta_mb"] > 0


def test_markdown_row(row) -> None:
    table = bv.markdown_volume({"machine": describe(2), "results": [row]})
    line = next(ln for ln in table.splitlines() if ln.startswith("| monai_unet small"))
    assert "| 40x40x40 | 32x32x32 (0.25, gaussian, 2) | 8 | 2 |" in line
    assert f"{row['pairs']['monai']['median']:.2f}x [" in line and "MB (+" in line


@pytest.mark.parametrize("argv, says", [
    (["bench", "--volume", "some_bundle"], "--volume times seeded MONAI UNet and SegResNet exports; it takes no bundles"),
    (["bench", "--volume", "--device", "cuda"], "--volume times the CPU only"),
])
def test_volume_mode_bad_usage_is_one_line_exit_2(argv: list[str], says: str, capfd) -> None:
    from segrt.runtime.cli import main

    capfd.readouterr()
    assert main(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
