"""Loading local checkpoints: .pth/.pt state_dicts or .safetensors, wrapped or prefixed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from segrt.runtime.engine import sha256_file  # noqa: F401  (re-exported: the export stage's checksum)
from segrt.runtime.errors import ExportError

log = logging.getLogger("segrt")
_WRAPPERS = ("state_dict", "model_state_dict", "model")
_PREFIXES = ("module.", "model.")
_SHOWN = 8


def read_state_dict(path: Path) -> dict[str, Any]:
    """Read a checkpoint and unwrap it to a flat ``{name: tensor}`` dict."""
    import torch

    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise ExportError(f"weights {str(path)!r}: expected .pth, .pt or .safetensors; got {suffix or 'no suffix'}")
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"cannot read weights {str(path)!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    for key in _WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ExportError(f"weights {str(path)!r} is not a state_dict of tensors (nor wrapped in 'state_dict')")
    for prefix in _PREFIXES:
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOWN]) + (f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def apply_state_dict(model: Any, state: dict[str, Any], drop_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state`` strictly, reporting missing, unexpected and mis-shaped keys by name."""
    dropped = [k for k in state if k.startswith(drop_prefixes)] if drop_prefixes else []
    if dropped:
        log.info("dropping %d checkpoint keys not exported (%s)", len(dropped), ", ".join(drop_prefixes))
        state = {k: v for k, v in state.items() if k not in set(dropped)}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if shaped:
        problems.append(f"shape mismatches: {_names(shaped)}")
    if problems:
        raise ExportError(
            "checkpoint does not fit the model (check --encoder, --classes, --in-channels): " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=True)
