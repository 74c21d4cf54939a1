"""'Segment everything': a drop-in for segment-anything's ``SamAutomaticMaskGenerator``.

Same grid of point prompts, same filters (predicted IoU, stability score, crop edge, box NMS), same
output dicts. What differs is where the time goes: each batch of points is one decoder call; masks
are filtered on the predicted IoU *before* anything is upscaled; the survivors are upscaled in one
OpenCV call per chunk, their stability scores and boxes computed with array reductions; and only the
masks that survive NMS are upscaled again and encoded, instead of RLE-encoding every candidate.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from itertools import product
from typing import Any, Literal

import cv2
import numpy as np
from tqdm import tqdm

from . import kernels
from .errors import InvalidInputError
from .image import ImageLike, read_image
from .kernels import Taps
from .sam import SamPredictor, to_uint8_rgb, upscale_taps

OutputMode = Literal["binary_mask", "coco_rle"]
#: Candidate masks upscaled to full resolution at once (bounds memory on large images).
UPSCALE_CHUNK = 48


def build_point_grid(n_per_side: int) -> np.ndarray:
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    return np.stack([np.tile(side[None, :], (n_per_side, 1)), np.tile(side[:, None], (1, n_per_side))],
                    axis=-1).reshape(-1, 2)


def generate_crop_boxes(im_size: tuple[int, int], n_layers: int, overlap_ratio: float
                        ) -> tuple[list[list[int]], list[int]]:
    """segment-anything's crop layout: the whole image, then (2**i)**2 overlapping crops per layer i."""
    im_h, im_w = im_size
    boxes, layers = [[0, 0, im_w, im_h]], [0]
    for i in range(n_layers):
        n = 2 ** (i + 1)
        overlap = int(overlap_ratio * min(im_h, im_w) * (2 / n))
        cw, ch = (int(math.ceil((overlap * (n - 1) + length) / n)) for length in (im_w, im_h))
        for x0, y0 in product([int((cw - overlap) * j) for j in range(n)], [int((ch - overlap) * j) for j in range(n)]):
            boxes.append([x0, y0, min(x0 + cw, im_w), min(y0 + ch, im_h)])
            layers.append(i + 1)
    return boxes, layers


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(K, H, W) bool -> (K, 4) int64 XYXY with inclusive right/bottom; [0, 0, 0, 0] when empty."""
    out = np.zeros((len(masks), 4), np.int64)
    if masks.size == 0:
        return out
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    nonempty = rows.any(axis=1)
    h, w = masks.shape[1:]
    out[:, 0] = cols.argmax(axis=1)
    out[:, 1] = rows.argmax(axis=1)
    out[:, 2] = w - 1 - cols[:, ::-1].argmax(axis=1)
    out[:, 3] = h - 1 - rows[:, ::-1].argmax(axis=1)
    out[~nonempty] = 0
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """torchvision's ``nms``: indices kept, by descending score."""
    order = np.argsort(-scores, kind="stable")
    boxes = boxes[order].astype(np.float64)
    iou = box_iou(boxes, boxes)
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > threshold
    return order[np.asarray(keep, np.int64)]


def is_box_near_crop_edge(boxes: np.ndarray, crop_box: list[int], orig_box: list[int], atol: float = 20.0) -> np.ndarray:
    boxes = boxes + np.asarray(crop_box[:2] * 2)
    near_crop = np.abs(boxes - np.asarray(crop_box, np.float64)) <= atol
    near_image = np.abs(boxes - np.asarray(orig_box, np.float64)) <= atol
    return (near_crop & ~near_image).any(axis=1)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: Literal["holes", "islands"]
                         ) -> tuple[np.ndarray, bool]:
    """segment-anything's clean-up: fill holes or drop islands smaller than ``area_thresh``."""
    holes = mode == "holes"
    n, regions, stats, _ = cv2.connectedComponentsWithStats((holes ^ mask).astype(np.uint8), 8)
    sizes = stats[1:, -1]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill = [0, *small]
    if not holes:
        fill = [i for i in range(n) if i not in fill] or [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


@dataclass
class Candidates:
    """Masks of one crop that passed the filters, kept as low-res logits until NMS has spoken."""

    low_res: list[np.ndarray] = field(default_factory=list)
    iou: list[np.ndarray] = field(default_factory=list)
    stability: list[np.ndarray] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    points: list[np.ndarray] = field(default_factory=list)

    def add(self, **parts: np.ndarray) -> None:
        for name, value in parts.items():
            getattr(self, name).append(value)

    def stacked(self) -> dict[str, np.ndarray]:
        empty = {"low_res": (0, 256, 256), "iou": (0,), "stability": (0,), "boxes": (0, 4), "points": (0, 2)}
        return {k: np.concatenate(getattr(self, k)) if getattr(self, k) else np.zeros(empty[k]) for k in empty}


class SamAutomaticMaskGenerator:
    """``SamAutomaticMaskGenerator(predictor_or_bundle, ...)``: segment-anything's arguments and output."""

    def __init__(self, model: SamPredictor | str, points_per_side: int | None = 32, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
                 crop_nms_thresh: float = 0.7, crop_overlap_ratio: float = 512 / 1500,
                 crop_n_points_downscale_factor: int = 1, point_grids: list[np.ndarray] | None = None,
                 min_mask_region_area: int = 0, output_mode: OutputMode = "binary_mask", *,
                 progress: bool = False) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise InvalidInputError("give exactly one of points_per_side and point_grids")
        if output_mode not in ("binary_mask", "coco_rle"):
            raise InvalidInputError(f"output_mode must be 'binary_mask' or 'coco_rle'; got {output_mode!r}")
        if points_per_batch < 1 or (points_per_side is not None and points_per_side < 1) or crop_n_layers < 0:
            raise InvalidInputError("points_per_side and points_per_batch must be >= 1, crop_n_layers >= 0")
        self.predictor = model if isinstance(model, SamPredictor) else SamPredictor(model)
        self.point_grids = point_grids or [
            build_point_grid(int(points_per_side / crop_n_points_downscale_factor**i))  # type: ignore[operator]
            for i in range(crop_n_layers + 1)
        ]
        if len(self.point_grids) < crop_n_layers + 1:
            raise InvalidInputError(f"point_grids needs one grid per crop layer ({crop_n_layers + 1})")
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh, self.stability_score_thresh = pred_iou_thresh, stability_score_thresh
        self.stability_score_offset, self.box_nms_thresh = stability_score_offset, box_nms_thresh
        self.crop_n_layers, self.crop_nms_thresh, self.crop_overlap_ratio = crop_n_layers, crop_nms_thresh, crop_overlap_ratio
        self.min_mask_region_area, self.output_mode = min_mask_region_area, output_mode
        self.progress = progress  # a bar on stderr over the decoder batches (segrt sam --everything)
        self.timings: dict[str, float] = {}
        self._bar: tqdm | None = None

    def generate(self, image: ImageLike) -> list[dict[str, Any]]:
        """All masks of an 8-bit RGB image as segment-anything's list of record dicts."""
        self.timings = {"encoder": 0.0, "decoder": 0.0, "postprocess": 0.0}
        rgb = to_uint8_rgb(read_image(image, max_pixels=self.predictor.max_pixels))
        orig = rgb.shape[:2]
        self._orig_hw = orig
        crop_boxes, layers = generate_crop_boxes(orig, self.crop_n_layers, self.crop_overlap_ratio)
        records: list[dict[str, Any]] = []
        total = sum(math.ceil(len(self.point_grids[layer]) / self.points_per_batch) for layer in layers)
        self._bar = tqdm(total=total, unit="batch", file=sys.stderr, disable=not self.progress or total < 2)
        try:
            for crop_box, layer in zip(crop_boxes, layers):
                records.extend(self._process_crop(rgb, crop_box, layer, orig))
        finally:
            self._bar.close()
            self._bar = None
        t0 = time.perf_counter()
        if len(crop_boxes) > 1 and records:
            boxes = np.array([r["box"] for r in records], np.float64)
            scores = np.array([1.0 / max(r["crop_area"], 1) for r in records])
            records = [records[i] for i in nms(boxes, scores, self.crop_nms_thresh)]
        if self.min_mask_region_area > 0:
            records = self._clean_small_regions(records)
        out = [self._to_output(r) for r in records]
        self.timings["postprocess"] += time.perf_counter() - t0
        return out

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer: int, orig: tuple[int, int]
                      ) -> list[dict[str, Any]]:
        x0, y0, x1, y1 = crop_box
        p = self.predictor
        t0 = time.perf_counter()
        p.set_image(np.ascontiguousarray(image[y0:y1, x0:x1]))
        self.timings["encoder"] += time.perf_counter() - t0
        crop_hw = (y1 - y0, x1 - x0)
        points = self.point_grids[layer] * np.array(crop_hw)[None, ::-1]
        cands = Candidates()
        for start in range(0, len(points), self.points_per_batch):
            self._process_batch(points[start : start + self.points_per_batch], crop_box, orig, cands)
            if self._bar is not None:
                self._bar.update(1)
        t1 = time.perf_counter()
        data = cands.stacked()
        keep = nms(data["boxes"], data["iou"], self.box_nms_thresh)
        masks = self._masks(data["low_res"][keep])
        offset = np.array([x0, y0, x0, y0])
        records = [{"mask": masks[j], "crop_box": crop_box, "crop_area": (x1 - x0) * (y1 - y0),
                    "box": (data["boxes"][i] + offset).tolist(), "iou": float(data["iou"][i]),
                    "stability": float(data["stability"][i]), "point": (data["points"][i] + offset[:2]).tolist()}
                   for j, i in enumerate(keep.tolist())]
        p.reset_image()
        self.timings["postprocess"] += time.perf_counter() - t1
        return records

    def _masks(self, low_res: np.ndarray) -> np.ndarray:
        """(K, 256, 256) logits -> (K, h, w) bool masks at the current crop's size."""
        masks, _ = kernels.upsample_threshold(low_res, *self._taps(low_res), self.predictor.spec.mask_threshold)
        return masks

    def _taps(self, low_res: np.ndarray) -> tuple[Taps, Taps]:
        emb = self.predictor._require()
        return upscale_taps(low_res.shape[1:], emb.input_size, emb.original_size, self.predictor.image_size)

    def _process_batch(self, points: np.ndarray, crop_box: list[int], orig: tuple[int, int], cands: Candidates) -> None:
        p = self.predictor
        t0 = time.perf_counter()
        coords, labels = p.encode_prompts(points[:, None, :], np.ones((len(points), 1), np.int64), None)
        low_res, iou = p.decode(coords, labels)
        t1 = time.perf_counter()
        self.timings["decoder"] += t1 - t0
        low_res = low_res[:, 1:].reshape(-1, *low_res.shape[2:])  # multimask outputs, prompt-major
        iou = iou[:, 1:].reshape(-1)
        pts = np.repeat(points, 3, axis=0)
        keep = np.flatnonzero(iou > self.pred_iou_thresh) if self.pred_iou_thresh > 0 else np.arange(len(iou))
        thr, off = p.spec.mask_threshold, self.stability_score_offset
        taps = self._taps(low_res)
        for s in range(0, len(keep), UPSCALE_CHUNK):
            idx = keep[s : s + UPSCALE_CHUNK]
            masks, counts = kernels.upsample_threshold(low_res[idx], *taps, thr, off, counts=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                stability = (counts[:, 0] / counts[:, 1]).astype(np.float32)
            ok = stability >= self.stability_score_thresh if self.stability_score_thresh > 0 else np.ones(len(idx), bool)
            boxes = masks_to_boxes(masks[ok])
            inside = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig[1], orig[0]])
            sel = idx[ok][inside]
            cands.add(low_res=low_res[sel], iou=iou[sel], stability=stability[ok][inside], boxes=boxes[inside],
                      points=pts[sel])
        self.timings["postprocess"] += time.perf_counter() - t1

    def _clean_small_regions(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Fill small holes, drop small islands, re-run NMS preferring masks that did not change."""
        if not records:
            return records
        scores, cleaned = [], []
        for r in records:
            mask, holes = remove_small_regions(self._full_mask(r), self.min_mask_region_area, "holes")
            mask, islands = remove_small_regions(mask, self.min_mask_region_area, "islands")
            cleaned.append(mask)
            scores.append(float(not (holes or islands)))
        boxes = masks_to_boxes(np.stack(cleaned))
        keep = nms(boxes.astype(np.float64), np.array(scores), max(self.box_nms_thresh, self.crop_nms_thresh))
        out = []
        for i in keep.tolist():
            r = dict(records[i], mask=self._full_mask(records[i]))
            if scores[i] == 0.0:  # changed: its mask and box (in image pixels) are the cleaned ones
                r["mask"], r["box"] = cleaned[i], boxes[i].tolist()
            out.append(r)
        return out

    def _full_mask(self, r: dict[str, Any]) -> np.ndarray:
        """A record's mask on the whole image (crop masks are padded with False)."""
        mask = r["mask"]
        if mask.shape == self._orig_hw:
            return mask
        x0, y0, x1, y1 = r["crop_box"]
        full = np.zeros(self._orig_hw, bool)
        full[y0:y1, x0:x1] = mask
        return full

    def _to_output(self, r: dict[str, Any]) -> dict[str, Any]:
        x0, y0, x1, y1 = r["crop_box"]
        mask = self._full_mask(r)
        bx0, by0, bx1, by1 = r["box"]
        if self.output_mode == "coco_rle":
            from .prepost import rle_encode

            segmentation: Any = rle_encode(mask[None])[0]
        else:
            segmentation = mask
        return {"segmentation": segmentation, "area": int(mask.sum()), "bbox": [bx0, by0, bx1 - bx0, by1 - by0],
                "predicted_iou": r["iou"], "point_coords": [r["point"]], "stability_score": r["stability"],
                "crop_box": [x0, y0, x1 - x0, y1 - y0]}
