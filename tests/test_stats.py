"""Paired bootstrap statistics: exact values on constructed data, and intervals that pairing narrows."""

import numpy as np
import pytest

from finescope_core.stats import bpb_ci, gap_closed, mean_ci, paired_bpb_difference, paired_difference


def test_bits_per_byte_is_a_ratio_of_sums_with_its_interval_around_it():
    nll, n_bytes = [10.0, 30.0, 5.0], [20.0, 40.0, 4.0]
    value, lo, hi = bpb_ci(nll, n_bytes, 500, 0)
    assert value == pytest.approx(45 / 64 / np.log(2))
    assert lo <= value <= hi


def test_pairing_cancels_the_noise_both_models_share():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 1, 400)  # most of the spread is which items are in the set
    a, b = difficulty + 0.1 + rng.normal(0, 0.05, 400), difficulty + rng.normal(0, 0.05, 400)
    diff, lo, hi = paired_difference(a, b, 1000, 0)
    assert diff == pytest.approx(np.mean(a - b)) and lo > 0.05 and hi < 0.15
    _, a_lo, a_hi = mean_ci(a, 1000, 0)
    assert hi - lo < (a_hi - a_lo) / 5  # an unpaired comparison could not tell 0.1 apart here
    with pytest.raises(ValueError, match="differ in number"):
        paired_difference(a, b[:-1], 100, 0)


def test_paired_bpb_difference_and_gap_closed_on_constructed_documents():
    n_bytes = np.full(50, 100.0)
    base = np.linspace(50, 80, 50)
    pruned, recovered = base + 20, base + 5  # recovery wins back 15 of the 20 nats lost on every document
    diff, lo, hi = paired_bpb_difference(recovered, pruned, n_bytes, 500, 0)
    assert diff == pytest.approx(-15 / 100 / np.log(2)) and lo == pytest.approx(diff) and hi == pytest.approx(diff)
    share, lo, hi = gap_closed(base, pruned, recovered, n_bytes, 500, 0)
    assert share == pytest.approx(0.75) and lo == pytest.approx(0.75) and hi == pytest.approx(0.75)
    noisy = recovered + np.random.default_rng(1).normal(0, 5, 50)
    share, lo, hi = gap_closed(base, pruned, noisy, n_bytes, 500, 0)
    assert lo < share < hi and hi - lo > 0.01
