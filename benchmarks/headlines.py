"""The figures a reader wants from a recorded run, per kind of run: ``headline(kind, result) -> {label: text}``.

Ratios are the other side's time over segrt's (> 1: segrt is faster). Where a row carries interleaved pairs
(``pairs``: {peer: {median, q1, q3, ...}}) the headline gives the median pair ratio with its quartiles,
``1.52x [1.41-1.60]``; older rows give the ratio of the two sides' p50s, ``1.52x``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .pairs import fmt_ratio, peer_stats

Headline = dict[str, str]


def kind_of(result: dict[str, Any] | str) -> str:
    """The kind of a result, from its keys (a Markdown-only run is ``notes``)."""
    if not isinstance(result, dict):
        return "notes"
    rows = result.get("results") or result.get("rows") or []
    first = rows[0] if rows and isinstance(rows[0], dict) else {}
    checks = (("gpu-check" in str(result.get("schema", "")), "gpu-check"), ("kernels" in result, "prepost"),
              ("fixtures" in result, "fixtures"), ("pipelined_fps" in first, "stream"), ("inprocess" in first, "serving"), ("encoder" in first, "sam"),
              ("precisions" in first, "precision"), ("accuracy" in first, "eval"), ("segrt" in first, "bench"),
              ("architecture" in result, "manifest"), ("frames_out" in result, "stream-report"))
    return next((kind for hit, kind in checks if hit), "other")


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _ratio(row: dict[str, Any], peer: str | None, p50_ratio: float | None) -> str:
    """A paired ratio where the row has one for ``peer`` (None: its only peer), else the p50 ratio."""
    pairs = peer_stats(row.get("pairs"))
    stats = pairs.get(peer) if peer is not None else next(iter(pairs.values()), None)
    return fmt_ratio(stats) if stats else _x(p50_ratio)


def _model_rows(result: dict[str, Any]) -> Headline:
    out: Headline = {}
    for r in result.get("results", []):
        if "segrt" not in r:
            continue
        size = "x".join(str(v) for v in r.get("size", []))
        label = f"{r['model']} {r.get('precision', 'fp32')} {size}" + (f" x{r['batch']}" if r.get("batch", 1) != 1 else "")
        ms = r["segrt"]["stages"]["e2e"]["p50"]
        peers = [p for p in ("torch", "torch_compile") if f"speedup_vs_{p}" in r]  # p50 ratios of older runs
        peers += [p for p in (r.get("pairs") or {}) if p not in peers]
        out[label] = ", ".join([f"{ms:.0f} ms"] + [f"{_ratio(r, p, r.get(f'speedup_vs_{p}'))} {p}" for p in peers])
    return out


SAM_STAGES = (("encoder", "encoder"), ("decoder_1", "decoder x1"), ("decoder_64", "decoder x64"), ("amg", "generator"))


def sam_stages(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A SAM row's timed stages as (label, stage record): the generator is one record in older runs and a list of
    settings (default thresholds, relaxed) since pairs; its grid size is in the label."""
    out = []
    for key, label in SAM_STAGES:
        stages = r.get(key)
        for stage in stages if isinstance(stages, list) else [stages]:
            if isinstance(stage, dict):
                grid = f" {stage['points_per_side']}x{stage['points_per_side']}" if "points_per_side" in stage else ""
                setting = f" {stage['setting']}" if "setting" in stage else ""
                masks = (f" ({stage['masks_segrt']} vs {stage['masks_torch']} masks)"
                         if "masks_segrt" in stage and "masks_torch" in stage else "")
                out.append((f"{label}{setting}{grid}{masks}", stage))
    return out


def _sam_row(r: dict[str, Any]) -> Headline:
    parts = [f"{label} {_ratio(stage, None, stage.get('speedup'))}" for label, stage in sam_stages(r)]
    for precision, v in (r.get("encoder_variants") or {}).items():
        if isinstance(v, dict) and "speedup" in v:
            parts.append(f"{precision} encoder {_ratio(v, None, v['speedup'])}")
    return {f"{r.get('model', 'sam')} vs segment-anything": ", ".join(parts)}


def _bench(result: dict[str, Any]) -> Headline:
    out = _model_rows(result)
    for r in result.get("sam", []):
        out |= _sam_row(r)
    return out


def _sam(result: dict[str, Any]) -> Headline:
    out: Headline = {}
    for r in result.get("results", []):
        out |= _sam_row(r)
    return out


def _stream(result: dict[str, Any]) -> Headline:
    out: Headline = {}
    for r in result.get("results", []):
        label = f"{r['bundle']} {r.get('precision', 'fp32')} {'x'.join(map(str, r.get('frame_size', [])))}"
        stats = r.get("speedup_pairs")
        out[label] = (fmt_ratio(stats) if stats else _x(r.get("speedup"))) + \
            f" pipelined ({r['sequential_fps']:.1f} -> {r['pipelined_fps']:.1f} FPS)"
    return out


def _prepost(result: dict[str, Any]) -> Headline:
    out: Headline = {}
    for r in result.get("kernels", []):
        name = r["kernel"].split(" (")[0]
        twin = _ratio(r, "reference", r.get("speedup_vs_reference"))
        cv = f", {_ratio(r, 'opencv_v0.1', r['speedup_vs_opencv'])} OpenCV" if "speedup_vs_opencv" in r else ""
        out[name] = f"{twin} NumPy twin{cv}"
    for r in result.get("end_to_end", []):
        out[f"{r['bundle']} end to end"] = f"{_ratio(r, 'reference', r.get('e2e_speedup'))} NumPy twin"
    return out


def _serving(result: dict[str, Any]) -> Headline:
    out: Headline = {}
    for r in result.get("rows", []):
        parts = [f"{proto} p50 {r[proto]['p50_vs_inprocess']['median']:.2f}x in-process"
                 for proto in ("http", "grpc") if isinstance(r.get(proto), dict) and "p50_vs_inprocess" in r[proto]]
        out[f"{r['clients']} client(s)"] = ", ".join(parts)
    return out


def _precision(result: dict[str, Any]) -> Headline:
    if any("segrt" in r for r in result.get("results", [])):  # `segrt bench BUNDLE --precision fp32,int8`
        return _model_rows(result)
    return {r.get("fixture", r.get("model", "?")): f"INT8 {_x(r.get('int8_speedup'))}, FP16 {_x(r.get('fp16_speedup'))} of FP32"
            for r in result.get("results", [])}


def _accuracy_figure(acc: dict[str, Any]) -> str:
    for key in ("miou", "mask_ap", "pixel_agreement", "AP"):
        if isinstance(acc.get(key), (int, float)):
            return f"{key} {acc[key]:.3f}"
    for key in ("mask", "box"):
        if isinstance(acc.get(key), dict) and "AP" in acc[key]:
            return f"{key} AP {acc[key]['AP']:.3f}"
    return "-"


def _fixtures(result: dict[str, Any]) -> Headline:
    return {f["fixture"]: f"segrt eval {_accuracy_figure((f.get('segrt_eval') or {}).get('accuracy') or {})}"
            for f in result.get("fixtures", [])}


def _eval(result: dict[str, Any]) -> Headline:
    return {r.get("label", r.get("precision", "?")): f"{_accuracy_figure(r.get('accuracy') or {})}, {r['mean_ms']:.0f} ms"
            for r in result.get("rows", []) if "mean_ms" in r}


def _stream_report(result: dict[str, Any]) -> Headline:
    return {"stream": f"{result['frames_out']} frames, {result['fps']:.1f} FPS, latency p50 {result['latency_p50_ms']:.0f} ms"}


def _manifest(result: dict[str, Any]) -> Headline:
    return {"bundle": f"{result.get('architecture')} {result.get('precision')} ({result.get('task')})"}


def _gpu_check(result: dict[str, Any]) -> Headline:
    parity = result.get("parity", [])
    out = {"status": str(result.get("status")),
           "parity": f"{sum(bool(r.get('passed')) for r in parity)} of {len(parity)} passed"}
    for r in result.get("timing", []):
        ratios = r.get("ratios") if isinstance(r.get("ratios"), dict) else {}
        out[f"{r.get('family')} {r.get('size')}"] = ", ".join(
            f"{fmt_ratio(v)} {peer}" for peer, v in ratios.items() if isinstance(v, dict) and {"median", "q1", "q3"} <= set(v))
    return out


HEADLINES: dict[str, Callable[[dict[str, Any]], Headline]] = {
    "bench": _bench, "sam": _sam, "stream": _stream, "prepost": _prepost, "serving": _serving,
    "precision": _precision, "fixtures": _fixtures, "eval": _eval, "stream-report": _stream_report,
    "manifest": _manifest, "gpu-check": _gpu_check,
}


def headline(kind: str, result: dict[str, Any] | str) -> Headline:
    """The run's headline figures; none for a Markdown-only run or a kind without a headline."""
    fn = HEADLINES.get(kind)
    return fn(result) if fn is not None and isinstance(result, dict) else {}
