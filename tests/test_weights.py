"""Checkpoint formats and mismatches, and what a failed export leaves behind."""

from __future__ import annotations

import pytest
import torch

from segrt.export.exporter import build_module, export_model
from segrt.export.models import get_spec
from segrt.export.spec import ExportConfig
from segrt.export.weights import apply_state_dict, read_state_dict
from segrt.runtime.errors import ExportError, InvalidInputError


@pytest.fixture(scope="module")
def unet():
    cfg = ExportConfig(architecture="unet", encoder="resnet18", classes=3, seed=1)
    module, _ = build_module(get_spec("unet"), cfg)
    return module


def _fresh(classes: int = 3):
    cfg = ExportConfig(architecture="unet", encoder="resnet18", classes=classes, seed=2)
    return build_module(get_spec("unet"), cfg)[0]


@pytest.mark.parametrize("form", ["plain", "wrapped", "prefixed", "safetensors"])
def test_checkpoint_forms_load_exactly(tmp_path, unet, form: str) -> None:
    sd = unet.state_dict()
    if form == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        path = tmp_path / "w.pth"
        obj = {"state_dict": sd, "epoch": 3} if form == "wrapped" else sd
        if form == "prefixed":
            obj = {f"model.{k}": v for k, v in sd.items()}
        torch.save(obj, path)
    target = _fresh()
    apply_state_dict(target, read_state_dict(path))
    for k, v in unet.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


def test_wrong_class_count_is_named(tmp_path, unet) -> None:
    path = tmp_path / "w.pth"
    torch.save(unet.state_dict(), path)
    with pytest.raises(ExportError, match=r"shape mismatches: segmentation_head\.0\.weight"):
        apply_state_dict(_fresh(classes=5), read_state_dict(path))


def test_missing_and_unexpected_keys_are_named(tmp_path, unet) -> None:
    sd = dict(unet.state_dict())
    sd.pop("segmentation_head.0.bias")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ExportError, match=r"missing keys: segmentation_head\.0\.bias.*unexpected keys: extra\.weight"):
        apply_state_dict(_fresh(), sd)


def test_not_a_checkpoint(tmp_path) -> None:
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ExportError, match="cannot read weights"):
        read_state_dict(bad)
    with pytest.raises(ExportError, match="expected .pth, .pt or .safetensors"):
        read_state_dict(tmp_path / "w.h5")


def test_unknown_architecture_and_encoder_list_valid_ones() -> None:
    with pytest.raises(ExportError, match="valid: unet, deeplabv3plus, deeplabv3"):
        get_spec("segformer")
    with pytest.raises(ExportError, match="unknown encoder 'resnet9000'.*resnet18"):
        get_spec("unet").check_encoder("resnet9000")
    with pytest.raises(ExportError, match="valid: mobilenet_v3_large, resnet101, resnet50"):
        get_spec("deeplabv3").check_encoder("resnet18")


def test_every_family_is_one_spec_and_owns_its_facts() -> None:
    """SAM is a spec like the others (no placeholder specs); quantization defaults are found by the bundle's
    architecture, and an imported (or unknown) architecture gets none."""
    from types import SimpleNamespace

    from segrt.export.models import SPECS, quant_defaults
    from segrt.export.spec import QuantDefaults

    assert [s.name for s in SPECS] == ["unet", "deeplabv3plus", "deeplabv3", "maskrcnn", "sam", "monai_unet",
                                       "monai_segresnet", "monai_swinunetr", "sam2", "mask2former"]
    assert get_spec("unet").deps == {"segmentation_models_pytorch": "segmentation-models-pytorch"}
    assert "segment_anything" in get_spec("sam").deps and get_spec("sam").default_classes() == ()
    assert get_spec("unet").default_classes is None and len(get_spec("maskrcnn").default_classes()) == 91
    quant = {name: quant_defaults(SimpleNamespace(architecture=name)) for name in ("maskrcnn", "sam", "unet", "imported")}
    assert quant["maskrcnn"].int8_op_types == ("Conv",) and quant["maskrcnn"].fp16_summary
    assert quant["sam"].cpu_int8 == "dynamic" and quant["sam"].int8_op_types == ("Conv", "MatMul", "Gemm")
    assert quant["unet"] == quant["imported"] == QuantDefaults()


def test_progress_goes_to_stderr_one_line_per_step(capsys) -> None:
    import re

    from segrt.export.progress import Progress

    step = Progress("unet/resnet18")
    step("tracing model.onnx")
    step("done")
    out, err = capsys.readouterr()
    assert out == ""
    assert re.fullmatch(r"segrt: \[ +\d+\.\d s\] unet/resnet18: tracing model.onnx\nsegrt: \[ +\d+\.\d s\] "
                        r"unet/resnet18: done\n", err), err


@pytest.mark.slow
def test_failed_export_leaves_nothing_behind(tmp_path) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    out = tmp_path / "out" / "bundle"
    cfg = ExportConfig(architecture="unet", encoder="resnet18", classes=2, verify_image=corrupt)
    with pytest.raises(InvalidInputError, match="could not be decoded"):
        export_model(cfg, out)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_existing_output_needs_force(tmp_path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    cfg = ExportConfig(architecture="unet", encoder="resnet18", classes=2)
    with pytest.raises(ExportError, match="already exists; pass --force"):
        export_model(cfg, out)
    assert (out / "keep.txt").read_text() == "x"
