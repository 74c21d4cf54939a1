"""The limit: FLOPs counted by PyTorch at export against an independent count of the ONNX graph, the manifest's
compute section (round trip, older bundles without it), the measured GEMM peak and a bench row's figures."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
from segrt.benchmarks import limits as L
from segrt.export import flops as F
from segrt.runtime.errors import InvalidInputError, ModelFormatError
from segrt.runtime.manifest import MANIFEST_NAME, GraphCompute, Manifest, read_manifest, write_manifest


def _torch_image(channels: int, h: int, w: int):
    import torch

    return torch.from_numpy(np.random.default_rng(0).random((1, channels, h, w), dtype=np.float32))


def _without_compute(src, dst):
    """A copy of bundle ``src`` as an older segrt wrote it: no compute section in its manifest."""
    shutil.copytree(src, dst)
    data = json.loads((dst / MANIFEST_NAME).read_text())
    data.pop("compute", None)
    (dst / MANIFEST_NAME).write_text(json.dumps(data))
    return dst


def test_torch_counter_and_onnx_graph_count_agree_on_unet_at_256(unet_trained) -> None:
    m = read_manifest(unet_trained.bundle)
    torch_flops = F.count_torch_flops(unet_trained.module, (_torch_image(m.input.channels, 256, 256),))
    onnx_count = L.count_onnx_flops(unet_trained.bundle / m.model_file, {m.input.name: [1, m.input.channels, 256, 256]})
    assert onnx_count.complete and onnx_count.counted > 20
    assert torch_flops > 1e9
    assert abs(onnx_count.flops - torch_flops) / torch_flops < 0.03


def test_pixel_scaling_is_exact_for_a_convnet(unet_trained) -> None:
    from segrt.export.models import get_spec

    m = read_manifest(unet_trained.bundle)
    entry = F.graph_compute(unet_trained.module, (_torch_image(m.input.channels, 64, 96),), get_spec("unet"))
    assert entry.scales == "pixels" and entry.at == (64, 96) and entry.fixed == 0
    counted = Manifest.from_dict({**m.to_dict(), "compute": {m.model_file: {"flops": entry.flops, "at": [64, 96],
                                                                             "scales": "pixels"}}})
    at_256 = F.count_torch_flops(unet_trained.module, (_torch_image(m.input.channels, 256, 256),))
    flops, how = L.image_flops(counted, (256, 256))
    assert flops == at_256 and "scaled by pixels to 256x256" in how
    assert L.image_flops(counted, (250, 231))[0] == at_256  # padded to the stride first, as the runtime does


def test_compute_section_round_trips_through_segrt_json(unet_trained, tmp_path) -> None:
    m = read_manifest(unet_trained.bundle)
    compute = {"model.onnx": GraphCompute(123_456_789, (64, 96), "pixels", fixed=1000),
               "decoder.onnx": GraphCompute(5_000, (1, 3), "prompts", per_prompt=4_000)}
    write_manifest(tmp_path, replace(m, compute=compute))
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())["compute"]
    assert raw["model.onnx"] == {"flops": 123_456_789, "at": [64, 96], "scales": "pixels",
                                 "counter": "torch.utils.flop_counter", "per_prompt": None, "fixed": 1000}
    assert read_manifest(tmp_path).compute == compute
    for bad in ({"flops": 1, "at": [1, 3], "scales": "prompts"}, {"flops": 1, "at": [8, 8], "scales": "zoom"},
                {"flops": 1, "at": [8, 8], "scales": "pixels", "fixed": 2}):
        with pytest.raises(ModelFormatError):
            Manifest.from_dict({**m.to_dict(), "compute": {"model.onnx": bad}})


def test_old_bundle_without_compute_loads_and_is_counted_from_its_graph(unet_trained, tmp_path) -> None:
    from segrt.runtime import Segmenter

    old = _without_compute(unet_trained.bundle, tmp_path / "old")
    m = read_manifest(old)
    assert m.compute == {}
    Segmenter(old, "cpu", threads=1)  # the runtime loads it as before
    torch_512 = F.count_torch_flops(unet_trained.module, (_torch_image(m.input.channels, 512, 512),))
    flops, how = L.image_flops(old, (500, 512))  # padded to 512x512
    assert how.startswith(L.ONNX_COUNTER) and abs(flops - torch_512) / torch_512 < 0.03
    row = L.limits(m, (512, 512), 1, 20.0, 10.0, {"fp32_gflops": 50.0, "int8_gops": 100.0}, "fp32")
    assert row["gflop"] is None and row["percent_of_peak"] is None and row["flops_how"].startswith("not counted")


def test_onnx_count_matches_torch_on_each_op_it_knows(tmp_path) -> None:
    """Grouped and transposed convolutions, Linear (Gemm / MatMul), batched matmul and einsum, exported by
    PyTorch and counted both ways."""
    import torch

    class Ops(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2)
            self.up = torch.nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1)
            self.fc = torch.nn.Linear(6 * 16 * 16, 10)
            self.rel = torch.nn.Parameter(torch.randn(16, 5, 6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.up(torch.relu(self.conv(x)))  # (1, 6, 16, 16)
            tokens = y.flatten(2).transpose(1, 2)  # (1, 256, 6)
            attn = tokens @ tokens.transpose(1, 2)  # (1, 256, 256)
            rel = torch.einsum("bhwc,hkc->bhwk", y.permute(0, 2, 3, 1), self.rel)
            return self.fc(y.flatten(1)) + attn.mean() + rel.mean()

    module, x = Ops().eval(), torch.rand(1, 4, 16, 16)
    torch.onnx.export(module, (x,), str(tmp_path / "ops.onnx"), input_names=["x"], dynamo=False, opset_version=18)
    count = L.count_onnx_flops(tmp_path / "ops.onnx")
    assert count.complete and count.counted == 5
    assert count.flops == F.count_torch_flops(module, (x,))


def test_sam_export_records_a_fixed_encoder_and_a_per_prompt_decoder(sam_tiny) -> None:
    m = read_manifest(sam_tiny.bundle)
    enc, dec = m.compute[m.model_file], m.compute[m.sam.decoder_file]
    assert enc.scales == "fixed" and enc.at == (1024, 1024) and enc.counter == F.COUNTER
    assert dec.scales == "prompts" and dec.at == (1, 3) and 0 < dec.per_prompt < dec.flops
    assert L.count_onnx_flops(sam_tiny.bundle / m.model_file).flops == pytest.approx(enc.flops, rel=0.01)
    assert L.image_flops(sam_tiny.bundle, (480, 640))[0] == L.image_flops(sam_tiny.bundle, (1024, 1024))[0] == enc.flops
    for prompts in (1, 2):
        shapes = {"point_coords": [prompts, 3, 2], "point_labels": [prompts, 3], "mask_input": [1, 1, 256, 256]}
        graph = L.count_onnx_flops(sam_tiny.bundle / m.sam.decoder_file, shapes)
        flops, _ = L.image_flops(sam_tiny.bundle, (480, 640), graph=m.sam.decoder_file, prompts=prompts)
        assert graph.complete and graph.flops == pytest.approx(flops, rel=0.01)


def test_measured_peak_is_finite_and_int8_beats_fp32() -> None:
    peak = L.measure_peak(reps=2)
    for key in ("fp32_gflops", "int8_gops", "numpy_fp32_gflops"):
        assert math.isfinite(peak[key]) and peak[key] > 1.0, (key, peak)
    assert "ONNX Runtime" in peak["how"] and peak["threads"] >= 1
    # No speed assertion (speed lives in benchmarks): INT8 vs FP32 on this CPU is in the bench run's "peak" record.


def test_a_rows_figures_follow_from_flops_time_and_the_peak_of_its_precision(unet_trained) -> None:
    m = read_manifest(unet_trained.bundle)
    counted = Manifest.from_dict({**m.to_dict(), "compute": {m.model_file: {"flops": 3_000_000_000, "at": [512, 512],
                                                                             "scales": "pixels"}}})
    peak = {"fp32_gflops": 100.0, "int8_gops": 400.0}
    row = L.limits(counted, (1024, 512), 2, 250.0, 200.0, peak, "fp32")
    assert row["gflop"] == pytest.approx(6.0)
    assert row["gflops_per_s"] == pytest.approx({"infer": 60.0, "e2e": 48.0})
    assert row["percent_of_peak"] == pytest.approx(60.0) and row["peak"] == {"precision": "fp32", "value": 100.0}
    int8 = L.limits(counted, (1024, 512), 2, 250.0, 200.0, peak, "int8")
    assert int8["percent_of_peak"] == pytest.approx(15.0)
    fp16 = L.limits(counted, (1024, 512), 2, 250.0, 200.0, peak, "fp16")
    assert fp16["peak"]["precision"] == "fp32"  # no FP16 GEMM measured on a CPU
    for args in ((0, 250.0, 200.0, "fp32"), (1, 250.0, 0.0, "fp32"), (1, 250.0, 200.0, "bf16")):
        with pytest.raises(InvalidInputError):
            L.limits(counted, (512, 512), args[0], args[1], args[2], peak, args[3])


def test_cli_refuses_a_bad_size_or_bundle_in_one_line(tmp_path, capsys) -> None:
    assert L.main(["--size", "512x"]) == 2
    assert L.main([str(tmp_path / "missing"), "--size", "64x64"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "--size must be HxW" in lines[0] and "is not a directory" in lines[1]


def test_rows_on_a_gpu_are_measured_against_the_gpus_peak(unet_trained, tmp_path) -> None:
    from segrt.benchmarks import row_limits as RL

    bundle = tmp_path / "counted"
    shutil.copytree(unet_trained.bundle, bundle)
    m = read_manifest(bundle)
    write_manifest(bundle, replace(m, compute={m.model_file: GraphCompute(3_000_000_000, (512, 512), "pixels")}))
    stages = {"e2e": {"p50": 250.0}, "infer": {"p50": 200.0}}
    row = lambda backend, precision: {"segrt": {"backend": backend, "stages": stages}, "bundle": str(bundle),  # noqa: E731
                                      "size": [1024, 512], "batch": 2, "precision": precision}
    rows = [row("onnxruntime-cuda", "fp16"), row("tensorrt", "int8"), row("onnxruntime-cpu", "fp32")]
    gpu = {"fp32_gflops": 100.0, "fp16_gflops": 300.0, "int8_gops": None, "device": "a GPU's figures"}
    peak = RL.add_limits({"results": rows}, 1, None, gpu)
    assert rows[0]["limit"]["peak"] == {"precision": "fp16", "value": 300.0}
    assert rows[0]["limit"]["percent_of_peak"] == pytest.approx(20.0)  # 6 GFLOP x 2 / 0.2 s = 60 of 300
    assert rows[1]["limit"] == {"skipped": "no INT8 peak measured on a GPU's figures"}
    assert rows[2]["limit"]["skipped"].startswith("this CPU's peak was not measured")
    assert peak == {"gpu": gpu}


def test_gpu_peak_arithmetic_on_the_cpu() -> None:
    from segrt.benchmarks import row_limits as RL

    peak = RL.measure_gpu_peak(n=128, reps=2, device="cpu")  # the CUDA code path, run on the CPU
    assert peak["fp16_gflops"] is None and peak["int8_gops"] is None and "TF32 off" in peak["how"]
    assert math.isfinite(peak["fp32_gflops"]) and peak["fp32_gflops"] > 0.01
    if not __import__("torch").cuda.is_available():
        assert RL.measure_gpu_peak() is None
