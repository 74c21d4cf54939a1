"""Interleaved pairs: every comparison in ``segrt bench`` times its sides call by call, on the same input.

A shared, noisy machine slows whatever runs while the noise lasts. Timing all of one side's iterations and
then all of the other's puts that noise on one side only; alternating the sides round by round (A, B, A, B,
the order rotated each round so neither always runs first) puts it on both, and the ratio of the two calls
of one round cancels it. A verdict uses the *median of the per-round ratios*, reported with its spread.

A *side* is ``fn(i) -> {stage: ms}`` (at least ``"e2e"``) for input ``i``; :func:`timed_side` turns a
plain call into one. Usage::

    result = interleave({"segrt": ours, "torch": theirs}, reference="segrt", rounds=20, warmup=3)
    result["ratios"]["torch"]["median"]   # torch ms / segrt ms, round by round: > 1 means segrt is faster
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

StageFn = Callable[[int], Mapping[str, float]]

#: A ``seconds`` budget still takes this many rounds, so a median never rests on one or two pairs.
MIN_ROUNDS = 3


def timed_side(fn: Callable[[int], Any]) -> StageFn:
    """A side whose only stage is the call's wall time, ``{"e2e": ms}``."""
    def side(i: int) -> dict[str, float]:
        t0 = time.perf_counter()
        fn(i)
        return {"e2e": (time.perf_counter() - t0) * 1e3}

    return side


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {
        "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()), "fps": float(1000.0 / a.mean()),
    }


def ratio_stats(ratios: list[float]) -> dict[str, float]:
    """Median of the per-round ratios and its spread (quartiles and range)."""
    a = np.asarray(ratios, dtype=np.float64)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "min": float(a.min()), "max": float(a.max()),
            "pairs": len(ratios)}


def _round(sides: list[tuple[str, StageFn]], i: int) -> dict[str, Mapping[str, float]]:
    """One call per side on input ``i``, the order rotated by ``i``."""
    k = len(sides)
    return {name: fn(i) for name, fn in (sides[(i + j) % k] for j in range(k))}


def _more(done: int, rounds: int, seconds: float | None, start: float, deadline: float | None) -> bool:
    now = time.perf_counter()
    if deadline is not None and done >= MIN_ROUNDS and now > deadline:
        return False
    return done < rounds if seconds is None else (done < MIN_ROUNDS or now - start < seconds)


def interleave(sides: Mapping[str, StageFn], reference: str, rounds: int = 20, warmup: int = 3,
               seconds: float | None = None, stage: str = "e2e", deadline: float | None = None,
               per_round: bool = False) -> dict[str, Any]:
    """Time ``sides`` in interleaved rounds: ``warmup`` untimed rounds, then ``rounds`` timed ones (or, with
    ``seconds``, rounds until that much wall time has passed, at least :data:`MIN_ROUNDS`); with ``deadline``
    (a ``perf_counter`` value) it stops early once that has passed, after at least :data:`MIN_ROUNDS`.

    Returns ``{"rounds": n, "order": "rotated", "sides": {name: {stage: percentiles}}, "ratios": {name:
    ratio_stats}}`` where each ratio is ``name``'s ``stage`` ms over the reference's in the same round (so
    > 1 means the reference is faster), for every side but the reference; ``per_round`` adds ``"per_round"``
    {name: [``stage`` ms of each round]}."""
    if reference not in sides:
        raise KeyError(f"reference side {reference!r} is not among {sorted(sides)}")
    if rounds < 1 and seconds is None:
        raise ValueError(f"need rounds >= 1; got {rounds}")
    order = list(sides.items())
    for i in range(warmup):
        _round(order, i)
    runs: list[dict[str, Mapping[str, float]]] = []
    start = time.perf_counter()
    while _more(len(runs), rounds, seconds, start, deadline):
        runs.append(_round(order, len(runs)))
    stats = {name: {s: percentiles([r[name][s] for r in runs]) for s in runs[0][name]} for name in sides}
    ratios = {name: ratio_stats([r[name][stage] / r[reference][stage] for r in runs])
              for name in sides if name != reference}
    out = {"rounds": len(runs), "order": "rotated", "stage": stage, "reference": reference,
           "sides": stats, "ratios": ratios}
    if per_round:
        out["per_round"] = {name: [r[name][stage] for r in runs] for name in sides}
    return out


def is_stats(obj: Any) -> bool:
    """A :func:`ratio_stats` record (median and quartiles)."""
    return isinstance(obj, Mapping) and all(k in obj for k in ("median", "q1", "q3"))


def peer_stats(pairs: Any, only_peer: str = "baseline") -> dict[str, Mapping[str, float]]:
    """``{peer: ratio_stats}`` from a row's ``pairs`` record in any of the shapes results carry: per peer
    (model rows: ``{"torch": stats, ...}``), per peer and stage (``{peer: {"e2e": stats}}``), or one flat stats
    record for a row with a single peer (SAM's stages), which is named ``only_peer``."""
    if is_stats(pairs):
        return {only_peer: pairs}
    out = {}
    for peer, stats in pairs.items() if isinstance(pairs, Mapping) else ():
        stats = stats.get("e2e") if isinstance(stats, Mapping) and "e2e" in stats else stats
        if is_stats(stats):
            out[peer] = stats
    return out


def fmt_ratio(r: Mapping[str, float], digits: int = 2) -> str:
    """``1.52x [1.41-1.60]``: the median pair ratio and its interquartile range."""
    return f"{r['median']:.{digits}f}x [{r['q1']:.{digits}f}-{r['q3']:.{digits}f}]"
