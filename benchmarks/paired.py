"""Paired comparison of two configurations scored on the same items (evaluation windows, test
images): the mean of the per-item differences and two standard errors of it.

Pairing removes what the items share (a hard window is hard for every model), so a difference
that an unpaired comparison calls a tie can still be resolved, and a tie reads as one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | None:
    """``(mean of a_i - b_i, 2 standard errors of that mean)``, or None when the two were not
    scored on the same (at least two) items."""
    if len(a) != len(b) or len(a) < 2:
        return None
    diffs = [x - y for x, y in zip(a, b)]
    return statistics.fmean(diffs), 2 * statistics.stdev(diffs) / math.sqrt(len(diffs))
