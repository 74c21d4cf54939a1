"""``segrt export`` and ``segrt import``. Module import stays torch-free; torch loads on use."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from segrt.runtime.cli import fraction, int_at_least, positive_number
from segrt.runtime.errors import ExportError, InvalidInputError, SegrtError

if TYPE_CHECKING:
    from .spec import ModelSpec


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _dims(text: str) -> tuple[int, ...]:
    """``HxW`` or ``DxHxW`` (a 3-D window or model size)."""
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) not in (2, 3) or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW or DxHxW of positive sizes such as 512x512 or 96x96x96, "
                                         f"got {text!r}")
    return dims


def _overlap(text: str) -> float:
    value = fraction(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be >= 0 and < 1; got {value:g}")
    return value


def _names(text: str) -> tuple[str, ...]:
    """Comma-separated names, or a text file with one name per line."""
    path = Path(text)
    if path.is_file():
        try:
            text = ",".join(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        except (OSError, UnicodeDecodeError) as exc:
            raise argparse.ArgumentTypeError(f"cannot read class names from {text!r}: {exc}") from None
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty class name in {text!r}")
    return names


def _weights(text: str) -> Path | None:
    return None if text.lower() == "none" else Path(text)


def _weights_arg(args: argparse.Namespace, spec: ModelSpec) -> Path | None:
    """The spec's weights flag (``--weights``, SAM's ``--checkpoint``: each the other's alias there), checked."""
    from .models import SPECS

    others = [s.name for s in SPECS if s.weights_flag == "--checkpoint"]
    if spec.weights_flag != "--checkpoint" and (args.checkpoint is not None or args.variant is not None):
        raise InvalidInputError(f"--checkpoint and --variant are for {', '.join(others)}; {spec.name} takes "
                                "--weights/--encoder")
    if spec.weights_flag == "--checkpoint" and args.checkpoint is not None and args.weights is not None:
        raise InvalidInputError("pass --checkpoint (or its alias --weights) once")
    given = args.checkpoint if args.checkpoint is not None else args.weights
    flag = spec.weights_flag
    if given is None:
        raise InvalidInputError(f"{spec.name} needs {flag} FILE ({spec.weights_hint}) or {flag} none"
                                if spec.weights_hint else f"{flag} FILE|none is required")
    weights = _weights(given)
    if weights is not None and flag != "--weights" and not weights.is_file():
        raise ExportError(f"{flag[2:]} {str(weights)!r} does not exist (pass {flag} none for random weights)")
    return weights


def _classes(args: argparse.Namespace, spec: ModelSpec) -> tuple[int, tuple[str, ...] | None]:
    classes, names = args.classes, args.class_names
    if classes is None and spec.default_classes is not None:
        default = spec.default_classes()
        if not default:  # a class-free family (SAM): class flags do not apply
            return 0, ()
        classes, names = len(default), names or default
    if classes is None:
        classes = len(names) if names else None
    if classes is None:
        raise InvalidInputError(f"{spec.name} needs --classes N (or --class-names)")
    return classes, names


def cmd_export(args: argparse.Namespace) -> int:
    from .exporter import export_model
    from .models import get_spec
    from .spec import ExportConfig

    from .spec import require_export_deps

    spec = get_spec(args.architecture)
    require_export_deps(spec.deps)  # before the default classes, which may import torchvision
    weights = _weights_arg(args, spec)
    classes, names = _classes(args, spec)
    cfg = ExportConfig(
        architecture=args.architecture,
        encoder=args.variant or args.encoder or spec.default_encoder,
        classes=classes,
        in_channels=args.in_channels,
        class_names=names,
        weights=weights,
        seed=args.seed,
        opset=args.opset,
        intensity=args.intensity,
        verify_image=args.verify_image,
        min_size=args.min_size,
        max_size=args.max_size,
        box_score_thresh=args.graph_score_threshold,
        box_nms_thresh=args.nms_threshold,
        detections=args.detections,
        score_threshold=args.score_threshold,
    )
    manifest = export_model(cfg, args.out, force=args.force)
    print(f"segrt: exported {cfg.architecture}/{cfg.encoder} to {args.out}: {spec.family.report(manifest)}")
    return 0


#: the 2-D image flags, and the 3-D (--task volume) ones with MONAI's sliding_window_inference defaults
_IMAGE_FLAGS = ("mean", "std", "resize", "stride", "input_name", "output", "color")
_VOLUME_FLAGS = {"inference": "sliding_window", "overlap": 0.25, "blend": "constant", "sigma_scale": 0.125,
                 "sw_batch_size": 1, "padding_mode": "constant", "intensity": "none", "percentiles": None,
                 "hu_window": None, "channel_wise": False}


def _flag(name: str) -> str:
    return "--" + ("input" if name == "input_name" else name.replace("_", "-"))


def _refuse_flags(args: argparse.Namespace, names: object, why: str) -> None:
    given = [_flag(n) for n in names if getattr(args, n) not in (None, False)]
    if given:
        raise InvalidInputError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply {why}")


def _image_config(args: argparse.Namespace) -> object:
    from .importer import ImportConfig

    _refuse_flags(args, _VOLUME_FLAGS, f"to --task {args.task} (2-D images); they are for --task volume")
    if (args.mean is None) != (args.std is None):
        raise InvalidInputError("pass --mean and --std together")
    return ImportConfig(
        model=args.model, task=args.task, size=args.size, resize=args.resize, stride=args.stride or 32,
        activation=args.activation, threshold=args.threshold, classes=args.classes, input_name=args.input_name,
        output=args.output, layout=args.layout or "nchw", color=args.color,
        **({"mean": args.mean, "std": args.std} if args.mean is not None else {}),
    )


def _intensity(flags: dict) -> object:
    from segrt.runtime.volume_intensity import IntensityPolicy

    policy, pct, hu = flags["intensity"], flags["percentiles"], flags["hu_window"]
    if pct is not None and policy != "percentile":
        raise InvalidInputError("--percentiles LO,HI goes with --intensity percentile")
    if hu is not None and policy != "hu_window":
        raise InvalidInputError("--hu-window A_MIN,A_MAX goes with --intensity hu_window")
    for name, pair in (("--percentiles", pct), ("--hu-window", hu)):
        if pair is not None and len(pair) != 2:
            raise InvalidInputError(f"{name} takes two numbers LO,HI; got {len(pair)}")
    extra = {"lower": pct[0], "upper": pct[1]} if pct else {"a_min": hu[0], "a_max": hu[1]} if hu else {}
    try:
        return IntensityPolicy(policy, channel_wise=flags["channel_wise"], **extra)
    except SegrtError as exc:  # the manifest's wording; here it is a flag
        raise InvalidInputError(str(exc).replace("volume.intensity", "--intensity")) from None


def _volume_config(args: argparse.Namespace) -> object:
    from segrt.runtime.volume_import import VolumeImport

    _refuse_flags(args, _IMAGE_FLAGS, "to --task volume; a volume's intensity is --intensity (MONAI's transforms)")
    flags = {k: default if getattr(args, k) is None else getattr(args, k) for k, default in _VOLUME_FLAGS.items()}
    if flags["inference"] == "resize":
        window_flags = ("overlap", "blend", "sigma_scale", "sw_batch_size", "padding_mode")
        _refuse_flags(args, window_flags, "to --inference resize (they set the sliding window)")
    return VolumeImport(
        model=args.model, layout=args.layout or "ncdhw", size=args.size, inference=flags["inference"],
        overlap=flags["overlap"], mode=flags["blend"], sigma_scale=flags["sigma_scale"],
        sw_batch_size=flags["sw_batch_size"], padding_mode=flags["padding_mode"], activation=args.activation,
        threshold=args.threshold, classes=args.classes, intensity=_intensity(flags))


def cmd_import(args: argparse.Namespace) -> int:
    from segrt.runtime.tasks import task_for
    from segrt.runtime.volume_import import VolumeImport

    from .importer import import_onnx

    cfg = _volume_config(args) if task_for(args.task).volumetric else _image_config(args)
    manifest = import_onnx(cfg, args.out, force=args.force)
    if isinstance(cfg, VolumeImport):
        volume = manifest.volume or {}
        size = volume["size"] if cfg.inference == "resize" else volume["window"]["roi_size"]
        how = f"{cfg.inference} at {'x'.join(map(str, size))}"
    else:
        how = f"resize {manifest.input.resize}"
    print(f"segrt: imported {args.model} to {args.out} ({len(manifest.classes)} classes, {how})")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .quantize import QuantizeConfig, quantize_bundle

    cfg = QuantizeConfig(precision=args.precision, calib=args.calib, samples=args.samples, calibrator=args.calibrator,
                         exclude=tuple(args.exclude or ()), eval_images=args.eval, min_score=args.min_score,
                         fp16_io=args.io == "fp16", target=args.target, int8_tool=args.int8_tool)
    m = quantize_bundle(args.bundle, args.out, cfg, force=args.force)
    gate = m.quantization["gate"]
    print(f"segrt: {args.precision} variant of {args.bundle} written to {args.out}: {gate['metric']} "
          f"{gate['score']:.4f} vs fp32 on {gate['images']} held-out images (tolerance {gate['minimum']})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from segrt.runtime.tasks import TASKS

    from .models import SPECS

    p = sub.add_parser("export", help="export a PyTorch model to a verified ONNX bundle (needs segrt[export])")
    p.add_argument("architecture", choices=[s.name for s in SPECS])
    p.add_argument("--encoder", "--arch", help="backbone or variant (defaults: unet resnet34, deeplab* resnet50, "
                   "maskrcnn maskrcnn_resnet50_fpn; maskrcnn also takes maskrcnn_resnet50_fpn_v2)")
    p.add_argument("--classes", "--num-classes", type=int_at_least(1), help="number of classes, background included "
                   "(maskrcnn default: COCO's 91)")
    p.add_argument("--class-names", type=_names, help="comma-separated names or a file with one per line")
    p.add_argument("--in-channels", type=int_at_least(1), default=3)
    p.add_argument("--weights", help="a local .pth/.pt/.safetensors state_dict, or none (required)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (--weights none)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--intensity", choices=("dtype", "minmax"), default="dtype", help="how pixel values map to 0-1")
    p.add_argument("--verify-image", type=Path, help="photo for the PyTorch check (default: a scikit-image photo)")
    g = p.add_argument_group("instance models (maskrcnn)")
    g.add_argument("--min-size", type=int_at_least(1), default=800, help="resize the shorter side to this (torchvision: 800)")
    g.add_argument("--max-size", type=int_at_least(1), default=1333, help="unless the longer side passes this (torchvision: 1333)")
    g.add_argument("--score-threshold", type=fraction, default=0.5, help="default score filter, overridable at load")
    g.add_argument("--graph-score-threshold", type=fraction, default=0.05, help="the graph's own floor (torchvision: 0.05)")
    g.add_argument("--nms-threshold", type=fraction, default=0.5, help="per-class box NMS IoU in the graph")
    g.add_argument("--detections", type=int_at_least(1), default=100, help="maximum detections per image in the graph")
    g = p.add_argument_group("Segment Anything (sam)")
    g.add_argument("--variant", choices=("vit_b", "vit_l", "vit_h", "tiny", "hiera_t", "hiera_s", "hiera_b+", "hiera_l"),
                   help="SAM encoder (default vit_b; tiny is a reduced test model with no official checkpoint); "
                   "sam2: hiera_t (default), hiera_s, hiera_b+, hiera_l")
    g.add_argument("--checkpoint", help="Meta's sam_vit_{b,l,h}_*.pth (sam2: sam2.1_hiera_*.pt), loaded unchanged, "
                   "or none (seeded weights)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("quantize", help="FP16 or calibrated INT8 variant of a bundle, behind an accuracy gate")
    p.add_argument("bundle", type=Path, help="the FP32 bundle")
    p.add_argument("--precision", choices=("fp16", "int8"), required=True)
    p.add_argument("--calib", type=Path, help="int8: a folder of images or a video, preprocessed as the runtime does")
    p.add_argument("--samples", type=int_at_least(1), default=32, help="int8: calibration images (evenly spaced) or frames")
    p.add_argument("--calibrator", choices=("minmax", "entropy", "percentile"), default="minmax")
    p.add_argument("--exclude", action="append", metavar="NODE", help="node name kept in float (repeat)")
    p.add_argument("--eval", type=Path, help="held-out images for the gate (default: 4 scikit-image photos)")
    p.add_argument("--min-score", type=fraction, help="gate tolerance, the mean of the task's metric (default: " + ", ".join(
                   f"{t.name} {t.gate_metric} {t.quantize_min_score}" for t in TASKS if t.quantize_min_score) + ")")
    p.add_argument("--io", choices=("fp32", "fp16"), default="fp32", help="fp16: the graph's inputs/outputs too")
    p.add_argument("--target", choices=("cpu", "tensorrt"), default="cpu",
                   help="int8 activations: uint8 for ONNX Runtime CPU, symmetric int8 for TensorRT (same calibration)")
    p.add_argument("--int8-tool", choices=("ort", "modelopt"), default="ort",
                   help="int8 --target tensorrt: who places the Q/DQ, ONNX Runtime's quantizer or NVIDIA ModelOpt "
                   "(installed separately; see docs/quantize.md)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("import", help="wrap an existing ONNX segmentation model (2-D, or 3-D: --task volume) in a bundle")
    p.add_argument("model", type=Path)
    p.add_argument("--task", default="semantic", choices=[t.name for t in TASKS if t.importable])
    p.add_argument("--mean", type=_floats, help="per-channel mean in 0-1 units (default ImageNet)")
    p.add_argument("--std", type=_floats, help="per-channel std in 0-1 units (default ImageNet)")
    p.add_argument("--size", type=_dims, help="HxW for fixed-size models; --task volume: DxHxW, the window "
                   "(sliding_window's roi_size) or the model's fixed size (resize)")
    p.add_argument("--resize", choices=("stretch", "letterbox", "pad"))
    p.add_argument("--stride", type=int_at_least(1), help="pad multiple for --resize pad (default 32)")
    p.add_argument("--activation", choices=("softmax", "sigmoid", "none"), default="none",
                   help="applied to the output (per window for volumes, before blending); none: already probabilities "
                   "or scores")
    p.add_argument("--threshold", type=fraction, default=0.5, help="foreground threshold for one-channel outputs")
    p.add_argument("--classes", type=_names)
    p.add_argument("--input", dest="input_name", help="input tensor name (if the model has several)")
    p.add_argument("--output", help="output tensor name (if the model has several)")
    p.add_argument("--layout", choices=("nchw", "nhwc", "ncdhw", "ndhwc"),
                   help="nchw (default) or nhwc; --task volume: ncdhw (default) or ndhwc")
    p.add_argument("--color", choices=("rgb", "bgr", "gray"), help="channel order the model was trained on")
    g = p.add_argument_group("3-D networks (--task volume); names and defaults of MONAI's sliding_window_inference")
    g.add_argument("--inference", choices=("sliding_window", "resize"),
                   help="sliding_window (default): windows of --size; resize: the whole volume stretched to --size")
    g.add_argument("--overlap", type=_overlap, help="window overlap in [0, 1) (default 0.25)")
    g.add_argument("--blend", choices=("constant", "gaussian"), help="MONAI's mode: the windows' weights (default constant)")
    g.add_argument("--sigma-scale", type=positive_number, help="gaussian blend: sigma as a fraction of the window (0.125)")
    g.add_argument("--sw-batch-size", type=int_at_least(1), help="windows per network call (default 1)")
    g.add_argument("--padding-mode", choices=("constant", "reflect", "replicate", "circular"),
                   help="padding of a volume smaller than the window (default constant)")
    g.add_argument("--intensity", choices=("none", "minmax", "divide_max", "zscore", "percentile", "hu_window"),
                   help="voxel normalisation, each as its MONAI transform (default none); see docs/volumes.md")
    g.add_argument("--percentiles", type=_floats, metavar="LO,HI", help="--intensity percentile (default 0.5,99.5)")
    g.add_argument("--hu-window", type=_floats, metavar="A_MIN,A_MAX",
                   help="--intensity hu_window (default -1000,1000; a negative A_MIN as --hu-window=-175,250)")
    g.add_argument("--channel-wise", action="store_true", default=None,
                   help="intensity statistics per channel (MONAI's channel_wise=True)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_import)
