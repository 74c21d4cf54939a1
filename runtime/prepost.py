"""Pre- and post-processing: where an image sits in the model's input, and the way back.

The pixel loops run in :mod:`segrt.runtime.kernels` (the C++ extension from ``cpp_ext/``, or its
NumPy twin); this module plans frames and turns them into resampling taps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from . import kernels
from .errors import InvalidInputError
from .kernels import Taps, chain
from .manifest import InputSpec, OutputSpec


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
    """Resize ``image`` (HxWxC, model channel order) into ``out`` (C, H, W) at ``frame.content`` and
    normalise it, in one pass (bilinear, half-pixel centres, interpolated in float: no 8-bit rounding
    between resize and normalisation, as torchvision resizes the float image).

    ``out`` must be zero (or hold padding) outside the content box.
    """
    top, left, h, w = frame.content
    a, b = _affine(image, spec)  # from the original pixels: intensity is a property of the image, not its resize
    if image.ndim == 2:
        image = image[:, :, None]
    kernels.resize_normalize(image, Taps.linear(image.shape[0], h), Taps.linear(image.shape[1], w), a, b, out, top, left)


def preprocess(images: list[np.ndarray], spec: InputSpec, dtype: type = np.float32) -> tuple[np.ndarray, list[Frame]]:
    """Images (HxWxC, model channel order) to one NCHW float32 (or float16) tensor (NHWC if the spec says so).

    All images must plan to the same input size (see :func:`plan_frame`): padding a smaller image
    further would change the model's answer near its border.
    """
    frames = [plan_frame(im.shape[0], im.shape[1], spec) for im in images]
    sizes = {f.input_hw for f in frames}
    if len(sizes) != 1:
        raise InvalidInputError(f"images of one batch must share an input size; got {sorted(sizes)}")
    H, W = frames[0].input_hw
    if dtype not in (np.float32, np.float16):
        raise InvalidInputError(f"preprocess makes float32 or float16 tensors; got {dtype}")
    batch = np.zeros((len(images), spec.channels, H, W), dtype)
    for i, (im, fr) in enumerate(zip(images, frames)):
        normalize_into(im, fr, spec, batch[i])
    if spec.layout == "nhwc":
        batch = np.ascontiguousarray(batch.transpose(0, 2, 3, 1))
    return batch, frames


def original_taps(scores_hw: tuple[int, int], frame: Frame) -> tuple[Taps, Taps]:
    """Row and column taps from a (h, w) model output to the original image: bilinear to the input
    grid, crop the content box, bilinear to the original size, composed into one step per axis."""
    top, left, h, w = frame.content
    (sh, sw), (ih, iw), (oh, ow) = scores_hw, frame.input_hw, frame.orig_hw
    return chain(sh, ih, top, h, oh), chain(sw, iw, left, w, ow)


def scores_to_original(scores: np.ndarray, frame: Frame) -> np.ndarray:
    """Map (C, h, w) model-output scores back onto the original image grid: (C, H0, W0) float32."""
    return kernels.upsample(scores, *original_taps(scores.shape[1:], frame))


def label_dtype(num_classes: int) -> type[np.unsignedinteger]:
    return np.uint8 if num_classes <= 256 else np.uint16


def labels_from_scores(scores: np.ndarray, frame: Frame, spec: OutputSpec, num_classes: int) -> np.ndarray:
    """(C, h, w) scores of one image to an (H0, W0) label map at the original resolution, upsampled and
    reduced in one pass (the full-resolution scores never exist)."""
    if scores.ndim != 3:
        raise InvalidInputError(f"expected (C, H, W) scores; got shape {scores.shape}")
    rows, cols = original_taps(scores.shape[1:], frame)
    if scores.shape[0] == 1:
        threshold = spec.threshold
        if spec.activation == "sigmoid":  # sigmoid(v) > t  <=>  v > logit(t): compare the raw scores
            with np.errstate(divide="ignore"):
                threshold = float(np.log(threshold) - np.log1p(-threshold))
        masks, _ = kernels.upsample_threshold(scores, rows, cols, threshold)
        return masks[0].view(np.uint8)
    labels, _ = kernels.upsample_argmax(scores, rows, cols)
    return labels if labels.dtype == label_dtype(num_classes) else labels.astype(label_dtype(num_classes))


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
    top = int(label_map.max()) + 1 if label_map.size else 1
    return kernels.overlay_labels(image_rgb, label_map, palette(max(num_classes, top)), alpha)


def overlay_masks(image_rgb: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Tint (N, H, W) masks over an 8-bit RGB image, instance i in colour i + 1 of :func:`palette`; where
    masks overlap the later one shows."""
    if masks.shape[1:] != image_rgb.shape[:2]:
        raise InvalidInputError(f"overlay image {image_rgb.shape[:2]} and masks {masks.shape[1:]} differ in size")
    ids = np.zeros(image_rgb.shape[:2], np.uint8 if len(masks) < 256 else np.uint16)
    for i, m in enumerate(masks):
        ids[m] = i + 1
    return kernels.overlay_labels(image_rgb, ids, palette(len(masks) + 1), alpha)


#: Overlays with a side shorter than this get no legend: it would hide most of the picture.
LEGEND_MIN_SIDE = 64
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class LegendEntry:
    """One legend row: a class name and the colours (RGB) it is painted in (one per instance for instance
    overlays, the swatch split into stripes)."""

    name: str
    colours: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class LegendLayout:
    box: tuple[int, int, int, int]  # x, y, width, height of the legend in the image
    rows: tuple[LegendEntry, ...]  # what fits; colours () for the "+N more" row
    scale: float
    thickness: int
    pad: int
    row_h: int
    swatch: int  # side of a colour square: the text's height, descenders included
    ascent: int  # the text's height above its baseline


def _class_name(class_names: Sequence[str], cid: int) -> str:
    return class_names[cid] if 0 <= cid < len(class_names) else str(cid)


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    return int(colour[0]), int(colour[1]), int(colour[2])


def semantic_legend(label_map: np.ndarray, class_names: Sequence[str]) -> list[LegendEntry]:
    """Legend rows for the classes present in ``label_map`` (background, class 0, left out), by class id,
    in the colours :func:`overlay_labels` paints."""
    present = np.flatnonzero(np.bincount(label_map.ravel(), minlength=1)) if label_map.size else np.zeros(0, int)
    present = present[present > 0]
    colours = palette(int(present[-1]) + 1) if len(present) else palette(1)
    return [LegendEntry(_class_name(class_names, int(c)), (_rgb(colours[c]),)) for c in present.tolist()]


def instance_legend(labels: np.ndarray, class_names: Sequence[str]) -> list[LegendEntry]:
    """Legend rows for the classes of ``labels`` (instance i in colour i + 1, as :func:`overlay_masks`), by
    class id; a class with several instances shows their colours side by side and its count."""
    colours = palette(len(labels) + 1)[1:]
    rows = []
    for cid in sorted(set(int(v) for v in labels.tolist())):
        idx = np.flatnonzero(labels == cid).tolist()
        name = _class_name(class_names, cid) + (f" x{len(idx)}" if len(idx) > 1 else "")
        rows.append(LegendEntry(name, tuple(_rgb(colours[i]) for i in idx)))
    return rows


def _fit(text: str, width: int, scale: float, thickness: int) -> str:
    """``text``, shortened with '..' until it is at most ``width`` pixels wide ('' when nothing fits)."""
    if cv2.getTextSize(text, _FONT, scale, thickness)[0][0] <= width:
        return text
    for n in range(len(text) - 1, 0, -1):
        if cv2.getTextSize(text[:n] + "..", _FONT, scale, thickness)[0][0] <= width:
            return text[:n] + ".."
    return ""


def legend_layout(image_hw: tuple[int, int], entries: Sequence[LegendEntry]) -> LegendLayout | None:
    """Where the legend of ``entries`` goes in an image of ``image_hw`` (top-right corner, sized with the
    image); None when there is nothing to show or the image is too small for one."""
    h, w = image_hw
    if not entries or min(h, w) < LEGEND_MIN_SIDE:
        return None
    scale = min(max(min(h, w) / 800, 0.35), 1.5)
    thickness = 1 if scale < 0.8 else 2
    (_, text_h), base = cv2.getTextSize("Ag", _FONT, scale, thickness)
    pad, swatch = max(2, round(4 * scale)), text_h + base
    row_h = swatch + pad
    fit = (h - 4 * pad) // row_h
    if fit < 1:
        return None
    rows = list(entries)
    if len(rows) > fit:
        rows = [*rows[: fit - 1], LegendEntry(f"+{len(entries) - fit + 1} more", ())]
    text_w = w - 2 * pad - (3 * pad + swatch)  # inside the image's margins, beside the swatch
    rows = [LegendEntry(_fit(r.name, text_w, scale, thickness), r.colours) for r in rows]
    if text_w < swatch or not all(r.name for r in rows):
        return None
    widest = max(cv2.getTextSize(r.name, _FONT, scale, thickness)[0][0] for r in rows)
    bw, bh = 3 * pad + swatch + widest + pad, len(rows) * row_h + pad
    return LegendLayout((w - pad - bw, pad, bw, bh), tuple(rows), scale, thickness, pad, row_h, swatch, text_h)


def draw_legend(image_rgb: np.ndarray, entries: Sequence[LegendEntry]) -> tuple[int, int, int, int] | None:
    """Draw a legend (colour swatch + name per entry on a darkened box) into ``image_rgb`` in place; only the
    pixels of the returned box (x, y, width, height) change. None (nothing drawn) when
    :func:`legend_layout` finds no room."""
    lay = legend_layout(image_rgb.shape[:2], entries)
    if lay is None:
        return None
    x, y, bw, bh = lay.box
    patch = (image_rgb[y : y + bh, x : x + bw].astype(np.uint16) * 3 // 10).astype(np.uint8)
    p, s = lay.pad, lay.swatch
    for k, row in enumerate(lay.rows):
        top = p + k * lay.row_h
        if row.colours:
            shown = row.colours[:4]
            for j, colour in enumerate(shown):
                x0, x1 = p + s * j // len(shown), p + s * (j + 1) // len(shown)
                cv2.rectangle(patch, (x0, top), (x1 - 1, top + s - 1), colour, -1)
            cv2.rectangle(patch, (p, top), (p + s - 1, top + s - 1), (200, 200, 200), 1)
        cv2.putText(patch, row.name, (2 * p + s, top + lay.ascent), _FONT, lay.scale, (255, 255, 255), lay.thickness, cv2.LINE_AA)
    image_rgb[y : y + bh, x : x + bw] = patch
    return lay.box


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
    m = masks.shape[-1]
    scale = (m + 2) / m
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    centre = (boxes[:, 2:] + boxes[:, :2]) * 0.5
    grown = np.concatenate([centre - half, centre + half], axis=1).astype(np.int64)  # truncates, like torch
    grown = np.clip(grown, -(2**30), 2**30)  # int32 for the kernel; far outside any image either way
    return kernels.paste_masks(masks, grown, image_hw, threshold)


def rle_encode(masks: np.ndarray) -> list[dict[str, object]]:
    """COCO compressed RLE of (N, H, W) boolean masks, counts as ASCII text (JSON-ready)."""
    if len(masks) == 0:
        return []
    size = [int(masks.shape[1]), int(masks.shape[2])]
    return [{"size": size, "counts": counts} for counts in kernels.rle_strings(masks)]
