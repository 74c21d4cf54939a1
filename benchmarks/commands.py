"""``segrt bench``: the README's main job."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from segrt.runtime.cli import size_arg
from segrt.runtime.errors import InvalidInputError
from segrt.runtime.manifest import write_json_atomic, write_text_atomic


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
        "| model | size | weights | backend | pre | infer | post | end to end | fps | PyTorch e2e | speedup | pre+post share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        s = r["segrt"]["stages"]
        cell = lambda k: f"{s[k]['p50']:.1f} ({s[k]['p90']:.1f} / {s[k]['p99']:.1f})"  # noqa: E731
        torch_e2e = f"{r['torch']['stages']['e2e']['p50']:.1f}" if "torch" in r else "-"
        speed = f"{r['speedup_vs_torch']:.2f}x ({_goal(r['speedup_vs_torch'] >= GOAL_SPEEDUP)})" if "torch" in r else "-"
        share = f"{r['prepost_share']:.1%} ({_goal(r['prepost_share'] < GOAL_PREPOST_SHARE)})"
        lines.append(
            f"| {r['model']} | {r['size'][0]}x{r['size'][1]} | {r['weights']} | {r['segrt']['backend']} | {cell('pre')} | "
            f"{cell('infer')} | {cell('post')} | {cell('e2e')} | {s['e2e']['fps']:.1f} | {torch_e2e} | {speed} | {share} |"
        )
    lines += ["", f"Goals: end to end at least {GOAL_SPEEDUP}x faster than PyTorch eager; pre+post under "
              f"{GOAL_PREPOST_SHARE:.0%} of end to end. Cold start (load, first inference) is in the JSON."]
    return "\n".join(lines) + "\n"


def cmd_bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .bench import QUICK_MODELS, BenchConfig, bench_model, ensure_bundle
    from .machine import describe

    cfg = BenchConfig(size=args.size, warmup=args.warmup, iters=args.iters, threads=args.threads,
                      baseline=args.baseline == "torch")
    if not args.bundles and not args.quick:
        raise InvalidInputError("name bundles to benchmark, or pass --quick for the default set")
    bundles = list(args.bundles) or [ensure_bundle(*m) for m in QUICK_MODELS]
    results = []
    for bundle in tqdm(bundles, unit="model", file=sys.stderr):
        results.append(bench_model(Path(bundle), cfg))
    result = {"schema": 1, "machine": describe(cfg.threads), "config": vars(cfg) | {"size": list(cfg.size)},
              "results": results}
    table = markdown(result)
    print(table)
    if args.json:
        write_json_atomic(args.json, result)
    if args.markdown:
        write_text_atomic(args.markdown, table)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency per stage against PyTorch eager (needs segrt[export] for --quick)")
    p.add_argument("bundles", nargs="*", type=Path, help="bundles to time (default with --quick: U-Net, DeepLabV3+)")
    p.add_argument("--quick", action="store_true", help="export and time the default seeded models")
    p.add_argument("--size", type=size_arg, default=(512, 512), help="HxW the real photos are resized to")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for both runtimes")
    p.add_argument("--baseline", choices=("torch", "none"), default="torch")
    p.add_argument("--json", type=Path, help="write the full result (schema in the README)")
    p.add_argument("--markdown", type=Path, help="write the table as Markdown")
    p.set_defaults(func=cmd_bench)
