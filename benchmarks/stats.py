"""Small statistics the benchmark scripts share."""

from __future__ import annotations

import statistics


def med(xs):
    """The median of the values that are not None (None when there are none)."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
