"""``cpu_engine.json``: the CPU engine ``segrt build BUNDLE --device cpu`` measured fastest for each graph here.

The record lies in the bundle beside the graphs. ``segrt build --device cpu`` (``segrt.export.cpu_choice``) times
ONNX Runtime's CPU provider against OpenVINO's CPU plugin on the bundle's example input in interleaved pairs, checks
that their outputs agree and writes it; :func:`preferred_cpu_backend` reads it when ``select_runner(..., "auto")``
orders the CPU backends. Which engine is faster depends on the model and on the CPU (measured: OpenVINO FP32 at
0.80x of ONNX Runtime's time on Mask R-CNN but 1.08x-1.12x on U-Net / DeepLabV3+ on an AMD EPYC), so a record
names the CPU it was measured on and is ignored on any other.

A record that cannot be used (corrupt JSON, a missing field, an unknown backend) never stops a model from loading:
``auto`` logs a warning and keeps the default order; :func:`read_record` itself raises :class:`ModelFormatError`.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelFormatError
from .manifest import write_json_atomic

log = logging.getLogger("segrt")

RECORD_NAME = "cpu_engine.json"
FORMAT_VERSION = 1
ORT_CPU, OPENVINO_CPU = "onnxruntime-cpu", "openvino-cpu"
#: the backends a record may name: the two CPU engines it compares
CPU_BACKENDS = (ORT_CPU, OPENVINO_CPU)


def cpu_model() -> str:
    """This machine's CPU model name (``/proc/cpuinfo``'s ``model name``; elsewhere ``platform``'s)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model") and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@dataclass(frozen=True)
class GraphChoice:
    """One graph's entry: the chosen backend and OpenVINO's median pair ratio (its time over ONNX Runtime's)."""

    backend: str
    ratio: float


@dataclass(frozen=True)
class CpuEngineRecord:
    cpu: str
    measured: str
    graphs: dict[str, GraphChoice]


def record_path(bundle: Path) -> Path:
    return Path(bundle) / RECORD_NAME


def write_record(bundle: Path, record: dict[str, Any]) -> Path:
    """Write the record (temporary file, then rename)."""
    path = record_path(bundle)
    write_json_atomic(path, record)
    return path


def _graph_choice(path: Path, graph: str, entry: Any) -> GraphChoice:
    if not isinstance(entry, dict) or entry.get("backend") not in CPU_BACKENDS:
        raise ModelFormatError(f"{path}: graph {graph!r} must name a backend of {', '.join(CPU_BACKENDS)}; got "
                               f"{entry.get('backend') if isinstance(entry, dict) else entry!r}")
    try:
        return GraphChoice(entry["backend"], float(entry["ratio"]["median"]))
    except (KeyError, TypeError, ValueError):
        raise ModelFormatError(f"{path}: graph {graph!r} has no ratio.median; run segrt build --device cpu again") from None


def read_record(bundle: Path) -> CpuEngineRecord | None:
    """The bundle's record, None when it has none; :class:`ModelFormatError` when it is corrupt or malformed."""
    path = record_path(bundle)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path} is not valid JSON ({exc}); run segrt build --device cpu again") from None
    if not isinstance(data, dict) or not isinstance(data.get("graphs"), dict) or not isinstance(data.get("cpu"), str):
        raise ModelFormatError(f"{path} needs a 'cpu' string and a 'graphs' object; run segrt build --device cpu again")
    if int(data.get("format_version", FORMAT_VERSION)) > FORMAT_VERSION:
        raise ModelFormatError(f"{path} is format {data['format_version']}, newer than this segrt reads; upgrade segrt")
    graphs = {str(g): _graph_choice(path, str(g), e) for g, e in data["graphs"].items()}
    return CpuEngineRecord(data["cpu"], str(data.get("measured", "?")), graphs)


def preferred_cpu_backend(model_path: Path) -> str | None:
    """The CPU backend the record beside ``model_path`` names for it on this CPU, or None (no usable record:
    keep the default order). Says why in the log either way."""
    model_path = Path(model_path)
    try:
        record = read_record(model_path.parent)
    except ModelFormatError as exc:
        log.warning("%s ignored: %s", RECORD_NAME, exc)
        return None
    if record is None:
        return None
    here = cpu_model()
    if record.cpu != here:
        log.info("%s ignored: measured on %s, this machine is %s (run segrt build --device cpu here)",
                 RECORD_NAME, record.cpu, here)
        return None
    choice = record.graphs.get(model_path.name)
    if choice is None:
        log.info("%s has no entry for %s (graphs: %s); default CPU order", RECORD_NAME, model_path.name,
                 ", ".join(sorted(record.graphs)) or "none")
        return None
    log.info("%s: %s (openvino-cpu at %.2fx of onnxruntime-cpu's time), measured on %s at %s", RECORD_NAME,
             choice.backend, choice.ratio, record.cpu, record.measured)
    return choice.backend
