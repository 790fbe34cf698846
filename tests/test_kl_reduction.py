"""DSIR's KL reduction: positive for a selection that looks like the target, about zero for one like the pool."""

import numpy as np

from finescope_core.kl_reduction import kl_divergence, kl_reduction, ngram_distribution

MATH = [f"the integral of x to the power {n} equals x to the power {n + 1} over {n + 1}" for n in range(40)]
COOKING = [f"stir {n} grams of flour into the warm butter and season the sauce with salt" for n in range(40)]


def test_a_selection_of_the_target_domain_reduces_kl_and_the_pool_itself_does_not():
    target, pool = MATH[:20], MATH[20:30] + COOKING[:30]
    on_domain = kl_reduction(target, MATH[30:], pool)
    off_domain = kl_reduction(target, COOKING[30:], pool)
    assert on_domain > 0 > off_domain
    assert abs(kl_reduction(target, pool, pool)) < 1e-12


def test_distributions_are_smoothed_and_normalised():
    p = ngram_distribution(["a b c"], buckets=64)
    assert p.shape == (64,) and np.all(p > 0) and np.isclose(p.sum(), 1.0)
    assert kl_divergence(p, p) == 0.0
