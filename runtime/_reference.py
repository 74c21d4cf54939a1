"""The NumPy twin of the C++ kernels in ``cpp_ext/native.cpp`` (``segrt.runtime._native``).

Same function names, arguments and results; the same float32 operations in the same order, so integer
outputs are bit-identical between the two. Callers go through :mod:`segrt.runtime.kernels`, which
validates arguments and picks the implementation; nothing here checks its inputs again.

Taps: ``out[i] = sum_k in[idx[i, k]] * w[i, k]`` along one axis, accumulated in k order (the first
product assigned, the rest added). Preprocessing resamples rows, then columns (a downscale reads each
source row once); the post-processing upsamplers resample columns, then rows (each low-resolution row
is widened once and reused by the output rows around it).
"""

from __future__ import annotations

import threading

import numpy as np

ROW_BLOCK = 64  # output rows per step where the reference would otherwise hold full-resolution floats


def _taps(values: np.ndarray, idx: np.ndarray, w: np.ndarray, axis: int, reuse: bool = False) -> np.ndarray:
    """Apply (n, K) taps along ``axis`` of ``values``; float32 result (``values`` itself for identity
    taps on a float32 array when ``reuse``)."""
    if idx.shape[1] == 1 and idx.shape[0] == values.shape[axis] and np.all(w == 1) and np.array_equal(
            idx[:, 0], np.arange(idx.shape[0])):  # the identity: x * 1.0 is x, so skipping it is the same arithmetic
        return values.astype(np.float32, copy=not reuse)
    shape = [1] * values.ndim
    shape[axis] = idx.shape[0]
    acc = np.take(values, idx[:, 0], axis=axis) * w[:, 0].reshape(shape)
    acc = acc.astype(np.float32, copy=False)
    for k in range(1, idx.shape[1]):
        acc += np.take(values, idx[:, k], axis=axis) * w[:, k].reshape(shape)
    return acc


def resize_normalize(image: np.ndarray, ty_idx: np.ndarray, ty_w: np.ndarray, tx_idx: np.ndarray, tx_w: np.ndarray,
                     a: np.ndarray, b: np.ndarray, out: np.ndarray, top: int, left: int) -> None:
    """(Hs, Ws, C) uint8/uint16/float32 -> out[:, top:top+h, left:left+w] = resample(image) * a + b,
    rows resampled first, then columns."""
    v = _taps(_taps(image, ty_idx, ty_w, axis=0), tx_idx, tx_w, axis=1, reuse=True)  # (h, w, C) float32
    region = out[:, top : top + v.shape[0], left : left + v.shape[1]]
    if out.dtype == np.float32:
        np.multiply(v.transpose(2, 0, 1), a[:, None, None], out=region)
        region += b[:, None, None]
    else:  # one rounding to float16, at the end, as the C++ does
        v *= a
        v += b
        region[...] = v.transpose(2, 0, 1)


def _planes(scores: np.ndarray, ty_idx: np.ndarray, ty_w: np.ndarray, tx_idx: np.ndarray, tx_w: np.ndarray):
    """Yield (row slice, (C, rows, W) float32) blocks of the resampled planes."""
    horizontal = _taps(scores, tx_idx, tx_w, axis=2)  # (C, h, W): the low-resolution rows, full width
    for y0 in range(0, ty_idx.shape[0], ROW_BLOCK):
        sl = slice(y0, min(y0 + ROW_BLOCK, ty_idx.shape[0]))
        yield sl, _taps(horizontal, ty_idx[sl], ty_w[sl], axis=1)


def upsample(scores: np.ndarray, ty_idx: np.ndarray, ty_w: np.ndarray, tx_idx: np.ndarray, tx_w: np.ndarray,
             out: np.ndarray) -> None:
    for sl, v in _planes(scores, ty_idx, ty_w, tx_idx, tx_w):
        out[:, sl] = v


def upsample_argmax(scores: np.ndarray, ty_idx: np.ndarray, ty_w: np.ndarray, tx_idx: np.ndarray, tx_w: np.ndarray,
                    labels: np.ndarray, confidence: np.ndarray | None) -> None:
    for sl, v in _planes(scores, ty_idx, ty_w, tx_idx, tx_w):
        labels[sl] = v.argmax(axis=0)
        if confidence is not None:
            m = v.max(axis=0)
            confidence[sl] = 1.0 / np.exp(v - m).sum(axis=0, dtype=np.float32)


def upsample_threshold(scores: np.ndarray, ty_idx: np.ndarray, ty_w: np.ndarray, tx_idx: np.ndarray, tx_w: np.ndarray,
                       threshold: float, offset: float, masks: np.ndarray, counts: np.ndarray | None) -> None:
    thr = np.float32(threshold)
    hi, lo = np.float32(thr + np.float32(offset)), np.float32(thr - np.float32(offset))
    if counts is not None:
        counts[:] = 0
    for sl, v in _planes(scores, ty_idx, ty_w, tx_idx, tx_w):
        masks[:, sl] = v > thr
        if counts is not None:
            counts[:, 0] += (v > hi).sum(axis=(1, 2))
            counts[:, 1] += (v > lo).sum(axis=(1, 2))


def _axis_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel bilinear source taps in float32, exactly as the C++ computes them."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale
    src -= np.float32(0.5)
    np.maximum(src, np.float32(0.0), out=src)
    i0 = np.minimum(src.astype(np.int32), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    l1 = src - i0.astype(np.float32)
    return i0, i1, np.float32(1.0) - l1, l1


def paste_masks(masks: np.ndarray, boxes: np.ndarray, threshold: float, out: np.ndarray) -> None:
    """(N, M, M) float32 probabilities into int32 xyxy (inclusive) boxes of out (N, H, W) bool."""
    _, H, W = out.shape
    thr = np.float32(threshold)
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
    p = padded.shape[-1]
    for n, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        xa, xb, ya, yb = max(x0, 0), min(x1 + 1, W), max(y0, 0), min(y1 + 1, H)
        if xb <= xa or yb <= ya:
            continue
        xi0, xi1, xl0, xl1 = (t[xa - x0 : xb - x0] for t in _axis_taps(w, p))
        yi0, yi1, yl0, yl1 = (t[ya - y0 : yb - y0] for t in _axis_taps(h, p))
        m = padded[n]
        r0, r1 = m[yi0], m[yi1]
        h0 = r0[:, xi0] * xl0
        h0 += r0[:, xi1] * xl1
        h1 = r1[:, xi0] * xl0
        h1 += r1[:, xi1] * xl1
        v = h0 * yl0[:, None]
        v += h1 * yl1[:, None]
        out[n, ya:yb, xa:xb] = v > thr


def rle_strings(masks: np.ndarray) -> list[str]:
    """COCO compressed RLE counts of (N, H, W) bool masks, through pycocotools."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [r["counts"].decode("ascii") for r in rles]


def overlay_labels(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha256: int, out: np.ndarray) -> None:
    """out = image where label == 0, else (image * (256 - A) + colour * A + 128) >> 8."""
    out[...] = image
    fg = labels > 0
    if not fg.any():
        return
    src = image[fg].astype(np.uint32)
    col = colours[labels[fg]].astype(np.uint32)
    out[fg] = ((src * (256 - alpha256) + col * alpha256 + 128) >> 8).astype(np.uint8)


_limits = threading.local()


def set_thread_limit(limit: int) -> int:
    """The calling thread's kernel thread cap (0: none); returns the previous one. NumPy runs each kernel on
    the calling thread anyway, so here it is only remembered, as the extension's is."""
    if limit < 0:
        raise ValueError("thread limit must be >= 0 (0: no limit)")
    previous = getattr(_limits, "value", 0)
    _limits.value = limit
    return previous


def kernel_threads() -> int:
    """Threads a large kernel uses on the calling thread: NumPy's twin always runs on the caller."""
    return 1
