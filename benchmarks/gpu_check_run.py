"""The GPU check itself (stage two of ``benchmarks/gpu_check.py run``): steps, each with a time budget.

Exports run in worker processes (four at once; seeded weights, the same cache paths ``segrt bench`` uses), and
the FP16 variants are made there too while this process measures the FP32 bundles on the GPU. Each step prints
its budget and time; none starts after ``--budget`` seconds (the rest are recorded as skipped), and the JSON and
Markdown are rewritten after every step, so a run cut short still leaves its results.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segrt.runtime.errors import SegrtError
from segrt.runtime.tasks import task_for
from segrt.runtime.tasks.base import resolve

from . import gpu_check_report as report
from .gpu_check_jobs import bench_cuda, export_all, wait_fp16
from .gpu_check_steps import Family, cuda_graph, io_binding, open_model, parity, reference, require_cuda, run_once
from .gpu_check_timing import interleaved

ROOT = Path(__file__).resolve().parent.parent
#: seconds per step; the sum is the plan, ``--budget`` the hard stop for starting steps
BUDGETS = {"export": 150, "parity-fp32": 60, "io-binding": 30, "cuda-graphs": 30, "fp16-variants": 60,
           "parity-fp16": 45, "timing": 60, "bench": 45}


@dataclass(frozen=True)
class Plan:
    """How long each step may take, how many timed rounds per task, and the photos' size and count."""

    budgets: dict[str, int]
    rounds: int | None  # timed rounds per family; None: each task's gpu_check_rounds
    size: tuple[int, int] = (512, 512)  # semantic and Mask R-CNN photos (SAM takes them at their own sizes)
    count: int = 4
    threads: int | None = None
    pairs: int = 10  # I/O binding on/off rounds; CUDA graphs take twice as many
    torch: bool = True  # time PyTorch eager (and FP16 autocast on CUDA) beside segrt


GPU_PLAN = Plan(BUDGETS, None)
SELF_TEST_PLAN = Plan({k: 30 for k in BUDGETS}, 4, (128, 128), 2, 2, 4, torch=False)


class Steps:
    """Runs named steps against a shared deadline and saves the result after each."""

    def __init__(self, result: dict[str, Any], out: Path, budget_s: float) -> None:
        self.result, self.out = result, out
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + budget_s

    def run(self, name: str, budget_s: int, fn: Callable[[], Any]) -> Any:
        row: dict[str, Any] = {"name": name, "budget_s": budget_s, "elapsed_s": 0.0, "status": "ok"}
        self.result["steps"].append(row)
        value = None
        if time.perf_counter() > self.deadline:
            row["status"] = "skipped"
            row["error"] = "out of time (--budget)"
        else:
            t0 = time.perf_counter()
            try:
                value = fn()
            except Exception as exc:  # one failing step must not hide the others: recorded, traceback in the log  # noqa: BLE001
                traceback.print_exc()
                row["status"], row["error"] = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            row["elapsed_s"] = round(time.perf_counter() - t0, 2)
            if row["status"] == "ok" and row["elapsed_s"] > budget_s:
                row["status"] = "ok (over budget)"
        print(f"gpu-check: {name}: {row['elapsed_s']:.0f} s of a {budget_s} s budget, {row['status']}"
              f"{': ' + row['error'] if 'error' in row else ''} (total {time.perf_counter() - self.t0:.0f} s)", flush=True)
        self.save()
        return value

    def step_deadline(self, budget_s: int) -> float:
        return min(self.deadline, time.perf_counter() + budget_s)

    def save(self) -> None:
        report.write(self.result, self.out)


def photos(size: tuple[int, int] | None = None, count: int = 4) -> dict[str, np.ndarray]:
    """The quantize gate's scikit-image photos, at their own sizes or resized to ``size``."""
    import cv2
    import skimage.data

    from segrt.export.quant_gate import GATE_PHOTOS

    out = {n: getattr(skimage.data, n)() for n in GATE_PHOTOS[:count]}
    if size is not None:
        out = {n: cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_AREA) for n, im in out.items()}
    return out


# -- the check --------------------------------------------------------------------------------------------
def _photos_for(family: Family, plan: Plan) -> dict[str, np.ndarray]:
    """Parity photos: semantic ones at the plan's size (one fixed shape, as CUDA graphs need), the others
    at their own sizes (Mask R-CNN and SAM resize inside their preprocessing)."""
    return photos(None, plan.count) if task_for(family.task).resizes_input else photos(plan.size, plan.count)


def _timing(family: Family, variant: Path | None, device: str, steps: Steps, plan: Plan) -> dict[str, Any]:
    at_size = task_for(family.task).timed_at_bench_size
    images = list((photos(plan.size, plan.count) if at_size else photos(None, plan.count)).values())
    threads = plan.threads
    models = {f"segrt fp32 {device}": open_model(family.bundle, device, threads)}
    if variant is not None:
        models[f"segrt fp16 {device}"] = open_model(variant, device, threads)
    sides: dict[str, Callable[[int], Any]] = {k: (lambda i, m=m: run_once(m, images[i % len(images)]))
                                            for k, m in models.items()}
    skipped, base = {}, f"segrt fp32 {device}"
    if plan.torch:
        for label, autocast in ((f"torch eager {device}", False), (f"torch autocast fp16 {device}", True)):
            if autocast and device != "cuda":
                skipped[label] = "FP16 autocast is the CUDA baseline"
                continue
            try:
                fn = resolve(task_for(family.task).gpu_check_torch)(family.bundle, autocast, device)
                fn(images[0])
            except Exception as exc:  # noqa: BLE001 - a baseline that cannot run is a note, not a crash
                skipped[label] = f"{type(exc).__name__}: {exc}"[:200]
                continue
            sides[label] = lambda i, fn=fn: fn(images[i % len(images)])
        base = f"torch eager {device}" if f"torch eager {device}" in sides else base
    timing = interleaved(sides, plan.rounds or task_for(family.task).gpu_check_rounds, warmup=3,
                         deadline=steps.step_deadline(plan.budgets["timing"] // 4), base=base)
    size = "x".join(map(str, images[0].shape[:2])) if at_size else "photos' own"
    return {"family": family.name, "size": size, "base": base, "skipped": skipped, **timing}


def each(families: list[Family], fn: Callable[[Family], Any], into: list[Any]) -> None:
    """``fn`` for every family, appending what it returns to ``into``; one family's failure does not stop the
    others (its traceback goes to the log), and the step then fails naming each one that did."""
    errors = []
    for fam in families:
        try:
            row = fn(fam)
        except Exception as exc:  # noqa: BLE001 - recorded in the step, the other families go on
            traceback.print_exc()
            errors.append(f"{fam.name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200])
            continue
        if row is not None:
            into.append(row)
    if errors:
        raise RuntimeError("; ".join(errors))


def check(device: str, families: list[Family], fp16: Callable[[dict[str, Path]], None], steps: Steps,
          plan: Plan) -> None:
    """The measurements, in order of value: FP32 parity, I/O binding, CUDA graphs, then (once the workers have
    made them) the FP16 variants' parity, and the interleaved timing."""
    res, threads, budgets = steps.result, plan.threads, plan.budgets
    refs: dict[str, Any] = {}

    def ref(fam: Family) -> Any:
        if fam.name not in refs:
            refs[fam.name] = reference(fam, threads)
        return refs[fam.name]

    steps.run("parity-fp32", budgets["parity-fp32"], lambda: each(families, lambda f: parity(
        f, f.bundle, device, ref(f), _photos_for(f, plan), threads), res["parity"]))
    deadline = steps.step_deadline(budgets["io-binding"])
    steps.run("io-binding", budgets["io-binding"], lambda: each(families, lambda f: io_binding(
        f, device, _photos_for(f, plan), plan.pairs, deadline, threads), res["io_binding"]))
    deadline = steps.step_deadline(budgets["cuda-graphs"])
    steps.run("cuda-graphs", budgets["cuda-graphs"], lambda: each(families, lambda f: cuda_graph(
        f, f.bundle, list(_photos_for(f, plan).values()), device, 2 * plan.pairs, deadline), res["cuda_graphs"]))
    variants: dict[str, Path] = {}  # filled as each is made: one failure leaves the others
    steps.run("fp16-variants", budgets["fp16-variants"], lambda: fp16(variants))
    steps.run("parity-fp16", budgets["parity-fp16"], lambda: each(
        [f for f in families if f.name in variants],
        lambda f: parity(f, variants[f.name], device, ref(f), _photos_for(f, plan), threads), res["parity"]))
    refs.clear()
    steps.run("timing", budgets["timing"], lambda: each(families, lambda f: _timing(
        f, variants.get(f.name), device, steps, plan), res["timing"]))


def _self_test_families(work: Path) -> tuple[list[Family], Callable[[dict[str, Path]], None]]:
    """The PP-OCR detector (tests/data), imported; its FP16 variant gated on two small photos."""
    from segrt.export.importer import ImportConfig, import_onnx
    from segrt.export.quantize import QuantizeConfig, quantize_bundle
    from segrt.runtime.image import write_image_atomic

    bundle, variant, gate = work / "ppocr", work / "ppocr-fp16", work / "gate-photos"
    if not (bundle / "segrt.json").is_file():
        import_onnx(ImportConfig(model=ROOT / "tests" / "data" / "ppocr_v4_det.onnx", threshold=0.3), bundle, force=True)

    def make(done: dict[str, Path]) -> None:
        gate.mkdir(parents=True, exist_ok=True)
        for name, image in photos((128, 128), 2).items():
            write_image_atomic(gate / f"{name}.png", image[:, :, ::-1].copy())
        quantize_bundle(bundle, variant, QuantizeConfig("fp16", eval_images=gate, min_score=0.0), force=True)
        done["ppocr"] = variant

    return [Family("ppocr", bundle)], make


def main_run(args: Any) -> int:
    try:
        return _main(args)
    except SegrtError as exc:
        print(f"gpu-check: error: {exc}", file=sys.stderr)
        return 2


def _main(args: Any) -> int:
    os.environ.setdefault("SEGRT_CACHE", str(args.work / "cache"))
    device = "cpu" if args.self_test else args.device
    if device == "cuda":
        require_cuda()
    setup = json.loads(os.environ.get("SEGRT_GPU_CHECK_SETUP") or "{}")
    env = report.environment(args.commit, setup, with_torch=not args.self_test)
    result = report.new_result(env | {"mode": "self-test" if args.self_test else device})
    steps = Steps(result, args.out, args.budget - float(setup.get("setup_s") or 0))  # setup counts too
    if args.self_test:
        families, fp16 = _self_test_families(args.work)
        check(device, families, fp16, steps, SELF_TEST_PLAN)
        result["bench"] = {"summary": "not run: --self-test"}
    else:
        _gpu(args, device, steps)
    failed = [r for key in ("parity", "io_binding") for r in result[key] if r["passed"] is False]
    result["status"] = "complete" if all(s["status"].startswith("ok") for s in result["steps"]) else "partial"
    js, md = report.write(result, args.out)
    print(report.markdown(result))
    print(f"gpu-check: wrote {js} and {md}; {len(failed)} comparison(s) outside tolerance", flush=True)
    return 1 if failed else 0


def _gpu(args: Any, device: str, steps: Steps) -> None:
    names = args.families or ("unet", "deeplabv3plus", "maskrcnn", "sam")
    families: list[Family] = []
    fp16_jobs: dict[str, Future] = {}
    import multiprocessing

    pool = ProcessPoolExecutor(max_workers=4, mp_context=multiprocessing.get_context("spawn"))
    try:
        steps.run("export", BUDGETS["export"], lambda: export_all(names, pool, families, fp16_jobs))
        families.sort(key=lambda f: names.index(f.name))
        # made while the FP32 steps run; waited for at most this long
        deadline = min(steps.deadline, time.perf_counter() + BUDGETS["fp16-variants"] + 180)
        check(device, families, lambda done: wait_fp16(fp16_jobs, deadline, done), steps, GPU_PLAN)
        steps.result["bench"] = steps.run("bench", BUDGETS["bench"], lambda: bench_cuda(families, args.out, device)) or {
            "summary": "not run (see steps)"}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for child in multiprocessing.active_children():  # this run's own workers, still busy past the budget
            child.terminate()
