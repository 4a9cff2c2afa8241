"""A/B statistics against hand-computed values: outcomes, Wilson interval, two-proportion z-test,
percentiles."""

from __future__ import annotations

import math

import pytest

from tuneline.ab.stats import AbDataError, outcome, percentile, two_proportion_test, wilson, z_of


@pytest.mark.parametrize(
    ("feedback", "expected"),
    [
        ({"thumb": 1}, True),
        ({"thumb": -1}, False),
        ({"thumb": 1, "rating": 1}, True),  # the thumb decides when there is one
        ({"thumb": -1, "rating": 5}, False),
        ({"rating": 4}, True),  # min_rating 4: 4 and 5 are positive
        ({"rating": 3}, False),
        ({"rating": 5, "correction": "better"}, True),
        ({"correction": "the right answer"}, False),  # a correction alone: the answer was wrong
        ({"comment": "hm"}, None),  # a comment alone is no outcome
        ({"correction": ""}, None),
        ({}, None),
    ],
)
def test_outcome(feedback: dict, expected: bool | None) -> None:
    row = {"request_id": "r", "thumb": None, "rating": None, "correction": None, "comment": None, **feedback}
    assert outcome(row, min_rating=4) is expected


def test_outcome_refuses_impossible_values() -> None:
    with pytest.raises(AbDataError, match="'r7'.*thumb"):
        outcome({"request_id": "r7", "thumb": 2}, 4)
    with pytest.raises(AbDataError, match="rating must be 1..5"):
        outcome({"request_id": "r8", "rating": 9}, 4)


def test_wilson_hand_values() -> None:
    # 8/10 at 95 %: centre (0.8 + z²/20) / (1 + z²/10), half-width z·sqrt(0.016 + z²/400) / (1 + z²/10).
    lo, hi = wilson(8, 10, 0.05)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    # Newcombe (1998), example 81/263: 0.2553 to 0.3662.
    lo, hi = wilson(81, 263, 0.05)
    assert lo == pytest.approx(0.2553, abs=1e-4) and hi == pytest.approx(0.3662, abs=1e-4)
    # The edges stay inside [0, 1] (the normal interval would collapse to a point).
    lo, hi = wilson(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson(10, 10)[1] == 1.0
    assert wilson(0, 0) is None
    # A wider interval at a higher confidence.
    assert wilson(8, 10, 0.01)[0] < wilson(8, 10, 0.05)[0]


def test_critical_values() -> None:
    assert z_of(0.05) == pytest.approx(1.959964, abs=1e-6)
    assert z_of(0.10) == pytest.approx(1.644854, abs=1e-6)
    with pytest.raises(AbDataError, match="alpha"):
        z_of(1.5)


def test_two_proportion_hand_example() -> None:
    # 45/100 vs 60/100: pooled 0.525, se = sqrt(0.525·0.475·0.02) = 0.070622, z = 0.15 / se = 2.1240,
    # two-sided p = 2·(1 - Φ(2.1240)) = 0.03367.
    t = two_proportion_test(45, 100, 60, 100)
    assert t["difference"] == pytest.approx(0.15)
    assert t["z"] == pytest.approx(2.1240, abs=1e-4)
    assert t["p_value"] == pytest.approx(0.03367, abs=1e-5)
    # Symmetric: B worse by the same amount gives -z and the same p.
    back = two_proportion_test(60, 100, 45, 100)
    assert back["z"] == pytest.approx(-t["z"]) and back["p_value"] == pytest.approx(t["p_value"])
    # 2/3 vs 1/4: pooled 3/7, se = sqrt(3/7·4/7·7/12) = sqrt(1/7).
    small = two_proportion_test(2, 3, 1, 4)
    assert small["z"] == pytest.approx((0.25 - 2 / 3) * math.sqrt(7))


def test_two_proportion_degenerate_cases() -> None:
    same = two_proportion_test(10, 10, 5, 5)  # all positive on both sides: no evidence of a difference
    assert same["z"] == 0 and same["p_value"] == 1.0
    assert two_proportion_test(0, 0, 3, 4) is None
    with pytest.raises(AbDataError, match="successes"):
        two_proportion_test(5, 4, 1, 1)


def test_percentile_matches_linear_interpolation() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([4, 1, 3, 2], 95) == pytest.approx(3.85)  # pos 2.85 between 3 and 4
    assert percentile([15, 20, 35, 40, 50], 95) == pytest.approx(48.0)  # pos 3.8
    assert percentile([15, 20, 35, 40, 50], 0) == 15 and percentile([15, 20, 35, 40, 50], 100) == 50
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(AbDataError, match="0..100"):
        percentile([1], 101)


def test_clustered_test_equals_the_pooled_one_for_one_rating_per_user_and_is_wider_for_heavy_users() -> None:
    from tuneline.ab.stats import clustered_two_proportion_test, two_proportion_test

    a = [(1, 1)] * 45 + [(0, 1)] * 55
    b = [(1, 1)] * 60 + [(0, 1)] * 40
    single = clustered_two_proportion_test(a, b)
    plain = two_proportion_test(45, 100, 60, 100)
    assert single["p_value"] == pytest.approx(plain["p_value"], rel=1e-9)  # pooled SE is the larger here
    assert single["users_a"] == 100 and single["users_b"] == 100
    # The same 100 + 100 ratings from 5 users per arm: far less evidence about users in general.
    heavy_a = [(9, 20), (9, 20), (9, 20), (9, 20), (9, 20)]
    heavy_b = [(20, 20), (0, 20), (20, 20), (20, 20), (0, 20)]
    clustered = clustered_two_proportion_test(heavy_a, heavy_b)
    assert clustered["rate_a"] == plain["rate_a"] and clustered["rate_b"] == plain["rate_b"]
    assert clustered["se_clustered"] > clustered["se_pooled"] and clustered["p_value"] > 0.3
    # Hand check of the sandwich variance for B: p=0.6, k=5, N=100:
    # sum((x - 0.6*20)^2) = 3*64 + 2*144 = 480 -> 5/4 * 480 / 100^2 = 0.06; A: all (9-9)^2 = 0.
    assert clustered["se_clustered"] == pytest.approx(math.sqrt(0.06))
    assert clustered_two_proportion_test([(1, 1)], [(0, 1), (1, 1)])["p_value"] == 1.0  # one user: no test
