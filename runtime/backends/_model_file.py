"""The TensorRT runners' first start-up check: the model file is there and is ONNX, read without the ``onnx``
package (which an edge install lacks) and without loading it: only the top-level protobuf fields of the
ModelProto are walked (mmap), so a multi-GB model costs a few reads. The engine cache keys on this file, and a
corrupt one must fail as :class:`ModelFormatError`, not pass as merely "no engine built yet"."""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

from ..errors import ModelFormatError

_MAX_FIELDS = 1 << 14  # a ModelProto has about 10 top-level fields (more with metadata_props)
_REQUIRED = {1: "ir_version", 7: "graph"}


def _varint(buf: Any, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(buf) and shift < 70:
        byte = buf[pos]
        value, pos, shift = value | (byte & 0x7F) << shift, pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos
    raise ValueError("truncated varint")


def _onnx_problem(buf: Any) -> str | None:
    """Why ``buf`` is not a serialized ONNX ModelProto (walks its top-level protobuf fields), or None."""
    pos, seen = 0, set()
    for _ in range(_MAX_FIELDS):
        if pos == len(buf):
            return None if set(_REQUIRED) <= seen else "no ir_version or graph field"
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if field == 0 or wire not in (0, 1, 2, 5):
            return f"invalid protobuf field (tag {tag})"
        if wire == 0:
            _, pos = _varint(buf, pos)
        else:
            size, pos = _varint(buf, pos) if wire == 2 else ({1: 8, 5: 4}[wire], pos)
            pos += size
        if pos > len(buf):
            return "truncated"
        seen.add(field)
    return "too many top-level fields"


def check_model_file(path: Path) -> None:
    """ModelFormatError, saying to re-export, unless ``path`` is an ONNX file."""
    if not path.is_file():
        raise ModelFormatError(f"model file {str(path)!r} is missing; re-export the bundle")
    if path.stat().st_size == 0:
        raise ModelFormatError(f"cannot load {str(path)!r}: not an ONNX model (empty file); re-export the bundle")
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            problem = _onnx_problem(buf)
    except ValueError as exc:  # a varint ran off the end
        problem = str(exc)
    if problem is not None:
        raise ModelFormatError(f"cannot load {str(path)!r}: not an ONNX model ({problem}); re-export the bundle")
