"""The GPU check's worker jobs (seeded exports and FP16 variants, in separate processes) and its
``segrt bench --device cuda`` step."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from segrt.runtime.tasks import task_for

from .gpu_check_steps import Family


def export_family(name: str) -> str:
    """Export ``name`` with seeded weights into segrt bench's cache (a no-op when it is already there)."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 4) // 4))
    from .bench import QUICK_MODELS, ensure_bundle
    from .bench_instance import ensure_instance_bundle
    from .bench_sam import ensure_sam_bundle

    if name == "maskrcnn":
        return str(ensure_instance_bundle())
    if name == "sam":
        return str(ensure_sam_bundle("vit_b"))
    arch, encoder, classes = next(m for m in QUICK_MODELS if m[0] == name)
    return str(ensure_bundle(arch, encoder, classes))


def fp16_variant(bundle: str) -> str:
    """``segrt quantize --precision fp16`` of ``bundle`` (gate on the CPU, reported), cached like segrt bench's."""
    from .bench import precision_variant

    return str(precision_variant(Path(bundle), "fp16"))


def export_all(names: tuple[str, ...], pool: ProcessPoolExecutor, families: list[Family],
                fp16: dict[str, Future]) -> None:
    jobs = {n: pool.submit(export_family, n) for n in names}
    errors = []
    for name, job in jobs.items():
        try:
            bundle = Path(job.result())
        except Exception as exc:  # noqa: BLE001 - one family's failure is recorded, the others go on
            errors.append(f"{name}: {type(exc).__name__}: {exc}"[:200])
            continue
        families.append(Family(name, bundle))
        fp16[name] = pool.submit(fp16_variant, str(bundle))
    if errors:
        raise RuntimeError("; ".join(errors))


def wait_fp16(fp16: dict[str, Future], deadline: float, done: dict[str, Path]) -> None:
    """Collect the FP16 variants into ``done`` as they finish (until ``deadline``); raise naming those that failed."""
    errors = []
    for name, job in fp16.items():
        try:
            done[name] = Path(job.result(timeout=max(1.0, deadline - time.perf_counter())))
        except Exception as exc:  # noqa: BLE001 - recorded per family
            errors.append(f"{name}: {type(exc).__name__}: {exc}"[:200])
    if errors:
        raise RuntimeError("; ".join(errors))


def _ms(value: float | None, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{suffix}"


def _bench_line(r: dict[str, Any]) -> str:
    if "segrt" not in r:
        return f"| {r['model']} | {r['precision']} | skipped: {r.get('skipped')} | | | |"
    torch_ms = r.get("torch", {}).get("stages", {}).get("e2e", {}).get("p50")
    return (f"| {r['model']} | {r['precision']} | {r['segrt']['backend']} | {_ms(r['segrt']['stages']['e2e']['p50'])} | "
            f"{_ms(torch_ms)} | {_ms(r.get('speedup_vs_torch'), 'x')} |")


def bench_cuda(families: list[Family], out: Path, device: str = "cuda") -> dict[str, Any]:
    """`segrt bench` as users run it on ``device`` (its PyTorch baseline runs on CUDA for cuda), into ``out``."""
    from segrt.runtime.cli import main as segrt_main

    bundles = [str(f.bundle) for f in families if task_for(f.task).bench_row is not None
               and task_for(f.task).bench_instead is None]  # what segrt bench times by bundle (not SAM)
    argv = ["bench", *bundles, "--device", device, "--precision", "fp32,fp16", "--iters", "10", "--warmup", "2",
            "--json", str(out / f"bench-{device}.json"), "--markdown", str(out / f"bench-{device}.md")]
    rc = segrt_main(argv)
    rows = json.loads((out / f"bench-{device}.json").read_text())["results"] if rc == 0 else []
    lines = [f"| model | precision | backend | e2e p50 ms | PyTorch eager {device} e2e p50 ms | speedup |", "|---|---|---|---|---|---|"]
    lines += [_bench_line(r) for r in rows]
    summary = "\n".join(lines) + f"\n\n(one loop per side, as `segrt bench` times; bench-{device}.md has every column)"
    return {"rc": rc, "argv": ["segrt", *argv], "json": f"bench-{device}.json", "summary": summary}
