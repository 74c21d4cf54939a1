"""Model repositories. ``segrt serve``'s: one python-backend model per bundle running segrt's runtime
(this CPU). Both kinds are written atomically (a temporary folder beside the target, renamed)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError
from ..image import DEFAULT_MAX_PIXELS
from ..manifest import read_manifest, replace_dir
from .contract import Contract, Enum, contract_for
from .pbtxt import parameters, render

MODEL_PY = "from segrt.runtime.serving.triton_model import TritonPythonModel  # noqa: F401\n"


@dataclass(frozen=True)
class ServeOptions:
    """Batching and concurrency: ``max_batch`` images per execution, how long the batcher waits to
    fill one, model instances (processes) per bundle. Validated here (the CLI checks at parse time)."""

    max_batch: int = 8
    max_queue_delay_us: int = 2000
    instances: int = 1
    threads: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        for name, low in (("max_batch", 1), ("max_queue_delay_us", 0), ("instances", 1)):
            if getattr(self, name) < low:
                raise InvalidInputError(f"{name} must be >= {low}; got {getattr(self, name)}")


def model_names(bundles: Sequence[Path]) -> dict[str, Path]:
    """Model name = bundle folder name; two bundles may not share one."""
    names: dict[str, Path] = {}
    for bundle in bundles:
        bundle = Path(bundle).absolute()
        read_manifest(bundle)  # a typed error for a folder that is not a bundle
        if bundle.name in names:
            raise InvalidInputError(f"two bundles are named {bundle.name!r} ({names[bundle.name]} and {bundle}); "
                                    "Triton names models after their folder: rename one")
        names[bundle.name] = bundle
    return names


def io_config(contract: Contract, max_batch: int) -> dict:
    return {"max_batch_size": max_batch if contract.batched else 0,
            "input": [t.config() for t in contract.inputs], "output": [t.config() for t in contract.outputs]}


def batching(contract: Contract, options: ServeOptions) -> dict:
    if not contract.batched:
        return {}
    return {"dynamic_batching": {"max_queue_delay_microseconds": options.max_queue_delay_us}}


def serve_config(name: str, bundle: Path, options: ServeOptions) -> dict:
    contract = contract_for(read_manifest(bundle))
    params = {"bundle": str(bundle), "max_pixels": str(options.max_pixels)}
    if options.threads:
        params["threads"] = str(options.threads)
    return {"name": name, "backend": "python", **io_config(contract, options.max_batch),
            "instance_group": [{"count": options.instances, "kind": Enum("KIND_CPU")}],
            **batching(contract, options), "parameters": parameters(**params)}


def write_serve_model(root: Path, name: str, bundle: Path, options: ServeOptions) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(render(serve_config(name, bundle, options)))
    (root / name / "1" / "model.py").write_text(MODEL_PY)


def write_serve_repository(bundles: Sequence[Path], out: Path, options: ServeOptions = ServeOptions()) -> Path:
    names = model_names(bundles)
    with atomic_dir(out) as tmp:
        for name, bundle in names.items():
            write_serve_model(tmp, name, bundle, options)
    return out


@contextmanager
def atomic_dir(out: Path, *, force: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``out`` that replaces it on success and vanishes on error."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (not force and any(out.iterdir()))):
        raise InvalidInputError(f"output {str(out)!r} exists and is not an empty folder; pass --force to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    except OSError as exc:
        raise InvalidInputError(f"cannot write beside {str(out)!r}: {exc.strerror}") from None
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


