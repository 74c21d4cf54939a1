"""``segrt run`` and ``segrt info``: the runtime's own commands (no torch)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from .backends import DEVICES, available_providers
from .errors import InvalidInputError, SegrtError
from .image import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, list_images, read_image, write_image_atomic
from .instance import InstanceResult
from .loader import load
from .sam import SamPredictor
from .manifest import read_manifest, write_json_atomic

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
                write_json_atomic(args.out / f"{path.stem}.instances.json", {
                    "image": path.name, "height": image.shape[0], "width": image.shape[1],
                    "class_names": list(res.class_names), "instances": res.to_coco(image_id=1)})
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


def cmd_build(args: argparse.Namespace) -> int:
    from .engine import BuildOptions, derive_profiles
    from .engine_build import build_engine, onnx_inputs, tensorrt_version

    opts = BuildOptions(precision=args.precision, min_hw=args.min, opt_hw=args.opt, max_hw=args.max,
                        max_batch=args.max_batch, max_points=args.max_points, workspace_gb=args.workspace_gb,
                        dla_core=args.dla_core, gpu_fallback=args.gpu_fallback,
                        version_compatible=args.version_compatible, timing_cache=args.timing_cache)
    m = read_manifest(args.bundle)
    files = [m.model_file] + ([m.sam.decoder_file] if m.sam else [])
    for f in files:  # profiles first: a bad flag fails here, before anything needs a GPU
        for p in derive_profiles(onnx_inputs(args.bundle / f), opts):
            log.info("%s: %s min %s opt %s max %s", f, p.name, p.min, p.opt, p.max)
    tensorrt_version()
    for f in files:
        print(f"segrt: built {build_engine(args.bundle, opts, f)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="segment an image or a folder of images with a bundle")
    p.add_argument("bundle", type=Path)
    p.add_argument("--input", "-i", type=Path, required=True, help="an image file or a folder of images")
    p.add_argument("--out", "-o", type=Path, required=True,
                   help="folder for <stem>.labels.png (semantic) or <stem>.instances.json (instance) and <stem>.overlay.jpg")
    p.add_argument("--score-threshold", type=float, help="instance bundles: keep detections scoring at least this "
                   "(default: the manifest's)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: the backend's choice)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (default 100 MP)")
    p.set_defaults(func=cmd_run)
    from .cli import size_arg

    p = sub.add_parser("build", help="build a TensorRT engine into the bundle's engine cache (needs TensorRT + GPU)")
    p.add_argument("bundle", type=Path)
    p.add_argument("--precision", choices=("fp32", "fp16", "int8", "best"), default="fp16",
                   help="int8 expects a QDQ bundle from `segrt quantize` (strongly typed network)")
    p.add_argument("--min", type=size_arg, help="smallest HxW for dynamic image inputs")
    p.add_argument("--opt", type=size_arg, help="HxW TensorRT optimises for")
    p.add_argument("--max", type=size_arg, help="largest HxW")
    p.add_argument("--max-batch", type=int, default=1)
    p.add_argument("--max-points", type=int, default=16, help="SAM decoder: points per prompt")
    p.add_argument("--workspace-gb", type=float, help="builder workspace (default: half the free device memory)")
    p.add_argument("--dla-core", type=int, help="Jetson DLA core")
    p.add_argument("--gpu-fallback", action="store_true", help="with --dla-core: run unsupported layers on the GPU")
    p.add_argument("--version-compatible", action="store_true", help="engine loadable by later TensorRT 10 releases")
    p.add_argument("--timing-cache", type=Path, help="timing cache file, read and updated across builds")
    p.set_defaults(func=cmd_build)
    p = sub.add_parser("info", help="print a bundle's manifest, model inputs/outputs and available providers")
    p.add_argument("bundle", type=Path)
    p.set_defaults(func=cmd_info)
