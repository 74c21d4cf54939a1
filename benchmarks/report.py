"""``segrt bench``'s tables: the Markdown of a run, and ``--compare``'s before/after view of two results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segrt.runtime.errors import InvalidInputError


def _goal(ok: bool) -> str:
    return "met" if ok else "NOT met"


#: The peers of the model table, in column order: (row key, column title).
PEERS = (("torch", "PyTorch eager"), ("ort_default", "ORT default"), ("openvino", "OpenVINO"))
#: Extra peers that get a note line, not a column.
NOTE_PEERS = (("torch_compile", "torch.compile"), ("in_graph_paste", "in-graph-paste export"))


def _header() -> list[str]:
    peer_cols = "".join(f"| {title} e2e p50 | vs segrt (median pair [q1-q3]) " for _, title in PEERS)
    n = 11 + 2 * len(PEERS) + 3
    return ["| model | precision | size | batch | weights | backend | pre | infer | post | segrt end to end | images/s "
            + peer_cols + "| pre+post share | peak RSS +MB (segrt / torch / ORT / OV) | limit |",
            "|" + "---|" * n]


def _peer_cells(r: dict[str, Any], key: str) -> str:
    """``| peer p50 | median pair ratio [q1-q3] |``: the ratio is peer ms / segrt ms in the same round."""
    from .bench import GOAL_SPEEDUP
    from .pairs import fmt_ratio

    if key not in r.get("pairs", {}):
        return "| - | - "
    goal = (f" ({_goal(r['speedup_vs_torch'] >= GOAL_SPEEDUP)})"
            if key == "torch" and r["precision"] == "fp32" and r.get("batch", 1) == 1 else "")
    return f"| {r[key]['stages']['e2e']['p50']:.1f} | {fmt_ratio(r['pairs'][key])}{goal} "


def _notes(r: dict[str, Any]) -> list[str]:
    from .pairs import fmt_ratio

    what = f"{r['model']} {r['precision']} {r['size'][0]}x{r['size'][1]} batch {r.get('batch', 1)}"
    notes = [f"{what}: {key.removesuffix('_skipped')} skipped: {v}" for key, v in r.items() if key.endswith("_skipped")]
    if "gate" in r:
        notes.append(f"{r['model']} {r['precision']}: accuracy vs FP32 {r['gate']['metric']} {r['gate']['score']:.4f} "
                     f"on {r['gate']['images']} images")
    for key, title in NOTE_PEERS:
        if key in r.get("pairs", {}):
            c = r[key]
            first = f" (load + first call {c['first_inference_ms'] / 1e3:.1f} s)" if key == "torch_compile" else ""
            notes.append(f"{what}: {title} e2e p50 {c['stages']['e2e']['p50']:.1f} ms{first}, "
                         f"{fmt_ratio(r['pairs'][key])} segrt's time")
    if "mean_detections" in r["segrt"]:
        counts = ", ".join(f"{k} {r[k]['mean_detections']:.1f}" for k in ("segrt", *r.get("pairs", {}))
                           if "mean_detections" in r.get(k, {}))
        notes.append(f"{what}: detections per image: {counts}")
    return notes


def markdown(result: dict[str, Any]) -> str:
    from .bench import GOAL_PREPOST_SHARE, GOAL_SPEEDUP

    m = result["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, {m['threads']} threads for every side), "
        f"onnxruntime {m['onnxruntime']}, torch {m['torch']}, segrt {m['segrt']} ({m['commit']}). "
        "Latencies in ms, p50 (p90 / p99); every side of a row timed in interleaved rounds on the same photos, "
        "ratios = peer ms / segrt ms of the same round (> 1: segrt faster), median [quartiles]; weights as noted.",
        "", *_header(),
    ]
    notes: list[str] = []
    for r in result["results"]:
        head = f"| {r['model']} | {r['precision']} | {r['size'][0]}x{r['size'][1]} | {r.get('batch', 1)} | {r['weights']} "
        if "skipped" in r:
            lines.append(head + f"| {r['device']}: skipped |" + " |" * (len(PEERS) * 2 + 8))
            notes.append(f"{r['model']} on {r['device']}: {r['skipped']}")
            continue
        notes += _notes(r)
        s = r["segrt"]["stages"]
        cell = lambda k, s=s: f"{s[k]['p50']:.1f} ({s[k]['p90']:.1f} / {s[k]['p99']:.1f})"  # noqa: E731
        share = f"{r['prepost_share']:.1%} ({_goal(r['prepost_share'] < GOAL_PREPOST_SHARE)})"
        lines.append(
            head + f"| {r['segrt']['backend']} | {cell('pre')} | {cell('infer')} | {cell('post')} | {cell('e2e')} | "
            f"{r['segrt'].get('images_per_s', s['e2e']['fps']):.1f} " + "".join(_peer_cells(r, k) for k, _ in PEERS)
            + f"| {share} | {_mem(r)} | {limit_cell(r.get('limit'))} |"
        )
    if notes:
        lines += ["", *(f"- {n}" for n in dict.fromkeys(notes))]
    if result.get("sam"):
        from .bench_sam import markdown_sam_rows

        lines += ["", *markdown_sam_rows(result["sam"])]
    lines += ["", f"Goals: end to end at least {GOAL_SPEEDUP}x faster than PyTorch eager (median pair ratio); pre+post "
              f"under {GOAL_PREPOST_SHARE:.0%} of end to end. Cold start (load, first inference) and memory are measured "
              "per side before the interleaved rounds; both are in the JSON. limit: GFLOP per image at the row's "
              "size, the infer stage's GFLOP/s and its share of this CPU's GEMM peak of the row's precision, measured in the same run"
              + (f" ({_peak_line(result['peak'])})." if result.get("peak") else ".")]
    return "\n".join(lines) + "\n"


def limit_cell(limit: dict[str, Any] | None) -> str:
    """``64 GFLOP, 210 GFLOP/s, 41 % of peak``, or why not."""
    if not limit:
        return ""
    if "skipped" in limit:
        return "-"
    if limit.get("gflop") is None:
        return "not counted"
    return (f"{limit['gflop']:.0f} GFLOP, {limit['gflops_per_s']['infer']:.0f} GFLOP/s, "
            f"{limit['percent_of_peak']:.0f} % of {limit['peak']['precision']} peak")


def _peak_line(peak: dict[str, Any]) -> str:
    parts = []
    if "fp32_gflops" in peak:
        parts.append(f"CPU peak: FP32 {peak['fp32_gflops']:.0f} GFLOP/s, INT8 {peak['int8_gops']:.0f} GOP/s, the best "
                     "2048^3 GEMM of ONNX Runtime and NumPy, the higher of before and after the rows")
    gpu = peak.get("gpu")
    if gpu:
        rate = lambda v, unit: "-" if v is None else f"{v:.0f} {unit}"  # noqa: E731
        parts.append(f"GPU peak ({gpu['device']}): FP32 {rate(gpu['fp32_gflops'], 'GFLOP/s')}, FP16 "
                     f"{rate(gpu['fp16_gflops'], 'GFLOP/s')}, INT8 {rate(gpu['int8_gops'], 'GOP/s')}, PyTorch's 8192^3 "
                     "GEMM")
    return "; ".join(parts)


def _mem(row: dict[str, Any]) -> str:
    cells = [row.get(k, {}).get("memory") for k in ("segrt", *(key for key, _ in PEERS))]
    return " / ".join(f"{m['peak_delta_mb']:.0f}" if m else "-" for m in cells)


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
