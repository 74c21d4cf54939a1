"""The ``segrt`` command. Subcommands come from the modules in :data:`COMMAND_MODULES`, each with a
``register(subparsers)`` function; they are imported by name so an edge install (no torch) still
gets ``run`` and ``info``. This module is the composition root: the only place the runtime names
``segrt.export``, and it never imports torch (the task modules name ``segrt.benchmarks`` hooks only as strings or
lazy imports inside the eval and bench hooks).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import re
import sys
from collections.abc import Callable
from typing import NoReturn

from .errors import SegrtError

COMMAND_MODULES = ("segrt.runtime.commands", "segrt.runtime.sam_cli", "segrt.runtime.panoptic_cli", "segrt.runtime.stream_cli", "segrt.runtime.serving.commands", "segrt.export.commands", "segrt.export.build_cli",
                   "segrt.benchmarks.commands")


def size_arg(text: str) -> tuple[int, int]:
    """argparse type for ``HxW`` (e.g. 512x512)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 512x512, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type: a whole number in [low, high], checked when the command line is parsed."""
    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {f'in {low}..{high}' if high is not None else f'>= {low}'}; "
                                             f"got {value}")
        return value

    return integer


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def fraction(text: str) -> float:
    """argparse type: a threshold or score in [0, 1]."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1]; got {value:g}")
    return value


def positive_number(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0; got {value:g}")
    return value


class SegrtArgumentParser(argparse.ArgumentParser):
    """Usage errors in one line (``segrt: error: ...``, exit 2), with the closest valid choice suggested, instead
    of argparse's usage block; ``segrt COMMAND --help`` still prints the usage."""

    def error(self, message: str) -> NoReturn:
        found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if found:
            choices = [c.strip(" '\"") for c in found.group(2).split(",")]
            close = difflib.get_close_matches(found.group(1), choices, n=1, cutoff=0.5)
            message = f"{message.split(':')[0]}: unknown choice {found.group(1)!r}; expected one of {', '.join(choices)}" \
                + (f" (did you mean {close[0]!r}?)" if close else "")
        self.exit(2, f"segrt: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = SegrtArgumentParser(prog="segrt", description="Export and run segmentation models.")
    parser.add_argument("--version", action="version", version=f"segrt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log backend selection and progress")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _quiet_opencv(verbose: bool) -> None:
    """OpenCV prints decoder warnings to stderr; segrt turns those failures into typed errors."""
    import cv2

    level = cv2.utils.logging.LOG_LEVEL_WARNING if verbose else cv2.utils.logging.LOG_LEVEL_SILENT
    cv2.utils.logging.setLogLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="segrt: %(message)s")
    _quiet_opencv(args.verbose)
    try:
        return int(args.func(args) or 0)
    except SegrtError as exc:
        print(f"segrt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segrt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
