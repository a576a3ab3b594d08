"""stats: Wilson intervals, exact McNemar, the MDE and the normal quantile against hand-computed values."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvsafety_tests.stats import (
    binomial_pmf,
    binomial_sf,
    mcnemar_exact_p,
    min_detectable_effect,
    normal_cdf,
    normal_quantile,
    wilson_interval,
)

Z2 = 1.96**2  # 3.8416

# --- Wilson ----------------------------------------------------------------------------------------


def test_wilson_zero_of_ten_is_zero_to_z2_over_n_plus_z2() -> None:
    # k = 0: center = half = (z^2/2) / (n + z^2), so [0, z^2 / (n + z^2)] = [0, 3.8416 / 13.8416]
    assert wilson_interval(0, 10) == (0.0, pytest.approx(3.8416 / 13.8416, abs=1e-12))
    assert wilson_interval(0, 10)[1] == pytest.approx(0.2775401688, abs=1e-10)  # type: ignore[index]


def test_wilson_ten_of_ten_mirrors_zero_of_ten() -> None:
    assert wilson_interval(10, 10) == (pytest.approx(10 / 13.8416, abs=1e-12), 1.0)


def test_wilson_five_of_ten_is_symmetric_about_one_half() -> None:
    # center = (5 + 1.9208) / 13.8416 = 0.5; half = 1.96 * sqrt(2.5 + 0.9604) / 13.8416
    half = 1.96 * math.sqrt(2.5 + 0.9604) / 13.8416
    low, high = wilson_interval(5, 10)  # type: ignore[misc]
    assert low == pytest.approx(0.5 - half, abs=1e-12)
    assert high == pytest.approx(0.5 + half, abs=1e-12)
    assert (low, high) == (pytest.approx(0.2365895936, abs=1e-9), pytest.approx(0.7634104064, abs=1e-9))


def test_wilson_one_of_five_by_hand() -> None:
    denom = 5 + Z2
    center = (1 + Z2 / 2) / denom
    half = 1.96 / denom * math.sqrt(1 * 4 / 5 + Z2 / 4)
    assert wilson_interval(1, 5) == (pytest.approx(center - half), pytest.approx(center + half))


def test_wilson_empty_denominator_is_none_not_zero() -> None:
    assert wilson_interval(0, 0) is None


def test_wilson_z_sets_the_confidence() -> None:
    narrow = wilson_interval(3, 20, z=1.0)
    wide = wilson_interval(3, 20, z=2.576)
    assert narrow is not None and wide is not None
    assert wide[0] < narrow[0] and narrow[1] < wide[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((11, 10), "k must be at most n"),
        ((-1, 10), "k must be a non-negative integer, got -1"),
        ((1.5, 10), "k must be a non-negative integer, got 1.5"),
        ((True, 10), "k must be a non-negative integer, got True"),
        ((1, 10, 0.0), "z must be a positive finite number"),
        ((1, 10, math.inf), "z must be a positive finite number"),
    ],
)
def test_wilson_rejects_bad_input_naming_it(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wilson_interval(*args)


@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_the_estimate_and_lies_in_unit_interval(kn: tuple[int, int]) -> None:
    k, n = kn
    interval = wilson_interval(k, n)
    assert interval is not None
    low, high = interval
    assert 0.0 <= low <= k / n <= high <= 1.0
    assert low < high


@given(st.integers(1, 2000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_is_mirror_symmetric(kn: tuple[int, int]) -> None:
    k, n = kn
    low, high = wilson_interval(k, n)  # type: ignore[misc]
    mlow, mhigh = wilson_interval(n - k, n)  # type: ignore[misc]
    assert low == pytest.approx(1 - mhigh, abs=1e-12)
    assert high == pytest.approx(1 - mlow, abs=1e-12)


# --- McNemar -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 5, 0.0625),  # 2 * (1/2)^5
        (5, 0, 0.0625),
        (1, 5, 0.21875),  # 2 * (1 + 6) / 64
        (5, 1, 0.21875),
        (2, 8, 0.109375),  # 2 * (1 + 10 + 45) / 1024
        (3, 1, 0.625),  # 2 * (1 + 4) / 16
        (0, 1, 1.0),  # 2 * 1/2 = 1
        (3, 3, 1.0),  # capped at 1
        (0, 0, 1.0),  # no discordant pairs
        (0, 10, 2 / 1024),
    ],
)
def test_mcnemar_exact_matches_hand_computation(b: int, c: int, expected: float) -> None:
    assert mcnemar_exact_p(b, c) == expected  # exact integer arithmetic: equality, not approx


def test_mcnemar_large_counts_are_exact_until_they_underflow() -> None:
    assert mcnemar_exact_p(0, 1000) == 2.0**-999
    assert mcnemar_exact_p(0, 2000) == 0.0  # 2^-1999 is below the smallest double: no error, no NaN
    assert mcnemar_exact_p(1000, 1000) == 1.0


def test_mcnemar_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="b must be a non-negative integer, got -2"):
        mcnemar_exact_p(-2, 3)


@given(st.integers(0, 400), st.integers(0, 400))
def test_mcnemar_p_is_a_probability_and_symmetric(b: int, c: int) -> None:
    p = mcnemar_exact_p(b, c)
    assert 0.0 <= p <= 1.0
    assert p == mcnemar_exact_p(c, b)


@given(st.integers(0, 200), st.integers(0, 200))
def test_mcnemar_more_imbalance_never_raises_p(b: int, c: int) -> None:
    # moving one pair from the smaller to the larger side makes the change more significant
    if b <= c and b > 0:
        assert mcnemar_exact_p(b - 1, c + 1) <= mcnemar_exact_p(b, c)


# --- binomial tails ------------------------------------------------------------------------------------


def test_binomial_pmf_and_sf_by_hand() -> None:
    assert binomial_pmf(2, 4, 0.5) == pytest.approx(6 / 16)
    assert binomial_sf(3, 5, 0.2) == pytest.approx(10 * 0.008 * 0.64 + 5 * 0.0016 * 0.8 + 0.00032)
    assert binomial_sf(0, 5, 0.3) == 1.0
    assert binomial_sf(6, 5, 0.3) == 0.0
    assert binomial_sf(1, 5, 0.0) == 0.0
    assert binomial_sf(5, 5, 1.0) == 1.0


@given(st.integers(0, 300), st.floats(0.0, 1.0), st.data())
def test_binomial_sf_matches_the_direct_sum(n: int, p: float, data: st.DataObject) -> None:
    k = data.draw(st.integers(-1, n + 1))
    direct = min(1.0, math.fsum(binomial_pmf(i, n, p) for i in range(max(k, 0), n + 1)))
    assert binomial_sf(k, n, p) == pytest.approx(direct, abs=1e-12)


# --- minimum detectable effect ----------------------------------------------------------------------


def test_mde_against_zero_has_the_closed_form() -> None:
    # p0 = 0: one flip is significant (k* = 1), so power = 1 - (1 - p)^n = 0.8
    for n in (1, 10, 37, 500):
        assert min_detectable_effect(n) == pytest.approx(1 - 0.2 ** (1 / n), abs=1e-12)
    assert min_detectable_effect(10) == pytest.approx(0.1486600775, abs=1e-9)


def test_mde_against_a_floor_solves_the_exact_power_equation() -> None:
    # n = 5, p0 = 0.2: P(X >= 4 | 0.2) = 0.00672 <= 0.05 < P(X >= 3 | 0.2) = 0.05792, so k* = 4;
    # the MDE solves P(X >= 4 | p) = 5 p^4 (1 - p) + p^5 = 0.8
    p = min_detectable_effect(5, p0=0.2)
    assert p is not None
    assert 5 * p**4 * (1 - p) + p**5 == pytest.approx(0.8, abs=1e-9)


def test_mde_is_none_when_nothing_can_be_detected() -> None:
    assert min_detectable_effect(0) is None
    assert min_detectable_effect(1, p0=0.1) is None  # even 1/1 flips: P(X >= 1 | 0.1) = 0.1 > 0.05


@given(st.integers(1, 2000))
def test_mde_against_zero_decreases_strictly_in_n(n: int) -> None:
    assert min_detectable_effect(n + 1) < min_detectable_effect(n)  # type: ignore[operator]


def test_mde_against_a_floor_decreases_on_the_whole_and_stays_above_it() -> None:
    values = [min_detectable_effect(n, p0=0.01) for n in (20, 80, 320, 1280)]
    rates = [v for v in values if v is not None]
    assert len(rates) == len(values)
    assert rates == sorted(rates, reverse=True)
    assert all(v > 0.01 for v in rates)


def test_mde_grows_with_power_and_shrinks_with_alpha() -> None:
    n = 60
    assert min_detectable_effect(n, power=0.9) > min_detectable_effect(n, power=0.8)  # type: ignore[operator]
    assert min_detectable_effect(n, alpha=0.1, p0=0.02) <= min_detectable_effect(n, alpha=0.01, p0=0.02)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, "alpha must be a number strictly between 0 and 1"),
        ({"power": 1.0}, "power must be a number strictly between 0 and 1"),
        ({"p0": 1.0}, r"p0 must be a rate in \[0, 1\)"),
        ({"p0": -0.1}, r"p0 must be a rate in \[0, 1\)"),
    ],
)
def test_mde_rejects_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        min_detectable_effect(10, **kwargs)


# --- normal quantile ------------------------------------------------------------------------------------

KNOWN_QUANTILES = [
    (0.5, 0.0),
    (0.8, 0.8416212335729143),
    (0.9, 1.2815515655446004),
    (0.95, 1.6448536269514722),
    (0.975, 1.959963984540054),
    (0.99, 2.3263478740408408),
    (0.995, 2.5758293035489004),
    (0.999, 3.090232306167813),
    (0.02425, -1.9729610513118845),  # the approximation's region boundary
    (1e-10, -6.361340902404056),
]


@pytest.mark.parametrize(("p", "expected"), KNOWN_QUANTILES)
def test_normal_quantile_known_values(p: float, expected: float) -> None:
    assert normal_quantile(p) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("p", [0.5, 0.8, 0.9, 0.95, 0.975, 0.99, 0.999])
def test_normal_quantile_is_odd_about_one_half(p: float) -> None:
    # 1 - p is exact in floating point for these p, so the symmetry holds to rounding
    assert normal_quantile(1 - p) == pytest.approx(-normal_quantile(p), abs=1e-12)


@given(st.floats(1e-300, 1.0, exclude_max=True))
def test_normal_quantile_matches_stdlib_and_inverts_the_cdf(p: float) -> None:
    x = normal_quantile(p)
    assert x == pytest.approx(NormalDist().inv_cdf(p), rel=1e-12, abs=1e-12)
    if 1e-12 < p < 1 - 1e-12:
        assert normal_cdf(x) == pytest.approx(p, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.5, 2.0, math.nan])
def test_normal_quantile_rejects_p_outside_the_open_unit_interval(p: float) -> None:
    with pytest.raises(ValueError, match="p must be a number strictly between 0 and 1"):
        normal_quantile(p)
