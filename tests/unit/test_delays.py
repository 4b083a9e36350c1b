"""util/delays.py: a histogram of waits whose quantiles are right to within its bucket
growth, whatever the count."""

import random

import pytest

from pilotif.util.delays import BUCKET_GROWTH, SMALLEST_S, DelayHistogram


def test_nothing_counted_is_no_wait() -> None:
    histogram = DelayHistogram()
    assert (histogram.count, histogram.quantile(0.99), histogram.max_s) == (0, 0.0, 0.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_quantiles_are_within_a_bucket_of_the_exact_ones(seed: int) -> None:
    rng = random.Random(seed)
    waits = [rng.lognormvariate(-7, 1.5) for _ in range(20_000)]
    histogram = DelayHistogram()
    for wait in waits:
        histogram.add(wait)
    waits.sort()
    for fraction in (0.5, 0.9, 0.99, 0.999):
        exact = waits[int(fraction * len(waits)) - 1]
        assert exact <= histogram.quantile(fraction) <= max(exact, SMALLEST_S) * BUCKET_GROWTH
    assert histogram.max_s == waits[-1] == histogram.quantile(1.0)
    assert histogram.quantile_ms(0.5) == round(histogram.quantile(0.5) * 1000, 3)


def test_a_clock_step_backwards_counts_as_the_smallest_wait() -> None:
    histogram = DelayHistogram()
    histogram.add(-3.0)
    histogram.add(0.0)
    assert histogram.count == 2
    assert histogram.quantile(1.0) == 0.0 == histogram.max_s
