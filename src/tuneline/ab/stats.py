"""The statistics of the A/B comparison: pure functions, standard library only (no scipy, no numpy).

- `outcome`: what one exchange's latest feedback says (positive, negative, or nothing).
- `wilson`: the Wilson score interval of a proportion; unlike the normal ("Wald") interval it stays
  inside [0, 1] and keeps its coverage for small samples and rates near 0 or 1.
- `two_proportion_test`: the pooled two-proportion z-test, two-sided, p-value from `math.erfc`.
- `percentile`: linear interpolation between order statistics (numpy's default method).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

from tuneline.errors import TunelineError


class AbDataError(TunelineError):
    """A feedback row or a statistic's input cannot be used (bad thumb or rating, counts out of range)."""


def outcome(row: Mapping[str, Any], min_rating: int) -> bool | None:
    """Whether an exchange's latest feedback is positive (True), negative (False) or absent (None).

    A thumb decides when there is one: +1 positive, -1 negative. Without a thumb a 1-5 rating is
    positive from `min_rating` up. A correction with neither means the answer was wrong (negative).
    A comment alone is not an outcome.

    Args:
        row: an exchange joined with its latest feedback (keys thumb, rating, correction, request_id).
        min_rating: the lowest rating that counts as positive.

    Raises:
        AbDataError: the thumb is not +1/-1 or the rating is not 1..5 (names the request id).
    """
    thumb, rating = row.get("thumb"), row.get("rating")
    if thumb is not None:
        if thumb not in (1, -1):
            raise AbDataError(f"request {row.get('request_id')!r}: thumb must be 1 or -1, got {thumb!r}")
        return thumb == 1
    if rating is not None:
        if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
            raise AbDataError(f"request {row.get('request_id')!r}: rating must be 1..5, got {rating!r}")
        return rating >= min_rating
    if row.get("correction"):
        return False
    return None


def _check_counts(successes: int, n: int, what: str) -> None:
    if n < 0 or successes < 0 or successes > n:
        raise AbDataError(f"{what}: need 0 <= successes <= n, got {successes}/{n}")


def z_of(alpha: float) -> float:
    """The two-sided critical value of the standard normal for significance `alpha` (1.96 at 0.05)."""
    if not 0 < alpha < 1:
        raise AbDataError(f"alpha must be in (0, 1), got {alpha!r}")
    return NormalDist().inv_cdf(1 - alpha / 2)


def wilson(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float] | None:
    """The Wilson score interval of `successes / n` at confidence 1 - alpha; None when n is 0.

    Raises:
        AbDataError: counts out of range or alpha outside (0, 1).
    """
    _check_counts(successes, n, "wilson interval")
    z = z_of(alpha)
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamp rounding noise only; the interval is inside [0, 1] by construction.
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_test(x_a: int, n_a: int, x_b: int, n_b: int) -> dict[str, float] | None:
    """Pooled two-proportion z-test of B against A, two-sided.

    Args:
        x_a: successes of A (the champion), out of `n_a`.
        x_b: successes of B (the challenger), out of `n_b`.

    Returns:
        {"rate_a", "rate_b", "difference" (rate_b - rate_a), "z", "p_value"}, or None when either
        sample is empty. When both samples are all successes or all failures the rates are equal and
        the test says so (z 0, p 1) instead of dividing by a zero standard error.

    Raises:
        AbDataError: counts out of range.
    """
    _check_counts(x_a, n_a, "two-proportion test, A")
    _check_counts(x_b, n_b, "two-proportion test, B")
    if n_a == 0 or n_b == 0:
        return None
    rate_a, rate_b = x_a / n_a, x_b / n_b
    pooled = (x_a + x_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    z = 0.0 if se == 0 else (rate_b - rate_a) / se
    return {
        "rate_a": rate_a,
        "rate_b": rate_b,
        "difference": rate_b - rate_a,
        "z": z,
        "p_value": math.erfc(abs(z) / math.sqrt(2)),
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation (numpy's default); None when empty.

    Raises:
        AbDataError: q outside 0..100.
    """
    if not 0 <= q <= 100:
        raise AbDataError(f"percentile must be in 0..100, got {q!r}")
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def clustered_two_proportion_test(
    clusters_a: Sequence[tuple[int, int]], clusters_b: Sequence[tuple[int, int]]
) -> dict[str, float] | None:
    """Two-proportion z-test of B against A when outcomes come in clusters (one per user), two-sided.

    Users, not requests, are randomised: one user's ratings are not independent, so a few heavy users
    must not make a difference look surer than it is. Each rate is a ratio of sums over users; its
    variance is the cluster-robust (sandwich) estimate k/(k-1) * sum((x_i - p*n_i)^2) / N^2. The
    standard error used is the larger of that and the pooled test's, so the test is never less
    conservative than `two_proportion_test` (which it equals when every user rated once and the
    rates are close).

    Args:
        clusters_a: (positives, rated) per user of A (the champion); users with no rating left out.
        clusters_b: the same for B (the challenger).

    Returns:
        `two_proportion_test`'s dict plus "users_a", "users_b", "se_pooled", "se_clustered"; None when
        either side has no rating.

    Raises:
        AbDataError: a cluster's counts are out of range.
    """
    for x, n in (*clusters_a, *clusters_b):
        _check_counts(x, n, "clustered two-proportion test")
    x_a, n_a = sum(x for x, _ in clusters_a), sum(n for _, n in clusters_a)
    x_b, n_b = sum(x for x, _ in clusters_b), sum(n for _, n in clusters_b)
    base = two_proportion_test(x_a, n_a, x_b, n_b)
    if base is None:
        return None

    def variance(clusters: Sequence[tuple[int, int]], p: float, total: int) -> float:
        k = len(clusters)
        if k < 2:
            return math.inf  # one user says nothing about users in general
        return k / (k - 1) * sum((x - p * n) ** 2 for x, n in clusters) / total**2

    pooled = (x_a + x_b) / (n_a + n_b)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    var_a, var_b = variance(clusters_a, base["rate_a"], n_a), variance(clusters_b, base["rate_b"], n_b)
    se_clustered = math.sqrt(var_a + var_b)
    se = max(se_pooled, se_clustered)
    z = 0.0 if se == 0 or math.isinf(se) else base["difference"] / se
    return {**base, "z": z, "p_value": math.erfc(abs(z) / math.sqrt(2)), "users_a": len(clusters_a),
            "users_b": len(clusters_b), "se_pooled": se_pooled, "se_clustered": se_clustered}

