"""The files an ONNX model is made of, and one digest over all of them, without the ``onnx`` package.

A graph over protobuf's 2 GB (SAM vit_h) keeps its weights in external data files beside it
(``model.onnx.data``, or one file per tensor from older exporters). Every reference to such a file is a
``StringStringEntryProto`` whose key is ``"location"`` (TensorProto.external_data, wherever the tensor is
nested: initializers, Constant attributes, subgraphs, functions, sparse tensors). Protobuf writes that
entry as the bytes ``0x0a 0x08 "location" 0x12 <varint length> <path>``, so scanning the serialized model
for that prefix finds every location however deep it sits; no schema walk can skip a nesting level it
forgot. A false hit (the same bytes inside raw weights) only adds a name to the digest, never drops one.
"""

from __future__ import annotations

import hashlib
import mmap
import re
from pathlib import Path

from .errors import ModelFormatError

_LOCATION = re.compile(rb"\x0a\x08location\x12")


def _varint(buf: bytes | mmap.mmap, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while pos < len(buf) and shift < 64:
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    return -1, pos


def external_data_locations(path: Path) -> list[str]:
    """Every external data location the serialized ONNX model at ``path`` names, sorted, unique."""
    found: set[str] = set()
    with open(path, "rb") as fh:
        if Path(path).stat().st_size == 0:
            return []
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            for hit in _LOCATION.finditer(buf):
                length, start = _varint(buf, hit.end())
                if 0 < length <= 4096 and start + length <= len(buf):
                    try:
                        found.add(bytes(buf[start:start + length]).decode("utf-8"))
                    except UnicodeDecodeError:
                        continue  # not a path: raw tensor bytes that happened to match
    return sorted(found)


def model_files(path: Path) -> list[Path]:
    """The ONNX file and the external data files it references that exist (relative to its folder)."""
    path = Path(path)
    return [path] + [path.parent / loc for loc in external_data_locations(path) if (path.parent / loc).is_file()]


def model_digest(path: Path) -> str:
    """sha256 over the ONNX bytes and, for each external data location, its name and its bytes (or the
    word ``missing``): a re-export that changes only ``model.onnx.data`` changes the digest."""
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"model file {str(path)!r} is missing; re-export the bundle")
    h = hashlib.sha256()
    _update(h, path)
    for loc in external_data_locations(path):
        h.update(b"\0external\0" + loc.encode())
        target = path.parent / loc
        if target.is_file():
            _update(h, target)
        else:
            h.update(b"\0missing\0")
    return h.hexdigest()


def _update(h: "hashlib._Hash", path: Path) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
