"""argparse types shared by ``segrt bench`` and ``segrt eval``: comma-separated lists, checked when parsed."""

from __future__ import annotations

import argparse


def _csv(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = list(dict.fromkeys(d.strip() for d in text.split(",") if d.strip()))
    bad = [d for d in names if d not in allowed]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{what} must be a comma-separated list of {', '.join(allowed)}; got {text!r}")
    return names


def precisions(text: str) -> list[str]:
    return _csv(text, ("fp32", "fp16", "int8"), "precisions")


def baselines(text: str) -> list[str]:
    names = _csv(text, ("torch", "compile", "none"), "baselines")
    if "none" in names and len(names) > 1:
        raise argparse.ArgumentTypeError("--baseline none cannot be combined with others")
    return ["torch", "compile"] if names == ["compile"] else names


def _positive_ints(text: str, what: str, example: str) -> list[int]:
    try:
        values = list(dict.fromkeys(int(v) for v in text.split(",") if v.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be integers such as {example}; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{what} must be >= 1; got {text!r}")
    return values


def batches(text: str) -> list[int]:
    return _positive_ints(text, "batch sizes", "1,2,4")


def clients(text: str) -> list[int]:
    return _positive_ints(text, "client counts", "1,8")


def devices(text: str) -> list[str]:
    from segrt.runtime.backends import DEVICES

    names = [d.strip() for d in text.split(",") if d.strip()]
    bad = [d for d in names if d not in DEVICES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"devices must be a comma-separated list of {', '.join(DEVICES)}; got {text!r}")
    return names

