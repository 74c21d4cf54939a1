"""MONAI's 3-D networks (``monai.networks.nets.UNet``, ``SegResNet``, ``SwinUNETR``) as ``volume`` bundles.

The "encoder" picks a width: ``small`` (for tests and edge devices) or ``base`` (MONAI's tutorial sizes).
SwinUNETR's windows must be multiples of 32 voxels and at least 64 (its five 2x downsamplings, and instance
norm at the bottleneck needs more than one voxel there); its graph is fixed at the window (batch dynamic).
The bundle is verified at export like the 2-D ones: segrt's sliding-window run of the written ONNX against
``monai.inferers.sliding_window_inference`` over the PyTorch module, same window settings, on the
``--verify-image`` volume (NIfTI / DICOM folder / .npy) or a seeded smooth volume; the export is refused
when the blended probabilities differ by more than :data:`MAX_PROB_DIFF`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segrt.runtime.errors import ExportError
from segrt.runtime.manifest import InputSpec, Manifest, OutputSpec
from segrt.runtime.volume_intensity import IntensityPolicy
from segrt.runtime.volume_spec import VolumeSpec
from segrt.runtime.volume_window import WindowSpec

from ..spec import ExportConfig, ExportFamily, Graph, ModelSpec

log = logging.getLogger("segrt")
MONAI_DEPS = {"monai": "monai", "nibabel": "nibabel"}
#: the largest blended-probability difference from MONAI a fresh export may have
MAX_PROB_DIFF = 1e-4
WIDTHS = {"small": (8, 16, 32), "base": (16, 32, 64, 128, 256)}
SEGRESNET_FILTERS = {"small": 8, "base": 16}
#: SwinUNETR per encoder: (feature_size, Swin blocks per stage); num_heads stay MONAI's (3, 6, 12, 24)
SWIN = {"small": (12, (1, 1, 1, 1)), "base": (24, (2, 2, 2, 2))}
SWIN_MIN_ROI, SWIN_MULTIPLE = 64, 32
DYNAMIC = {"image": {0: "batch", 2: "depth", 3: "height", 4: "width"},
           "logits": {0: "batch", 2: "depth", 3: "height", 4: "width"}}


def build_unet(cfg: ExportConfig) -> Any:
    from monai.networks.nets import UNet

    channels = WIDTHS[cfg.encoder]
    return UNet(spatial_dims=3, in_channels=cfg.in_channels, out_channels=max(cfg.classes, 1), channels=channels,
                strides=(2,) * (len(channels) - 1), num_res_units=2)


def build_segresnet(cfg: ExportConfig) -> Any:
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=3, in_channels=cfg.in_channels, out_channels=max(cfg.classes, 1),
                     init_filters=SEGRESNET_FILTERS[cfg.encoder], blocks_down=(1, 2, 2), blocks_up=(1, 1))


def build_swinunetr(cfg: ExportConfig) -> Any:
    import inspect

    from monai.networks.nets import SwinUNETR

    feature_size, depths = SWIN[cfg.encoder]
    # MONAI < 1.5 wants the patch size (unused by its forward beyond a check); later versions dropped it
    old_api = {"img_size": (SWIN_MIN_ROI,) * 3} if "img_size" in inspect.signature(SwinUNETR).parameters else {}
    return SwinUNETR(in_channels=cfg.in_channels, out_channels=max(cfg.classes, 1), feature_size=feature_size,
                     depths=depths, spatial_dims=3, **old_api)


def verify_volume(cfg: ExportConfig, shape: tuple[int, int, int]) -> np.ndarray:
    """The verification volume: ``--verify-image`` read as a volume, or a seeded smooth one."""
    from segrt.runtime.volume_io import read_volume

    if cfg.verify_image is not None:
        return np.asarray(read_volume(cfg.verify_image).data, np.float32)
    from segrt.runtime.volume_window import resize_linear

    rng = np.random.default_rng(cfg.seed)
    coarse = rng.random((cfg.in_channels, *(max(s // 8, 2) for s in shape)), dtype=np.float32)
    smooth = resize_linear(coarse, shape)
    return smooth[0] if cfg.in_channels == 1 else np.moveaxis(smooth, 0, -1)


@dataclass(frozen=True)
class VolumeExport(ExportFamily):
    """One NCDHW logits graph run by sliding windows; ``window`` and ``intensity`` go in the manifest."""

    window: WindowSpec = field(default_factory=lambda: WindowSpec((64, 64, 64), 0.25, "gaussian", sw_batch_size=2))
    intensity: IntensityPolicy = field(default_factory=lambda: IntensityPolicy("zscore"))

    def graphs(self, spec: ModelSpec, model: Any, cfg: ExportConfig) -> list[Graph]:
        import torch

        example = (torch.rand(1, cfg.in_channels, *self.window.roi_size),)
        return [Graph("model.onnx", model, example, spec)]

    def manifest(self, spec: ModelSpec, cfg: ExportConfig, source: dict[str, Any], versions: dict[str, str]) -> Manifest:
        volume = VolumeSpec(layout="ncdhw", inference="sliding_window", window=self.window, intensity=self.intensity)
        return Manifest(
            task="volume", architecture=spec.name, encoder=cfg.encoder, classes=cfg.names,
            input=InputSpec(name="image", channels=cfg.in_channels, color="gray" if cfg.in_channels == 1 else "rgb",
                            mean=(0.0,), std=(1.0,), resize="pad", stride=1),
            output=OutputSpec(name="logits", activation="softmax" if cfg.classes > 1 else "sigmoid"),
            source=source, versions=versions, volume=volume.to_dict(),
        )

    def verify(self, spec: ModelSpec, model: Any, bundle: Path, cfg: ExportConfig) -> dict[str, Any]:
        from segrt.runtime.volume_predict import VolumeSegmenter

        seg = VolumeSegmenter(bundle, "cpu")
        data = verify_volume(cfg, tuple(int(s * 1.5) for s in self.window.roi_size))
        image = seg.prepare_array(data)
        ours = seg.probabilities(image)
        theirs = monai_probabilities(model, image, self.window, seg.output.activation)
        diff = float(np.abs(ours - theirs).max())
        agree = float((seg.labels(ours) == seg.labels(theirs)).mean())
        seg.close()
        return {"max_abs_prob_diff": diff, "voxel_agreement": agree, "volume_shape": list(data.shape[:3]),
                "reference": "monai.inferers.sliding_window_inference"}

    def gate(self, spec: ModelSpec, cfg: ExportConfig, source: dict[str, Any], verification: dict[str, Any]) -> None:
        if verification["max_abs_prob_diff"] > MAX_PROB_DIFF:
            raise ExportError(f"exported {spec.name} differs from MONAI by {verification['max_abs_prob_diff']:.3g} in "
                              f"blended probability (limit {MAX_PROB_DIFF}); bundle not written")


@dataclass(frozen=True)
class SwinVolumeExport(VolumeExport):
    """SwinUNETR's volume family: the window is refused unless every side is a multiple of 32, at least 64."""

    def check(self, spec: ModelSpec, cfg: ExportConfig) -> None:
        roi = self.window.roi_size
        if any(r % SWIN_MULTIPLE or r < SWIN_MIN_ROI for r in roi):
            raise ExportError(f"{spec.name} needs window sides that are multiples of {SWIN_MULTIPLE} and at least "
                              f"{SWIN_MIN_ROI}; got roi_size {list(roi)} (use e.g. 64x64x64 or 96x96x96)")


def monai_probabilities(model: Any, image: np.ndarray, window: WindowSpec, activation: str) -> np.ndarray:
    """MONAI's sliding-window blend of the PyTorch module over a prepared (C, X, Y, Z) volume."""
    import torch
    from monai.inferers import sliding_window_inference

    def predict(x: torch.Tensor) -> torch.Tensor:
        y = model(x)
        return torch.softmax(y, 1) if activation == "softmax" else torch.sigmoid(y) if activation == "sigmoid" else y

    with torch.no_grad():
        out = sliding_window_inference(torch.from_numpy(image[None]), window.roi_size, window.sw_batch_size, predict,
                                       overlap=window.overlap, mode=window.mode, sigma_scale=window.sigma_scale,
                                       padding_mode=window.padding_mode, cval=window.cval)
    return out[0].numpy()


VOLUME = VolumeExport()


def _spec(name: str, build: Any, family: VolumeExport = VOLUME, dynamic: Any = DYNAMIC,
          deps: dict[str, str] = MONAI_DEPS) -> ModelSpec:
    return ModelSpec(name=name, task="volume", family=family, build=build, encoders=lambda: tuple(WIDTHS),
                     default_encoder="small", stride=1, dynamic_axes=dynamic, exporter="torchscript",
                     deps=deps, mean=(0.0,), std=(1.0,))


UNET3D = _spec("monai_unet", build_unet)
SEGRESNET = _spec("monai_segresnet", build_segresnet)
#: exported (dynamo=False) and verified at the window size only: batch is its one dynamic axis
SWINUNETR = _spec("monai_swinunetr", build_swinunetr, SwinVolumeExport(),
                  {"image": {0: "batch"}, "logits": {0: "batch"}}, MONAI_DEPS | {"einops": "einops"})
