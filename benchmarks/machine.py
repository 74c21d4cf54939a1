"""A description of the machine a result was measured on."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _gpu() -> dict[str, object] | None:
    """GPU 0's name, driver and memory (nvidia-smi), and the CUDA version PyTorch was built with; None
    without an NVIDIA driver (this project's CI machines)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
    parts = [p.strip() for p in first.split(",")]
    if len(parts) < 4:
        return None
    try:
        import torch

        cuda = torch.version.cuda
    except ImportError:
        cuda = None
    return {"name": parts[0], "driver": parts[1], "memory": parts[2], "compute_capability": parts[3],
            "torch_cuda": cuda}


def describe(threads: int) -> dict[str, object]:
    import onnxruntime as ort

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "gpu": _gpu(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "torch": _version("torch"),
        "tensorrt": _version("tensorrt"),
        "segrt": _version("segrt"),
        "commit": _commit(),
    }


def machine_class(machine: dict[str, object] | None = None) -> str:
    """The short name results are filed under: ``gpu-h200`` on a GPU (its model, from ``machine["gpu"]``),
    else ``cpu-<vendor family>-<cores>core`` (``cpu-epyc-2core``, ``cpu-xeon-2core``). ``machine`` is a
    :func:`describe` record (a recorded result's ``machine``); without one, this machine's."""
    if machine is None:
        machine = {"cpu": _cpu_model(), "cores": os.cpu_count(), "gpu": _gpu()}
    gpu = machine.get("gpu")
    if isinstance(gpu, dict) and gpu.get("name"):
        return "gpu-" + _slug(str(gpu["name"]).removeprefix("NVIDIA ").removeprefix("Tesla "))
    return f"cpu-{_cpu_family(str(machine.get('cpu') or 'unknown'))}-{machine.get('cores') or 0}core"


def _cpu_family(model: str) -> str:
    """``AMD EPYC 9654 96-Core Processor`` -> ``epyc``; ``Intel(R) Xeon(R) Gold 6348`` -> ``xeon``; else the
    model's first word that is not a vendor name."""
    words = [w for w in _slug(model.replace("(R)", " ").replace("(TM)", " ")).split("-") if w]
    for family in ("epyc", "xeon", "ryzen", "threadripper", "core", "neoverse", "graviton", "apple"):
        if family in words:
            return family
    rest = [w for w in words if w not in ("amd", "intel", "arm", "cpu", "processor")]
    return rest[0] if rest else "unknown"


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())
