"""What the CLI prints on stderr besides its results: one typed line per error (no stray lines from
the C decoders underneath), and progress for long steps."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from segrt.runtime import image as image_mod
from segrt.runtime.errors import InvalidInputError
from segrt.runtime.image import read_image

PPOCR = Path(__file__).parent / "data" / "ppocr_v4_det.onnx"


def _corrupt_png(photo: np.ndarray) -> bytes:
    """A PNG with garbage in its first IDAT chunk: libpng prints ``libpng error: IDAT: ...``."""
    data = bytearray(cv2.imencode(".png", photo)[1].tobytes())
    at = data.index(b"IDAT") + 4
    data[at + 10 : at + 20] = bytes(10)
    return bytes(data)


def test_corrupt_png_raises_the_decoders_reason_and_prints_nothing(tmp_path, photos, capfd) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(_corrupt_png(photos["coffee"]))
    with pytest.raises(InvalidInputError, match=r"could not be decoded \(libpng: IDAT: [^)]+\)"):
        read_image(path)
    assert capfd.readouterr().err == ""


def test_decoding_keeps_other_stderr_and_drops_decoder_lines(monkeypatch, capfd) -> None:
    """While fd 2 is borrowed, what is not the decoder's (another thread's output) still reaches stderr."""
    def chatty(data: np.ndarray, flags: int) -> np.ndarray:
        os.write(2, b"libpng warning: iCCP: known incorrect sRGB profile\nsomething else\n")
        return np.zeros((2, 2), np.uint8)

    monkeypatch.setattr(image_mod.cv2, "imdecode", chatty)
    decoded, said = image_mod._imdecode_quiet(np.zeros(8, np.uint8))
    assert decoded is not None and said == ["libpng warning: iCCP: known incorrect sRGB profile"]
    assert capfd.readouterr().err == "something else\n"


def test_libjpeg_warnings_on_a_decodable_jpeg_go_to_the_log(tmp_path, photos, capfd, caplog) -> None:
    data = bytearray(cv2.imencode(".jpg", photos["coffee"])[1].tobytes())
    data[5000:5100] = bytes(100)  # a hole in the entropy-coded data: libjpeg warns, the image still decodes
    (tmp_path / "w.jpg").write_bytes(bytes(data))
    with caplog.at_level("INFO", logger="segrt"):
        assert read_image(tmp_path / "w.jpg").shape == photos["coffee"].shape
    assert capfd.readouterr().err == ""
    assert any("w.jpg: Corrupt JPEG data" in r.getMessage() for r in caplog.records)  # segrt -v shows it


@pytest.mark.parametrize("cut", ["crc", "truncated"])
def test_segrt_run_on_a_broken_png_prints_one_line(cut: str, tmp_path, photos, capfd) -> None:
    from segrt.runtime.cli import main

    bundle = tmp_path / "ocr"
    assert main(["import", str(PPOCR), "--threshold", "0.3", "--classes", "background,text", "--out", str(bundle)]) == 0
    png = cv2.imencode(".png", photos["coffee"])[1].tobytes()
    (tmp_path / "bad.png").write_bytes(_corrupt_png(photos["coffee"]) if cut == "crc" else png[:200])
    capfd.readouterr()
    assert main(["run", str(bundle), "--input", str(tmp_path / "bad.png"), "--out", str(tmp_path / "out")]) == 2
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert "libpng error" not in err and "WARN" not in err
    assert len(lines) == 1 and lines[0].startswith("segrt: error: image ") and "could not be decoded" in lines[0], err


@pytest.mark.parametrize("argv, says", [
    (["stream", "b", "--source", "s", "--workers", "500"], "--workers: must be in 1..64; got 500"),
    (["sam", "b", "--image", "a.png", "--everything", "--pred-iou-thresh", "7"],
     "--pred-iou-thresh: must be in [0, 1]; got 7"),
])
def test_out_of_range_flags_are_refused_when_parsed(argv: list[str], says: str, capsys) -> None:
    from segrt.runtime.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segrt: error:") and says in lines[0]


@pytest.mark.slow
def test_segment_everything_shows_progress_on_stderr_only(sam_tiny, photos, tmp_path, capsys) -> None:
    from segrt.runtime import SamAutomaticMaskGenerator
    from segrt.runtime.cli import main

    opts = {"points_per_side": 8, "points_per_batch": 16, "pred_iou_thresh": 0.7, "stability_score_thresh": 0.25}
    quiet = SamAutomaticMaskGenerator(sam_tiny.bundle, **opts).generate(photos["coffee"])
    assert capsys.readouterr().err == ""  # an API call shows nothing unless asked
    shown = SamAutomaticMaskGenerator(sam_tiny.bundle, **opts, progress=True).generate(photos["coffee"])
    assert "4/4" in capsys.readouterr().err  # 64 points in batches of 16
    assert [r["predicted_iou"] for r in shown] == [r["predicted_iou"] for r in quiet]
    cv2.imwrite(str(tmp_path / "c.png"), photos["coffee"][:, :, ::-1])
    argv = ["sam", str(sam_tiny.bundle), "--image", str(tmp_path / "c.png"), "--everything", "--points-per-side", "8",
            "--points-per-batch", "16", "--pred-iou-thresh", "0.7", "--stability-score-thresh", "0.25",
            "--out", str(tmp_path / "e")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out == f"segrt: {len(quiet)} mask(s) of c.png written to {tmp_path / 'e'}\n" and "4/4" in err
