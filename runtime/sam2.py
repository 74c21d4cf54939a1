"""SAM 2 image path: a drop-in for sam2's ``SAM2ImagePredictor`` on ONNX Runtime or TensorRT (NumPy, no torch).

``set_image`` preprocesses as sam2 does: ToTensor, ``Resize((1024, 1024))`` (the aspect ratio is not kept;
torchvision's antialiased bilinear, reproduced here as PIL-style triangle taps) and ImageNet normalisation, then
runs the encoder graph once. ``predict`` takes prompts in original pixels (or normalised to 0-1 with
``normalize_coords=False``) and returns ``(masks, ious, low_res_masks)`` shaped as sam2 returns them;
``multimask_output=False`` applies sam2's dynamic fallback (the single mask unless its stability score is below
the threshold, then the best multimask output). The upscale to the original size (one bilinear step, as sam2's
``postprocess_masks``) happens here, outside the graph. The constants come from the bundle's ``sam2.json``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import kernels
from .backends import RunnerOptions, select_runner
from .errors import InvalidInputError, ModelFormatError
from .image import DEFAULT_MAX_PIXELS, ImageLike, read_image
from .kernels import Taps
from .manifest import Manifest, read_manifest, write_json_atomic
from .sam import to_uint8_rgb

SIDECAR = "sam2.json"
POINT_LABELS = (0, 1, 2, 3)
PAD_LABEL = -1
FEATURES = ("image_embed", "high_res_feats_0", "high_res_feats_1")
LOGIT_CLAMP = 32.0  # sam2 clamps the low-res logits it returns to +-32


@dataclass(frozen=True)
class Sam2Spec:
    """A SAM 2 bundle's second graph and the constants of its pre- and post-processing (``sam2.json``)."""

    variant: str
    decoder_file: str = "decoder.onnx"
    low_res_size: int = 256
    mask_tokens: int = 4
    mask_threshold: float = 0.0
    dynamic_multimask: bool = True  # sam2.1: multimask_output=False falls back on unstable single masks
    stability_delta: float = 0.05
    stability_thresh: float = 0.98

    def __post_init__(self) -> None:
        if Path(self.decoder_file).name != self.decoder_file:
            raise ModelFormatError(f"sam2.decoder_file must be a file name inside the bundle; got {self.decoder_file!r}")
        if self.low_res_size < 1 or self.mask_tokens < 2 or not 0 < self.stability_thresh <= 1:
            raise ModelFormatError("sam2.json needs low_res_size >= 1, mask_tokens >= 2, 0 < stability_thresh <= 1")

    def write(self, bundle: Path) -> None:
        write_json_atomic(Path(bundle) / SIDECAR, asdict(self))

    @classmethod
    def read(cls, bundle: Path) -> Sam2Spec:
        import json

        path = Path(bundle) / SIDECAR
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ModelFormatError(f"{bundle} has no {SIDECAR}; re-export it with `segrt export sam2`") from None
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
            raise ModelFormatError(f"{path} is malformed ({type(exc).__name__}: {exc}); re-export the bundle") from None


def antialias_taps(n_in: int, n_out: int) -> Taps:
    """torchvision's ``Resize(antialias=True)`` bilinear on one axis (PIL's triangle filter widened by the
    downscale factor, weights renormalised at the edges; plain half-pixel bilinear when upscaling)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    inv = 1.0 / support
    centers = (np.arange(n_out) + 0.5) * scale
    lo = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((centers + support + 0.5).astype(np.int64), n_in)
    k = int((hi - lo).max())
    idx = lo[:, None] + np.arange(k)[None, :]
    w = np.clip(1.0 - np.abs((idx - centers[:, None] + 0.5) * inv), 0.0, None)
    w[idx >= hi[:, None]] = 0.0
    w /= w.sum(axis=1, keepdims=True)
    return Taps(np.minimum(idx, n_in - 1), w, n_in)


@dataclass(frozen=True)
class Features:
    """One image's encoder outputs and its original (H, W)."""

    arrays: dict[str, np.ndarray]
    original_size: tuple[int, int]


def stability_scores(logits: np.ndarray, delta: float) -> np.ndarray:
    """sam2's ``_get_stability_scores``: area(logit > delta) / area(logit > -delta), 1 where both are empty."""
    flat = logits.reshape(*logits.shape[:-2], -1)
    inner = (flat > delta).sum(-1).astype(np.float32)
    outer = (flat > -delta).sum(-1).astype(np.float32)
    return np.where(outer > 0, inner / np.maximum(outer, 1), 1.0).astype(np.float32)


class SAM2ImagePredictor:
    """``SAM2ImagePredictor(bundle)``: sam2's image predictor API over an exported SAM 2 bundle."""

    def __init__(self, bundle: str | Path, device: str = "auto", *, threads: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, options: RunnerOptions | None = None) -> None:
        from .bundle import runner_options

        self.bundle = Path(bundle)
        self.manifest: Manifest = read_manifest(self.bundle)
        if self.manifest.task != "sam2":
            raise ModelFormatError(f"bundle task is {self.manifest.task!r}; SAM2ImagePredictor needs a SAM 2 bundle "
                                   "(segrt export sam2)")
        self.spec = Sam2Spec.read(self.bundle)
        options = runner_options(threads, options)
        self.encoder, self.skipped = select_runner(self.bundle / self.manifest.model_file, device, options)
        self.decoder, _ = select_runner(self.bundle / self.spec.decoder_file, self.encoder.device, options)
        inp = self.manifest.input
        self.image_size = inp.size[0] if inp.size else 1024
        self._scale = (1.0 / (np.asarray(inp.std, np.float32) * 255.0)).astype(np.float32)
        self._shift = (-np.asarray(inp.mean, np.float32) / np.asarray(inp.std, np.float32)).astype(np.float32)
        self.mask_threshold = self.spec.mask_threshold
        self.max_pixels = max_pixels
        self.timings: dict[str, float] = {}
        self.reset_predictor()

    # -- state ---------------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return self.encoder.device

    def close(self) -> None:
        self.encoder.close()
        self.decoder.close()

    def __enter__(self) -> SAM2ImagePredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset_predictor(self) -> None:
        self._features: list[Features] = []
        self._is_batch = False

    @property
    def _is_image_set(self) -> bool:
        return bool(self._features)

    @property
    def _orig_hw(self) -> list[tuple[int, int]]:
        return [f.original_size for f in self._features]

    def get_image_embedding(self) -> np.ndarray:
        return np.concatenate([self._require(i).arrays["image_embed"] for i in range(len(self._features))])

    def _require(self, img_idx: int = 0) -> Features:
        if not self._features:
            raise InvalidInputError("no image set: call set_image(image) (or set_image_batch) before predict()")
        return self._features[img_idx]

    # -- images --------------------------------------------------------------------------------------
    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """8-bit RGB HxWx3 -> the encoder's (1, 3, S, S) float32 input, as sam2's ``SAM2Transforms``."""
        s = self.image_size
        out = np.empty((3, s, s), np.float32)
        h, w = rgb.shape[:2]
        kernels.resize_normalize(rgb, antialias_taps(h, s), antialias_taps(w, s), self._scale, self._shift, out)
        return out[None]

    def _encode(self, image: ImageLike) -> Features:
        rgb = to_uint8_rgb(read_image(np.asarray(image) if not isinstance(image, (str, Path, np.ndarray)) else image,
                                      max_pixels=self.max_pixels))
        t0 = time.perf_counter()
        x = self.preprocess(rgb)
        t1 = time.perf_counter()
        out = self.encoder.infer({self.manifest.input.name: x})
        self.timings = {"preprocess": t1 - t0, "encoder": time.perf_counter() - t1}
        return Features({k: np.ascontiguousarray(out[k], np.float32) for k in FEATURES}, rgb.shape[:2])

    def set_image(self, image: ImageLike | Any) -> None:
        """Encode one RGB HxWxC image (uint8 0-255; a PIL image is converted); prompts then refer to it."""
        self.reset_predictor()
        self._features = [self._encode(image)]

    def set_image_batch(self, image_list: list[np.ndarray]) -> None:
        """Encode several RGB images, for :meth:`predict_batch` (the encoder runs once per image)."""
        if not isinstance(image_list, list) or not image_list:
            raise InvalidInputError("set_image_batch takes a non-empty list of RGB HxWx3 arrays")
        self.reset_predictor()
        self._features = [self._encode(img) for img in image_list]
        self._is_batch = True

    # -- prompts -------------------------------------------------------------------------------------
    def _to_model_frame(self, coords: np.ndarray, normalize: bool, hw: tuple[int, int]) -> np.ndarray:
        out = np.array(coords, dtype=np.float64, copy=True)
        if normalize:
            out[..., 0] /= hw[1]
            out[..., 1] /= hw[0]
        return out * self.image_size

    def prompts(self, point_coords: Any, point_labels: Any, box: Any, normalize: bool, hw: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray]:
        """Prompts -> the decoder's (B, N, 2) coords and (B, N) labels: box corners (labels 2, 3) first, then
        the points, then one padding point (label -1), as sam2's predictor builds them."""
        if point_coords is None and box is None:
            raise InvalidInputError("empty prompt: give point_coords with point_labels, a box, or both")
        if (point_coords is None) != (point_labels is None):
            raise InvalidInputError("point_coords and point_labels go together: give both or neither")
        coords_parts, label_parts = [], []
        if box is not None:
            boxes = np.asarray(box, np.float64)
            if boxes.shape[-1] != 4 or boxes.ndim > 2 or not np.isfinite(boxes).all():
                raise InvalidInputError(f"box must be finite [x0, y0, x1, y1] (or (B, 4) boxes); got shape {boxes.shape}")
            boxes = self._to_model_frame(boxes.reshape(-1, 2, 2), normalize, hw)
            coords_parts.append(boxes)
            label_parts.append(np.tile(np.array([[2.0, 3.0]]), (len(boxes), 1)))
        if point_coords is not None:
            coords, labels = np.asarray(point_coords, np.float64), np.asarray(point_labels)
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
            if coords.ndim != 3 or coords.shape[2] != 2 or labels.shape != coords.shape[:2]:
                raise InvalidInputError(f"point_coords must be (N, 2) [or (B, N, 2)] with point_labels (N,) [or "
                                        f"(B, N)]; got {np.shape(point_coords)} and {np.shape(point_labels)}")
            if not np.isfinite(coords).all() or not np.isin(labels, POINT_LABELS).all():
                raise InvalidInputError("point_coords must be finite and point_labels in 0 (background), 1 "
                                        "(foreground), 2, 3 (box corners)")
            if coords_parts and len(coords_parts[0]) != len(coords):
                raise InvalidInputError(f"{len(coords_parts[0])} boxes for {len(coords)} point prompts")
            coords_parts.append(self._to_model_frame(coords, normalize, hw))
            label_parts.append(labels.astype(np.float64))
        b = len(coords_parts[0])
        coords_parts.append(np.zeros((b, 1, 2)))
        label_parts.append(np.full((b, 1), PAD_LABEL, np.float64))
        return np.concatenate(coords_parts, 1).astype(np.float32), np.concatenate(label_parts, 1).astype(np.float32)

    def decode(self, feats: Features, coords: np.ndarray, labels: np.ndarray, mask_input: Any = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One decoder call: all ``mask_tokens`` low-res logits (B, T, S, S), IoU predictions (B, T) and object
        score logits (B, 1)."""
        s = self.spec.low_res_size
        if mask_input is None:
            mask, has = np.zeros((1, 1, s, s), np.float32), np.zeros(1, np.float32)
        else:
            mask = np.asarray(mask_input, np.float32)
            mask = mask[None] if mask.ndim == 3 else mask
            if mask.shape[1:] != (1, s, s) or mask.shape[0] not in (1, len(coords)):
                raise InvalidInputError(f"mask_input must be (1, {s}, {s}) per prompt (low_res_masks of a previous "
                                        f"predict); got {np.shape(mask_input)}")
            has = np.ones(1, np.float32)
        out = self.decoder.infer({**feats.arrays, "point_coords": coords, "point_labels": labels,
                                  "mask_input": np.ascontiguousarray(mask), "has_mask_input": has})
        return out["low_res_masks"], out["iou_predictions"], out["object_score_logits"]

    def select(self, low_res: np.ndarray, iou: np.ndarray, multimask_output: bool) -> tuple[np.ndarray, np.ndarray]:
        """sam2's ``MaskDecoder.forward`` selection: the three multimask outputs, or the single mask (with the
        dynamic fallback to the best multimask output where the single mask is unstable)."""
        if multimask_output:
            return low_res[:, 1:], iou[:, 1:]
        if not self.spec.dynamic_multimask:
            return low_res[:, :1], iou[:, :1]
        best = np.argmax(iou[:, 1:], axis=1) + 1
        rows = np.arange(len(low_res))
        stable = stability_scores(low_res[:, 0], self.spec.stability_delta) >= self.spec.stability_thresh
        pick = np.where(stable, 0, best)
        return low_res[rows, pick][:, None], iou[rows, pick][:, None]

    def _predict(self, feats: Features, point_coords: Any, point_labels: Any, box: Any, mask_input: Any,
                 multimask_output: bool, return_logits: bool, normalize_coords: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        coords, labels = self.prompts(point_coords, point_labels, box, normalize_coords, feats.original_size)
        low_res, iou, _ = self.decode(feats, coords, labels, mask_input)
        low_res, iou = self.select(low_res, iou, multimask_output)
        t1 = time.perf_counter()
        b, c = low_res.shape[:2]
        flat = low_res.reshape(b * c, *low_res.shape[2:])
        (oh, ow), s = feats.original_size, low_res.shape[-1]
        rows, cols = Taps.linear(s, oh), Taps.linear(s, ow)
        if return_logits:
            masks: np.ndarray = kernels.upsample(flat, rows, cols)
        else:
            masks, _ = kernels.upsample_threshold(flat, rows, cols, self.mask_threshold)
        masks = masks.reshape(b, c, oh, ow)
        self.timings.update(decoder=t1 - t0, postprocess=time.perf_counter() - t1)
        return masks, iou, np.clip(low_res, -LOGIT_CLAMP, LOGIT_CLAMP)

    def predict(self, point_coords: Any = None, point_labels: Any = None, box: Any = None, mask_input: Any = None,
                multimask_output: bool = True, return_logits: bool = False, normalize_coords: bool = True
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """sam2's ``SAM2ImagePredictor.predict``: masks (C, H, W) (bool, or float logits with ``return_logits``),
        ious (C,) and low_res_masks (C, 256, 256); with B batched prompts, (B, C, ...)."""
        feats = self._require()
        masks, iou, low = self._predict(feats, point_coords, point_labels, box, mask_input, multimask_output,
                                        return_logits, normalize_coords)
        return (masks[0], iou[0], low[0]) if len(masks) == 1 else (masks, iou, low)

    def predict_batch(self, point_coords_batch: list | None = None, point_labels_batch: list | None = None,
                      box_batch: list | None = None, mask_input_batch: list | None = None,
                      multimask_output: bool = True, return_logits: bool = False, normalize_coords: bool = True
                      ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """sam2's ``predict_batch``: one prompt set per image of :meth:`set_image_batch`; lists of per-image
        results, each shaped as :meth:`predict` returns it."""
        if not self._is_batch:
            raise InvalidInputError("predict_batch needs images set with set_image_batch([...])")
        out: tuple[list, list, list] = ([], [], [])
        for i, feats in enumerate(self._features):
            coords, labels, box, mask = (None if b is None else b[i] for b in (point_coords_batch, point_labels_batch,
                                                                               box_batch, mask_input_batch))
            masks, iou, low = self._predict(feats, coords, labels, box, mask, multimask_output, return_logits,
                                            normalize_coords)
            for lst, arr in zip(out, (masks, iou, low)):
                lst.append(arr[0] if len(arr) == 1 else arr)
        return out
