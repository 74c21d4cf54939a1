"""``segrt panoptic``: fuse a semantic and an instance bundle into COCO panoptic segments (no torch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .backends import DEVICES
from .cli import fraction, int_at_least
from .errors import InvalidInputError, SegrtError
from .image import read_image
from .panoptic_fusion import FusionConfig


def things_arg(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"--things needs comma-separated class names; got {text!r}")
    return names


def check_save_bundle(bundle: Path, out: Path, force: bool) -> None:
    """Refuse a ``--save-bundle`` that would replace or hold ``--out``'s files, or an existing one without force,
    before any image is fused."""
    b, o = bundle.resolve(), out.resolve()
    if b == o or o in b.parents or b in o.parents:
        raise InvalidInputError(f"--save-bundle {str(bundle)!r} overlaps --out {str(out)!r} (the bundle folder is "
                                "replaced whole); give it a folder outside --out")
    if bundle.exists() and not force:
        raise InvalidInputError(f"--save-bundle {str(bundle)!r} already exists; pass --force to replace it")


def cmd_panoptic(args: argparse.Namespace) -> int:
    from .commands import _inputs
    from .panoptic import PanopticSegmenter, write_panoptic_bundle

    cfg = FusionConfig(args.confidence_thr, args.overlap_thr, args.stuff_area_limit)
    if args.save_bundle:
        check_save_bundle(args.save_bundle, args.out, args.force)
    images = _inputs(args.input)  # a bad input fails before any model loads
    pan = PanopticSegmenter(args.semantic, args.instance, args.things, cfg, args.device, threads=args.threads)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"cannot create output folder {str(args.out)!r}: {exc.strerror}") from None
    failed = 0
    for path in images:
        try:
            image = read_image(path, max_pixels=pan.max_pixels)
            pan(image).save(args.out, path.stem, image, file_name=path.name)
        except SegrtError as exc:
            if len(images) == 1:
                raise
            failed += 1
            print(f"segrt: skipped {path.name}: {exc}", file=sys.stderr)
    if args.save_bundle:
        write_panoptic_bundle(args.save_bundle, args.semantic, args.instance, args.things, cfg, force=args.force)
    print(f"segrt: {len(images) - failed} of {len(images)} image(s) fused into {args.out}"
          + (f"; {failed} failed" if failed else ""))
    return 2 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("panoptic", help="panoptic segmentation: fuse a semantic and an instance bundle "
                       "(COCO panoptic PNG + JSON)")
    p.add_argument("--semantic", type=Path, required=True, help="semantic bundle: the stuff classes")
    p.add_argument("--instance", type=Path, required=True, help="instance bundle (with masks): the things")
    p.add_argument("--things", type=things_arg, help="comma-separated instance classes fused as things (default: "
                   "all but the background); semantic classes of these names are not stuff")
    p.add_argument("--confidence-thr", type=fraction, default=0.5, help="instances from this score (default 0.5)")
    p.add_argument("--overlap-thr", type=fraction, default=0.5,
                   help="drop an instance overlapping earlier ones by more than this of its area (default 0.5)")
    p.add_argument("--stuff-area-limit", type=int_at_least(0), default=4096,
                   help="stuff regions below this many pixels become VOID (default 4096)")
    p.add_argument("--input", "-i", type=Path, required=True, help="an image file or a folder of images")
    p.add_argument("--out", "-o", type=Path, required=True,
                   help="folder for <stem>.panoptic.png, <stem>.panoptic.json and <stem>.overlay.jpg")
    p.add_argument("--save-bundle", type=Path, help="also write a panoptic bundle naming the two bundles (for "
                   "segrt run, stream, eval, info); a folder outside --out")
    p.add_argument("--force", action="store_true", help="replace an existing --save-bundle folder")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--threads", type=int_at_least(1), default=None)
    p.set_defaults(func=cmd_panoptic)
