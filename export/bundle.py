"""Atomic bundle directories (build under a temporary name beside the target, rename at the end) and the tool
versions a manifest records."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from segrt.runtime.errors import ExportError
from segrt.runtime.manifest import default_mode, replace_dir

#: The distributions every manifest records (when installed); a spec's own ``deps`` are added after them.
VERSIONED = ("segrt", "torch", "torchvision", "segmentation-models-pytorch", "onnx", "onnxruntime", "onnxslim")


def tool_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Installed versions of :data:`VERSIONED`, then of ``extra`` (distribution names), skipping absent ones."""
    found = {}
    for dist in (*VERSIONED, *(d for d in extra if d not in VERSIONED)):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found


@contextmanager
def atomic_dir(out: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``out``, on any error it vanishes."""
    out = Path(out)
    if out.exists() and not force:
        if not out.is_dir() or any(out.iterdir()):
            raise ExportError(f"output {str(out)!r} already exists; pass --force to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        os.chmod(tmp, default_mode(directory=True))
    except OSError as exc:
        raise ExportError(f"cannot create output beside {str(out)!r}: {exc.strerror}") from None
    try:
        yield tmp
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
