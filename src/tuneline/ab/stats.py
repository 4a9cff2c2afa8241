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
