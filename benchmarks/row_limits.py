"""Each `segrt bench` row's distance to the limit of the processor it ran on: the CPU's GEMM peak
(``limits.measure_peak``, ONNX Runtime) for CPU rows, the GPU's (``measure_gpu_peak``, PyTorch's cuBLAS GEMM)
for rows on a CUDA device (ONNX Runtime's CUDA/TensorRT providers, native TensorRT). Counting runs after every
row was timed, so an odd graph never loses the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .limits import limits, measure_peak

GPU_DEVICES = ("cuda", "tensorrt")
PEAK_KEYS = ("fp32_gflops", "int8_gops", "numpy_fp32_gflops")


def cpu_peak(threads: int, devices: list[str]) -> dict[str, Any] | None:
    """The CPU's GEMM peak where a row runs on the CPU; None otherwise."""
    return measure_peak(threads) if any(d in ("cpu", "auto") for d in devices) else None


def _torch_gemm_rate(a: Any, b: Any, reps: int, fn: Callable[[Any, Any], Any]) -> float:
    import torch

    sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)
    fn(a, b)
    sync()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / best / 1e9


def measure_gpu_peak(n: int = 8192, reps: int = 5, device: str = "cuda") -> dict[str, Any] | None:
    """A CUDA GPU's GEMM peak through PyTorch (cuBLAS): ``fp32_gflops`` (TF32 off), ``fp16_gflops``,
    ``int8_gops`` (``torch._int_mm``, s8 x s8 -> s32; None where this PyTorch lacks it) and ``how``; None without
    PyTorch or a CUDA device. ``device="cpu"`` runs the same code on the CPU (a self-test: no FP16 figure)."""
    try:
        import torch
    except ImportError:
        return None
    if device == "cuda" and not torch.cuda.is_available():
        return None
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen)
    b = torch.randn(n, n, device=device, generator=gen)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        fp32 = _torch_gemm_rate(a, b, reps, torch.matmul)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    fp16 = _torch_gemm_rate(a.half(), b.half(), reps, torch.matmul) if device == "cuda" else None
    int8 = None
    if device == "cuda" and hasattr(torch, "_int_mm"):
        a8 = torch.randint(-127, 128, (n, n), device=device, dtype=torch.int8, generator=gen)
        int8 = _torch_gemm_rate(a8, a8.t().contiguous(), reps, torch._int_mm)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (self-test)"
    return {"fp32_gflops": fp32, "fp16_gflops": fp16, "int8_gops": int8, "device": name,
            "how": f"PyTorch {torch.__version__} {device} GEMM {n}x{n}x{n}, best of {reps} after a warm-up: FP32 with "
                   f"TF32 off, FP16, INT8 torch._int_mm (s8 x s8 -> s32) ({name})"}


def _row_limit(count: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return count()
    except Exception as exc:  # an odd graph must not cost the timed rows  # noqa: BLE001
        return {"skipped": f"not counted: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}


def _on_cpu(backend: str) -> bool:
    return backend.endswith("cpu")


def _model_row_limit(row: dict[str, Any], cpu: dict[str, Any] | None, gpu: dict[str, Any] | None) -> dict[str, Any]:
    backend = row["segrt"]["backend"]
    peak = cpu if _on_cpu(backend) else gpu
    if peak is None:
        where = "this CPU's" if _on_cpu(backend) else "a GPU's"
        return {"skipped": f"{where} peak was not measured in this run ({backend})"}
    if row["precision"] == "int8" and not peak.get("int8_gops"):
        return {"skipped": f"no INT8 peak measured on {peak.get('device', 'this machine')}"}
    st = row["segrt"]["stages"]
    return _row_limit(lambda: limits(row["bundle"], row["size"], row.get("batch", 1), st["e2e"]["p50"],
                                     st["infer"]["p50"], peak, row["precision"]))


def add_limits(result: dict[str, Any], threads: int, before: dict[str, Any] | None,
               gpu: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Each row's FLOPs, GFLOP/s and % of peak (``row["limit"]``; SAM's encoder ``sam[i]["encoder"]["limit"]``)
    against the peak of the processor it ran on. The CPU peak is measured before and after the rows and the higher
    of the two kept (load lowers it, never raises it); both are in the result, and the GPU's (``gpu``, measured by
    the caller) under ``peak["gpu"]``. Returns the result's ``peak``."""
    cpu = None
    if before is not None:
        after = measure_peak(threads)
        cpu = after | {k: max(before[k], after[k]) for k in PEAK_KEYS}
        cpu["runs"] = {"before": {k: before[k] for k in PEAK_KEYS[:2]}, "after": {k: after[k] for k in PEAK_KEYS[:2]}}
    for row in result["results"]:
        if "segrt" in row:
            row["limit"] = _model_row_limit(row, cpu, gpu)
    for sam in result.get("sam", []):
        enc = sam.get("encoder", {})
        if "segrt" in enc and cpu is not None and _on_cpu(str(sam.get("backend", ""))):
            ms = enc["segrt"]["p50"]
            enc["limit"] = _row_limit(lambda s=sam, ms=ms: limits(s["bundle"], (1024, 1024), 1, ms, ms, cpu, "fp32",
                                                                  graph="encoder.onnx"))
    if cpu is None and gpu is None:
        return None
    return (cpu or {}) | ({"gpu": gpu} if gpu is not None else {})
