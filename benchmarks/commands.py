"""The benchmarks' subcommands for ``segrt`` (see ``runtime/cli.py``'s ``COMMAND_MODULES``): ``segrt bench``
(``cli_bench``; its tables in ``report``), then ``segrt eval`` and ``segrt fixtures`` (``cli_eval``)."""

from __future__ import annotations

import argparse

from . import cli_bench, cli_eval

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    cli_bench.register(sub)
    cli_eval.register(sub)
