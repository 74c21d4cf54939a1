"""``segrt bench``: the README's main job, and its other modes (--compare, --sam, --precisions, --stream,
--prepost, --serving, --volume), one function each. Bundles are timed row by row through the row bench their task names (``Task.bench_row``);
a bundle whose task has none is refused before anything is timed."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from segrt.runtime.cli import int_at_least, size_arg
from segrt.runtime.errors import InvalidInputError
from segrt.runtime.manifest import read_manifest, write_json_atomic, write_text_atomic
from segrt.runtime.tasks import TASKS, task_for
from segrt.runtime.tasks.base import resolve

from .cli_args import baselines, batches, clients, devices, precisions
from .isolated import in_child
from .row_limits import add_limits, cpu_peak, measure_gpu_peak

log = logging.getLogger("segrt")


def cmd_bench(args: argparse.Namespace) -> int:
    if args.compare:
        return _bench_compare(args)
    cfg = _bench_config(args)
    modes: tuple[tuple[Any, Callable[[argparse.Namespace, Any], int]], ...] = (
        (args.sam, _bench_sam), (args.precisions, _bench_precisions), (args.stream, _bench_stream),
        (args.prepost, _bench_prepost), (args.serving, _bench_serving), (args.volume, _bench_volume))
    for flag, mode in modes:
        if flag:
            return mode(args, cfg)
    return _bench_bundles(args, cfg)


def _bench_compare(args: argparse.Namespace) -> int:
    from .report import compare, load_result

    print(compare(load_result(args.compare[0]), load_result(args.compare[1])))
    return 0


def _bench_config(args: argparse.Namespace) -> Any:
    from .bench import BenchConfig

    sizes = args.size or [(512, 512)]
    return BenchConfig(size=sizes[0], warmup=args.warmup, iters=args.iters, seconds=args.seconds, threads=args.threads,
                       baseline="torch" in args.baseline, compile="compile" in args.baseline, device=args.device[0],
                       engine_peers="none" not in args.baseline)


# -- the rows: every bundle x device x precision x size x batch ------------------------------------------
def semantic_row(variant: Path, cfg: Any, precision: str, torch_cache: dict[Any, Any]) -> dict[str, Any] | None:
    """A semantic row: segrt and its peers in interleaved pairs; ``torch_cache`` shares PyTorch's built module."""
    from .bench import bench_model

    return bench_model(variant, cfg, torch_cache)


def instance_row(variant: Path, cfg: Any, precision: str, torch_cache: dict[Any, Any]) -> dict[str, Any] | None:
    from .bench_instance import bench_instance

    if cfg.batch != 1:
        return None  # one image per call: Mask R-CNN's graph takes a single image
    # seconds per image on a small CPU: fewer iterations, same warm-up rule
    icfg = replace(cfg, iters=max(3, cfg.iters // 4), warmup=min(cfg.warmup, 1))
    return bench_instance(variant, icfg, in_graph_paste_side=precision == "fp32" and cfg.device != "tensorrt",
                          torch_cache=torch_cache)


def row_bench(task_name: str) -> Callable[[Path, Any, str, dict[Any, Any]], dict[str, Any] | None]:
    """The task's row bench (its ``bench_row`` hook): (bundle, config, precision, PyTorch cache) -> row, or None
    where the row does not apply."""
    return resolve(task_for(task_name).bench_row)


def refuse_untimed(bundles: list[Path]) -> None:
    """Every bundle's task has a row bench, checked before any is timed (one line naming what times it instead)."""
    for bundle in bundles:
        task = task_for(read_manifest(bundle).task)
        if task.bench_instead is not None or task.bench_row is None:
            timed = ", ".join(t.name for t in TASKS if t.bench_row is not None)
            hint = task.bench_instead or f"it times {timed} bundles"
            raise InvalidInputError(f"segrt bench does not time {task.name} bundles row by row ({bundle}); {hint}")


def _bench_bundles(args: argparse.Namespace, cfg: Any) -> int:
    from tqdm import tqdm

    from .bench import QUICK_MODELS, ensure_bundle, precision_variant
    from .bench_instance import ensure_instance_bundle
    from .machine import describe

    if not args.bundles and not args.quick:
        raise InvalidInputError("name bundles to benchmark, or pass --quick for the default set")
    refuse_untimed(list(args.bundles))
    bundles = list(args.bundles) or [ensure_bundle(*m) for m in QUICK_MODELS]
    if args.quick and not args.bundles:
        bundles.append(ensure_instance_bundle())
    sizes = args.size or [(512, 512)]
    # every bundle x device x precision x size x batch, each row with its own interleaved PyTorch and engine-peer
    # calls (PyTorch's module built once per model x device x size x batch); without --precision each bundle is
    # timed as it is (an INT8 bundle as INT8)
    plan = [(b, d, p, z, n) for b in bundles for d in args.device
            for p in (args.precision or [read_manifest(b).precision]) for z in sizes
            for n in args.batch]
    # SAM first, in its own process, while this one holds no model yet: the run's peak is then the larger of
    # SAM's and the rows', not their sum (issue 18)
    sam = [_quick_sam(args, cfg)] if args.quick and not args.bundles and not args.no_sam else None
    results, torch_cache = [], {}
    before = cpu_peak(cfg.threads, args.device)
    for bundle, device, precision, size, batch in tqdm(plan, unit="row", file=sys.stderr):
        variant = precision_variant(Path(bundle), precision)
        row = row_bench(read_manifest(variant).task)(variant, replace(cfg, device=device, size=size, batch=batch),
                                                precision, torch_cache)
        if row is not None:
            results.append(row)
    result = {"schema": 2, "machine": describe(cfg.threads), "config": _config(cfg, args, sizes), "results": results}
    if sam is not None:
        result["sam"] = sam
    on_gpu = any("segrt" in r and not r["segrt"]["backend"].endswith("cpu") for r in results)
    result["peak"] = add_limits(result, cfg.threads, before, measure_gpu_peak() if on_gpu else None)
    if args.plot:
        from .plot import plot_results

        plot_results(result, args.plot)
    from .report import markdown

    return _emit(args, result, markdown(result))


def _quick_sam(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    from .bench_sam import QUICK_SAM_POINTS, bench_sam

    log.warning("timing SAM vit_b (seeded) encoder, decoder and generator against segment-anything")
    # seconds per call: 2 encoder pairs and 5 of the 64-prompt decoder after 1 warm-up; two generator pairs per
    # row, no warm-up: the relaxed row at 32x32 points (~30 s + ~130 s a pair on a 2-core Xeon), the
    # default-threshold row on an 8x8 grid. In a child process: SAM's memory (both encoders and generators) goes
    # back to the system when it ends, so the run's peak is the largest part, not their sum.
    return in_child(bench_sam, "vit_b", replace(cfg, device=args.device[0], iters=min(cfg.iters, 10)), 32,
                    amg_rounds=2, default_amg_points=QUICK_SAM_POINTS, amg_warmup=0)


def _config(cfg: Any, args: argparse.Namespace, sizes: list[tuple[int, int]]) -> dict[str, Any]:
    return {"warmup": cfg.warmup, "iters": cfg.iters, "seconds": cfg.seconds, "threads": cfg.threads, "baseline": args.baseline,
            "devices": args.device, "precisions": args.precision or "as exported", "sizes": [list(z) for z in sizes],
            "batches": args.batch, "size": list(cfg.size)}


def _emit(args: argparse.Namespace, result: dict[str, Any], table: str) -> int:
    """Print the table; write the JSON and Markdown where asked."""
    print(table)
    if args.json:
        write_json_atomic(args.json, result)
    if args.markdown:
        write_text_atomic(args.markdown, table)
    return 0


# -- the other modes ---------------------------------------------------------------------------------------
def _bench_sam(args: argparse.Namespace, cfg: Any) -> int:
    from .bench_sam import bench_sam, markdown_sam
    from .machine import describe

    if args.bundles or args.quick:
        raise InvalidInputError("--sam times SAM alone; run bundles or --quick separately")
    if args.amg_points < 1:
        raise InvalidInputError(f"--amg-points must be >= 1; got {args.amg_points}")
    result = {"schema": 2, "machine": describe(cfg.threads), "config": vars(cfg) | {"size": list(cfg.size)},
              "results": [bench_sam(variant, cfg, args.amg_points, tuple(args.precision or ["fp32"]),
                                    amg_rounds=max(1, min(2, cfg.iters // 5))) for variant in args.sam]}
    return _emit(args, result, markdown_sam(result))


def _bench_precisions(args: argparse.Namespace, cfg: Any) -> int:
    from .bench_precision import bench_precision, markdown_precision
    from .machine import describe

    result = {"schema": 1, "machine": describe(cfg.threads), "config": vars(cfg) | {"size": list(cfg.size)},
              "results": [bench_precision(name, cfg) for name in args.precisions]}
    return _emit(args, result, markdown_precision(result))


def _bench_prepost(args: argparse.Namespace, cfg: Any) -> int:
    import skimage.data

    from segrt.runtime import kernels

    from .bench import QUICK_MODELS, ensure_bundle
    from .bench_prepost import bench_end_to_end, bench_kernels, markdown_prepost
    from .bench_stream import ocr_bundle
    from .machine import describe

    if kernels.active() != "native":
        kernels.use("native")  # a clear error when the extension is not built
    photo = skimage.data.astronaut()
    e2e = [bench_end_to_end(ensure_bundle(*QUICK_MODELS[0]), photo, (512, 512), max(5, cfg.iters // 2)),
           bench_end_to_end(ocr_bundle((544, 960)), photo, (1080, 1920), cfg.iters)]
    result = {"schema": 1, "machine": describe(cfg.threads), "native_threads": int(os.environ.get(
              "SEGRT_NATIVE_THREADS", 0)) or min(os.cpu_count() or 1, 16), "kernels": bench_kernels(cfg.iters),
              "end_to_end": e2e}
    return _emit(args, result, markdown_prepost(result))


def _bench_stream(args: argparse.Namespace, cfg: Any) -> int:
    from .bench_stream import bench_stream, default_cases, markdown_stream, require_vtest
    from .machine import describe

    if args.quick:
        raise InvalidInputError("--stream times the video pipeline alone; run --quick separately")
    if args.stream_frames < 10:
        raise InvalidInputError(f"--stream-frames must be >= 10; got {args.stream_frames}")
    if args.bundles:
        video = args.source or require_vtest()
        cases = [(Path(b), video) for b in args.bundles]
    else:
        cases = default_cases(args.stream_frames)
    result = {"schema": 1, "machine": describe(os.cpu_count() or 1), "config": {"frames": args.stream_frames},
              "results": [bench_stream(b, v, args.stream_frames) for b, v in cases]}
    return _emit(args, result, markdown_stream(result))


def _bench_serving(args: argparse.Namespace, cfg: Any) -> int:
    """One bundle through a real Triton server (``segrt serve``'s) over HTTP and gRPC against in-process segrt."""
    from segrt.runtime.serving.repository import ServeOptions

    from .bench_serving import record

    if args.quick or len(args.bundles) != 1:
        raise InvalidInputError("--serving times one bundle: segrt bench --serving BUNDLE [--size HxW --clients 1,8]")
    size = tuple(args.size[0]) if args.size else (256, 256)
    options = ServeOptions(max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us)
    result, table = record(args.bundles[0], size, tuple(args.clients), args.rounds, args.per_round, options)
    return _emit(args, result, table)


def _bench_volume(args: argparse.Namespace, cfg: Any) -> int:
    """Seeded MONAI UNet and SegResNet: segrt's sliding windows against MONAI + PyTorch eager (bench_volume)."""
    from .bench_volume import FULL_SIZE, QUICK_SIZE, VolumeBenchConfig, bench_volume, markdown_volume
    from .machine import describe

    if args.bundles:
        raise InvalidInputError("--volume times seeded MONAI UNet and SegResNet exports; it takes no bundles")
    if any(d not in ("auto", "cpu") for d in args.device):
        raise InvalidInputError(f"--volume times the CPU only (MONAI runs on the CPU beside it); got --device "
                                f"{','.join(args.device)}")
    size = args.volume_size or (QUICK_SIZE if args.quick else FULL_SIZE)
    vcfg = VolumeBenchConfig(size=size, rounds=args.volume_pairs, warmup=1, threads=cfg.threads)
    result = {"schema": 1, "machine": describe(cfg.threads), "config": {"size": size, "pairs": vcfg.rounds,
              "warmup": vcfg.warmup, "threads": vcfg.threads, "encoder": vcfg.encoder, "classes": vcfg.classes},
              "results": bench_volume(vcfg)}
    return _emit(args, result, markdown_volume(result))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency per stage against PyTorch eager (needs segrt[export] for --quick)")
    p.add_argument("bundles", nargs="*", type=Path, help="bundles to time (default with --quick: U-Net, DeepLabV3+)")
    p.add_argument("--quick", action="store_true", help="export and time the default seeded models")
    p.add_argument("--size", type=size_arg, nargs="+", help="HxW the real photos are resized to; several sweep (default 512x512)")
    p.add_argument("--device", type=devices, default=["auto"],
                   help="comma-separated devices for segrt (auto, cpu, cuda, tensorrt); PyTorch runs on cuda for cuda/tensorrt. "
                   "A device this machine lacks gives a row that says why")
    p.add_argument("--precision", type=precisions, default=None,
                   help="comma-separated fp32,fp16,int8: variants of each FP32 bundle, made once (gated) into the cache "
                   "(default: each bundle as it is)")
    p.add_argument("--batch", type=batches, default=[1], help="comma-separated batch sizes (semantic bundles), e.g. 1,2,4")
    p.add_argument("--warmup", type=int_at_least(0), default=3)
    count = p.add_mutually_exclusive_group()
    count.add_argument("--iters", type=int, default=20, help="timed runs per row (after --warmup)")
    count.add_argument("--seconds", type=float, help="time each row for S seconds instead (at least 3 runs)")
    p.add_argument("--threads", type=int_at_least(1), default=os.cpu_count() or 1, help="threads for both runtimes")
    p.add_argument("--baseline", type=baselines, default=["torch"],
                   help="comma-separated: torch (eager), compile (torch.compile too, where it works; minutes to compile), none "
                   "(no peers at all). Default ONNX Runtime and OpenVINO on the same ONNX run unless none")
    p.add_argument("--no-sam", action="store_true", help="--quick without SAM vit_b (saves ~8 minutes on 2 cores: its generator row is 32x32 points)")
    p.add_argument("--json", type=Path, help="write the full result (schema: docs/benchmarks.md)")
    p.add_argument("--markdown", type=Path, help="write the table as Markdown")
    p.add_argument("--plot", type=Path, help="write a PNG chart of latency by model (matplotlib)")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE.json", "AFTER.json"),
                   help="print the after/before ratios of two --json results instead of benchmarking")
    p.add_argument("--sam", nargs="+", choices=("vit_b", "vit_l", "vit_h", "tiny"),
                   help="time SAM variants (seeded) against segment-anything: encoder, decoder, automatic masks")
    p.add_argument("--precisions", nargs="+", metavar="FIXTURE",
                   help="fp32 vs fp16 vs int8 of trained fixtures (e.g. unet deeplabv3plus): speed and agreement")
    p.add_argument("--prepost", action="store_true", help="native pre/post kernels against their NumPy twin "
                   "(and segrt 0.1's OpenCV code) at 1080p, and end-to-end semantic latency with each")
    p.add_argument("--stream", action="store_true", help="pipelined video stream against a sequential loop "
                   "(default: PP-OCR's detector, FP32 and calibrated INT8, on vtest.avi and on its 1080p upscale; "
                   "3 pairs of runs, speedup = median pair ratio)")
    p.add_argument("--serving", action="store_true", help="one bundle through a real Triton server (segrt serve's) "
                   "over HTTP and gRPC, 1 and N clients, against in-process segrt in interleaved rounds (segrt[serve])")
    p.add_argument("--clients", type=clients, default=[1, 8], help="--serving: comma-separated concurrencies (default 1,8)")
    p.add_argument("--rounds", type=int_at_least(1), default=5, help="--serving: interleaved rounds (default 5)")
    p.add_argument("--per-round", type=int_at_least(1), default=8, help="--serving: requests per mode per round")
    p.add_argument("--max-batch", type=int_at_least(1), default=8, help="--serving: the server's dynamic batch limit")
    p.add_argument("--max-queue-delay-us", type=int_at_least(0), default=2000, help="--serving: dynamic batching delay")
    p.add_argument("--volume", action="store_true", help="sliding-window 3-D segmentation (seeded MONAI UNet and "
                   "SegResNet, 64^3 windows, overlap 0.25, Gaussian, batch 2) on the MNI T1 crop stretched to 128^3 "
                   "(--quick: 96^3) against MONAI's sliding_window_inference + PyTorch eager in interleaved pairs, with "
                   "parity and peak RSS; 7-11 min on 2 loaded cores")
    p.add_argument("--volume-size", type=int_at_least(8), help="--volume: the volume's side N (N^3) instead of 128")
    p.add_argument("--volume-pairs", type=int_at_least(1), default=3,
                   help="--volume: timed interleaved pairs per model, after one warm-up pair (default 3)")
    p.add_argument("--source", type=Path, help="--stream: the video for the bundles named (default vtest.avi)")
    p.add_argument("--stream-frames", type=int, default=200, help="--stream: frames per run")
    p.add_argument("--amg-points", type=int_at_least(1), default=32, help="--sam: automatic mask generation points per side")
    p.set_defaults(func=cmd_bench)
