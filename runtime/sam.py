"""Segment Anything: a drop-in for segment-anything's ``SamPredictor`` on ONNX Runtime or TensorRT.

``set_image`` resizes the longest side to 1024 exactly as segment-anything does (Pillow's bilinear
resize), normalises, pads and runs the encoder once; embeddings are kept in an LRU cache keyed by
the image's bytes and bounded in bytes, so re-prompting a frame costs only the decoder. ``predict``
takes prompts in original pixels and returns ``(masks, iou_predictions, low_res_logits)`` with the
shapes segment-anything returns; ``predict_batch`` runs many prompts in one decoder call. The
upscale to the original size (1024 square, crop, resize) happens here, outside the graph.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import kernels, prepost
from .backends import RunnerOptions, select_runner
from .bundle import Stages
from .errors import InvalidInputError, ModelFormatError
from .image import DEFAULT_MAX_PIXELS, ImageLike, read_image, to_channels, to_display_rgb
from .kernels import Taps, chain
from .manifest import Manifest, SamSpec, read_manifest

log = logging.getLogger("segrt")
#: Default bound of the embedding cache: 64 vit embeddings (4 MiB each).
DEFAULT_CACHE_BYTES = 256 * 2**20
POINT_LABELS = (0, 1, 2, 3)  # background, foreground, box top-left, box bottom-right
PAD_LABEL = -1


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """segment-anything's ``ResizeLongestSide.get_preprocess_shape``: (new_h, new_w)."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """SAM sees 8-bit RGB. Grey becomes three channels; 16-bit images are stretched to their own
    range (a 12-bit scan divided by 257 would be nearly black)."""
    rgb = to_channels(image, 3)
    if rgb.dtype == np.uint16:
        lo, hi = float(rgb.min()), float(rgb.max())
        rgb = np.rint((rgb.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1.0))).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def resize_longest(image: np.ndarray, long_side: int) -> np.ndarray:
    """Pillow's bilinear resize, as torchvision's ``resize`` on a PIL image does it in segment-anything."""
    from PIL import Image

    h, w = preprocess_shape(image.shape[0], image.shape[1], long_side)
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))


def upscale_taps(low_res_hw: tuple[int, int], input_hw: tuple[int, int], original_hw: tuple[int, int],
                 image_size: int) -> tuple[Taps, Taps]:
    """segment-anything's ``postprocess_masks`` as one resampling step per axis: bilinear (half-pixel)
    to the padded input square, crop the padding, bilinear to the original size."""
    (sh, sw), (ih, iw), (oh, ow) = low_res_hw, input_hw, original_hw
    return chain(sh, image_size, 0, ih, oh), chain(sw, image_size, 0, iw, ow)


@dataclass(frozen=True)
class Embedding:
    features: np.ndarray  # (1, C, h, w) float32
    input_size: tuple[int, int]  # the resized image's (h, w) inside the padded square
    original_size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.features.nbytes


class EmbeddingCache:
    """Least-recently-used image embeddings keyed by image content, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise InvalidInputError(f"cache_bytes must be >= 0; got {max_bytes}")
        self.max_bytes, self.hits, self.misses = max_bytes, 0, 0
        self._items: OrderedDict[str, Embedding] = OrderedDict()

    @staticmethod
    def key(image: np.ndarray) -> str:
        digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16)
        digest.update(repr((image.shape, image.dtype.str)).encode())
        return digest.hexdigest()

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Embedding | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return item

    def put(self, key: str, item: Embedding) -> None:
        if item.nbytes > self.max_bytes:
            return
        self._items[key] = item
        self._items.move_to_end(key)
        while self.nbytes > self.max_bytes:
            self._items.popitem(last=False)


class SamPredictor:
    """``SamPredictor(bundle)``: segment-anything's predictor API over an exported SAM bundle."""

    def __init__(self, bundle: str | Path, device: str = "auto", *, threads: int | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
                 options: RunnerOptions | None = None) -> None:
        self.bundle = Path(bundle)
        self.manifest: Manifest = read_manifest(self.bundle)
        if self.manifest.sam is None:  # the manifest has a sam section exactly for SAM bundles
            raise ModelFormatError(f"bundle task is {self.manifest.task!r}; SamPredictor needs a SAM bundle "
                                   "(segrt export sam)")
        self.spec: SamSpec = self.manifest.sam
        from .bundle import runner_options

        options = runner_options(threads, options)
        self.encoder, self.skipped = select_runner(self.bundle / self.manifest.model_file, device, options)
        self.decoder, _ = select_runner(self.bundle / self.spec.decoder_file, self.encoder.device, options)
        self.image_size = self.manifest.input.size[0] if self.manifest.input.size else 1024
        inp = self.manifest.input
        self._mean = np.asarray(inp.mean, np.float32) * 255.0
        self._std = np.asarray(inp.std, np.float32) * 255.0
        self.cache = EmbeddingCache(cache_bytes)
        self.max_pixels = max_pixels
        self.timings: dict[str, float] = {}
        self.reset_image()

    # -- image -------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return self.encoder.device

    def close(self) -> None:
        """Free both graphs' sessions or engines; idempotent."""
        self.encoder.close()
        self.decoder.close()

    def __enter__(self) -> SamPredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset_image(self) -> None:
        self._embedding: Embedding | None = None

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    @property
    def original_size(self) -> tuple[int, int]:
        return self._require().original_size

    @property
    def input_size(self) -> tuple[int, int]:
        return self._require().input_size

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """8-bit RGB HxWx3 -> the encoder's (1, 3, S, S) float32 input and the resized (h, w)."""
        resized = resize_longest(image, self.image_size)
        h, w = resized.shape[:2]
        x = np.zeros((1, 3, self.image_size, self.image_size), np.float32)
        x[0, :, :h, :w] = ((resized.astype(np.float32) - self._mean) / self._std).transpose(2, 0, 1)
        return x, (h, w)

    def set_image(self, image: ImageLike, image_format: str = "RGB") -> None:
        """Compute (or fetch from the cache) the image's embedding; prompts then refer to this image."""
        if image_format not in ("RGB", "BGR"):
            raise InvalidInputError(f"image_format must be 'RGB' or 'BGR'; got {image_format!r}")
        rgb = to_uint8_rgb(read_image(image, color="bgr" if image_format == "BGR" else "rgb",
                                      max_pixels=self.max_pixels))
        key = EmbeddingCache.key(rgb)
        cached = self.cache.get(key)
        if cached is not None:
            self._embedding = cached
            self.timings = {"encoder_cached": 1.0}
            return
        t0 = time.perf_counter()
        x, input_size = self.preprocess(rgb)
        t1 = time.perf_counter()
        (features,) = self.encoder.infer({self.manifest.input.name: x}).values()
        t2 = time.perf_counter()
        self._embedding = Embedding(np.ascontiguousarray(features, np.float32), input_size, rgb.shape[:2])
        self.cache.put(key, self._embedding)
        self.timings = {"preprocess": t1 - t0, "encoder": t2 - t1}

    def get_image_embedding(self) -> np.ndarray:
        return self._require().features

    def _require(self) -> Embedding:
        if self._embedding is None:
            raise InvalidInputError("no image set: call set_image(image) before predict()")
        return self._embedding

    # -- prompts -----------------------------------------------------------------------------
    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """Original pixels -> the encoder's resized frame (segment-anything's ``apply_coords``)."""
        (oh, ow), (nh, nw) = self.original_size, self.input_size
        out = np.array(coords, dtype=np.float64, copy=True)
        out[..., 0] *= nw / ow
        out[..., 1] *= nh / oh
        return out

    def _check_points(self, coords: np.ndarray, labels: np.ndarray) -> None:
        h, w = self.original_size
        if coords.ndim != 3 or coords.shape[2] != 2 or labels.shape != coords.shape[:2]:
            raise InvalidInputError(f"point_coords must be (N, 2) [or (B, N, 2)] with point_labels (N,) [or (B, N)]; "
                                    f"got {coords.shape} and {labels.shape}")
        if not np.isfinite(coords).all():
            raise InvalidInputError("point_coords contain NaN or infinity")
        bad = (coords[..., 0] < 0) | (coords[..., 0] > w) | (coords[..., 1] < 0) | (coords[..., 1] > h)
        if bad.any():
            x, y = coords[bad][0]
            raise InvalidInputError(f"point ({x:g}, {y:g}) lies outside the {w}x{h} image")
        if not np.isin(labels, POINT_LABELS).all():
            raise InvalidInputError(f"point_labels must be 0 (background), 1 (foreground), 2 or 3 (box corners); "
                                    f"got {sorted(set(np.unique(labels).tolist()) - set(POINT_LABELS))}")

    def _check_boxes(self, boxes: np.ndarray) -> None:
        h, w = self.original_size
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise InvalidInputError(f"box must be [x0, y0, x1, y1] (or (B, 4) boxes); got shape {boxes.shape}")
        if not np.isfinite(boxes).all():
            raise InvalidInputError("box contains NaN or infinity")
        if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
            raise InvalidInputError(f"box must have x1 >= x0 and y1 >= y0 (XYXY); got {boxes[0].tolist()}")
        if (boxes[:, :2] < 0).any() or (boxes[:, 2] > w).any() or (boxes[:, 3] > h).any():
            raise InvalidInputError(f"box {boxes[0].tolist()} reaches outside the {w}x{h} image")

    def encode_prompts(self, point_coords: np.ndarray | None, point_labels: np.ndarray | None,
                       boxes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Batched prompts in original pixels -> the decoder's (B, N, 2) coords and (B, N) labels:
        points, then the box as two corners labelled 2 and 3, or one padding point when no box."""
        if point_coords is None and boxes is None:
            raise InvalidInputError("empty prompt: give point_coords with point_labels, a box, or both")
        if (point_coords is None) != (point_labels is None):
            raise InvalidInputError("point_coords and point_labels go together: give both or neither")
        parts_c, parts_l = [], []
        if point_coords is not None:
            coords, labels = np.asarray(point_coords, np.float64), np.asarray(point_labels)
            self._check_points(coords, labels)
            parts_c.append(coords)
            parts_l.append(labels.astype(np.float32))
        if boxes is not None:
            boxes = np.asarray(boxes, np.float64)
            self._check_boxes(boxes)
            if parts_c and len(boxes) != len(parts_c[0]):
                raise InvalidInputError(f"{len(boxes)} boxes for {len(parts_c[0])} point prompts")
            parts_c.append(boxes.reshape(-1, 2, 2))
            parts_l.append(np.tile(np.array([[2, 3]], np.float32), (len(boxes), 1)))
        else:
            b = parts_c[0].shape[0]
            parts_c.append(np.zeros((b, 1, 2)))
            parts_l.append(np.full((b, 1), PAD_LABEL, np.float32))
        coords = np.concatenate(parts_c, axis=1)
        n_real = coords.shape[1] - (1 if boxes is None else 0)
        coords[:, :n_real] = self.apply_coords(coords[:, :n_real])
        return coords.astype(np.float32), np.concatenate(parts_l, axis=1)

    def decode(self, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """One decoder call: (B, N, 2) coords and (B, N) labels in the encoder's frame -> all
        ``mask_tokens`` low-res logits (B, T, S, S) and IoU predictions (B, T)."""
        s = self.spec.low_res_size
        if mask_input is None:
            mask, has = np.zeros((1, 1, s, s), np.float32), np.zeros(1, np.float32)
        else:
            mask = np.asarray(mask_input, np.float32)
            if mask.ndim == 3:
                mask = mask[None]
            if mask.shape[1:] != (1, s, s) or mask.shape[0] not in (1, len(coords)):
                raise InvalidInputError(f"mask_input must be (1, {s}, {s}) per prompt (low_res_logits of a previous "
                                        f"predict); got {np.asarray(mask_input).shape}")
            has = np.ones(1, np.float32)
        out = self.decoder.infer({"image_embeddings": self._require().features, "point_coords": coords,
                                  "point_labels": labels, "mask_input": np.ascontiguousarray(mask),
                                  "has_mask_input": has})
        return out["low_res_masks"], out["iou_predictions"]

    def predict_batch(self, point_coords: np.ndarray | None = None, point_labels: np.ndarray | None = None,
                      boxes: np.ndarray | None = None, mask_input: np.ndarray | None = None,
                      multimask_output: bool = True, return_logits: bool = False
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """B prompts in one decoder call (segment-anything's ``predict_torch`` in original pixels):
        point_coords (B, N, 2), point_labels (B, N), boxes (B, 4), mask_input (B, 1, 256, 256).
        Returns masks (B, C, H, W), iou_predictions (B, C), low_res_logits (B, C, 256, 256)."""
        emb = self._require()
        t0 = time.perf_counter()
        coords, labels = self.encode_prompts(point_coords, point_labels, boxes)
        low_res, iou = self.decode(coords, labels, mask_input)
        t1 = time.perf_counter()
        pick = slice(1, None) if multimask_output else slice(0, 1)
        low_res, iou = low_res[:, pick], iou[:, pick]
        b, c = low_res.shape[:2]
        flat = low_res.reshape(b * c, *low_res.shape[2:])
        taps = upscale_taps(flat.shape[1:], emb.input_size, emb.original_size, self.image_size)
        if return_logits:
            masks = kernels.upsample(flat, *taps)
        else:  # thresholded in the same pass: no full-size float logits
            masks, _ = kernels.upsample_threshold(flat, *taps, self.spec.mask_threshold)
        masks = masks.reshape(b, c, *emb.original_size)
        self.timings.update(decoder=t1 - t0, postprocess=time.perf_counter() - t1)
        return masks, iou, low_res

    def predict(self, point_coords: np.ndarray | None = None, point_labels: np.ndarray | None = None,
                box: np.ndarray | None = None, mask_input: np.ndarray | None = None,
                multimask_output: bool = True, return_logits: bool = False
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """segment-anything's ``SamPredictor.predict``: one prompt; returns masks (C, H, W),
        iou_predictions (C,) and low_res_logits (C, 256, 256)."""
        self._require()
        coords = None if point_coords is None else np.asarray(point_coords)[None]
        labels = None if point_labels is None else np.asarray(point_labels)[None]
        boxes = None if box is None else np.asarray(box, np.float64).reshape(1, -1)
        if mask_input is not None:
            mask_input = np.asarray(mask_input)[None]
        masks, iou, low_res = self.predict_batch(coords, labels, boxes, mask_input, multimask_output, return_logits)
        return masks[0], iou[0], low_res[0]


@dataclass
class PromptResult:
    """One frame of a SAM stream: the best mask per prompt."""

    masks: np.ndarray  # (P, H, W) bool
    scores: np.ndarray  # (P,) predicted IoU
    points: np.ndarray | None
    box: np.ndarray | None
    timings: dict[str, float] = field(default_factory=dict)

    def overlay(self, image: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        out = prepost.overlay_masks(to_display_rgb(read_image(image)), self.masks, alpha)
        if self.points is not None:
            for x, y in np.asarray(self.points).reshape(-1, 2):
                cv2.circle(out, (int(round(x)), int(round(y))), 5, (255, 255, 0), -1)
        if self.box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in self.box)
            cv2.rectangle(out, (x0, y0), (x1, y1), (255, 255, 0), 2)
        return out


class SamStages(Stages):
    """Fixed prompts re-applied to every frame of a stream: the encoder and decoder run on the worker."""

    model: SamPredictor

    def __init__(self, model: SamPredictor, points: np.ndarray | None, labels: np.ndarray | None,
                 box: np.ndarray | None) -> None:
        super().__init__(model)
        if points is None and box is None:
            raise InvalidInputError("a SAM stream needs fixed prompts: --point X,Y and/or --box X0,Y0,X1,Y1")
        self.points, self.labels, self.box = points, labels, box

    def pre(self, frame):
        return to_uint8_rgb(read_image(frame, max_pixels=self.model.max_pixels)), None

    def infer(self, model, payload):
        model.set_image(payload)
        masks, iou, _ = model.predict(self.points, self.labels, self.box, multimask_output=False)
        return masks, iou

    def post(self, raw, ctx):
        masks, iou = raw
        return PromptResult(masks, iou, self.points, self.box)
