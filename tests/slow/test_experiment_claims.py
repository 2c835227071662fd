"""The lecture's claims, over seeds: each experiment's fast setting on ten seeds, and for each of its
primary claims (``PRIMARY`` in ``benchmarks/experiments.py``) the median over the seeds must lie on the
lecture's side of zero by at least three standard errors of the mean.

Minutes per experiment on a CPU; not in the default suite (``pytest -m slow``). The same measurement,
with every number, is ``benchmarks/experiments.py`` (results in ``benchmarks/results/experiments_cpu.json``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SEEDS = list(range(10))


def _benchmark():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "experiments.py"
    spec = importlib.util.spec_from_file_location("netvis_benchmark_experiments", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # the script imports its folder's _timing, as when run from there
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


BENCH = _benchmark()


@pytest.mark.parametrize("name", list(BENCH.PRIMARY))
def test_claim_holds_over_seeds(name, one_thread):
    measured = BENCH.measure(name, SEEDS)
    failed = []
    for claim in BENCH.PRIMARY[name]:
        c = measured["claims"][claim]
        line = (f"{name}/{claim}: median {c['median']:+.3f}, mean {c['mean']:+.3f} +- {c['se']:.3f} (SE), "
                f"{c['fraction_in_direction']:.0%} of {len(SEEDS)} seeds in the lecture's direction")
        print(line)
        if not c["median"] > BENCH.MARGIN_SE * c["se"]:
            failed.append(line)
    assert not failed, "not supported at 3 SE: " + "; ".join(failed)
