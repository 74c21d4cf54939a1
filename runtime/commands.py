"""``segrt run`` and ``segrt info``: the runtime's own commands (no torch). ``segrt build`` is registered
from ``segrt.export.build_cli`` (it may make an FP16 variant first; see there)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from .backends import DEVICES, available_providers
from .cli import fraction, int_at_least
from .errors import InvalidInputError, SegrtError
from .image import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, list_images, read_image, write_image_atomic
from .instance import InstanceResult
from .loader import load
from .sam import SamPredictor
from .manifest import read_manifest, write_json_atomic, write_text_atomic

log = logging.getLogger("segrt")


def _inputs(path: Path) -> list[Path]:
    if path.is_dir():
        found = list_images(path)
        if not found:
            raise InvalidInputError(f"folder {str(path)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return found
    if not path.exists():
        raise InvalidInputError(f"input {str(path)!r} does not exist")
    return [path]


def cmd_run(args: argparse.Namespace) -> int:
    if read_manifest(args.bundle).task == "sam":
        raise InvalidInputError(f"{args.bundle} is a SAM bundle, which needs prompts: use `segrt sam {args.bundle} "
                                "--image IMG --point X,Y` or `--everything`")
    seg = load(args.bundle, args.device, threads=args.threads, max_pixels=args.max_pixels,
               score_threshold=args.score_threshold)
    log.info("running on %s (%s)", seg.device, seg.runner.name)
    images = _inputs(args.input)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"cannot create output folder {str(args.out)!r}: {exc.strerror}") from None
    failed = 0
    for path in tqdm(images, disable=len(images) < 2, unit="img", file=sys.stderr):
        try:
            image = read_image(path, max_pixels=seg.max_pixels)  # decoded once: segment, then draw
            res = seg(image)
            if isinstance(res, InstanceResult):
                # COCO's results file, as COCO.loadRes reads it; the image entry it refers to beside it
                write_text_atomic(args.out / f"{path.stem}.instances.json", json.dumps(res.to_coco(image_id=1)) + "\n")
                write_json_atomic(args.out / f"{path.stem}.image.json", {
                    "id": 1, "file_name": path.name, "height": image.shape[0], "width": image.shape[1],
                    "class_names": list(res.class_names)})
            else:
                res.save(args.out / f"{path.stem}.labels.png")
            write_image_atomic(args.out / f"{path.stem}.overlay.jpg", res.overlay(image)[:, :, ::-1])
        except SegrtError as exc:
            if len(images) == 1:
                raise
            failed += 1
            tqdm.write(f"segrt: skipped {path.name}: {exc}", file=sys.stderr)
    done = len(images) - failed
    print(f"segrt: {done} of {len(images)} image(s) segmented into {args.out}" + (f"; {failed} failed" if failed else ""))
    return 2 if failed else 0


def cmd_info(args: argparse.Namespace) -> int:
    seg = load(args.bundle, "cpu")
    manifest = seg.manifest
    runners = {"model": seg.runner} if not isinstance(seg, SamPredictor) else {"encoder": seg.encoder,
                                                                                "decoder": seg.decoder}
    io = {name: {
        "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype)} for s in r.input_specs()],
        "outputs": [{"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype)} for s in r.output_specs()],
    } for name, r in runners.items()}
    from . import kernels

    print(json.dumps({"manifest": manifest.to_dict(), **io, "providers": available_providers(),
                      "prepost": kernels.active()}, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="segment an image or a folder of images with a bundle")
    p.add_argument("bundle", type=Path)
    p.add_argument("--input", "-i", type=Path, required=True, help="an image file or a folder of images")
    p.add_argument("--out", "-o", type=Path, required=True,
                   help="folder for <stem>.labels.png (semantic) or <stem>.instances.json (instance: COCO results; "
                   "<stem>.image.json its image entry) and <stem>.overlay.jpg")
    p.add_argument("--score-threshold", type=fraction, help="instance bundles: keep detections scoring at least this "
                   "(default: the manifest's)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--threads", type=int_at_least(1), default=None, help="inference threads (default: the backend's choice)")
    p.add_argument("--max-pixels", type=int_at_least(1), default=DEFAULT_MAX_PIXELS, help="refuse larger images (default 100 MP)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("info", help="print a bundle's manifest, model inputs/outputs and available providers")
    p.add_argument("bundle", type=Path)
    p.set_defaults(func=cmd_info)
