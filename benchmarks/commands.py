"""``segrt bench``: the README's main job."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from segrt.runtime.cli import fraction, int_at_least, size_arg
from segrt.runtime.errors import InvalidInputError
from segrt.runtime.manifest import read_manifest, write_json_atomic, write_text_atomic

log = logging.getLogger("segrt")


def _goal(ok: bool) -> str:
    return "met" if ok else "NOT met"


def markdown(result: dict[str, Any]) -> str:
    from .bench import GOAL_PREPOST_SHARE, GOAL_SPEEDUP

    m = result["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, {m['threads']} threads for both runtimes), "
        f"onnxruntime {m['onnxruntime']}, torch {m['torch']}, segrt {m['segrt']} ({m['commit']}). "
        "Latencies in ms, p50 (p90 / p99); weights as noted.",
        "",
        "| model | precision | size | batch | weights | backend | pre | infer | post | end to end | images/s | PyTorch e2e "
        "| speedup | pre+post share | peak RSS +MB (segrt / PyTorch) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in result["results"]:
        head = f"| {r['model']} | {r['precision']} | {r['size'][0]}x{r['size'][1]} | {r.get('batch', 1)} | {r['weights']} "
        if "skipped" in r:
            lines.append(head + f"| {r['device']}: skipped | | | | | | | | | |")
            notes.append(f"{r['model']} on {r['device']}: {r['skipped']}")
            continue
        if "torch_skipped" in r:
            notes.append(f"{r['model']}: PyTorch baseline on {r['device']} skipped: {r['torch_skipped']}")
        if "gate" in r:
            notes.append(f"{r['model']} {r['precision']}: accuracy vs FP32 {r['gate']['metric']} {r['gate']['score']:.4f} "
                         f"on {r['gate']['images']} images")
        s = r["segrt"]["stages"]
        cell = lambda k, s=s: f"{s[k]['p50']:.1f} ({s[k]['p90']:.1f} / {s[k]['p99']:.1f})"  # noqa: E731
        torch_e2e = f"{r['torch']['stages']['e2e']['p50']:.1f}" if "torch" in r else "-"
        goal = (f" ({_goal(r['speedup_vs_torch'] >= GOAL_SPEEDUP)})"
                if "torch" in r and r["precision"] == "fp32" and r.get("batch", 1) == 1 else "")
        speed = f"{r['speedup_vs_torch']:.2f}x{goal}" if "torch" in r else "-"
        share = f"{r['prepost_share']:.1%} ({_goal(r['prepost_share'] < GOAL_PREPOST_SHARE)})"
        lines.append(
            head + f"| {r['segrt']['backend']} | {cell('pre')} | {cell('infer')} | {cell('post')} | {cell('e2e')} | "
            f"{r['segrt'].get('images_per_s', s['e2e']['fps']):.1f} | {torch_e2e} | {speed} | {share} | {_mem(r)} |"
        )
        if "torch_compile" in r:
            c = r["torch_compile"]
            notes.append(f"{r['model']} {r['size'][0]}x{r['size'][1]} batch {r['batch']}: torch.compile " + (
                f"e2e p50 {c['stages']['e2e']['p50']:.1f} ms (compile + first call {c['first_inference_ms'] / 1e3:.0f} s); "
                f"segrt {r['speedup_vs_torch_compile']:.2f}x faster" if "stages" in c else f"skipped: {c['skipped']}"))
    for r in result["results"]:
        if "in_graph_paste" in r:
            lines.append(
                f"\n{r['model']}: the naive export (torchvision's transform and full-resolution paste inside the graph) "
                f"takes {r['in_graph_paste']['stages']['e2e']['p50']:.0f} ms end to end on ONNX Runtime, "
                f"{r['speedup_vs_in_graph_paste']:.2f}x segrt's time; detections per image: segrt "
                f"{r['segrt']['mean_detections']:.1f}, PyTorch {r['torch']['mean_detections']:.1f}, "
                f"in-graph {r['in_graph_paste']['mean_detections']:.1f}."
            )
    if notes:
        lines += ["", *(f"- {n}" for n in dict.fromkeys(notes))]
    if result.get("sam"):
        from .bench_sam import markdown_sam_rows

        lines += ["", *markdown_sam_rows(result["sam"])]
    lines += ["", f"Goals: end to end at least {GOAL_SPEEDUP}x faster than PyTorch eager; pre+post under "
              f"{GOAL_PREPOST_SHARE:.0%} of end to end. Cold start (load, first inference) is in the JSON."]
    return "\n".join(lines) + "\n"


def _mem(row: dict[str, Any]) -> str:
    seg = row["segrt"].get("memory")
    torch = row.get("torch", {}).get("memory")
    return " / ".join(f"{m['peak_delta_mb']:.0f}" if m else "-" for m in (seg, torch))


def _load_result(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = {(r["model"], r["precision"], tuple(r["size"]), r["segrt"]["backend"], r.get("batch", 1)): r
                for r in data["results"] if "segrt" in r}
    except FileNotFoundError:
        raise InvalidInputError(f"benchmark result {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"{str(path)!r} is not a `segrt bench --json` result ({type(exc).__name__}: {exc})") from None
    return {"machine": data.get("machine", {}), "rows": rows}


def compare(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The before/after view: p50 per stage of each model both files hold, and after/before ratios
    (below 1.0 is faster)."""
    lines = ["| model | precision | size | batch | backend | stage | before p50 (ms) | after p50 (ms) | after / before |",
             "|---|---|---|---|---|---|---|---|---|"]
    common = [k for k in before["rows"] if k in after["rows"]]
    if not common:
        raise InvalidInputError("the two results share no (model, precision, size, backend, batch) row to compare")
    for key in common:
        b, a = before["rows"][key]["segrt"]["stages"], after["rows"][key]["segrt"]["stages"]
        for stage in ("pre", "infer", "post", "e2e"):
            if stage in b and stage in a:
                lines.append(f"| {key[0]} | {key[1]} | {key[2][0]}x{key[2][1]} | {key[4]} | {key[3]} | {stage} | "
                             f"{b[stage]['p50']:.1f} | {a[stage]['p50']:.1f} | {a[stage]['p50'] / b[stage]['p50']:.3f} |")
    only = sorted({k[0] for k in before["rows"]} ^ {k[0] for k in after["rows"]})
    for name, res in (("before", before), ("after", after)):
        m = res["machine"]
        lines.append(f"\n{name}: {m.get('date', '?')}, {m.get('cpu', '?')}, segrt {m.get('segrt', '?')} ({m.get('commit', '?')})")
    if only:
        lines.append(f"\nin one file only: {', '.join(only)}")
    return "\n".join(lines) + "\n"


def cmd_bench(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tqdm import tqdm

    if args.compare:
        print(compare(_load_result(args.compare[0]), _load_result(args.compare[1])))
        return 0

    from .bench import QUICK_MODELS, BenchConfig, bench_model, ensure_bundle, precision_variant
    from .bench_instance import bench_instance, ensure_instance_bundle
    from .machine import describe

    sizes = args.size or [(512, 512)]
    cfg = BenchConfig(size=sizes[0], warmup=args.warmup, iters=args.iters, seconds=args.seconds, threads=args.threads,
                      baseline="torch" in args.baseline, compile="compile" in args.baseline, device=args.device[0])
    if args.sam:
        return _bench_sam(args, cfg)
    if args.precisions:
        return _bench_precisions(args, cfg)
    if args.stream:
        return _bench_stream(args, cfg)
    if args.prepost:
        return _bench_prepost(args, cfg)
    if not args.bundles and not args.quick:
        raise InvalidInputError("name bundles to benchmark, or pass --quick for the default set")
    bundles = list(args.bundles) or [ensure_bundle(*m) for m in QUICK_MODELS]
    if args.quick and not args.bundles:
        bundles.append(ensure_instance_bundle())
    # every bundle x device x precision x size x batch; PyTorch once per model x device x size x batch
    # without --precision each bundle is timed as it is (an INT8 bundle as INT8)
    plan = [(b, d, p, z, n) for b in bundles for d in args.device
            for p in (args.precision or [read_manifest(b).precision]) for z in sizes
            for n in args.batch]
    results, torch_cache = [], {}
    for bundle, device, precision, size, batch in tqdm(plan, unit="row", file=sys.stderr):
        rcfg = replace(cfg, device=device, size=size, batch=batch)
        variant = precision_variant(Path(bundle), precision)
        if read_manifest(variant).task == "instance":
            if batch != 1:
                continue  # one image per call: Mask R-CNN's graph takes a single image
            # seconds per image on a small CPU: fewer iterations, same warm-up rule
            icfg = replace(rcfg, iters=max(3, cfg.iters // 4), warmup=min(cfg.warmup, 1))
            results.append(bench_instance(variant, icfg, in_graph_paste=precision == "fp32" and device != "tensorrt",
                                          torch_cache=torch_cache))
        else:
            results.append(bench_model(variant, rcfg, torch_cache))
    result = {"schema": 2, "machine": describe(cfg.threads), "config": _config(cfg, args, sizes), "results": results}
    if args.quick and not args.bundles and not args.no_sam:
        from .bench_sam import QUICK_SAM_POINTS, bench_sam

        log.warning("timing SAM vit_b (seeded) encoder and decoder against segment-anything")
        # seconds per call: 2 timed encoder and 64-prompt decoder calls after 1 warm-up, an 8x8 generator grid
        result["sam"] = [bench_sam("vit_b", replace(cfg, device=args.device[0], iters=min(cfg.iters, 10)),
                                   QUICK_SAM_POINTS)]
    if args.plot:
        from .plot import plot_results

        plot_results(result, args.plot)
    return _emit(args, result, markdown(result))


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


def _bench_sam(args: argparse.Namespace, cfg: Any) -> int:
    from .bench_sam import bench_sam, markdown_sam
    from .machine import describe

    if args.bundles or args.quick:
        raise InvalidInputError("--sam times SAM alone; run bundles or --quick separately")
    if args.amg_points < 1:
        raise InvalidInputError(f"--amg-points must be >= 1; got {args.amg_points}")
    result = {"schema": 1, "machine": describe(cfg.threads), "config": vars(cfg) | {"size": list(cfg.size)},
              "results": [bench_sam(variant, cfg, args.amg_points, tuple(args.precision or ["fp32"])) for variant in args.sam]}
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
    import os as _os

    result = {"schema": 1, "machine": describe(cfg.threads), "native_threads": int(_os.environ.get(
              "SEGRT_NATIVE_THREADS", 0)) or min(_os.cpu_count() or 1, 16), "kernels": bench_kernels(cfg.iters),
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency per stage against PyTorch eager (needs segrt[export] for --quick)")
    p.add_argument("bundles", nargs="*", type=Path, help="bundles to time (default with --quick: U-Net, DeepLabV3+)")
    p.add_argument("--quick", action="store_true", help="export and time the default seeded models")
    p.add_argument("--size", type=size_arg, nargs="+", help="HxW the real photos are resized to; several sweep (default 512x512)")
    p.add_argument("--device", type=_devices, default=["auto"],
                   help="comma-separated devices for segrt (auto, cpu, cuda, tensorrt); PyTorch runs on cuda for cuda/tensorrt. "
                   "A device this machine lacks gives a row that says why")
    p.add_argument("--precision", type=_precisions, default=None,
                   help="comma-separated fp32,fp16,int8: variants of each FP32 bundle, made once (gated) into the cache "
                   "(default: each bundle as it is)")
    p.add_argument("--batch", type=_batches, default=[1], help="comma-separated batch sizes (semantic bundles), e.g. 1,2,4")
    p.add_argument("--warmup", type=int_at_least(0), default=3)
    count = p.add_mutually_exclusive_group()
    count.add_argument("--iters", type=int, default=20, help="timed runs per row (after --warmup)")
    count.add_argument("--seconds", type=float, help="time each row for S seconds instead (at least 3 runs)")
    p.add_argument("--threads", type=int_at_least(1), default=os.cpu_count() or 1, help="threads for both runtimes")
    p.add_argument("--baseline", type=_baselines, default=["torch"],
                   help="comma-separated: torch (eager), compile (torch.compile too, where it works; minutes to compile), none")
    p.add_argument("--no-sam", action="store_true", help="--quick without SAM vit_b (saves ~3 minutes)")
    p.add_argument("--json", type=Path, help="write the full result (schema in the README)")
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
    p.add_argument("--source", type=Path, help="--stream: the video for the bundles named (default vtest.avi)")
    p.add_argument("--stream-frames", type=int, default=200, help="--stream: frames per run")
    p.add_argument("--amg-points", type=int_at_least(1), default=32, help="--sam: automatic mask generation points per side")
    p.set_defaults(func=cmd_bench)
    register_eval(sub)


def _csv(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = list(dict.fromkeys(d.strip() for d in text.split(",") if d.strip()))
    bad = [d for d in names if d not in allowed]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{what} must be a comma-separated list of {', '.join(allowed)}; got {text!r}")
    return names


def _precisions(text: str) -> list[str]:
    return _csv(text, ("fp32", "fp16", "int8"), "precisions")


def _baselines(text: str) -> list[str]:
    names = _csv(text, ("torch", "compile", "none"), "baselines")
    if "none" in names and len(names) > 1:
        raise argparse.ArgumentTypeError("--baseline none cannot be combined with others")
    return ["torch", "compile"] if names == ["compile"] else names


def _batches(text: str) -> list[int]:
    try:
        values = list(dict.fromkeys(int(v) for v in text.split(",") if v.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes must be integers such as 1,2,4; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1; got {text!r}")
    return values


def _devices(text: str) -> list[str]:
    from segrt.runtime.backends import DEVICES

    names = [d.strip() for d in text.split(",") if d.strip()]
    bad = [d for d in names if d not in DEVICES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"devices must be a comma-separated list of {', '.join(DEVICES)}; got {text!r}")
    return names


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval_run import Tolerances, evaluate, table

    tol = Tolerances(args.min_agreement, args.min_mask_iou, args.min_match)
    result = evaluate(list(args.bundles), args.device, args.data, args.reference, tol, args.threads,
                      args.score_threshold)
    text = table(result)
    print(text)
    if args.json:
        write_json_atomic(args.json, result)
    if args.markdown:
        write_text_atomic(args.markdown, text + "\n")
    failed = [r["label"] for r in result["rows"] if r.get("passed") is False]
    if failed:
        print(f"segrt: {len(failed)} row(s) outside the tolerances: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def cmd_fixtures(args: argparse.Namespace) -> int:
    import json

    from .fixtures import FIXTURES, build_fixture, export_fixture, get_recipe

    if args.action == "list":
        for r in FIXTURES:
            print(f"{r.name:16s} {r.architecture}/{r.encoder} on {r.dataset}, {r.steps} steps of {r.batch} at {r.size}px")
        return 0
    from .machine import describe

    recipes = [get_recipe(n) for n in args.names] if args.names else list(FIXTURES)
    records = []
    for recipe in recipes:
        fixture = build_fixture(recipe, force=args.force)
        bundle = export_fixture(fixture)
        records.append({"fixture": recipe.name, "directory": str(fixture.directory), "bundle": str(bundle),
                        **fixture.metrics, "export_verification": read_manifest(bundle).verification})
        print(json.dumps({k: records[-1][k] for k in ("fixture", "directory", "validation")}, indent=2))
    if args.json:
        write_json_atomic(args.json, {"machine": describe(os.cpu_count() or 1), "fixtures": records})
    return 0


def register_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="accuracy of bundles against ground truth, and their agreement (no torch)")
    p.add_argument("bundles", nargs="+", type=Path, help="bundles to score; several line up in one table")
    p.add_argument("--data", type=Path, required=True,
                   help="DIR with images/ and labels/<stem>.png (class ids, 255 ignored) or annotations.json (COCO)")
    p.add_argument("--device", type=_devices, default=["cpu"], help="comma-separated: each bundle runs on each")
    p.add_argument("--reference", type=Path, help="bundle to compare against on the CPU (default: the first row)")
    p.add_argument("--min-agreement", type=fraction, default=0.99, help="semantic: pixel agreement tolerance")
    p.add_argument("--min-mask-iou", type=fraction, default=0.9, help="instance: mean matched mask IoU tolerance")
    p.add_argument("--min-match", type=fraction, default=0.95, help="instance: fraction of reference instances matched")
    p.add_argument("--score-threshold", type=fraction, help="instance bundles: keep detections from this score "
                   "(default: the manifest's; the graph's floor, e.g. 0.05, scores AP as torchvision does)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("fixtures", help="train (or reuse) the project's fixture models (needs segrt[export])")
    p.add_argument("action", choices=("list", "build"))
    p.add_argument("names", nargs="*", help="fixtures to build (default: all)")
    p.add_argument("--force", action="store_true", help="retrain even if cached")
    p.add_argument("--json", type=Path, help="write every fixture's recipe, scores and export check")
    p.set_defaults(func=cmd_fixtures)
