"""Paired comparison of two classifiers on the same texts: exact McNemar test and a paired bootstrap CI.

A test set of a few thousand texts has a standard error near one accuracy point, so a raw difference between
challenger and champion is mostly noise. Both models are scored on the *same* texts, so only the discordant
pairs (one right, the other wrong) carry information: McNemar's exact test uses exactly those, and the paired
bootstrap resamples texts (not models) to put a confidence interval on the accuracy difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedComparison:
    """Candidate minus champion on ``n`` shared texts."""

    n: int
    candidate_accuracy: float
    champion_accuracy: float
    difference: float  # candidate - champion accuracy
    only_candidate_right: int  # b: discordant pairs won by the candidate
    only_champion_right: int  # c: discordant pairs won by the champion
    p_value: float  # exact two-sided McNemar
    ci_low: float  # paired bootstrap percentile CI of ``difference``
    ci_high: float
    confidence: float


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: under H0 the ``b + c`` discordant pairs split Binomial(n, 1/2)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0 (got b={b}, c={c})")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    # log-space sum of C(n, i) / 2^n for i <= k: exact and safe for n in the tens of thousands
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
        for i in range(k + 1)
    ]
    top = max(logs)
    tail = math.exp(top) * sum(math.exp(v - top) for v in logs)
    return min(1.0, 2.0 * tail)


def bootstrap_ci(
    per_text_diff: np.ndarray, samples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile CI of the mean of ``per_text_diff`` (values in {-1, 0, 1}) over resampled texts."""
    rng = np.random.default_rng(seed)
    n = len(per_text_diff)
    means = np.empty(samples)
    chunk = max(1, 2_000_000 // max(n, 1))  # bound memory: (chunk, n) int indices at a time
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = per_text_diff[idx].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def compare_paired(
    candidate: Sequence[str],
    champion: Sequence[str],
    truth: Sequence[str],
    confidence: float = 0.95,
    samples: int = 2000,
    seed: int = 0,
) -> PairedComparison:
    """Score both prediction lists against ``truth`` text by text; seeded, so the same inputs give the same CI."""
    if not (len(candidate) == len(champion) == len(truth)) or not truth:
        raise ValueError(
            "paired comparison needs equal, non-empty prediction lists "
            f"(got candidate {len(candidate)}, champion {len(champion)}, truth {len(truth)})"
        )
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1) (got: {confidence})")
    right_a = np.array([p == t for p, t in zip(candidate, truth, strict=True)])
    right_b = np.array([p == t for p, t in zip(champion, truth, strict=True)])
    b = int(np.sum(right_a & ~right_b))
    c = int(np.sum(~right_a & right_b))
    diff = right_a.astype(np.int8) - right_b.astype(np.int8)  # (N,) in {-1, 0, 1}
    low, high = bootstrap_ci(diff, samples, confidence, seed) if b + c else (0.0, 0.0)
    return PairedComparison(
        n=len(truth),
        candidate_accuracy=float(right_a.mean()),
        champion_accuracy=float(right_b.mean()),
        difference=float(diff.mean()),
        only_candidate_right=b,
        only_champion_right=c,
        p_value=mcnemar_exact(b, c),
        ci_low=low,
        ci_high=high,
        confidence=confidence,
    )


def judge(comparison: PairedComparison, rule: str, alpha: float, margin: float) -> tuple[bool, str]:
    """Apply ``register.champion_rule``.

    ``better``: the candidate must be significantly better (McNemar p < alpha and a positive difference).
    ``not_worse``: the candidate may trail by up to ``margin``; a larger trail fails only when it is
    significant (McNemar p < alpha), so noise on a small test set does not block a retrain but a real
    regression does.
    """
    cmp = comparison
    stats = (
        f"diff {cmp.difference:+.4f} (CI{cmp.confidence:.0%} [{cmp.ci_low:+.4f}, {cmp.ci_high:+.4f}]), "
        f"McNemar p={cmp.p_value:.3g}, discordant {cmp.only_candidate_right}/{cmp.only_champion_right}"
    )
    if rule == "better":
        passed = cmp.difference > 0 and cmp.p_value < alpha
        need = f"needs significantly better (p < {alpha})"
    elif rule == "not_worse":
        passed = not (cmp.difference < -margin and cmp.p_value < alpha)
        need = f"fails when diff < -{margin} with McNemar p < {alpha}"
    else:
        raise ValueError(f"register.champion_rule must be 'better' or 'not_worse' (got: {rule!r})")
    return passed, f"{stats}; {need}"


def accuracy_drop_pp(reference: float, candidate: float) -> float:
    """The project's one accuracy-drop rule: how far ``candidate`` trails ``reference`` (the exported fp32 model's
    accuracy on the same test split), in percentage points; negative when it leads. ``compress.max_drop_pp`` bounds
    it twice: the compress step's choice among variants, and the gate's check of the chosen one."""
    return round(100.0 * (reference - candidate), 4)


@dataclass(frozen=True)
class FoldComparison:
    """Mean over k cross-validation folds of a per-fold score difference (a - b), with a corrected t-interval."""

    k: int
    mean: float
    ci_low: float
    ci_high: float
    p_value: float  # two-sided, corrected resampled t-test
    confidence: float


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-fold ``values`` and its Student-t interval (k - 1 degrees of freedom)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        raise ValueError(f"an interval over folds needs at least 2 values (got {len(v)})")
    half = stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def compare_folds(
    a: Sequence[float], b: Sequence[float], test_share: float, confidence: float = 0.95
) -> FoldComparison:
    """Paired comparison of two models' per-fold scores by the corrected resampled t-test (Nadeau & Bengio,
    2003): the folds' training sets overlap, so the plain t-test's variance ``s²/k`` is too small; it is
    ``(1/k + n_test/n_train) s²`` instead. ``test_share`` is n_test / n (1/k for k-fold cross-validation)."""
    from scipy import stats

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    k = len(d)
    if k < 2 or len(a) != len(b):
        raise ValueError(f"paired fold scores of equal length >= 2 needed (got {len(a)} and {len(b)})")
    if not 0 < test_share < 1:
        raise ValueError(f"test_share must be in (0, 1) (got: {test_share})")
    mean, var = float(d.mean()), float(d.var(ddof=1))
    se = math.sqrt((1 / k + test_share / (1 - test_share)) * var)
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
        return FoldComparison(k, mean, mean, mean, p, confidence)
    half = stats.t.ppf(0.5 + confidence / 2, k - 1) * se
    p = float(2 * stats.t.sf(abs(mean) / se, k - 1))
    return FoldComparison(k, mean, mean - half, mean + half, p, confidence)
