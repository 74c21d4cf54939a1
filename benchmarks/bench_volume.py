"""``segrt bench --volume``: sliding-window 3-D segmentation, segrt (ONNX Runtime) against MONAI's
``sliding_window_inference`` over the same network in PyTorch eager.

Each row is one seeded MONAI network (``monai_unet``, ``monai_segresnet``; ``--encoder small``) exported to a
volume bundle (cached), run on the MNI T1 crop of ``tests/data`` stretched to ``n^3`` (trilinear, z-scored by
the bundle's intensity policy), with the same window on both sides: 64^3 patches, overlap 0.25, Gaussian
blend, ``sw_batch_size`` 2, the same thread count. The sides are timed call by call in interleaved pairs
(:func:`benchmarks.pairs.interleave`, segrt the reference: each ratio is MONAI's ms over segrt's in the same
round, > 1 means segrt is faster), and the row keeps each side's p50, the median pair ratio with its
quartiles, and parity: the largest absolute difference of the two sides' blended probabilities (their last
timed outputs). Peak memory is measured in a fresh child process per side (one call, RSS sampled every 5 ms
from ``/proc/self/statm`` by :class:`benchmarks.timing.PeakRss`; not ``getrusage``, whose ``ru_maxrss`` in a child
started from this process starts at the parent's size): the segrt child imports neither torch nor MONAI, as an
edge install would not.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from segrt.runtime.errors import InvalidInputError
from segrt.runtime.volume_window import WindowSpec, window_starts

from .pairs import fmt_ratio, interleave, timed_side

log = logging.getLogger("segrt")
T1 = Path(__file__).resolve().parents[1] / "tests" / "data" / "mni_t1_crop.nii.gz"
VOLUME_MODELS = ("monai_unet", "monai_segresnet")
WINDOW = WindowSpec((64, 64, 64), 0.25, "gaussian", sigma_scale=0.125, sw_batch_size=2)
FULL_SIZE, QUICK_SIZE = 128, 96


@dataclass(frozen=True)
class VolumeBenchConfig:
    size: int = FULL_SIZE  # the T1 crop is stretched to size^3
    rounds: int = 3  # timed interleaved pairs per model
    warmup: int = 1
    threads: int = os.cpu_count() or 1
    window: WindowSpec = field(default_factory=lambda: WINDOW)
    encoder: str = "small"
    classes: int = 2
    memory: bool = True  # peak RSS of each side's run in a child process

    def __post_init__(self) -> None:
        if self.size < 8 or self.rounds < 1 or self.warmup < 0 or self.threads < 1:
            raise InvalidInputError(f"--volume needs a size >= 8, --iters >= 1, --warmup >= 0 and --threads >= 1; got "
                                    f"{self.size}, {self.rounds}, {self.warmup}, {self.threads}")


def export_config(arch: str, cfg: VolumeBenchConfig) -> Any:
    from segrt.export.spec import ExportConfig

    return ExportConfig(architecture=arch, encoder=cfg.encoder, classes=cfg.classes, in_channels=1, verify_image=T1)


def volume_spec(arch: str, cfg: VolumeBenchConfig) -> Any:
    from segrt.export.models import get_spec, monai_nets

    return replace(get_spec(arch), family=monai_nets.VolumeExport(window=cfg.window))


def volume_bundle(arch: str, cfg: VolumeBenchConfig) -> Path:
    """The seeded network exported once into the bench cache, with the row's window in its manifest."""
    from segrt.export.exporter import export_bundle

    from .bench import cache_dir

    roi = "x".join(map(str, cfg.window.roi_size))
    out = cache_dir() / f"{arch}-{cfg.encoder}-{cfg.classes}-vol{roi}-o{cfg.window.overlap}-{cfg.window.mode}"
    if not (out / "segrt.json").is_file():
        log.warning("exporting %s/%s with seeded weights into %s (once)", arch, cfg.encoder, out)
        export_bundle(volume_spec(arch, cfg), export_config(arch, cfg), out, force=True)
    return out


def stretched_t1(size: int) -> np.ndarray:
    """The real MNI T1 crop (48x56x40) stretched trilinearly to size^3, float32."""
    from segrt.runtime.volume_io import read_volume
    from segrt.runtime.volume_window import resize_linear

    if not T1.is_file():
        raise InvalidInputError(f"{T1} is missing (it ships in the repository's tests/data)")
    data = np.asarray(read_volume(T1).data, np.float32)
    return resize_linear(data[None], (size, size, size))[0]


def bench_volume_model(arch: str, cfg: VolumeBenchConfig) -> dict[str, Any]:
    """One row: ``arch``'s segrt and MONAI sides in interleaved pairs on the stretched T1, parity and memory."""
    import torch

    from segrt.export.exporter import build_module
    from segrt.export.models.monai_nets import monai_probabilities
    from segrt.runtime.volume_predict import VolumeSegmenter

    bundle = volume_bundle(arch, cfg)
    seg = VolumeSegmenter(bundle, "cpu", threads=cfg.threads)
    model, _ = build_module(volume_spec(arch, cfg), export_config(arch, cfg))  # the bundle's seeded weights
    torch.set_num_threads(cfg.threads)
    image = seg.prepare_array(stretched_t1(cfg.size))
    window, activation = seg.spec.window, seg.output.activation
    last: dict[str, np.ndarray] = {}

    def ours(i: int) -> None:
        last["segrt"] = seg.probabilities(image)

    def theirs(i: int) -> None:
        last["monai"] = monai_probabilities(model, image, window, activation)

    paired = interleave({"segrt": timed_side(ours), "monai": timed_side(theirs)}, reference="segrt",
                        rounds=cfg.rounds, warmup=cfg.warmup)
    seg.close()
    row = {"model": arch, "encoder": cfg.encoder, "classes": cfg.classes, "bundle": bundle.name,
           "volume": f"{T1.name} stretched to {cfg.size}^3", "shape": [cfg.size] * 3, "window": asdict(window),
           "windows": len(window_starts(image.shape[1:], window.roi_size, window.overlap)), "threads": cfg.threads,
           "rounds": paired["rounds"], "warmup": cfg.warmup, "order": "interleaved, rotated",
           "segrt": {"backend": seg.runner.name, "e2e": paired["sides"]["segrt"]["e2e"]},
           "monai": {"backend": "monai.inferers.sliding_window_inference + torch eager",
                     "e2e": paired["sides"]["monai"]["e2e"]},
           "pairs": {"monai": paired["ratios"]["monai"]}, "speedup_vs_monai": paired["ratios"]["monai"]["median"],
           "parity": parity(last["segrt"], last["monai"])}
    if cfg.memory:
        row["memory"] = {side: child_peak_rss(side, arch, cfg) for side in ("segrt", "monai")}
    return row


def parity(ours: np.ndarray, theirs: np.ndarray) -> dict[str, float]:
    """Max abs difference of the blended probabilities, and the share of voxels whose argmax agrees."""
    return {"max_abs_prob_diff": float(np.abs(ours - theirs).max()),
            "voxel_agreement": float((ours.argmax(0) == theirs.argmax(0)).mean())}


_CHILD = """
import json, sys
from segrt.benchmarks.bench_volume import VolumeBenchConfig, run_once
from segrt.benchmarks.timing import PeakRss
from segrt.runtime.volume_window import WindowSpec
spec = json.loads(sys.argv[1])
window = WindowSpec(**spec["window"] | {"roi_size": tuple(spec["window"]["roi_size"])})
cfg = VolumeBenchConfig(**spec["cfg"] | {"window": window, "memory": False})
call = run_once(spec["side"], spec["arch"], cfg)
with PeakRss() as mem:
    call()
rec = mem.record() | {"torch_imported": "torch" in sys.modules}
print("PEAK " + json.dumps(rec))
"""


def run_once(side: str, arch: str, cfg: VolumeBenchConfig) -> Any:
    """A prepared side: ``call()`` is one sliding-window run over the stretched T1 (what the child measures)."""
    from segrt.runtime.volume_predict import VolumeSegmenter

    seg = VolumeSegmenter(volume_bundle(arch, cfg), "cpu", threads=cfg.threads)
    image = seg.prepare_array(stretched_t1(cfg.size))
    if side == "segrt":
        return lambda: seg.probabilities(image)
    import torch

    from segrt.export.exporter import build_module
    from segrt.export.models.monai_nets import monai_probabilities

    torch.set_num_threads(cfg.threads)
    model, _ = build_module(volume_spec(arch, cfg), export_config(arch, cfg))
    window, activation = seg.spec.window, seg.output.activation
    seg.close()
    return lambda: monai_probabilities(model, image, window, activation)


def child_peak_rss(side: str, arch: str, cfg: VolumeBenchConfig) -> dict[str, Any]:
    """Peak RSS of one ``side`` run in a fresh process (MB: before the call, peak, the call's increment)."""
    plain = {k: v for k, v in asdict(cfg).items() if k not in ("window", "memory")}
    arg = json.dumps({"side": side, "arch": arch, "cfg": plain, "window": asdict(cfg.window)})
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_CHILD), arg], capture_output=True, text=True,
                          timeout=3600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": f"the {side} child exited {proc.returncode}: {tail}"[:300]}
    return json.loads(lines[-1][5:])


def bench_volume(cfg: VolumeBenchConfig, models: tuple[str, ...] = VOLUME_MODELS) -> list[dict[str, Any]]:
    rows = []
    for arch in models:
        log.warning("timing %s sliding windows on %d^3 against MONAI (%d pairs after %d warm-up)", arch, cfg.size,
                    cfg.rounds, cfg.warmup)
        rows.append(bench_volume_model(arch, cfg))
    return rows


def _p50_s(stats: dict[str, float]) -> str:
    return f"{stats['p50'] / 1e3:.2f} s"


def _mem_cell(mem: dict[str, Any] | None, side: str) -> str:
    m = (mem or {}).get(side)
    if not m:
        return "-"
    if "skipped" in m:
        return "skipped"
    return f"{m['peak_rss_mb']:.0f} MB (+{m['peak_delta_mb']:.0f})"


def markdown_volume(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, {m['threads']} threads for both sides), "
             f"onnxruntime {m['onnxruntime']}, torch {m['torch']}, segrt {m['segrt']} ({m['commit']}). Sliding "
             "windows on the MNI T1 crop stretched to n^3; both sides timed call by call in interleaved pairs (the "
             "order rotated each pair); ratio = MONAI ms / segrt ms of the same pair (> 1: segrt faster), median "
             "[q1-q3]. Parity: max abs difference of the blended probabilities. Peak RSS: one run in a fresh "
             "process (increment over the process before the call in brackets).", "",
             "| model | volume | window (overlap, blend, batch) | windows | pairs | segrt p50 | MONAI + PyTorch p50 | "
             "MONAI / segrt (median pair [q1-q3]) | parity (max abs prob diff) | peak RSS segrt | peak RSS MONAI |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        w = r["window"]
        lines.append(f"| {r['model']} {r['encoder']} | {'x'.join(map(str, r['shape']))} | "
                     f"{'x'.join(map(str, w['roi_size']))} ({w['overlap']}, {w['mode']}, {w['sw_batch_size']}) | "
                     f"{r['windows']} | {r['rounds']} | {_p50_s(r['segrt']['e2e'])} | {_p50_s(r['monai']['e2e'])} | "
                     f"{fmt_ratio(r['pairs']['monai'])} | {r['parity']['max_abs_prob_diff']:.1e} | "
                     f"{_mem_cell(r.get('memory'), 'segrt')} | {_mem_cell(r.get('memory'), 'monai')} |")
    return "\n".join(lines) + "\n"

