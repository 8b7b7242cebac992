"""Confidence intervals of a share (pure arithmetic): S4's early stop and S6's selective figures use the same one."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> list[float] | None:
    """95 % Wilson interval of ``successes`` in ``n`` (None without calls)."""
    if n <= 0:
        return None
    rate = successes / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return [max(0.0, centre - half), min(1.0, centre + half)]
