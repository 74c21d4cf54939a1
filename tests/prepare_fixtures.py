"""Train (or reuse) the quick fixture models before the tests, with progress on stderr.

``make test`` runs ``python -m tests.prepare_fixtures`` first, so the training (6.4 minutes on a quiet 2-core
Xeon with AVX-512, 17.5 on an AVX2-only EPYC; once per cache) is bounded by its work and shown as it goes, not
hidden inside a session fixture under pytest's per-test clock and output capture. The tests' session fixtures
then find the cache (``$SEGRT_TEST_CACHE``) and only load it; run without this step they still train what is
missing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

#: The CI-sized training runs (same data and models as the cached fixtures, fewer steps, smaller scenes).
QUICK = {"unet": dict(steps=300, size=96), "maskrcnn": dict(steps=150, size=128, train_count=96, val_count=16)}


def main() -> int:
    from segrt.benchmarks.fixtures import build_fixture, export_fixture, get_recipe

    cache = os.environ.get("SEGRT_TEST_CACHE")
    if not cache:
        print("prepare_fixtures: set SEGRT_TEST_CACHE to the folder the tests read", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name, quick in QUICK.items():
        t0 = time.perf_counter()
        recipe = get_recipe(name).quick(**quick)
        bundle = export_fixture(build_fixture(recipe, Path(cache)))
        print(f"prepare_fixtures: {recipe.name} ready in {time.perf_counter() - t0:.0f} s ({bundle})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
