"""``segrt bench --plot OUT.png``: the ratios against each peer, with their spread, one row per model/stage and peer.

A row's ratio is the peer's time over segrt's (> 1: segrt is faster), on a log axis with parity marked. Where
the result carries interleaved pairs (a model row's ``pairs`` = {peer: {median, q1, q3, min, max, pairs}}, a
SAM stage's ``pairs`` likewise) the dot is the median pair ratio, the thick bar its quartiles and the thin line
its range; rows recorded before pairs existed show the ratio of the two sides' p50s as a hollow dot, no bar.
Keys a result lacks are skipped, so any recorded result (schema 1 or 2) can be drawn."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segrt.runtime.errors import InvalidInputError

from .headlines import sam_stages
from .pairs import fmt_ratio, peer_stats

#: The p50-ratio keys of rows recorded without pairs, by peer.
P50_RATIOS = {"torch": "speedup_vs_torch", "torch_compile": "speedup_vs_torch_compile"}
COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


@dataclass(frozen=True)
class Bar:
    """One chart row: ``label`` against ``peer``, paired ``stats`` or else a ``p50`` ratio."""

    label: str
    peer: str
    stats: dict[str, float] | None = None
    p50: float | None = None
    note: str = ""  # a row timed against no peer: what to print instead of a dot

    @property
    def value(self) -> float:
        return self.stats["median"] if self.stats else float(self.p50 or 1.0)


def _row_bars(label: str, row: dict[str, Any], p50_keys: dict[str, str], only_peer: str = "baseline") -> list[Bar]:
    paired = peer_stats(row.get("pairs"), only_peer)
    bars = [Bar(label, peer, stats=stats) for peer, stats in paired.items()]
    bars += [Bar(label, peer, p50=float(row[key])) for peer, key in p50_keys.items()
             if peer not in paired and isinstance(row.get(key), (int, float)) and row[key] > 0]
    return bars


def _unpaired(r: dict[str, Any]) -> Bar:
    e2e = r["segrt"].get("stages", {}).get("e2e", {}).get("p50")
    return Bar(_model_label(r), "no peer", note=f"segrt only: {e2e:.1f} ms p50" if e2e else "segrt only")


def _model_label(r: dict[str, Any]) -> str:
    size = "x".join(str(v) for v in r.get("size", []))
    batch = f" x{r['batch']}" if r.get("batch", 1) != 1 else ""
    return f"{r.get('model', '?')} {r.get('precision', '')} {size}{batch}".strip()


def bars_of(result: dict[str, Any]) -> list[Bar]:
    """Every ratio the result holds: model rows (rows that could not run have no ``segrt`` and are skipped),
    then SAM's stages."""
    bars: list[Bar] = []
    for r in result.get("results", []):
        if isinstance(r, dict) and "segrt" in r:
            bars += _row_bars(_model_label(r), r, P50_RATIOS) or [_unpaired(r)]
    for r in result.get("sam", []):
        for stage, record in sam_stages(r):
            bars += _row_bars(f"{r.get('model', 'sam')} {stage}", record, {"segment-anything": "speedup"},
                              only_peer="segment-anything")
    return bars


def _draw(ax: Any, bars: list[Bar]) -> None:
    peers = list(dict.fromkeys(b.peer for b in bars))
    colour = {p: COLOURS[i % len(COLOURS)] for i, p in enumerate(peers)}
    for y, b in enumerate(bars):
        c = colour[b.peer]
        if b.note:
            ax.text(1.0, y, f"  {b.note}", va="center", fontsize=7.5, color="#555555")
            continue
        if b.stats:
            s = b.stats
            ax.hlines(y, s.get("min", s["q1"]), s.get("max", s["q3"]), color=c, linewidth=1, alpha=0.5)
            ax.hlines(y, s["q1"], s["q3"], color=c, linewidth=5, alpha=0.8)
            ax.plot(s["median"], y, "o", color=c, markersize=6)
            text = f"  {fmt_ratio(s)}" + (f", {s['pairs']} pairs" if "pairs" in s else "")
            right = s.get("max", s["q3"])
        else:
            ax.plot(b.value, y, "o", markerfacecolor="white", markeredgecolor=c, markersize=6)
            text, right = f"  {b.value:.2f}x (p50s, not paired)", b.value
        ax.text(right, y, text, va="center", fontsize=7.5)
    for p in (p for p in peers if p != "no peer"):
        ax.plot([], [], "o", color=colour[p], label=f"vs {p}")
    ax.axvline(1.0, color="#555555", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(bars)), [f"{b.label}  ·  {b.peer}" for b in bars], fontsize=8)
    ax.set_ylim(len(bars) - 0.5, -0.5)
    ax.set_xscale("log", base=2)
    lo = min(min(b.stats.get("min", b.stats["q1"]) if b.stats else b.value for b in bars), 0.8)
    hi = max(max(b.stats.get("max", b.stats["q3"]) if b.stats else b.value for b in bars), 1.25)
    ax.set_xlim(lo / 1.15, hi * 2.2)  # room on the right for the labels
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}x")
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("peer time / segrt time (> 1: segrt faster; dashed: parity). Dot: median pair ratio, "
                  "bar: q1-q3, line: min-max", fontsize=8)
    if any(p != "no peer" for p in peers):
        ax.legend(fontsize=8, loc="best")


def _title(result: dict[str, Any]) -> str:
    m = result.get("machine") or {}
    return (f"segrt {m.get('segrt')} ({m.get('commit')}) on {m.get('cpu')}, {m.get('cores')} cores, "
            f"{str(m.get('date', ''))[:10]}")


def plot_results(result: dict[str, Any], path: Path) -> None:
    """Write the chart of ``result``'s ratios to ``path`` (PNG) through a temporary file, renamed when complete."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidInputError("--plot needs matplotlib (pip install 'segrt[export]')") from None
    bars = bars_of(result)
    if not bars:
        raise InvalidInputError("no results to plot: the result has no timed row")
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.34 * len(bars)))
    try:
        _draw(ax, bars)
        ax.set_title(_title(result), fontsize=9)
        fig.tight_layout()
        _save(fig, Path(path))
    finally:
        plt.close(fig)


def _save(fig: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InvalidInputError(f"cannot write {str(path)!r}: {exc.strerror}") from None
