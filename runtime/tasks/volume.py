"""Task ``volume``: 3-D label volumes, one class id per voxel (NIfTI, DICOM series, .npy in; NIfTI out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, ModelFormatError
from ..manifest import Manifest, write_json_atomic
from .base import Task


class VolumeTask(Task):
    name = "volume"
    summary = "3-D label volumes: one class id per voxel (NIfTI / DICOM series / .npy in, NIfTI out)"
    section = "volume"
    bench_instead = ("segrt bench times volume bundles' sliding windows with `segrt bench --volume` (seeded MONAI "
                     "UNet and SegResNet against MONAI + PyTorch), not by bundle")

    def check_manifest(self, manifest: Manifest) -> None:
        from ..volume_spec import VolumeSpec

        if not manifest.classes:
            raise ModelFormatError("classes must name at least one class")
        self.check_sections(manifest)
        VolumeSpec.from_dict(manifest.volume or {})

    def load(self, bundle: Path, device: str = "auto", **kwargs: Any):
        from ..volume_predict import VolumeSegmenter

        if kwargs.pop("score_threshold", None) is not None:
            raise InvalidInputError("score_threshold (--score-threshold) applies to instance bundles; this one is volume")
        return VolumeSegmenter(bundle, device, **kwargs)

    def runners(self, predictor: Any) -> dict:
        return {"model": predictor.runner}

    # -- segrt run: a volume file or a DICOM series folder is one input ---------------------------------
    def run_inputs(self, path: Path) -> list[Path]:
        from ..volume_io import VOLUME_SUFFIXES

        if not path.exists():
            raise InvalidInputError(f"input {str(path)!r} does not exist")
        if path.is_file() or not any(p.name.lower().endswith(VOLUME_SUFFIXES) for p in path.iterdir()):
            return [path]  # a file, or a DICOM series folder
        return sorted(p for p in path.iterdir() if p.name.lower().endswith(VOLUME_SUFFIXES))

    def run_one(self, predictor: Any, path: Path, out_dir: Path) -> list[Path]:
        from ..image import write_image_atomic
        from ..volume_io import volume_stem

        result = predictor(path)
        stem = volume_stem(path)
        written = self.write(result, None, out_dir, stem, path)
        overlay = out_dir / f"{stem}.overlay.png"
        write_image_atomic(overlay, result.overlay()[:, :, ::-1])
        return [*written, overlay]

    def write(self, result: Any, image: np.ndarray | None, out_dir: Path, stem: str, source: Path) -> list[Path]:
        from ..volume_io import write_labels_nifti

        labels, stats = out_dir / f"{stem}.labels.nii.gz", out_dir / f"{stem}.volumes.json"
        write_labels_nifti(labels, result.labels, result.volume)
        write_json_atomic(stats, {"source": str(source), **result.stats()})
        return [labels, stats]

    def frame_record(self, result: Any) -> dict[str, Any]:
        return {"labels": {v["name"]: v["voxels"] for v in result.stats()["labels"].values()}}

    def stages(self, predictor: Any, prompts: dict[str, Any] | None = None) -> Any:
        raise InvalidInputError("segrt stream takes 2-D frames; volume bundles run with segrt run --input VOLUME")

    def eval_dataset(self, data: Path) -> Any:
        """``segrt eval --data``: images/ + labels/, or the Decathlon/nnU-Net imagesTs/ + labelsTs/."""
        from ..volume_eval import VolumeDataset

        return VolumeDataset.open(data)

    def evaluator(self, dataset: Any, tolerances: Any) -> Any:
        """Dice and HD95 per label against label volumes (``runtime/volume_eval.py``)."""
        from ..volume_eval import VolumeEvaluator

        return VolumeEvaluator(dataset, tolerances)

    # -- not yet: each refuses with one line instead of a NotImplementedError traceback ---------------------
    def calibration_feeds(self, predictor: Any, image: np.ndarray) -> dict[str, np.ndarray]:
        raise InvalidInputError("segrt quantize does not calibrate volume bundles yet")

    def gate_score(self, reference: Any, variant: Any, image: np.ndarray) -> dict[str, float]:
        raise InvalidInputError("segrt quantize does not gate volume bundles yet")

    gate_metric = "voxel_agreement"
    importable = True  # segrt import --task volume: runtime/volume_import.py (VolumeImport)
    volumetric = True


TASK = VolumeTask()
