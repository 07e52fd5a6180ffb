"""The benchmarks' paired comparison: what every "beyond / within 2 SE" verdict rests on."""

import statistics

import pytest

from benchmarks.paired import paired_difference


def test_paired_difference_is_the_mean_per_item_difference_with_two_standard_errors():
    mean, two_se = paired_difference([1, 1, 0, 1], [0, 1, 0, 0])
    assert mean == pytest.approx(0.5) and two_se == pytest.approx(2 * statistics.stdev([1, 0, 0, 1]) / 2)
    assert paired_difference([3.0, 2.0, 5.0], [2.0, 1.0, 4.0]) == (pytest.approx(1.0), pytest.approx(0.0))
    assert paired_difference([1, 0], [1, 0, 1]) is None  # not the same items
    assert paired_difference([1], [0]) is None  # one item: no spread to judge by
