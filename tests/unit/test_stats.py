"""The paired test of challenger vs champion: exact McNemar p-values, bootstrap CI, the two rules."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from quantflow.core.stats import compare_folds, compare_paired, judge, mcnemar_exact, t_interval


def binom_two_sided(b: int, c: int) -> float:
    """Reference: the exact two-sided binomial p-value by plain summation."""
    n, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


@pytest.mark.parametrize(("b", "c"), [(0, 0), (1, 0), (5, 5), (10, 2), (2, 10), (30, 18), (400, 350)])
def test_mcnemar_matches_the_binomial_sum(b: int, c: int) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(binom_two_sided(b, c), rel=1e-9)


def test_mcnemar_is_symmetric_and_rejects_negative_counts() -> None:
    assert mcnemar_exact(12, 3) == mcnemar_exact(3, 12)
    with pytest.raises(ValueError, match="b=-1"):
        mcnemar_exact(-1, 3)


def predictions(truth: list[str], wrong: set[int]) -> list[str]:
    return [("b" if t == "a" else "a") if i in wrong else t for i, t in enumerate(truth)]


@pytest.fixture
def truth() -> list[str]:
    rng = random.Random(3)
    return [rng.choice("ab") for _ in range(2000)]


def test_identical_models_are_not_different(truth: list[str]) -> None:
    same = predictions(truth, set(range(0, 2000, 9)))
    cmp = compare_paired(same, same, truth)
    assert (cmp.difference, cmp.p_value, cmp.ci_low, cmp.ci_high) == (0.0, 1.0, 0.0, 0.0)
    assert judge(cmp, "not_worse", 0.05, 0.0)[0]
    assert not judge(cmp, "better", 0.05, 0.0)[0]


def test_a_clearly_better_candidate_is_significant(truth: list[str]) -> None:
    champion = predictions(truth, set(range(0, 2000, 5)))  # 400 wrong
    candidate = predictions(truth, set(range(0, 2000, 20)))  # 100 wrong, a subset of the champion's errors
    cmp = compare_paired(candidate, champion, truth)
    assert (cmp.only_candidate_right, cmp.only_champion_right) == (300, 0)
    assert cmp.difference == pytest.approx(300 / 2000)
    assert cmp.p_value < 1e-6
    assert 0 < cmp.ci_low < cmp.difference < cmp.ci_high
    assert judge(cmp, "better", 0.05, 0.0)[0]
    worse = compare_paired(champion, candidate, truth)
    passed, why = judge(worse, "not_worse", 0.05, 0.005)
    assert not passed and "McNemar p=" in why


def test_a_small_difference_is_noise(truth: list[str]) -> None:
    champion = predictions(truth, set(range(0, 2000, 10)))  # 200 wrong
    candidate = predictions(truth, set(range(0, 2000, 10)) - {0, 10, 20})  # 3 fewer: +0.15 points
    cmp = compare_paired(candidate, champion, truth)
    assert cmp.difference > 0 and cmp.p_value > 0.05 and cmp.ci_low <= 0
    assert not judge(cmp, "better", 0.05, 0.0)[0]
    assert judge(cmp, "not_worse", 0.05, 0.0)[0]


def test_bootstrap_is_seeded(truth: list[str]) -> None:
    a = predictions(truth, set(range(0, 2000, 7)))
    b = predictions(truth, set(range(3, 2000, 8)))
    assert compare_paired(a, b, truth, seed=1) == compare_paired(a, b, truth, seed=1)


def test_bad_inputs_name_the_problem(truth: list[str]) -> None:
    with pytest.raises(ValueError, match="candidate 3, champion 2000"):
        compare_paired(truth[:3], truth, truth)
    with pytest.raises(ValueError, match="champion_rule"):
        judge(compare_paired(truth, truth, truth), "maybe", 0.05, 0.0)


def test_fold_interval_is_corrected_for_overlapping_training_sets() -> None:
    """k-fold folds share training texts: the corrected interval is wider than the plain t-interval."""
    a, b = [0.90, 0.91, 0.89, 0.92, 0.90], [0.89, 0.90, 0.89, 0.90, 0.90]
    cmp = compare_folds(a, b, test_share=1 / 5)
    diffs = np.subtract(a, b)
    plain_mean, plain_low, plain_high = t_interval(diffs)
    assert cmp.mean == pytest.approx(plain_mean)
    assert cmp.ci_low < plain_low and cmp.ci_high > plain_high
    assert (cmp.ci_high - cmp.ci_low) / (plain_high - plain_low) == pytest.approx(
        np.sqrt(1 + 5 / 4), rel=1e-9
    )
    assert cmp.ci_low <= cmp.mean <= cmp.ci_high


def test_fold_comparison_finds_a_consistent_gap_and_not_noise() -> None:
    better = compare_folds([0.95, 0.96, 0.95, 0.97, 0.96], [0.90, 0.91, 0.90, 0.91, 0.90], 0.2)
    assert better.p_value < 0.01 and better.ci_low > 0
    noise = compare_folds([0.90, 0.92, 0.89, 0.91, 0.90], [0.91, 0.90, 0.90, 0.92, 0.89], 0.2)
    assert noise.p_value > 0.5
    assert compare_folds([0.9] * 5, [0.9] * 5, 0.2).p_value == 1.0
    with pytest.raises(ValueError, match="equal length"):
        compare_folds([0.9, 0.8], [0.9], 0.5)
