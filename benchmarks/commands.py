"""Benchmark subcommands (none yet)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """No benchmark commands are registered yet."""
