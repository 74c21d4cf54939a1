"""``segrt sam``: prompt a SAM bundle with points and a box, or segment everything (no torch)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from . import prepost
from .backends import DEVICES
from .cli import fraction, int_at_least
from .errors import InvalidInputError
from .image import read_image, to_display_rgb, write_image_atomic
from .manifest import write_json_atomic
from .prepost import rle_encode
from .sam import SamPredictor
from .sam_amg import SamAutomaticMaskGenerator, masks_to_boxes


def _numbers(text: str, counts: tuple[int, ...], what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in counts:
        raise argparse.ArgumentTypeError(f"{what} must be {' or '.join(str(c) for c in counts)} comma-separated "
                                         f"numbers; got {text!r}")
    return values


def point_arg(text: str) -> tuple[float, ...]:
    """``X,Y`` (a foreground point) or ``X,Y,LABEL`` (1 foreground, 0 background)."""
    return _numbers(text, (2, 3), "--point")


def box_arg(text: str) -> tuple[float, ...]:
    return _numbers(text, (4,), "--box")


def overlay_masks(image: np.ndarray, masks: list[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """8-bit RGB with each mask tinted in its own colour (largest drawn first, so small ones stay visible)."""
    rgb = to_display_rgb(image)
    if not masks:
        return rgb.copy()
    order = sorted(range(len(masks)), key=lambda k: -int(masks[k].sum()))
    return prepost.overlay_masks(rgb, np.stack([masks[i] for i in order]), alpha)


def _prompt_records(pred: SamPredictor, args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    coords = labels = None
    if args.point:
        coords = np.array([p[:2] for p in args.point])
        labels = np.array([int(p[2]) if len(p) == 3 else 1 for p in args.point])
    box = np.array(args.box) if args.box else None
    masks, ious, _ = pred.predict(coords, labels, box, multimask_output=not args.single)
    boxes = masks_to_boxes(masks)
    records = [{"segmentation": rle, "area": int(m.sum()), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                "predicted_iou": float(iou)}
               for m, iou, b, rle in zip(masks, ious, boxes.tolist(), rle_encode(masks))]
    return records, list(masks)


def cmd_sam(args: argparse.Namespace) -> int:
    if args.everything == bool(args.point or args.box):
        raise InvalidInputError("give prompts (--point/--box) or --everything, not both and not neither")
    pred = SamPredictor(args.bundle, args.device, threads=args.threads)
    image = read_image(args.image)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"cannot create output folder {str(args.out)!r}: {exc.strerror}") from None
    stem = args.image.stem
    if args.everything:
        gen = SamAutomaticMaskGenerator(pred, points_per_side=args.points_per_side,
                                        points_per_batch=args.points_per_batch, pred_iou_thresh=args.pred_iou_thresh,
                                        stability_score_thresh=args.stability_score_thresh,
                                        crop_n_layers=args.crop_n_layers, progress=True)
        records = gen.generate(image)
        masks = [r["segmentation"] for r in records]
        for r, rle in zip(records, rle_encode(np.stack(masks)) if masks else []):
            r["segmentation"] = rle
    else:
        pred.set_image(image)
        records, masks = _prompt_records(pred, args)
    for i, mask in enumerate(masks):
        write_image_atomic(args.out / f"{stem}.mask{i}.png", mask.astype(np.uint8) * 255)
    write_json_atomic(args.out / f"{stem}.sam.json", {"image": args.image.name, "height": image.shape[0],
                                                       "width": image.shape[1], "masks": records})
    write_image_atomic(args.out / f"{stem}.overlay.jpg", overlay_masks(image, masks)[:, :, ::-1])
    print(f"segrt: {len(masks)} mask(s) of {args.image.name} written to {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sam", help="segment an image with a SAM bundle: point/box prompts or --everything")
    p.add_argument("bundle", type=Path)
    p.add_argument("--image", "-i", type=Path, required=True)
    p.add_argument("--point", type=point_arg, action="append", help="X,Y[,LABEL] in pixels; LABEL 1 (default) "
                   "foreground, 0 background; repeat for more points")
    p.add_argument("--box", type=box_arg, help="X0,Y0,X1,Y1 in pixels")
    p.add_argument("--single", action="store_true", help="one mask instead of three (multimask_output=False)")
    p.add_argument("--everything", action="store_true", help="automatic mask generation over a point grid")
    p.add_argument("--points-per-side", type=int_at_least(1), default=32)
    p.add_argument("--points-per-batch", type=int_at_least(1), default=64)
    p.add_argument("--pred-iou-thresh", type=fraction, default=0.88)
    p.add_argument("--stability-score-thresh", type=fraction, default=0.95)
    p.add_argument("--crop-n-layers", type=int_at_least(0), default=0)
    p.add_argument("--out", "-o", type=Path, required=True,
                   help="folder for <stem>.mask<i>.png, <stem>.sam.json (COCO RLE) and <stem>.overlay.jpg")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--threads", type=int_at_least(1), default=None)
    p.set_defaults(func=cmd_sam)
