"""Models past protobuf's 2 GB limit keep their weights as external data, and still run."""

from __future__ import annotations

import numpy as np
import onnx

from segrt.export import onnx_io
from segrt.export.importer import ImportConfig, import_onnx
from segrt.runtime import load

from .conftest import conv_onnx


def test_external_data_past_the_limit_loads_and_runs(tmp_path, monkeypatch, photos) -> None:
    conv_onnx(tmp_path / "src.onnx")
    monkeypatch.setattr(onnx_io, "PROTO_LIMIT", 100)  # stand-in for 2 GB: this small model is "large"
    onnx_io.save_onnx(onnx.load(str(tmp_path / "src.onnx")), tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size > 0
    assert (tmp_path / "big.onnx").stat().st_size < (tmp_path / "src.onnx").stat().st_size
    import_onnx(ImportConfig(model=tmp_path / "big.onnx", stride=1), tmp_path / "b1")
    import_onnx(ImportConfig(model=tmp_path / "src.onnx", stride=1), tmp_path / "b2")
    assert (tmp_path / "b1" / "big.onnx.data").is_file()
    a = load(tmp_path / "b1", device="cpu")(photos["chelsea"]).label_map
    b = load(tmp_path / "b2", device="cpu")(photos["chelsea"]).label_map
    assert np.array_equal(a, b)
