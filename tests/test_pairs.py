"""benchmarks.pairs: the interleaving itself (order, counts, ratio arithmetic). The sides here report fixed
stage times so the arithmetic is checked exactly; no wall time is asserted (speed lives in benchmarks)."""

from __future__ import annotations

import pytest

from segrt.benchmarks.pairs import fmt_ratio, interleave, ratio_stats, timed_side


def _side(name: str, calls: list[tuple[str, int]], ms: list[float]):
    def fn(i: int) -> dict[str, float]:
        calls.append((name, i))
        return {"e2e": ms[i % len(ms)], "infer": ms[i % len(ms)] / 2}

    return fn


def test_rounds_rotate_the_order_and_pair_the_same_input():
    calls: list[tuple[str, int]] = []
    sides = {"a": _side("a", calls, [1.0]), "b": _side("b", calls, [2.0]), "c": _side("c", calls, [4.0])}
    out = interleave(sides, reference="a", rounds=3, warmup=1)
    # warm-up round 0, then timed rounds 0, 1, 2; each round rotated by its index
    assert calls == [("a", 0), ("b", 0), ("c", 0),
                     ("a", 0), ("b", 0), ("c", 0), ("b", 1), ("c", 1), ("a", 1), ("c", 2), ("a", 2), ("b", 2)]
    assert out["rounds"] == 3 and set(out["ratios"]) == {"b", "c"}
    assert out["ratios"]["b"]["median"] == 2.0 and out["ratios"]["c"]["median"] == 4.0
    assert out["sides"]["b"]["infer"]["p50"] == 1.0


def test_ratio_is_per_round_not_a_ratio_of_medians():
    calls: list[tuple[str, int]] = []
    # the machine slows rounds 1 and 3 by 10x for both sides: per-round ratios stay exactly 2
    a = [1.0, 10.0, 1.0, 10.0, 1.0]
    b = [2.0, 20.0, 2.0, 20.0, 2.0]
    out = interleave({"a": _side("a", calls, a), "b": _side("b", calls, b)}, reference="a", rounds=5, warmup=0)
    r = out["ratios"]["b"]
    assert (r["median"], r["min"], r["max"], r["pairs"]) == (2.0, 2.0, 2.0, 5)


def test_ratio_stats_quartiles():
    r = ratio_stats([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (r["median"], r["q1"], r["q3"], r["min"], r["max"]) == (3.0, 2.0, 4.0, 1.0, 5.0)
    assert fmt_ratio(r) == "3.00x [2.00-4.00]"


def test_seconds_budget_takes_at_least_three_rounds():
    calls: list[tuple[str, int]] = []
    out = interleave({"a": _side("a", calls, [1.0]), "b": _side("b", calls, [1.0])}, reference="a",
                     warmup=0, seconds=1e-9)
    assert out["rounds"] == 3


def test_unknown_reference_is_refused():
    with pytest.raises(KeyError, match="reference side"):
        interleave({"a": timed_side(lambda i: None)}, reference="z")


def test_timed_side_reports_e2e():
    assert set(timed_side(lambda i: None)(0)) == {"e2e"}
