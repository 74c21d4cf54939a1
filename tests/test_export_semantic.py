"""Export each semantic architecture from a seeded checkpoint and compare segrt with PyTorch.

smp's pattern: one base tester, one short subclass per architecture.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from segrt.runtime import load

from .conftest import Exported, export_seeded, torch_reference

pytestmark = pytest.mark.slow
MIN_AGREEMENT = 0.999


class BaseSemanticTester:
    arch: str
    encoder: str
    classes = 5

    @pytest.fixture(scope="class")
    def exported(self, seeded) -> Exported:
        return seeded(self.arch, self.encoder, self.classes)

    def test_manifest_records_source_and_verification(self, exported: Exported) -> None:
        data = json.loads((exported.bundle / "segrt.json").read_text())
        assert data["architecture"] == self.arch and data["encoder"] == self.encoder
        assert data["source"]["trained"] is True and len(data["source"]["sha256"]) == 64
        assert data["source"]["export"]["opset"] >= 17
        assert data["verification"]["pixel_agreement"] >= MIN_AGREEMENT
        assert data["verification"]["max_rel_logit_diff"] < 1e-4
        assert {"torch", "onnx", "segrt"} <= set(data["versions"])

    @pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
    def test_matches_pytorch_on_real_photos(self, exported: Exported, photos, name: str) -> None:
        image = photos[name]  # 512x512, 400x600, 300x451: two sizes of dynamic H, W through one bundle
        seg = load(exported.bundle, device="cpu")
        res = seg(image)
        ref = torch_reference(exported, image)
        assert res.label_map.shape == image.shape[:2]
        assert (res.label_map == ref).mean() >= MIN_AGREEMENT
        assert len(np.unique(ref)) > 1, "reference is constant: the comparison would prove nothing"

    def test_batch_equals_single_calls(self, exported: Exported, photos) -> None:
        seg = load(exported.bundle, device="cpu")
        flipped = np.ascontiguousarray(photos["coffee"][::-1])
        images = [photos["coffee"], photos["chelsea"], flipped]  # two share a size, one does not
        batched = seg.batch(images)
        for image, res in zip(images, batched):
            single = seg(image).label_map
            assert res.label_map.shape == image.shape[:2]
            assert (res.label_map == single).mean() >= 0.9999
            assert (res.label_map == torch_reference(exported, image)).mean() >= MIN_AGREEMENT

    def test_bgr_input_equals_rgb_input(self, exported: Exported, photos) -> None:
        seg = load(exported.bundle, device="cpu")
        rgb = photos["chelsea"]
        assert np.array_equal(seg(rgb).label_map, seg(np.ascontiguousarray(rgb[:, :, ::-1]), color="bgr").label_map)


class TestUnet(BaseSemanticTester):
    arch, encoder = "unet", "resnet18"


class TestDeepLabV3Plus(BaseSemanticTester):
    arch, encoder = "deeplabv3plus", "resnet18"


class TestDeepLabV3(BaseSemanticTester):
    arch, encoder = "deeplabv3", "mobilenet_v3_large"


class TestSingleChannel16Bit:
    """A microscopy U-Net: one input channel, uint16 images, per-image min-max intensity."""

    @pytest.fixture(scope="class")
    def exported(self, tmp_path_factory) -> Exported:
        return export_seeded(tmp_path_factory.mktemp("gray"), "unet", "resnet18", 2, in_channels=1, intensity="minmax")

    def test_nuclei_uint16_matches_pytorch(self, exported: Exported) -> None:
        import tifffile

        from .conftest import NUCLEI

        image = tifffile.imread(NUCLEI)
        assert image.dtype == np.uint16
        res = load(exported.bundle, device="cpu")(image)
        ref = torch_reference(exported, image)
        assert (res.label_map == ref).mean() >= MIN_AGREEMENT
        assert len(np.unique(ref)) > 1

    def test_rgb_photo_is_converted_to_gray(self, exported: Exported, photos) -> None:
        seg = load(exported.bundle, device="cpu")
        import cv2

        gray = cv2.cvtColor(photos["coffee"], cv2.COLOR_RGB2GRAY)
        assert np.array_equal(seg(photos["coffee"]).label_map, seg(gray).label_map)
