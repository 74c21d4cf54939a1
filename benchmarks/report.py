"""``segrt bench``'s tables: the Markdown of a run, and ``--compare``'s before/after view of two results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segrt.runtime.errors import InvalidInputError


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


def load_result(path: Path) -> dict[str, Any]:
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
