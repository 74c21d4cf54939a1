"""The runtime must work where torch, and every other export-only dependency, cannot be imported at all."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from .conftest import PPOCR

# the NumPy-twin pass runs it: an edge install without a compiler is NumPy + ONNX Runtime only
pytestmark = pytest.mark.prepost

#: What only `segrt[export]` installs: the runtime may import none of it (onnx and onnxslim included).
EXPORT_ONLY = ("torch", "torchvision", "segmentation_models_pytorch", "segment_anything", "onnx", "onnxslim",
               "onnxscript", "safetensors", "skimage", "matplotlib", "monai", "transformers")
BLOCK_TORCH = f"EXPORT_ONLY = {EXPORT_ONLY!r}\n" + textwrap.dedent(
    """
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in EXPORT_ONLY:
                raise ImportError(f"{name} is blocked in this test")
            return None
    sys.meta_path.insert(0, _NoTorch())
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_block_really_blocks() -> None:
    for name in EXPORT_ONLY:
        proc = _run(f"import {name}")
        assert proc.returncode != 0 and "blocked in this test" in proc.stderr, name


def test_runtime_imports_and_segments_without_torch(tmp_path) -> None:
    import cv2
    import skimage.data

    from segrt.export.importer import ImportConfig, import_onnx

    import_onnx(ImportConfig(model=PPOCR, threshold=0.3), tmp_path / "b")  # the export side, outside the block
    cv2.imwrite(str(tmp_path / "p.png"), skimage.data.page())
    code = f"""
    import cv2
    import segrt.runtime as rt
    from segrt.runtime.cli import main
    res = rt.load({str(tmp_path / "b")!r}, device="auto")(cv2.imread({str(tmp_path / "p.png")!r}))
    assert res.label_map.any()
    assert main(["run", {str(tmp_path / "b")!r}, "--input", {str(tmp_path / "p.png")!r}, "--out", {str(tmp_path / "o")!r}]) == 0
    assert main(["info", {str(tmp_path / "b")!r}]) == 0
    assert not any(m.split(".")[0] in EXPORT_ONLY for m in sys.modules)
    print("ok")
    """
    proc = _run(code)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


def test_export_without_torch_says_what_to_install(tmp_path) -> None:
    code = f"""
    from segrt.runtime.cli import main
    assert main(["export", "unet", "--classes", "2", "--weights", "none", "--out", {str(tmp_path / "x")!r}]) == 2
    print("ok")
    """
    proc = _run(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    assert "pip install 'segrt[export]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()
