"""``segrt build``: a bundle's graphs -> TensorRT engines in its engine cache, on TensorRT 10.x and 11.x.

Registered from here, beside the exporter, because ``--precision fp16`` on an FP32 bundle first makes
the bundle's gated FP16 variant (:mod:`.engine_variants`, which needs onnx); the runtime itself never
imports ``segrt.export``. Everything else is the runtime's (:func:`segrt.runtime.engine_build.build_engine`),
so on a runtime-only install ``segrt build`` still builds any graph that already carries its precision
(fp32, an FP16 bundle, an INT8 Q/DQ bundle from ``segrt quantize --target tensorrt``) and says
``pip install 'segrt[export]'`` only when a variant has to be made. Flags, profiles and the graph's
precision are checked first, then that TensorRT is installed, and only then is anything converted or built.

``segrt build BUNDLE --device cpu`` needs no TensorRT: it times ONNX Runtime's CPU provider against OpenVINO's CPU
plugin on each graph (:mod:`.cpu_choice`) and writes ``cpu_engine.json``, which ``device="auto"`` then follows on
this CPU model (docs/cpu-engine.md).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from segrt.runtime.cli import int_at_least, positive_number, size_arg
from segrt.runtime.engine import BuildOptions, derive_profiles
from segrt.runtime.engine_build import build_engine, concrete, onnx_inputs, tensorrt_version
from segrt.runtime.errors import InvalidInputError
from segrt.runtime.manifest import read_manifest
from segrt.runtime.variants import graph_for, graphs, needs_variant

log = logging.getLogger("segrt")


def _options(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(precision=args.precision, min_hw=args.min, opt_hw=args.opt, max_hw=args.max,
                        max_batch=args.max_batch, max_points=args.max_points, workspace_gb=args.workspace_gb,
                        dla_core=args.dla_core, gpu_fallback=args.gpu_fallback,
                        version_compatible=args.version_compatible, exclude_lean_runtime=args.exclude_lean_runtime,
                        timing_cache=args.timing_cache)


def preflight(bundle: Path, opts: BuildOptions) -> tuple[list[str], BuildOptions]:
    """The graphs to build and the concrete options, or a typed error; needs no GPU and no TensorRT."""
    files = graphs(read_manifest(bundle))
    opts = concrete(bundle, files[0], opts)
    for f in files:
        for p in derive_profiles(onnx_inputs(bundle / f), opts):
            log.info("%s: %s min %s opt %s max %s", f, p.name, p.min, p.opt, p.max)
        if not needs_variant(bundle, opts.precision):
            graph_for(bundle, f, opts.precision)
    return files, opts


#: flags of one --device only; the other refuses them rather than ignoring them
CPU_FLAGS = ("pairs", "threads", "image")
TENSORRT_FLAGS = ("min", "opt", "max", "workspace_gb", "dla_core", "gpu_fallback", "version_compatible",
                  "exclude_lean_runtime", "timing_cache", "force")


def _refuse_flags(args: argparse.Namespace, names: tuple[str, ...], device: str) -> None:
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) not in (None, False)]
    if given:
        raise InvalidInputError(f"{', '.join(given)} apply to segrt build --device {device} only; got --device "
                                f"{args.device}")


def cmd_build_cpu(args: argparse.Namespace) -> int:
    """``--device cpu``: measure both CPU engines per graph, write ``cpu_engine.json``; no TensorRT involved."""
    from segrt.runtime.cpu_engine import OPENVINO_CPU, write_record

    from .cpu_choice import DEFAULT_PAIRS, measure_bundle, require_openvino

    _refuse_flags(args, TENSORRT_FLAGS, "tensorrt")
    require_openvino()  # one line saying what to install, before any model is loaded
    record = measure_bundle(args.bundle, pairs=args.pairs or DEFAULT_PAIRS, threads=args.threads,
                            image_path=args.image)
    for f, g in record["graphs"].items():
        r, agreement = g["ratio"], g["agreement"]
        print(f"segrt: {f} -> {g['backend']} ({OPENVINO_CPU} {r['median']:.2f}x [{r['q1']:.2f}-{r['q3']:.2f}] of "
              f"onnxruntime-cpu's time, {g['pairs']} pairs; outputs {'agree' if agreement['passed'] else 'DIFFER'}, "
              f"max relative difference {agreement['max_relative_diff']:.1e})")
    print(f"segrt: wrote {write_record(args.bundle, record)} ({record['cpu']}, input {record['input']['source']})")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    if args.device == "cpu":
        return cmd_build_cpu(args)
    _refuse_flags(args, CPU_FLAGS, "cpu")
    files, opts = preflight(args.bundle, _options(args))
    tensorrt_version()  # one line saying what to install, before minutes of conversion
    if needs_variant(args.bundle, opts.precision):
        from .engine_variants import ensure_fp16_variant

        ensure_fp16_variant(args.bundle)
    for f in files:
        plan, key = build_engine(args.bundle, opts, f, force=args.force)
        print(f"segrt: {f} -> {plan} ({key.precision}, TensorRT {key.tensorrt}, {key.gpu})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build TensorRT engines (10.x or 11.x) into the bundle's engine cache; "
                       "--device cpu: measure ONNX Runtime against OpenVINO and record the faster CPU engine")
    p.add_argument("bundle", type=Path)
    p.add_argument("--device", choices=("tensorrt", "cpu"), default="tensorrt",
                   help="cpu: time onnxruntime-cpu against openvino-cpu on each graph (interleaved pairs), check "
                   "their outputs agree and write cpu_engine.json, which device=auto follows on this CPU model "
                   "(needs segrt[openvino]; the TensorRT flags below do not apply)")
    p.add_argument("--pairs", type=int_at_least(1), help="--device cpu: interleaved pairs per graph (default 10)")
    p.add_argument("--threads", type=int_at_least(1), help="--device cpu: threads for both engines (default: "
                   "each engine's own choice)")
    p.add_argument("--image", type=Path, help="--device cpu: the example image (default: the photo the export was "
                   "verified on, else a seeded image at the model's size)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8", "best"), default="fp16",
                   help="the graph's precision: fp16 on an FP32 bundle makes its gated FP16 variant (needs "
                   "segrt[export]); int8 needs a Q/DQ bundle (segrt quantize --precision int8 --target tensorrt); "
                   "best: the lowest-precision gated graph already present")
    p.add_argument("--min", type=size_arg, help="smallest HxW for dynamic image inputs")
    p.add_argument("--opt", type=size_arg, help="HxW TensorRT optimises for")
    p.add_argument("--max", type=size_arg, help="largest HxW")
    p.add_argument("--max-batch", type=int_at_least(1), default=1)
    p.add_argument("--max-points", type=int_at_least(1), default=16, help="SAM decoder: points per prompt")
    p.add_argument("--workspace-gb", type=positive_number, help="builder workspace (default: half the free device memory)")
    p.add_argument("--dla-core", type=int_at_least(0), help="Jetson DLA core (TensorRT 10 on JetPack)")
    p.add_argument("--gpu-fallback", action="store_true", help="with --dla-core: run unsupported layers on the GPU")
    p.add_argument("--version-compatible", action="store_true",
                   help="engine loadable by the same or later TensorRT (and by the lean runtime)")
    p.add_argument("--exclude-lean-runtime", action="store_true",
                   help="with --version-compatible: leave the lean runtime out of the plan (smaller; then only the "
                   "lean runtime of this TensorRT version loads it)")
    p.add_argument("--timing-cache", type=Path, help="timing cache file, read and updated across builds")
    p.add_argument("--force", action="store_true", help="rebuild even when the cache holds an engine with this key")
    p.set_defaults(func=cmd_build)
