"""``segrt run`` and ``segrt info``: the runtime's own commands (no torch). ``segrt build`` is registered
from ``segrt.export.build_cli`` (it may make an FP16 variant first; see there)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .backends import BACKENDS, DEVICES, Runner, available_providers
from .cli import fraction, int_at_least
from .errors import InvalidInputError, SegrtError
from .image import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, list_images, read_image, write_image_atomic
from .manifest import InputSpec, Manifest, read_manifest
from .tasks import task_for

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
    task = task_for(read_manifest(args.bundle).task)
    task.check_run(args.bundle)  # SAM: refused here, before anything loads (it needs prompts)
    seg = task.load(args.bundle, args.device, threads=args.threads, max_pixels=args.max_pixels,
                    score_threshold=args.score_threshold)
    log.info("running on %s (%s)", seg.device, seg.runner.name)
    own = task.run_inputs(args.input)  # volumes read their own inputs (a DICOM folder is one); None: images
    images = own if own is not None else _inputs(args.input)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"cannot create output folder {str(args.out)!r}: {exc.strerror}") from None
    failed = 0
    for path in tqdm(images, disable=len(images) < 2, unit="img", file=sys.stderr):
        try:
            if own is not None:
                task.run_one(seg, path, args.out)
                continue
            image = read_image(path, max_pixels=seg.max_pixels)  # decoded once: segment, then draw
            res = seg(image)
            task.write(res, image, args.out, path.stem, path)
            write_image_atomic(args.out / f"{path.stem}.overlay.jpg", res.overlay(image)[:, :, ::-1])
        except SegrtError as exc:
            if len(images) == 1:
                raise
            failed += 1
            tqdm.write(f"segrt: skipped {path.name}: {exc}", file=sys.stderr)
    done = len(images) - failed
    print(f"segrt: {done} of {len(images)} image(s) segmented into {args.out}" + (f"; {failed} failed" if failed else ""))
    return 2 if failed else 0


def _io(runner: Runner) -> dict[str, list[dict[str, Any]]]:
    return {"inputs": [{"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype)} for s in runner.input_specs()],
            "outputs": [{"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype)} for s in runner.output_specs()]}


def available_backends() -> list[str]:
    """The runners that can run here, in fallback order (``--device`` picks among them)."""
    return [b.name for b in BACKENDS if b.is_available()]


def info_json(predictor: Any) -> str:
    """``segrt info --json``: the manifest, each runner's inputs and outputs, the providers, the pre/post kernels."""
    from . import kernels

    io = {role: _io(r) for role, r in task_for(predictor.manifest.task).runners(predictor).items()}
    return json.dumps({"manifest": predictor.manifest.to_dict(), **io, "providers": available_providers(),
                       "backends": available_backends(), "prepost": kernels.active()}, indent=2)


def _input_line(spec: InputSpec) -> str:
    size = "x".join(map(str, spec.size)) if spec.size else ""
    resize = {"pad": f"its own size, padded to a multiple of {spec.stride}",
              "stretch": f"stretched to {size}", "letterbox": f"letterboxed into {size}",
              "shortest_edge": f"shorter side {spec.min_size} (longer at most {spec.max_size}), padded to a multiple "
                               f"of {spec.stride}",
              "longest_side": f"longer side {size.split('x')[0]}, padded to {size}"}[spec.resize]
    nums = lambda vals: ",".join(f"{v:g}" for v in vals)  # noqa: E731
    return (f"{spec.name!r}: {spec.channels} channel(s) {spec.color} {spec.layout}, {resize}; "
            f"{spec.intensity} scaling, mean {nums(spec.mean)}, std {nums(spec.std)}")


def _classes_line(manifest: Manifest, limit: int = 12) -> str:
    if not manifest.classes:
        return "none (masks carry no class)"
    names = ", ".join(manifest.classes[:limit])
    more = f", ... ({manifest.num_classes - limit} more)" if manifest.num_classes > limit else ""
    return f"{manifest.num_classes}: {names}{more}"


def _tensors(specs: list[dict[str, Any]]) -> str:
    return "; ".join(f"{s['name']} {s['dtype']} [{', '.join(map(str, s['shape']))}]" for s in specs)


def info_summary(predictor: Any, bundle: Path) -> str:
    """``segrt info``: what a person wants to know about a bundle, one fact a line."""
    from . import kernels

    m: Manifest = predictor.manifest
    task = task_for(m.task)
    rows = [("bundle", str(bundle)), ("task", f"{m.task} -- {task.summary}" if task.summary else m.task),
            ("architecture", m.architecture + (f" (encoder {m.encoder})" if m.encoder else "")),
            ("classes", _classes_line(m)), ("input", _input_line(m.input)),
            ("precision", m.precision + (" (quantized variant)" if m.quantization else ""))]
    for role, runner in task.runners(predictor).items():
        io = _io(runner)
        rows += [(f"{role} inputs", _tensors(io["inputs"])), (f"{role} outputs", _tensors(io["outputs"]))]
    rows += [("providers", ", ".join(available_providers())), ("backends", ", ".join(available_backends())),
             ("pre/post", f"{kernels.active()} kernels"),
             ("", "segrt info --json prints the manifest and all of this as JSON")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cmd_info(args: argparse.Namespace) -> int:
    predictor = task_for(read_manifest(args.bundle).task).load(args.bundle, "cpu")
    print(info_json(predictor) if args.json else info_summary(predictor, args.bundle))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="segment an image or a folder of images with a bundle")
    p.add_argument("bundle", type=Path)
    p.add_argument("--input", "-i", type=Path, required=True, help="an image file or a folder of images "
                   "(volume bundles: a NIfTI/.npy file, a DICOM series folder, or a folder of volumes)")
    p.add_argument("--out", "-o", type=Path, required=True,
                   help="folder for <stem>.labels.png (semantic) or <stem>.instances.json (instance: COCO results; "
                   "<stem>.image.json its image entry) and <stem>.overlay.jpg")
    p.add_argument("--score-threshold", type=fraction, help="instance bundles: keep detections scoring at least this "
                   "(default: the manifest's)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--threads", type=int_at_least(1), default=None, help="inference threads (default: the backend's choice)")
    p.add_argument("--max-pixels", type=int_at_least(1), default=DEFAULT_MAX_PIXELS, help="refuse larger images (default 100 MP)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("info", help="summarise a bundle: task, classes, input, precision, model inputs/outputs, "
                       "providers (--json: the manifest and all of it as JSON)")
    p.add_argument("bundle", type=Path)
    p.add_argument("--json", action="store_true", help="print the manifest, model I/O and providers as JSON")
    p.set_defaults(func=cmd_info)
