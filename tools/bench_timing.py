"""The one timing helper of the benchmark scripts: alternated repeats, median and spread.

Shared machines are noisy. Each repeat runs every contender once, in turn, so that a burst of load
hits them alike; the figures are the median over repeats with the min and max beside it, and ratios
are taken between medians measured in the same run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable


def alternate(contenders: dict[str, Callable[[], float]], repeats: int) -> dict[str, dict]:
    """Run each contender (a callable returning one figure: a rate such as samples/s, or a time)
    once per repeat, in turn; per contender: ``median``, ``min``, ``max`` and the ``runs``."""
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            runs[name].append(float(fn()))
    return {
        name: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
        for name, v in runs.items()
    }


def spread(stats: dict) -> str:
    """``median (min-max)`` of one contender, for tables."""
    return f"{stats['median']:.0f} ({stats['min']:.0f}-{stats['max']:.0f})"
