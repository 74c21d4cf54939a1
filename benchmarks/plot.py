"""``segrt bench --plot OUT.png``: end-to-end p50 per model, segrt's stages stacked beside PyTorch eager."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from segrt.runtime.errors import InvalidInputError


def plot_results(result: dict[str, Any], path: Path) -> None:
    """One horizontal group per result row: segrt pre / infer / post stacked (p50 ms), PyTorch's end to end
    under it. Written through a temporary file, renamed when complete."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidInputError("--plot needs matplotlib (pip install 'segrt[export]')") from None
    rows = [r for r in result["results"] if "segrt" in r]  # rows for a missing device have no figures
    sam = [(f"{r['model']} {what}", r[key]["segrt"]["p50"], r[key]["torch"]["p50"])
           for r in result.get("sam", []) for key, what in (("encoder", "encoder"), ("decoder_64", "decoder x64"))]
    if not rows and not sam:
        raise InvalidInputError("no results to plot")
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.9 * (len(rows) + len(sam))))
    labels, y = [], 0.0
    colours = {"pre": "#4c72b0", "infer": "#dd8452", "post": "#55a868"}
    for r in rows:
        stages = r["segrt"]["stages"]
        left = 0.0
        for stage in ("pre", "infer", "post"):
            ax.barh(y, stages[stage]["p50"], left=left, color=colours[stage], height=0.35,
                    label=f"segrt {stage}" if y == 0 else None)
            left += stages[stage]["p50"]
        text = f"{stages['e2e']['p50']:.0f} ms"
        if "torch" in r:
            t = r["torch"]["stages"]["e2e"]["p50"]
            ax.barh(y + 0.4, t, color="#8c8c8c", height=0.35, label="PyTorch eager" if y == 0 else None)
            ax.text(t, y + 0.4, f" {t:.0f} ms", va="center", fontsize=8)
            text += f" ({r['speedup_vs_torch']:.2f}x)"
        ax.text(left, y, f" {text}", va="center", fontsize=8)
        batch = f" x{r['batch']}" if r.get("batch", 1) != 1 else ""
        labels.append((y + 0.2, f"{r['model']}\n{r['precision']} {r['size'][0]}x{r['size'][1]}{batch}"))
        y += 1.0
    for label, ours, theirs in sam:  # SAM: segrt's call against segment-anything's, p50
        ax.barh(y, ours, color=colours["infer"], height=0.35)
        ax.barh(y + 0.4, theirs, color="#8c8c8c", height=0.35)
        ax.text(ours, y, f" {ours:.0f} ms ({theirs / ours:.2f}x)", va="center", fontsize=8)
        ax.text(theirs, y + 0.4, f" {theirs:.0f} ms", va="center", fontsize=8)
        labels.append((y + 0.2, label))
        y += 1.0
    ax.set_yticks([p for p, _ in labels], [t for _, t in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("latency p50 (ms)")
    m = result["machine"]
    ax.set_title(f"segrt {m.get('segrt')} ({m.get('commit')}) on {m.get('cpu')}, {m.get('cores')} cores, "
                 f"{m.get('date', '')[:10]}", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InvalidInputError(f"cannot write {str(path)!r}: {exc.strerror}") from None
    finally:
        plt.close(fig)
