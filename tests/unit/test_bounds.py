"""bounds: one-sided Clopper-Pearson and confidence-sequence bounds, and the gate's decision on them.

Reference values come from closed forms and from binomial tails summed term by term with
``math.comb`` (independent of ``stats.binomial_sf``).
"""

from __future__ import annotations

import itertools
import math
import re
import time

import pytest

from kvsafety_tests.gate.bounds import (
    CS_PRIOR,
    METHODS,
    Direction,
    Method,
    binomial_cs_bound,
    bound_for_limit,
    clopper_pearson_bound,
    needed_n,
    paired_bound_for_limit,
    paired_difference_bound,
    rate_bound,
)

ALL_METHODS: list[Method] = ["exact", "sequence"]
ALPHAS = [0.05, 0.01, 0.2, 1e-3]
NS = [1, 2, 3, 7, 17, 45, 100, 1025]
# (k, n) grid with awkward sizes and both edges
GRID = [
    (k, n)
    for n in [1, 2, 5, 8, 17, 29, 45, 100, 333]
    for k in sorted({0, 1, 2, n // 10, n // 3, n - 1, n})
    if 0 <= k <= n
]


def _pmf(i: int, n: int, p: float) -> float:
    return math.comb(n, i) * p**i * (1.0 - p) ** (n - i)


def _cdf(k: int, n: int, p: float) -> float:
    """P(X <= k), term by term."""
    return math.fsum(_pmf(i, n, p) for i in range(k + 1))


def _sf(k: int, n: int, p: float) -> float:
    """P(X >= k), term by term."""
    return math.fsum(_pmf(i, n, p) for i in range(k, n + 1))


def _log_m(k: int, n: int, p: float) -> float:
    """log M_n(p) of the mixture, written out from the module docstring's formula."""
    a, b = CS_PRIOR

    def log_beta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    return log_beta(a + k, b + n - k) - log_beta(a, b) - k * math.log(p) - (n - k) * math.log(1.0 - p)


def _beta_ratio(a: float, b: float, n: int) -> float:
    """B(a, b + n) / B(a, b) = prod_{i < n} (b + i) / (a + b + i), by the recurrence B(a, b + 1) = B(a, b) b / (a + b)."""
    return math.prod((b + i) / (a + b + i) for i in range(n))


# --- Clopper-Pearson ------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("n", NS)
def test_clopper_pearson_edges_match_closed_forms(n: int, alpha: float) -> None:
    # k = 0: (1 - p)^n = alpha; k = n: p^n = alpha
    assert clopper_pearson_bound(0, n, alpha, "upper") == pytest.approx(1.0 - alpha ** (1.0 / n), abs=1e-11)
    assert clopper_pearson_bound(n, n, alpha, "lower") == pytest.approx(alpha ** (1.0 / n), abs=1e-11)
    assert clopper_pearson_bound(0, n, alpha, "lower") == 0.0
    assert clopper_pearson_bound(n, n, alpha, "upper") == 1.0


def test_clopper_pearson_zero_of_eight_is_0_3123() -> None:
    # 1 - 0.05^(1/8) = 0.312343978...
    assert clopper_pearson_bound(0, 8, 0.05, "upper") == pytest.approx(0.3123439781, abs=1e-10)


@pytest.mark.parametrize("alpha", [0.05, 0.01])
@pytest.mark.parametrize(("k", "n"), GRID)
def test_clopper_pearson_tail_at_the_bound_is_alpha(k: int, n: int, alpha: float) -> None:
    upper = clopper_pearson_bound(k, n, alpha, "upper")
    lower = clopper_pearson_bound(k, n, alpha, "lower")
    if k < n:
        assert _cdf(k, n, upper) == pytest.approx(alpha, abs=1e-9)
        assert _cdf(k, n, upper) <= alpha + 1e-12  # rounded outward
    if k > 0:
        assert _sf(k, n, lower) == pytest.approx(alpha, abs=1e-9)
        assert _sf(k, n, lower) <= alpha + 1e-12
    assert lower <= k / n <= upper


def test_no_data_gives_the_whole_unit_interval() -> None:
    assert METHODS == tuple(ALL_METHODS)
    for method in ALL_METHODS:
        assert rate_bound(0, 0, 0.05, "upper", method) == 1.0
        assert rate_bound(0, 0, 0.05, "lower", method) == 0.0


# --- confidence sequence --------------------------------------------------------------------------


def test_prior_is_the_documented_one() -> None:
    assert CS_PRIOR == (0.5, 2.0)


@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.2])
@pytest.mark.parametrize(("k", "n"), GRID)
def test_sequence_is_never_tighter_than_clopper_pearson(k: int, n: int, alpha: float) -> None:
    # The one-sided CP bound is the tightest valid bound monotone in k; the sequence is valid at a fixed n.
    assert binomial_cs_bound(k, n, alpha, "upper") >= clopper_pearson_bound(k, n, alpha, "upper") - 1e-12
    assert binomial_cs_bound(k, n, alpha, "lower") <= clopper_pearson_bound(k, n, alpha, "lower") + 1e-12
    if 0 < k <= n // 2 and n >= 5:  # and it is a different, wider bound, not CP under another name
        assert binomial_cs_bound(k, n, alpha, "upper") > clopper_pearson_bound(k, n, alpha, "upper") + 1e-3
        assert binomial_cs_bound(k, n, alpha, "lower") < 0.9 * clopper_pearson_bound(k, n, alpha, "lower")


@pytest.mark.parametrize("alpha", [0.05, 0.01, 1e-3])
@pytest.mark.parametrize("n", NS)
def test_sequence_edges_match_the_mixture_solved_directly(n: int, alpha: float) -> None:
    a, b = CS_PRIOR
    # k = 0: M_n(p) = B(a, b + n) / B(a, b) / (1 - p)^n = 1 / alpha
    expected_upper = 1.0 - (alpha * _beta_ratio(a, b, n)) ** (1.0 / n)
    assert binomial_cs_bound(0, n, alpha, "upper") == pytest.approx(expected_upper, abs=1e-11)
    # k = n: M_n(p) = B(a + n, b) / B(a, b) / p^n = 1 / alpha
    expected_lower = (alpha * _beta_ratio(b, a, n)) ** (1.0 / n)
    assert binomial_cs_bound(n, n, alpha, "lower") == pytest.approx(expected_lower, abs=1e-11)
    assert binomial_cs_bound(0, n, alpha, "lower") == 0.0
    assert binomial_cs_bound(n, n, alpha, "upper") == 1.0


def test_sequence_zero_of_fifty_by_hand() -> None:
    # B(1/2, 2 + 50) / B(1/2, 2) = prod_{i<50} (2 + i) / (2.5 + i); upper = 1 - (0.05 * that)^(1/50)
    ratio = math.prod((2 + i) / (2.5 + i) for i in range(50))
    assert ratio == pytest.approx(0.1848, abs=1e-4)
    assert binomial_cs_bound(0, 50, 0.05, "upper") == pytest.approx(1.0 - (0.05 * ratio) ** 0.02, abs=1e-12)
    assert binomial_cs_bound(0, 50, 0.05, "upper") == pytest.approx(0.0894, abs=1e-4)


@pytest.mark.parametrize(("k", "n"), [(k, n) for (k, n) in GRID if 0 < k < n])
def test_sequence_endpoints_solve_m_equals_one_over_alpha(k: int, n: int) -> None:
    alpha = 0.05
    upper = binomial_cs_bound(k, n, alpha, "upper")
    lower = binomial_cs_bound(k, n, alpha, "lower")
    threshold = math.log(1 / alpha)
    assert lower < k / n < upper
    # each endpoint is on or just outside the set, and 2e-12 further in is inside it
    assert _log_m(k, n, upper) >= threshold - 1e-9
    assert _log_m(k, n, upper - 2e-12) < threshold + 1e-9
    assert _log_m(k, n, lower) >= threshold - 1e-9
    assert _log_m(k, n, lower + 2e-12) < threshold + 1e-9
    assert _log_m(k, n, k / n) < 0.0  # the observed rate lies well inside


# --- monotonicity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("n", [1, 17, 100, 1025])
def test_bounds_rise_with_k(n: int, method: Method) -> None:
    ks = sorted(k for k in {0, 1, 2, 3, n // 4, n // 2, n - 1, n} if k <= n)
    uppers = [rate_bound(k, n, 0.05, "upper", method) for k in ks]
    lowers = [rate_bound(k, n, 0.05, "lower", method) for k in ks]
    assert all(x < y for x, y in itertools.pairwise(uppers) if x < 1.0)
    assert all(x < y for x, y in itertools.pairwise(lowers))


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1.0])
def test_bounds_tighten_as_n_grows_at_a_fixed_rate(rate: float, method: Method) -> None:
    ns = [10, 20, 40, 80, 160, 320, 640]
    uppers = [rate_bound(round(rate * n), n, 0.05, "upper", method) for n in ns]
    lowers = [rate_bound(round(rate * n), n, 0.05, "lower", method) for n in ns]
    if rate < 1.0:
        assert all(x > y for x, y in itertools.pairwise(uppers))
    if rate > 0.0:
        assert all(x < y for x, y in itertools.pairwise(lowers))


@pytest.mark.parametrize("method", ALL_METHODS)
def test_bounds_widen_as_alpha_shrinks(method: Method) -> None:
    uppers = [rate_bound(3, 40, a, "upper", method) for a in (0.2, 0.05, 0.01, 1e-3)]
    assert all(x < y for x, y in itertools.pairwise(uppers))


# --- paired difference ----------------------------------------------------------------------------


def test_paired_no_discordant_pairs_is_symmetric_bonferroni() -> None:
    # b = c = 0, n = 20: U(0, 20, alpha/2) = 1 - 0.025^(1/20) = 0.1685 (not 0.1391 at the full alpha)
    half_width = 1.0 - 0.025 ** (1 / 20)
    assert half_width == pytest.approx(0.1685, abs=1e-4)
    assert paired_difference_bound(0, 0, 20, 0.05, "upper") == pytest.approx(half_width, abs=1e-11)
    assert paired_difference_bound(0, 0, 20, 0.05, "lower") == pytest.approx(-half_width, abs=1e-11)


def test_paired_all_flipped_one_way() -> None:
    # b = n, c = 0: upper = 1 - 0 = 1; lower = L(n, n, alpha/2) - U(0, n, alpha/2) = 2 * 0.025^(1/n) - 1
    n = 20
    assert paired_difference_bound(n, 0, n, 0.05, "upper") == 1.0
    expected = 2.0 * 0.025 ** (1 / n) - 1.0
    assert paired_difference_bound(n, 0, n, 0.05, "lower") == pytest.approx(expected, abs=1e-11)
    assert paired_difference_bound(0, n, n, 0.05, "upper") == pytest.approx(-expected, abs=1e-11)
    assert paired_difference_bound(0, n, n, 0.05, "lower") == -1.0


def test_paired_no_data_is_the_whole_range() -> None:
    assert paired_difference_bound(0, 0, 0, 0.05, "upper") == 1.0
    assert paired_difference_bound(0, 0, 0, 0.05, "lower") == -1.0
    assert paired_bound_for_limit(0, 0, 0, 0.05, 0.05) == ("inconclusive", 1.0, -1.0)


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize(
    ("b", "c", "n"), [(0, 0, 5), (3, 1, 40), (1, 3, 40), (10, 2, 50), (7, 7, 100), (30, 0, 100), (0, 1, 1)]
)
def test_paired_bounds_sit_on_either_side_of_the_observed_drop(
    b: int, c: int, n: int, method: Method
) -> None:
    upper = paired_difference_bound(b, c, n, 0.05, "upper", method)
    lower = paired_difference_bound(b, c, n, 0.05, "lower", method)
    observed = (b - c) / n
    assert -1.0 <= lower <= observed <= upper <= 1.0
    assert lower < observed or observed == -1.0
    assert observed < upper or observed == 1.0
    # Bonferroni: each discordant rate at alpha / 2
    half = 0.025
    assert upper == pytest.approx(
        min(1.0, rate_bound(b, n, half, "upper", method) - rate_bound(c, n, half, "lower", method)),
        abs=1e-15,
    )


def test_paired_bound_for_limit_decides_the_refusal_drop() -> None:
    # 0 of 200 flipped either way: upper = 1 - 0.025^(1/200) = 0.0183 <= 0.05, pass
    outcome, upper, lower = paired_bound_for_limit(0, 0, 200, 0.05, 0.05)
    assert (outcome, upper) == ("pass", pytest.approx(1 - 0.025 ** (1 / 200), abs=1e-11))
    assert lower == pytest.approx(-upper, abs=1e-11)
    assert paired_bound_for_limit(40, 0, 100, 0.05, 0.05)[0] == "fail"
    assert paired_bound_for_limit(5, 2, 100, 0.05, 0.05)[0] == "inconclusive"
    assert paired_bound_for_limit(5, 2, 100, -0.5, 0.05, direction="min")[0] == "pass"


# --- the decision ---------------------------------------------------------------------------------

# (k, n, limit, direction, method, outcome), each with the reason in the comment
DECISIONS = [
    (0, 8, 0.10, "max", "exact", "inconclusive"),  # upper 1 - 0.05^(1/8) = 0.312 > 0.10
    (0, 28, 0.10, "max", "exact", "inconclusive"),  # 0.9^28 = 0.0523 > 0.05
    (0, 29, 0.10, "max", "exact", "pass"),  # 0.9^29 = 0.0471 <= 0.05: upper 0.0981
    (1, 46, 0.10, "max", "exact", "pass"),  # P(X <= 1 | 46, 0.1) = 0.0480
    (9, 45, 0.10, "max", "exact", "fail"),  # P(X >= 9 | 45, 0.1) = 0.0320 < 0.05: lower 0.1085
    (8, 45, 0.10, "max", "exact", "inconclusive"),  # P(X >= 8 | 45, 0.1) = 0.0757
    (45, 50, 0.80, "min", "exact", "pass"),  # P(X >= 45 | 50, 0.8) = 0.0480: lower 0.8012
    (44, 50, 0.80, "min", "exact", "inconclusive"),  # P(X >= 44 | 50, 0.8) = 0.1034
    (5, 50, 0.30, "min", "exact", "fail"),  # upper(5, 50) = 0.199 < 0.30
    (0, 29, 0.10, "max", "sequence", "inconclusive"),  # the sequence pays for its looks
    (0, 44, 0.10, "max", "sequence", "pass"),
    (0, 43, 0.10, "max", "sequence", "inconclusive"),
    (9, 45, 0.10, "max", "sequence", "inconclusive"),
    (5, 50, 0.30, "min", "sequence", "fail"),
    (0, 0, 0.10, "max", "exact", "inconclusive"),  # no data
    (0, 0, 0.10, "min", "sequence", "inconclusive"),
    (3, 10, 1.0, "max", "exact", "pass"),  # every rate is at most 1
    (0, 10, 0.0, "max", "exact", "inconclusive"),  # the upper bound is never 0
    (1, 10, 0.0, "max", "sequence", "fail"),  # one event: the lower bound leaves 0
]


@pytest.mark.parametrize(("k", "n", "limit", "direction", "method", "expected"), DECISIONS)
def test_bound_for_limit_table(
    k: int, n: int, limit: float, direction: Direction, method: Method, expected: str
) -> None:
    outcome, upper, lower = bound_for_limit(k, n, limit, direction, 0.05, method)
    assert outcome == expected
    assert (upper, lower) == (
        rate_bound(k, n, 0.05, "upper", method),
        rate_bound(k, n, 0.05, "lower", method),
    )


def test_bound_for_limit_reasons_hold_by_brute_force() -> None:
    assert 0.9**28 > 0.05 >= 0.9**29
    assert _cdf(1, 46, 0.1) == pytest.approx(0.0480, abs=1e-4)
    assert _sf(9, 45, 0.1) == pytest.approx(0.0320, abs=1e-4)
    assert _sf(8, 45, 0.1) == pytest.approx(0.0757, abs=1e-4)
    assert _sf(45, 50, 0.8) == pytest.approx(0.0480, abs=1e-4)
    assert _sf(44, 50, 0.8) == pytest.approx(0.1034, abs=1e-4)
    lower = bound_for_limit(9, 45, 0.10, "max", 0.05, "exact")[2]
    assert lower == pytest.approx(0.10850, abs=1e-5)
    assert bound_for_limit(0, 29, 0.10, "max", 0.05, "exact")[1] == pytest.approx(
        1 - 0.05 ** (1 / 29), abs=1e-11
    )


# --- needed_n -------------------------------------------------------------------------------------


def _decided(k: int, n: int, m: int, limit: float, direction: Direction, method: Method) -> bool:
    held = round(k / n * m)
    return bound_for_limit(held, m, limit, direction, 0.05, method)[0] != "inconclusive"


NEEDED = [
    (0, 8, 0.10, "max"),
    (0, 30, 0.10, "max"),
    (2, 50, 0.10, "max"),
    (5, 100, 0.10, "max"),
    (12, 100, 0.10, "max"),
    (9, 60, 0.10, "max"),
    (1, 3, 0.05, "max"),
    (7, 10, 0.5, "min"),
    (3, 10, 0.5, "min"),
    (33, 1000, 0.05, "max"),
]


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize(("k", "n", "limit", "direction"), NEEDED)
def test_needed_n_decides_there_and_not_one_before(
    k: int, n: int, limit: float, direction: Direction, method: Method
) -> None:
    m = needed_n(k, n, limit, direction, 0.05, method)
    assert m is not None and m >= n
    assert _decided(k, n, m, limit, direction, method)
    if m > n:
        assert not _decided(k, n, m - 1, limit, direction, method)


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize(
    ("k", "n", "limit", "direction"),
    [
        (0, 8, 0.10, "max"),
        (2, 10, 0.5, "max"),
        (1, 3, 0.05, "max"),
        (7, 10, 0.5, "min"),
        (5, 100, 0.10, "max"),
        (2, 50, 0.10, "max"),
    ],
)
def test_needed_n_is_the_smallest_by_linear_scan(
    k: int, n: int, limit: float, direction: Direction, method: Method
) -> None:
    m = needed_n(k, n, limit, direction, 0.05, method)
    assert m is not None
    assert all(not _decided(k, n, j, limit, direction, method) for j in range(n, m))


def test_the_decision_is_not_monotone_in_n_so_needed_n_scans() -> None:
    # 5 of 100 against 0.10, exact: decided at 103 (k' = 5), undecided at 110 (k' = round(5.5) = 6)
    assert needed_n(5, 100, 0.10, "max", 0.05, "exact") == 103
    assert bound_for_limit(5, 103, 0.10, "max", 0.05, "exact")[0] == "pass"
    assert bound_for_limit(6, 110, 0.10, "max", 0.05, "exact")[0] == "inconclusive"


def test_needed_n_zero_events_at_ten_percent_is_29_exact() -> None:
    # the smallest n with 0.9^n <= 0.05
    assert needed_n(0, 8, 0.10, "max", 0.05, "exact") == 29
    assert needed_n(0, 8, 0.10, "max", 0.05, "sequence") == 44


def test_needed_n_edges() -> None:
    assert needed_n(10, 100, 0.10, "max", 0.05, "exact") is None  # rate == limit
    assert needed_n(1, 10, 0.10, "min", 0.05, "sequence") is None
    assert needed_n(0, 0, 0.10, "max", 0.05, "exact") is None  # no data
    assert needed_n(0, 29, 0.10, "max", 0.05, "exact") == 29  # already decided
    assert needed_n(9, 100, 0.10, "max", 0.05, "sequence", cap=1000) is None  # decides only past the cap
    assert needed_n(9, 100, 0.10, "max", 0.05, "sequence", cap=100_000) == 12527


@pytest.mark.parametrize("method", ALL_METHODS)
def test_needed_n_is_fast_even_when_it_scans_to_the_cap(method: Method) -> None:
    needed_n(99, 1000, 0.10, "max", 0.05, method)  # warm up
    start = time.perf_counter()
    assert needed_n(99, 1000, 0.10, "max", 0.05, method) is None  # needs ~240,000
    # measured ~25 ms on one core; a bisection per n' would take minutes
    assert time.perf_counter() - start < 1.0


# --- bad input ------------------------------------------------------------------------------------

BAD_CALLS = [
    (lambda: clopper_pearson_bound(5, 3, 0.05, "upper"), "k=5, n=3"),
    (lambda: binomial_cs_bound(-1, 3, 0.05, "upper"), "-1"),
    (lambda: rate_bound(1, 3, 0.0, "upper"), "0.0"),
    (lambda: rate_bound(1, 3, 1.0, "upper"), "1.0"),
    (lambda: rate_bound(1, 3, 1.5, "upper", "sequence"), "1.5"),
    (lambda: rate_bound(1, 3, math.nan, "upper"), "nan"),
    (lambda: rate_bound(1, 3, 0.05, "both"), "'both'"),  # type: ignore[arg-type]
    (lambda: rate_bound(1, 3, 0.05, "upper", "bonferroni"), "'bonferroni'"),  # type: ignore[arg-type]
    (lambda: rate_bound(1.0, 3, 0.05, "upper"), "1.0"),  # type: ignore[arg-type]
    (lambda: rate_bound(True, 3, 0.05, "upper"), "True"),
    (lambda: bound_for_limit(1, 3, 1.5, "max", 0.05, "exact"), "1.5"),
    (lambda: bound_for_limit(1, 3, 0.1, "above", 0.05, "exact"), "'above'"),  # type: ignore[arg-type]
    (lambda: needed_n(1, 3, 0.1, "max", 0.05, "exact", cap=-1), "-1"),
    (lambda: paired_difference_bound(3, 2, 4, 0.05, "upper"), "b=3, c=2, n=4"),
    (lambda: paired_bound_for_limit(0, 0, 4, 2.0, 0.05), "2.0"),
]


@pytest.mark.parametrize(("call", "named"), BAD_CALLS)
def test_bad_input_raises_value_error_naming_the_value(call: object, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)) as info:
        call()  # type: ignore[operator]
    assert "\n" not in str(info.value)
