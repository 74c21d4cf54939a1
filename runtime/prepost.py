"""Pre- and post-processing, NumPy/OpenCV reference implementation.

Each function here is the reference twin of a kernel the C++ extension (``cpp_ext/``) may provide
with the same signature; the runtime calls them through this module's names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import InvalidInputError
from .manifest import InputSpec, OutputSpec

_CV_MAX_CHANNELS = 512


@dataclass(frozen=True)
class Frame:
    """Where an original image sits inside the model's input tensor.

    ``content`` is (top, left, height, width) of the (possibly resized) image inside the
    ``input_hw`` tensor; everything outside it is padding.
    """

    orig_hw: tuple[int, int]
    input_hw: tuple[int, int]
    content: tuple[int, int, int, int]


def plan_frame(height: int, width: int, spec: InputSpec) -> Frame:
    s = spec.stride
    if spec.resize == "pad":
        padded = (math.ceil(height / s) * s, math.ceil(width / s) * s)
        return Frame((height, width), padded, (0, 0, height, width))
    if spec.resize == "shortest_edge":
        nh, nw = shortest_edge_size(height, width, spec.min_size, spec.max_size)  # type: ignore[arg-type]
        return Frame((height, width), (math.ceil(nh / s) * s, math.ceil(nw / s) * s), (0, 0, nh, nw))
    assert spec.size is not None  # guaranteed by InputSpec.__post_init__
    H, W = spec.size
    if spec.resize == "stretch":
        return Frame((height, width), (H, W), (0, 0, H, W))
    scale = min(H / height, W / width)
    nh, nw = max(1, round(height * scale)), max(1, round(width * scale))
    return Frame((height, width), (H, W), ((H - nh) // 2, (W - nw) // 2, nh, nw))


def shortest_edge_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """torchvision's ``GeneralizedRCNNTransform`` resize: one scale factor for both sides, sizes
    floored (``interpolate(scale_factor=s, recompute_scale_factor=True)``)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))


def _affine(image: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel a, b with normalised = pixel * a + b (intensity scaling fused with mean/std)."""
    if spec.intensity == "minmax":
        lo, hi = float(image.min()), float(image.max())
    else:
        lo, hi = 0.0, float(np.iinfo(image.dtype).max)
    inv = 1.0 / max(hi - lo, 1e-12)
    mean = np.broadcast_to(np.asarray(spec.mean, np.float32), (spec.channels,))
    std = np.broadcast_to(np.asarray(spec.std, np.float32), (spec.channels,))
    a = (inv / std).astype(np.float32)
    b = (-(lo * inv + mean) / std).astype(np.float32)
    return a, b


def normalize_into(image: np.ndarray, frame: Frame, spec: InputSpec, out: np.ndarray) -> None:
    """Resize ``image`` (HxWxC, model channel order) into ``out`` (C, H, W) float32 at ``frame.content``.

    ``out`` must be zero (or hold padding) outside the content box.
    """
    top, left, h, w = frame.content
    a, b = _affine(image, spec)  # from the original pixels: intensity is a property of the image, not its resize
    if (h, w) != image.shape[:2]:
        if spec.resize == "shortest_edge":  # torchvision resizes the float image: match it, not 8-bit rounding
            image = image.astype(np.float32)
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        if image.ndim == 2:
            image = image[:, :, None]
    region = out[:, top : top + h, left : left + w]
    np.multiply(image.transpose(2, 0, 1), a[:, None, None], out=region, casting="unsafe")
    region += b[:, None, None]


def preprocess(images: list[np.ndarray], spec: InputSpec) -> tuple[np.ndarray, list[Frame]]:
    """Images (HxWxC, model channel order) to one NCHW float32 tensor (NHWC if the spec says so).

    All images must plan to the same input size (see :func:`plan_frame`): padding a smaller image
    further would change the model's answer near its border.
    """
    frames = [plan_frame(im.shape[0], im.shape[1], spec) for im in images]
    sizes = {f.input_hw for f in frames}
    if len(sizes) != 1:
        raise InvalidInputError(f"images of one batch must share an input size; got {sorted(sizes)}")
    H, W = frames[0].input_hw
    batch = np.zeros((len(images), spec.channels, H, W), np.float32)
    for i, (im, fr) in enumerate(zip(images, frames)):
        normalize_into(im, fr, spec, batch[i])
    if spec.layout == "nhwc":
        batch = np.ascontiguousarray(batch.transpose(0, 2, 3, 1))
    return batch, frames


def _resize_chw(scores: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (C, h, w) float array to (C, H, W), half-pixel centres (align_corners=False)."""
    out = np.empty((scores.shape[0], *hw), np.float32)
    for c0 in range(0, scores.shape[0], _CV_MAX_CHANNELS):
        chunk = np.ascontiguousarray(scores[c0 : c0 + _CV_MAX_CHANNELS].transpose(1, 2, 0))
        res = cv2.resize(chunk, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
        out[c0 : c0 + _CV_MAX_CHANNELS] = res.reshape(*hw, -1).transpose(2, 0, 1)
    return out


def scores_to_original(scores: np.ndarray, frame: Frame) -> np.ndarray:
    """Map (C, h, w) model-output scores back onto the original image grid: (C, H0, W0)."""
    scores = scores.astype(np.float32, copy=False)
    if scores.shape[1:] != frame.input_hw:
        scores = _resize_chw(scores, frame.input_hw)
    top, left, h, w = frame.content
    scores = scores[:, top : top + h, left : left + w]
    if (h, w) != frame.orig_hw:
        scores = _resize_chw(scores, frame.orig_hw)
    return scores


def label_dtype(num_classes: int) -> type[np.unsignedinteger]:
    return np.uint8 if num_classes <= 256 else np.uint16


def labels_from_scores(scores: np.ndarray, frame: Frame, spec: OutputSpec, num_classes: int) -> np.ndarray:
    """(C, h, w) scores of one image to an (H0, W0) label map at the original resolution."""
    if scores.ndim != 3:
        raise InvalidInputError(f"expected (C, H, W) scores; got shape {scores.shape}")
    full = scores_to_original(scores, frame)
    if full.shape[0] == 1:
        prob = full[0]
        if spec.activation == "sigmoid":
            prob = 1.0 / (1.0 + np.exp(-prob))
        return (prob > spec.threshold).astype(np.uint8)
    return full.argmax(axis=0).astype(label_dtype(num_classes))


def palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved), extended to any number of classes; (N, 3) uint8 RGB."""
    ids = np.arange(num_classes)
    colours = np.zeros((num_classes, 3), np.int64)
    for shift in range(7, -1, -1):
        for ch in range(3):
            colours[:, ch] |= ((ids >> (3 * (7 - shift) + ch)) & 1) << shift
    return colours.astype(np.uint8)


def overlay_labels(image_rgb: np.ndarray, label_map: np.ndarray, num_classes: int, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour per class over an 8-bit RGB image; class 0 (background) is left unpainted."""
    if image_rgb.shape[:2] != label_map.shape:
        raise InvalidInputError(f"overlay image {image_rgb.shape[:2]} and label map {label_map.shape} differ in size")
    colours = palette(max(num_classes, int(label_map.max()) + 1))[label_map]
    blended = cv2.addWeighted(image_rgb, 1.0 - alpha, colours, alpha, 0.0)
    return np.where((label_map > 0)[:, :, None], blended, image_rgb)


def paste_masks(masks: np.ndarray, boxes: np.ndarray, image_hw: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """Paste (N, M, M) mask probabilities into their xyxy boxes on an (H, W) canvas: (N, H, W) bool.

    torchvision's ``paste_masks_in_image``, touching only each box's pixels: the mask is padded by one
    pixel and its box grown by (M + 2) / M to match, the box is truncated to integers, the mask resized
    bilinearly (half-pixel centres) to the box's size and the part inside the image thresholded.
    """
    if masks.ndim == 4:
        masks = masks[:, 0]
    if masks.ndim != 3 or boxes.shape != (len(masks), 4):
        raise InvalidInputError(f"expected (N, M, M) masks and (N, 4) boxes; got {masks.shape} and {boxes.shape}")
    H, W = image_hw
    out = np.zeros((len(masks), H, W), bool)
    if len(masks) == 0:
        return out
    m = masks.shape[-1]
    padded = np.pad(masks.astype(np.float32, copy=False), ((0, 0), (1, 1), (1, 1)))
    scale = (m + 2) / m
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    centre = (boxes[:, 2:] + boxes[:, :2]) * 0.5
    grown = np.concatenate([centre - half, centre + half], axis=1).astype(np.int64)  # truncates, like torch
    for i, (x0, y0, x1, y1) in enumerate(grown.tolist()):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        xa, xb, ya, yb = max(x0, 0), min(x1 + 1, W), max(y0, 0), min(y1 + 1, H)
        if xb <= xa or yb <= ya:
            continue
        resized = cv2.resize(padded[i], (w, h), interpolation=cv2.INTER_LINEAR)
        out[i, ya:yb, xa:xb] = resized[ya - y0 : yb - y0, xa - x0 : xb - x0] > threshold
    return out


def rle_encode(masks: np.ndarray) -> list[dict[str, object]]:
    """COCO compressed RLE of (N, H, W) boolean masks, counts as ASCII text (JSON-ready)."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles
