"""``segrt eval`` (accuracy against ground truth, agreement between bundles) and ``segrt fixtures``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from segrt.runtime.cli import fraction
from segrt.runtime.manifest import read_manifest, write_json_atomic, write_text_atomic

from .cli_args import devices


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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="accuracy of bundles against ground truth, and their agreement (no torch)")
    p.add_argument("bundles", nargs="+", type=Path, help="bundles to score; several line up in one table")
    p.add_argument("--data", type=Path, required=True,
                   help="DIR with images/ and labels/<stem>.png (class ids, 255 ignored) or annotations.json (COCO)")
    p.add_argument("--device", type=devices, default=["cpu"], help="comma-separated: each bundle runs on each")
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
