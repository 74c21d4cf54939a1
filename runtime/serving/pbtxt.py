"""Triton's ``config.pbtxt``: a model configuration as nested dicts, written in protobuf text format.

Dicts are messages, lists of dicts repeated messages, lists of scalars repeated scalars, and
:class:`~segrt.runtime.serving.contract.Enum` values enum names. The tests parse every file this
writes against Triton's own schema (``tritonclient.grpc.model_config_pb2``).
"""

from __future__ import annotations

import json
from typing import Any

from .contract import Enum


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # ASCII escapes protobuf's text format reads
    raise TypeError(f"cannot write {type(value).__name__} into config.pbtxt")


def render(message: dict[str, Any], indent: int = 0) -> str:
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key} {{\n{render(value, indent + 1)}{pad}}}")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines += [f"{pad}{key} {{\n{render(v, indent + 1)}{pad}}}" for v in value]
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "".join(line + "\n" for line in lines)


def parameters(**values: str) -> list[dict[str, Any]]:
    """Triton's ``parameters`` map (string values), as repeated key/value entries."""
    return [{"key": k, "value": {"string_value": v}} for k, v in values.items()]
