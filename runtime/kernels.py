"""The hot pre/post-processing kernels: the C++ extension when it is built, its NumPy twin otherwise.

``SEGRT_PREPOST=native|reference`` forces one (``native`` fails with a typed error when the extension is
missing); unset, the extension is used when it imports. Both implementations take the same raw
arguments (:mod:`segrt.runtime._reference` documents them); this module validates shapes and dtypes
once, with the runtime's typed errors, builds the resampling taps, and calls the active one.

Resampling is separable: each axis is a small (n_out, K) table of source indices and weights, so a
chain such as "bilinear to the padded input, crop the padding, bilinear to the original size" is one
composed table per axis (K = 4) applied in a single pass, never materialising the intermediate image.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterator
from types import ModuleType

import numpy as np

from . import _reference
from .errors import BackendUnavailableError, InvalidInputError

log = logging.getLogger("segrt")
ENV = "SEGRT_PREPOST"
_active: ModuleType | None = None


def _native() -> tuple[ModuleType | None, str]:
    """The C++ extension, or None and why it would not import."""
    try:
        return importlib.import_module("segrt.runtime._native"), ""
    except ImportError as exc:
        return None, str(exc)


def _load() -> ModuleType:
    wanted = os.environ.get(ENV, "").strip().lower()
    if wanted not in ("", "native", "reference"):
        raise BackendUnavailableError(f"{ENV} must be 'native' or 'reference'; got {wanted!r}")
    if wanted == "reference":
        return _reference
    module, why = _native()
    if module is not None:
        return module
    if wanted == "native":
        raise BackendUnavailableError(f"{ENV}=native but the C++ extension is not built ({why}); reinstall "
                                      "segrt with a C++17 compiler present, or unset it")
    log.info("native pre/post-processing unavailable (%s); using the NumPy reference", why)
    return _reference


def impl() -> ModuleType:
    """The active implementation module (resolved once)."""
    global _active
    if _active is None:
        _active = _load()
    return _active


def active() -> str:
    """``native`` or ``reference``."""
    return "reference" if impl() is _reference else "native"


def native_available() -> bool:
    return _native()[0] is not None


def use(name: str) -> None:
    """Switch implementation at run time (tests, benchmarks); ``name`` is native or reference."""
    global _active
    if name == "reference":
        _active = _reference
    elif name == "native":
        module, why = _native()
        if module is None:
            raise BackendUnavailableError(f"the C++ extension is not built ({why})")
        _active = module
    else:
        raise InvalidInputError(f"implementation must be 'native' or 'reference'; got {name!r}")


@contextlib.contextmanager
def thread_limit(limit: int) -> Iterator[None]:
    """Cap the kernels' threads for the calling thread inside the block (``SEGRT_NATIVE_THREADS`` caps every
    thread). Streams run their stages with 1: the pipeline already keeps every core busy with whole stages,
    and splitting one kernel's rows across more threads only adds thread start-ups and contention."""
    if limit < 0:
        raise InvalidInputError(f"thread limit must be >= 0 (0: no limit); got {limit}")
    previous = impl().set_thread_limit(limit)
    try:
        yield
    finally:
        impl().set_thread_limit(previous)


# -- taps ------------------------------------------------------------------------------------------
class Taps:
    """One axis of separable resampling: out[i] = sum_k in[idx[i, k]] * w[i, k] (weights kept in float64
    until a kernel needs them, so composed tables round once)."""

    __slots__ = ("idx", "n_in", "w")

    def __init__(self, idx: np.ndarray, w: np.ndarray, n_in: int) -> None:
        self.idx, self.w, self.n_in = idx.astype(np.int32), w.astype(np.float64), n_in

    @classmethod
    def identity(cls, n: int) -> Taps:
        return cls(np.arange(n)[:, None], np.ones((n, 1)), n)

    @classmethod
    def linear(cls, n_in: int, n_out: int) -> Taps:
        """Bilinear with half-pixel centres, source clamped at the edges (PyTorch's ``align_corners=False``,
        OpenCV's ``INTER_LINEAR``). The identity when the sizes agree."""
        if n_in == n_out:
            return cls.identity(n_in)
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.maximum(src, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        lam = src - i0
        return cls(np.stack([i0, i1], 1), np.stack([1.0 - lam, lam], 1), n_in)

    def crop(self, start: int, length: int) -> Taps:
        return Taps(self.idx[start : start + length], self.w[start : start + length], self.n_in)

    def then(self, outer: Taps) -> Taps:
        """``outer`` applied to this table's output: one table from this input to outer's output."""
        if outer.n_in != len(self.idx):
            raise ValueError(f"cannot compose: outer expects {outer.n_in} inputs, inner gives {len(self.idx)}")
        idx = self.idx[outer.idx].reshape(len(outer.idx), -1)
        w = (outer.w[:, :, None] * self.w[outer.idx]).reshape(len(outer.idx), -1)
        return Taps(idx, w, self.n_in)

    def args(self) -> tuple[np.ndarray, np.ndarray]:
        return np.ascontiguousarray(self.idx, np.int32), np.ascontiguousarray(self.w, np.float32)

    def __len__(self) -> int:
        return len(self.idx)


def chain(n_low: int, n_input: int, start: int, length: int, n_out: int) -> Taps:
    """Low-resolution output -> the model's input grid -> crop [start, start + length) -> n_out."""
    return Taps.linear(n_low, n_input).crop(start, length).then(Taps.linear(length, n_out))


# -- validated kernels -----------------------------------------------------------------------------
def _c(a: np.ndarray, dtype: type | None = None) -> np.ndarray:
    return np.ascontiguousarray(a if dtype is None else a.astype(dtype, copy=False))


def resize_normalize(image: np.ndarray, rows: Taps, cols: Taps, a: np.ndarray, b: np.ndarray, out: np.ndarray,
                     top: int = 0, left: int = 0) -> None:
    """Resample (H, W, C) ``image`` through ``rows``/``cols`` and write ``pixel * a + b`` into
    ``out[:, top:top+len(rows), left:left+len(cols)]`` (out: (C, OH, OW) float32 or float16)."""
    if image.ndim != 3 or image.dtype not in (np.uint8, np.uint16, np.float32):
        raise InvalidInputError(f"expected an (H, W, C) uint8/uint16/float32 image; got {image.shape} {image.dtype}")
    if out.ndim != 3 or out.dtype not in (np.float32, np.float16) or not out.flags.c_contiguous:
        raise InvalidInputError(f"out must be a C-contiguous (C, H, W) float32/float16 array; got {out.shape} {out.dtype}")
    if (rows.n_in, cols.n_in) != image.shape[:2] or out.shape[0] != image.shape[2]:
        raise InvalidInputError(f"taps for {rows.n_in}x{cols.n_in} do not fit a {image.shape} image into {out.shape}")
    if top < 0 or left < 0 or top + len(rows) > out.shape[1] or left + len(cols) > out.shape[2]:
        raise InvalidInputError(f"a {len(rows)}x{len(cols)} region at ({top}, {left}) does not fit in {out.shape}")
    impl().resize_normalize(_c(image), *rows.args(), *cols.args(), _c(a, np.float32), _c(b, np.float32), out, top, left)


def _scores(scores: np.ndarray, rows: Taps, cols: Taps) -> np.ndarray:
    if scores.ndim != 3:
        raise InvalidInputError(f"expected (C, H, W) scores; got shape {scores.shape}")
    if (rows.n_in, cols.n_in) != scores.shape[1:]:
        raise InvalidInputError(f"taps for {rows.n_in}x{cols.n_in} do not fit scores of {scores.shape[1:]}")
    return _c(scores, np.float32)


def upsample(scores: np.ndarray, rows: Taps, cols: Taps) -> np.ndarray:
    """(C, h, w) -> (C, H, W) float32."""
    s = _scores(scores, rows, cols)
    out = np.empty((s.shape[0], len(rows), len(cols)), np.float32)
    impl().upsample(s, *rows.args(), *cols.args(), out)
    return out


def upsample_argmax(scores: np.ndarray, rows: Taps, cols: Taps, *, confidence: bool = False
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """(C, h, w) class scores -> (H, W) label map (uint8, or uint16 past 256 classes) and, if asked, the
    winning class's softmax probability; full-resolution scores are never materialised."""
    s = _scores(scores, rows, cols)
    labels = np.empty((len(rows), len(cols)), np.uint8 if s.shape[0] <= 256 else np.uint16)
    conf = np.empty(labels.shape, np.float32) if confidence else None
    impl().upsample_argmax(s, *rows.args(), *cols.args(), labels, conf)
    return labels, conf


def upsample_threshold(scores: np.ndarray, rows: Taps, cols: Taps, threshold: float, offset: float = 0.0, *,
                       counts: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, h, w) logits -> (N, H, W) masks ``v > threshold``; with ``counts``, (N, 2) int64 pixel counts of
    ``v > threshold + offset`` and ``v > threshold - offset`` (SAM's stability score)."""
    s = _scores(scores, rows, cols)
    masks = np.empty((s.shape[0], len(rows), len(cols)), bool)
    cnt = np.zeros((s.shape[0], 2), np.int64) if counts else None
    impl().upsample_threshold(s, *rows.args(), *cols.args(), float(threshold), float(offset), masks, cnt)
    return masks, cnt


def paste_masks(masks: np.ndarray, boxes: np.ndarray, image_hw: tuple[int, int], threshold: float) -> np.ndarray:
    """(N, M, M) probabilities into (N, 4) int xyxy boxes (inclusive, may leave the image) -> (N, H, W) bool."""
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2] or boxes.shape != (len(masks), 4):
        raise InvalidInputError(f"expected (N, M, M) masks and (N, 4) boxes; got {masks.shape} and {boxes.shape}")
    H, W = image_hw
    out = np.zeros((len(masks), H, W), bool)
    if len(masks):
        impl().paste_masks(_c(masks, np.float32), _c(boxes, np.int32), float(threshold), out)
    return out


def rle_strings(masks: np.ndarray) -> list[str]:
    """COCO compressed RLE count strings of (N, H, W) masks."""
    if masks.ndim != 3:
        raise InvalidInputError(f"expected (N, H, W) masks; got shape {masks.shape}")
    return impl().rle_strings(_c(masks, bool)) if len(masks) else []


def overlay_labels(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    """Blend ``colours[label]`` over an (H, W, 3) uint8 image where label > 0 (integer rounding, both twins)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidInputError(f"overlay needs an (H, W, 3) uint8 image; got {image.shape} {image.dtype}")
    if labels.shape != image.shape[:2] or labels.dtype not in (np.uint8, np.uint16):
        raise InvalidInputError(f"overlay image {image.shape[:2]} and label map {labels.shape} {labels.dtype} differ")
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"alpha must be in [0, 1]; got {alpha}")
    if len(labels) and int(labels.max()) >= len(colours):
        raise InvalidInputError(f"label {int(labels.max())} has no colour (table of {len(colours)})")
    out = np.empty_like(image)
    impl().overlay_labels(_c(image), _c(labels), _c(colours, np.uint8), int(round(alpha * 256)), out)
    return out


def _fusion_impl():
    """The active implementation's ``panoptic_fuse``; the NumPy twin lives beside the fusion it mirrors."""
    fn = getattr(impl(), "panoptic_fuse", None)
    if fn is None:
        from .panoptic_fusion import fuse_reference as fn
    return fn


def panoptic_fuse(semantic: np.ndarray, masks: np.ndarray, scores: np.ndarray, confident: np.ndarray,
                  categories: np.ndarray, windows: np.ndarray | None, overlap_thr: float, stuff_lut: np.ndarray,
                  area_limit: int) -> tuple[np.ndarray, list[tuple[int, ...]], list[tuple[int, ...]], int | None]:
    """Panoptic FPN fusion (:func:`segrt.runtime.panoptic_fusion.fuse_reference` documents the arguments): the
    (H, W) int32 panoptic map, the things and the stuff as (source, category, area, x, y, w, h), and the largest
    free semantic label when one has no class (None: all have one)."""
    if semantic.ndim != 2 or semantic.dtype.kind not in "ui":
        raise InvalidInputError(f"expected an (H, W) integer semantic map; got {semantic.shape} {semantic.dtype}")
    n, (h, w) = len(masks), semantic.shape
    if masks.shape != (n, h, w):
        raise InvalidInputError(f"instance masks {masks.shape} do not cover the semantic map {semantic.shape}")
    if not scores.shape == confident.shape == categories.shape == (n,):
        raise InvalidInputError(f"{n} masks need ({n},) scores, confidences and categories; got {scores.shape}, "
                                f"{confident.shape} and {categories.shape}")
    if windows is not None and (windows.shape != (n, 4) or not _windows_inside(windows, h, w)):
        raise InvalidInputError(f"windows must be (N, 4) rows and columns inside the {h}x{w} image; got {windows.shape}")
    if stuff_lut.ndim != 1:
        raise InvalidInputError(f"the stuff table must be one category per semantic class; got shape {stuff_lut.shape}")
    if isinstance(area_limit, bool) or not isinstance(area_limit, (int, np.integer)):
        raise InvalidInputError(f"the stuff area limit must be a whole number of pixels; got {area_limit!r}")
    panoptic = np.zeros((h, w), np.int32)
    things, stuff, bad_label = _fusion_impl()(
        _c(semantic), _c(masks, bool), _c(scores, np.float32), _c(confident, bool), _c(categories, np.int32),
        None if windows is None else _c(windows, np.int64), float(overlap_thr), _c(stuff_lut, np.int32),
        int(area_limit), panoptic)
    return panoptic, things, stuff, bad_label


def _windows_inside(windows: np.ndarray, h: int, w: int) -> bool:
    y0, y1, x0, x1 = np.asarray(windows, np.int64).T
    return bool(((0 <= y0) & (y0 <= y1) & (y1 <= h) & (0 <= x0) & (x0 <= x1) & (x1 <= w)).all())
