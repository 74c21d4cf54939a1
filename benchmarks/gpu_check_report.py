"""The GPU check's record: the environment it ran in, the result's schema, and its Markdown."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from segrt.runtime.errors import InvalidInputError
from segrt.runtime.manifest import write_json_atomic, write_text_atomic

SCHEMA = "segrt-gpu-check/1"
#: Top-level keys every result has, and the keys of each row in its lists.
KEYS = {"schema": str, "status": str, "environment": dict, "steps": list, "parity": list, "io_binding": list,
        "cuda_graphs": list, "timing": list, "bench": dict}
ROW_KEYS = {
    "steps": ("name", "budget_s", "elapsed_s", "status"),
    "parity": ("family", "precision", "device", "reference", "metric", "score", "minimum", "passed", "images"),
    "io_binding": ("family", "metric", "score", "minimum", "passed"),
    "cuda_graphs": ("family", "graph", "supported"),
    "timing": ("family", "size", "rounds", "sides", "ratios"),
}
ROOT = Path(__file__).resolve().parent.parent


def new_result(environment: dict[str, Any]) -> dict[str, Any]:
    return {"schema": SCHEMA, "status": "running", "environment": environment, "steps": [], "parity": [],
            "io_binding": [], "cuda_graphs": [], "timing": [], "bench": {}}


def validate(result: dict[str, Any]) -> None:
    """Raise :class:`InvalidInputError` naming the first key that is missing or of the wrong type."""
    for key, kind in KEYS.items():
        if not isinstance(result.get(key), kind):
            raise InvalidInputError(f"gpu-check result: {key!r} must be a {kind.__name__}; got {type(result.get(key)).__name__}")
    if result["schema"] != SCHEMA:
        raise InvalidInputError(f"gpu-check result: schema {result['schema']!r} is not {SCHEMA!r}")
    for section, keys in ROW_KEYS.items():
        for i, row in enumerate(result[section]):
            absent = [k for k in keys if k not in row]
            if absent:
                raise InvalidInputError(f"gpu-check result: {section}[{i}] lacks {', '.join(absent)}")


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _nvml() -> dict[str, Any] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        info = {"driver": pynvml.nvmlSystemGetDriverVersion(), "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
                "name": pynvml.nvmlDeviceGetName(handle),
                "memory_total_mb": pynvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20}
        pynvml.nvmlShutdown()
        return {k: v.decode() if isinstance(v, bytes) else v for k, v in info.items()}
    except Exception as exc:  # no module, no driver, no GPU: recorded, not fatal  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}


def _torch(imported: bool) -> dict[str, Any]:
    if not imported:  # the CPU self-test: the version without the import's seconds
        from importlib.metadata import PackageNotFoundError, version

        try:
            return {"version": version("torch"), "cuda_available": None}
        except PackageNotFoundError:
            return {"version": None}
    try:
        import torch
    except ImportError:
        return {"version": None}
    cuda = torch.cuda.is_available()
    return {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "device": torch.cuda.get_device_name(0) if cuda else None,
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None}


def source_digest() -> str:
    """SHA-256 (12 digits) of the Python sources checked, to tie a result to a commit where git is absent."""
    h = hashlib.sha256()
    for path in sorted(p for d in ("export", "runtime", "benchmarks") for p in (ROOT / d).rglob("*.py")):
        h.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def environment(commit: str | None, setup: dict[str, Any], with_torch: bool = True) -> dict[str, Any]:
    import onnxruntime as ort

    from segrt.runtime import kernels

    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"])
    header = _run(["nvidia-smi"]) or ""
    cuda_line = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "gpu": smi.splitlines()[0] if smi else None,
        "nvidia_smi_cuda": cuda_line.group(1) if cuda_line else None,
        "nvml": _nvml(),
        "torch": _torch(with_torch),
        "onnxruntime": {"version": ort.__version__, "path": str(Path(ort.__file__).parent),
                        "providers": ort.get_available_providers()},
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "prepost_kernels": kernels.active(),
        "commit": commit or _run(["git", "rev-parse", "--short", "HEAD"]),
        "source_digest": source_digest(),
        "setup": setup,
    }


def gpu_slug(env: dict[str, Any]) -> str:
    name = (env.get("torch") or {}).get("device") or (env.get("gpu") or "cpu").split(",")[0]
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def result_stem(env: dict[str, Any]) -> str:
    return f"{env['date'][:10]}-gpu-check-{gpu_slug(env)}"


def _f(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _ok(flag: Any) -> str:
    return "pass" if flag is True else "FAIL" if flag is False else "-"


def _env_lines(env: dict[str, Any]) -> list[str]:
    t, o = env.get("torch") or {}, env.get("onnxruntime") or {}
    nvml = env.get("nvml") or {}
    return [f"- GPU: {env.get('gpu') or 'none'}; driver {nvml.get('driver', '?')}, CUDA (driver) "
            f"{env.get('nvidia_smi_cuda') or nvml.get('cuda_driver', '?')}",
            f"- PyTorch {t.get('version')} (CUDA {t.get('cuda')}, cuDNN {t.get('cudnn')}); onnxruntime {o.get('version')} "
            f"({', '.join(o.get('providers', []))})",
            f"- Python {env.get('python')}, {env.get('cpu_cores')} CPU cores, pre/post kernels {env.get('prepost_kernels')}; "
            f"commit {env.get('commit') or 'unknown'}, sources {env.get('source_digest')}; {env.get('date')}"]


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# segrt GPU check ({result['status']})", "", *_env_lines(result["environment"]), "",
             "| step | budget s | took s | status |", "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['budget_s']} | {s['elapsed_s']:.1f} | {s['status']}{': ' + s['error'] if s.get('error') else ''} |"
              for s in result["steps"]]
    lines += ["", "## Parity with the CPU provider (real photos, the quantize gate's metrics)", "",
              "| family | precision | device | reference | metric | score | minimum | result | images |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['family']} | {r['precision']} | {r['device']} | {r['reference']} | {r['metric']} | {_f(r['score'])} | "
              f"{r['minimum']} | {_ok(r['passed'])} | {r['images']} |" for r in result["parity"]]
    lines += ["", "## I/O binding on vs off (same provider, same photos)", "",
              "| family | metric | score | minimum | result | speedup with binding (off / on time per pair: median, min-max) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['family']} | {r['metric']} | {_f(r['score'])} | {r['minimum']} | {_ok(r['passed'])} | "
              f"{_ratio(r.get('ratio'))} |" for r in result["io_binding"]]
    lines += ["", "## CUDA graphs (`enable_cuda_graph`, fixed shapes, device-bound I/O)", "",
              "| family | graph | supported | max abs diff vs plain CUDA | speedup (plain / graph time per pair) | note |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['family']} | {r['graph']} | {'yes' if r['supported'] else 'no'} | {_f(r.get('max_abs_diff', '-'), 6)} | "
              f"{_ratio(r.get('ratio'))} | {r.get('reason', '')} |" for r in result["cuda_graphs"]]
    lines += ["", "## Latency, interleaved rounds (each side once per round on the same photo, order rotated)", "",
              "| family | size | side | p50 ms | p90 ms | speedup vs the base side (base / side time per pair: median, min-max) |", "|---|---|---|---|---|---|"]
    for r in result["timing"]:
        for side, s in r["sides"].items():
            what = "base" if side == r.get("base") else _ratio(r["ratios"].get(side))
            lines.append(f"| {r['family']} | {r['size']} | {side} | {s['p50']:.2f} | {s['p90']:.2f} | {what} |")
        lines += [f"| {r['family']} | | {side} | | | skipped: {why} |" for side, why in r.get("skipped", {}).items()]
    bench = result["bench"]
    lines += ["", "## `segrt bench` (as users run it)", "", bench.get("summary", "not run")]
    return "\n".join(lines) + "\n"


def _ratio(r: dict[str, float] | None) -> str:
    return f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f}, {r['pairs']} pairs)" if r else "-"


def write(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Validate, then write ``<date>-gpu-check-<gpu>.json`` and ``.md`` into ``out`` (each via a temp file)."""
    validate(result)
    out.mkdir(parents=True, exist_ok=True)
    stem = result_stem(result["environment"])
    js, md = out / f"{stem}.json", out / f"{stem}.md"
    write_json_atomic(js, json.loads(json.dumps(result, default=str)))
    write_text_atomic(md, markdown(result))
    return js, md
