"""One-sided bounds on a rate and the gate's pass / fail / inconclusive decision (docs/metrics.md).

Pure stdlib (``math``): no scipy, numpy or torch, so the report can be checked anywhere.
Notation: ``k`` events among ``n`` trials, ``X ~ Binomial(n, p)``, ``alpha = 1 - confidence``,
``p_hat = k / n``. Every bound is one-sided at level ``alpha``; an ``"upper"`` bound ``U`` has
``P(U < p) <= alpha``, a ``"lower"`` bound ``L`` has ``P(L > p) <= alpha``.

Methods (``rate_bound(..., method=...)``):

- ``"exact"``: the one-sided Clopper-Pearson bound, valid for a single look at a fixed ``n``.
  Upper: the ``p`` with ``P(X <= k | n, p) = alpha`` (1 when ``k == n``);
  lower: the ``p`` with ``P(X >= k | n, p) = alpha`` (0 when ``k == 0``).
  Closed forms at the edges: ``k = 0`` gives upper ``1 - alpha^(1/n)``, ``k = n`` lower ``alpha^(1/n)``.
- ``"sequence"``: an endpoint of the beta-binomial mixture confidence sequence (Robbins' method of
  mixtures; Howard, Ramdas, McAuliffe and Sekhon, Ann. Statist. 2021). With prior ``Beta(a, b)``
  (``CS_PRIOR``) the mixture likelihood ratio against ``p`` is
  ``M_n(p) = B(a + k, b + n - k) / B(a, b) / (p^k (1 - p)^(n - k))``,
  a nonnegative martingale with ``M_0 = 1`` when ``p`` is the true rate, so Ville's inequality gives
  ``P(exists n : M_n(p) >= 1 / alpha) <= alpha``. The set ``{p : M_n(p) < 1 / alpha}`` is therefore
  a confidence sequence: it holds the true rate at every ``n`` at once with probability ``1 - alpha``,
  under any number of looks and any data-dependent stopping rule. ``log M_n`` is convex in ``p``
  (a constant minus ``k log p`` minus ``(n - k) log(1 - p)``) and ``M_n(p_hat) <= 1 < 1 / alpha``
  (a mixture never beats the maximum likelihood), so the set is an interval around ``p_hat``; its
  endpoints are the one-sided bounds (each valid at level ``alpha`` on its own, both together at
  ``2 alpha``). ``k = 0`` gives the closed form upper ``1 - (alpha B(a, b + n) / B(a, b))^(1/n)``.
  The sequence is never tighter than Clopper-Pearson at the same ``(k, n, alpha)`` (the one-sided
  Clopper-Pearson bound is the tightest valid bound monotone in ``k``, and the sequence's endpoints
  are monotone in ``k`` and valid at a fixed ``n``); that is the price of valid repeated looks.

Both are found to ``_TOL = 1e-12`` in ``p`` by Newton steps safeguarded by bisection (the bracket
always holds the root; 6 to 16 tail evaluations instead of ~40), and the end of the final bracket
that lies outside the confidence set is returned (the upper end for an upper bound, the lower end
for a lower one), so a reported bound is never tighter than the exact root.
``n == 0``: upper 1, lower 0.

The prior is ``Beta(1/2, 2)`` (``CS_PRIOR``), measured against ``Beta(1/2, 1/2)`` (Jeffreys, the
default of the literature), ``Beta(1/4, 1/4)``, ``Beta(1, 1)``, ``Beta(1/2, 1)`` and
``Beta(1/2, 9/2)``: for each, the smallest ``n`` at which the observed rate ``r`` held fixed decides
a limit ``t``, over ``t`` in {0.05, 0.1, 0.2} and ``r / t`` in {0, 0.5, 0.75, 1.5, 2, 3} at
``alpha = 0.05``. ``Beta(1/2, 2)`` needed on average 6% more prompts than the best prior of each
cell, Jeffreys 19%, uniform 25% (0 of n at ``t = 0.1``: 44 prompts against 53 for Jeffreys; 5% at
``t = 0.1``: 306 against 349). Keeping ``a = 1/2`` keeps the regret at ``k = 0`` (the usual flip
count) at ``(1/2) log n + O(1)``; ``b = 2`` puts the prior's mass on the small rates every rate
threshold of the gate concerns (all are ``max_`` limits on flip or discordant rates). Near rates of
1/2 and above it is a little looser than Jeffreys. Validity does not depend on the prior: any fixed
prior gives a martingale.

The paired difference (refusal drop) ``Delta = p_b - p_c``, with ``b`` prompts refused -> not and
``c`` not -> refused among ``n`` paired prompts, is bounded by Bonferroni over the two discordant
rates, each at ``alpha / 2``:
``upper = U(b, n, alpha/2) - L(c, n, alpha/2)``, ``lower = L(b, n, alpha/2) - U(c, n, alpha/2)``,
clipped to ``[-1, 1]``. Valid for either method (both rates hold together with probability
``1 - alpha``; for ``"sequence"`` at every ``n`` at once), and conservative: it ignores that ``b``
and ``c`` come from one multinomial, so it is wider than an exact paired (Tango-type) bound.

The decision for a limit ``t`` (``bound_for_limit``):
direction ``"max"`` (the rate must stay at most ``t``): pass if ``upper <= t``, fail if
``lower > t``; direction ``"min"``: pass if ``lower >= t``, fail if ``upper < t``; otherwise, and
always when ``n == 0``, inconclusive.

``needed_n``: the smallest ``n' >= n`` whose decision is not inconclusive with the observed rate held,
``k' = round(k n' / n)`` (half to even, like ``round``, in exact integers). ``n'`` is decided exactly
when ``t`` lies outside the confidence set at ``(k', n')``: for ``"exact"``,
``P(X <= k' | n', t) <= alpha`` or ``P(X >= k' | n', t) <= alpha``; for ``"sequence"``,
``M_n'(t) >= 1 / alpha``. ``k'`` grows by 0 or 1 per step of ``n'``, so both tests are updated in
O(1) per step (``P(X_{n+1} <= k) = P(X_n <= k) - t P(X_n = k)``, ...; ``log M`` gains
``log((a + k) / ((a + b + n) t))`` or ``log((b + n - k) / ((a + b + n) (1 - t)))``), and the scan is
linear: the decision is not monotone in ``n'`` (rounding makes ``k' / n'`` zigzag around ``k / n``;
5 of 100 at ``t = 0.1``, exact: decided at 103, undecided again at 110), so a binary search could
miss the smallest ``n'``. A scan to the default cap of 100,000 takes about 25 ms. The candidate is confirmed (and moved to the
nearest ``n'`` where it agrees) with ``bound_for_limit`` itself, so at the returned ``n'`` it decides
and at ``n' - 1`` it does not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, TypeAlias

from ..stats import _count, _open_unit, binomial_pmf, binomial_sf

__all__ = [
    "CS_PRIOR",
    "DIRECTIONS",
    "METHODS",
    "OUTCOMES",
    "SIDES",
    "Direction",
    "Method",
    "Side",
    "binomial_cs_bound",
    "bound_for_limit",
    "clopper_pearson_bound",
    "needed_n",
    "outcome_of_bounds",
    "paired_bound_for_limit",
    "paired_difference_bound",
    "rate_bound",
]

Side: TypeAlias = Literal["upper", "lower"]
Method: TypeAlias = Literal["exact", "sequence"]
Direction: TypeAlias = Literal["max", "min"]

SIDES: tuple[str, ...] = ("upper", "lower")
METHODS: tuple[str, ...] = ("exact", "sequence")
DIRECTIONS: tuple[str, ...] = ("max", "min")
OUTCOMES: tuple[str, ...] = ("pass", "fail", "inconclusive")

#: The ``Beta(a, b)`` prior of the mixture confidence sequence (measured; see the module docstring).
CS_PRIOR: tuple[float, float] = (0.5, 2.0)

_TOL = 1e-12  # bisection stops when the bracket is this narrow (in p)
_MAX_ITER = 200  # bisection steps never needed beyond ~45; a guard, not a tolerance


# --- validation ----------------------------------------------------------------------------------


def _counts(k: int, n: int, k_name: str = "k") -> tuple[int, int]:
    k = _count(k_name, k)
    n = _count("n", n)
    if k > n:
        raise ValueError(f"{k_name} must be at most n, got {k_name}={k}, n={n}")
    return k, n


def _side(side: str) -> Side:
    if side == "upper":
        return "upper"
    if side == "lower":
        return "lower"
    raise ValueError(f"side must be one of {SIDES}, got {side!r}")


def _method(method: str) -> Method:
    if method == "exact":
        return "exact"
    if method == "sequence":
        return "sequence"
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _direction(direction: str) -> Direction:
    if direction == "max":
        return "max"
    if direction == "min":
        return "min"
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def _limit(limit: float, low: float, high: float) -> float:
    if not (isinstance(limit, int | float) and not isinstance(limit, bool) and low <= limit <= high):
        raise ValueError(f"limit must be a number in [{low:g}, {high:g}], got {limit!r}")
    return float(limit)


# --- root finding --------------------------------------------------------------------------------


def _boundary(
    excess: Callable[[float], float],
    slope: Callable[[float], float],
    lo: float,
    hi: float,
    side: Side,
) -> float:
    """One end of a confidence interval: the root of ``excess`` in ``(lo, hi)``, to ``_TOL``.

    ``excess`` increases across the bracket, negative at ``lo`` and positive at ``hi``; ``slope`` is
    its derivative. Bisection safeguards Newton's method: a Newton step that leaves the bracket, or
    is more than half the previous step, gives way to a bisection step, and a converged Newton
    iterate probes ``_TOL / 2`` across the root to close the bracket. Every evaluation moves one end of the
    bracket, so it always holds the root; the end returned is the one outside the interval
    (``hi`` for an upper bound, ``lo`` for a lower; a point where ``excess == 0`` counts as
    outside), never tighter than the exact root.
    """
    x = 0.5 * (lo + hi)
    last_step = hi - lo
    for _ in range(_MAX_ITER):
        gx = excess(x)
        if gx > 0.0 or (gx == 0.0 and side == "upper"):
            hi = x
        else:
            lo = x
        if hi - lo <= _TOL:
            break
        x_next = 0.5 * (lo + hi)
        d = slope(x) if math.isfinite(gx) else 0.0
        if d > 0.0 and math.isfinite(d):
            newton = x - gx / d
            if abs(newton - x) < 0.5 * _TOL:  # converged: step just across the root
                newton = x + (0.5 * _TOL if x == lo else -0.5 * _TOL)
            # Newton only inside the bracket and only while its steps at least halve
            if lo < newton < hi and abs(newton - x) <= 0.5 * last_step:
                x_next = newton
        last_step = abs(x_next - x)
        x = x_next
    return hi if side == "upper" else lo


# --- Clopper-Pearson -----------------------------------------------------------------------------


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(X <= k)`` for ``X ~ Binomial(n, p)`` (absolute error ~1e-16, from ``binomial_sf``)."""
    return 1.0 - binomial_sf(k + 1, n, p)


def clopper_pearson_bound(k: int, n: int, alpha: float, side: Side) -> float:
    """One-sided exact (Clopper-Pearson) bound on a binomial rate at level ``alpha``, one look.

    Upper: the ``p`` with ``P(X <= k | n, p) = alpha`` (1.0 when ``k == n``); lower: the ``p`` with
    ``P(X >= k | n, p) = alpha`` (0.0 when ``k == 0``). ``n == 0``: upper 1.0, lower 0.0. Found to
    1e-12 by bisection-safeguarded Newton steps on the binomial tails, rounded outward.
    """
    k, n = _counts(k, n)
    alpha = _open_unit("alpha", alpha)
    side = _side(side)
    if side == "upper":
        if k == n:
            return 1.0
        # alpha - P(X <= k | p) rises with p; d/dp P(X <= k | n, p) = -n P(Y = k), Y ~ Bin(n - 1, p).
        return _boundary(
            lambda p: alpha - _binomial_cdf(k, n, p),
            lambda p: n * binomial_pmf(k, n - 1, p),
            0.0,
            1.0,
            "upper",
        )
    if k == 0:
        return 0.0
    # P(X >= k | p) - alpha rises with p; d/dp P(X >= k | n, p) = n P(Y = k - 1), Y ~ Bin(n - 1, p).
    return _boundary(
        lambda p: binomial_sf(k, n, p) - alpha,
        lambda p: n * binomial_pmf(k - 1, n - 1, p),
        0.0,
        1.0,
        "lower",
    )


# --- beta-binomial mixture confidence sequence ---------------------------------------------------


def _log_beta(x: float, y: float) -> float:
    return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)


def _log_mixture_ratio(k: int, n: int, p: float, prior: tuple[float, float]) -> float:
    """``log M_n(p)``; ``+inf`` at an end of [0, 1] the data rule out."""
    a, b = prior
    log_m = _log_beta(a + k, b + n - k) - _log_beta(a, b)
    if k:
        if p <= 0.0:
            return math.inf
        log_m -= k * math.log(p)
    if n - k:
        if p >= 1.0:
            return math.inf
        log_m -= (n - k) * math.log1p(-p)
    return log_m


def _cs_bound(k: int, n: int, alpha: float, side: Side, prior: tuple[float, float]) -> float:
    if n == 0:
        return 1.0 if side == "upper" else 0.0
    threshold = math.log(1.0 / alpha)
    p_hat = k / n

    def slope(p: float) -> float:  # d/dp log M_n(p)
        return (n - k) / (1.0 - p) - k / p

    if side == "upper":
        if k == n:  # log M falls all the way to p = 1, where M = B(a + n, b) / B(a, b) < 1
            return 1.0
        # log M rises on [p_hat, 1) from below 0 to +inf
        return _boundary(lambda p: _log_mixture_ratio(k, n, p, prior) - threshold, slope, p_hat, 1.0, "upper")
    if k == 0:
        return 0.0
    # log M falls on (0, p_hat] from +inf to below 0
    return _boundary(
        lambda p: threshold - _log_mixture_ratio(k, n, p, prior),
        lambda p: -slope(p),
        0.0,
        p_hat,
        "lower",
    )


def binomial_cs_bound(k: int, n: int, alpha: float, side: Side) -> float:
    """One-sided bound valid under any number of looks: an endpoint of the mixture confidence sequence.

    The endpoint of ``{p : M_n(p) < 1 / alpha}`` with
    ``M_n(p) = B(a + k, b + n - k) / B(a, b) / (p^k (1 - p)^(n - k))`` and ``(a, b) = CS_PRIOR``;
    by Ville's inequality the true rate leaves the set at some ``n`` with probability at most
    ``alpha``, so the bound is valid under optional stopping. ``n == 0``: upper 1.0, lower 0.0.
    """
    k, n = _counts(k, n)
    alpha = _open_unit("alpha", alpha)
    return _cs_bound(k, n, alpha, _side(side), CS_PRIOR)


def rate_bound(k: int, n: int, alpha: float, side: Side, method: Method = "exact") -> float:
    """``clopper_pearson_bound`` for ``"exact"``, ``binomial_cs_bound`` for ``"sequence"``."""
    if _method(method) == "exact":
        return clopper_pearson_bound(k, n, alpha, side)
    return binomial_cs_bound(k, n, alpha, side)


# --- paired difference ---------------------------------------------------------------------------


def paired_difference_bound(
    b: int, c: int, n: int, alpha: float, side: Side, method: Method = "exact"
) -> float:
    """One-sided bound on ``Delta = p_b - p_c`` from ``b`` and ``c`` discordant pairs among ``n``.

    Bonferroni over the two discordant rates at ``alpha / 2`` each:
    ``upper = U(b) - L(c)``, ``lower = L(b) - U(c)``, clipped to ``[-1, 1]``. Conservative (wider
    than an exact paired bound), valid under repeated looks with ``method="sequence"``.
    ``n == 0``: upper 1.0, lower -1.0.
    """
    b = _count("b", b)
    c = _count("c", c)
    n = _count("n", n)
    if b + c > n:
        raise ValueError(f"b + c must be at most n, got b={b}, c={c}, n={n}")
    alpha = _open_unit("alpha", alpha)
    side = _side(side)
    method = _method(method)
    half = alpha / 2.0
    if side == "upper":
        value = rate_bound(b, n, half, "upper", method) - rate_bound(c, n, half, "lower", method)
    else:
        value = rate_bound(b, n, half, "lower", method) - rate_bound(c, n, half, "upper", method)
    return min(1.0, max(-1.0, value))


# --- the decision --------------------------------------------------------------------------------


def outcome_of_bounds(upper: float, lower: float, limit: float, direction: Direction) -> str:
    """pass / fail / inconclusive for one-sided ``upper`` and ``lower`` bounds against ``limit``
    (the rule of ``bound_for_limit``, for bounds computed elsewhere, e.g. by a bootstrap)."""
    if direction == "max":
        return "pass" if upper <= limit else "fail" if lower > limit else "inconclusive"
    return "pass" if lower >= limit else "fail" if upper < limit else "inconclusive"


def bound_for_limit(
    k: int, n: int, limit: float, direction: Direction, alpha: float, method: Method
) -> tuple[str, float, float]:
    """The gate's decision on one rate threshold: ``(outcome, upper, lower)``.

    ``"max"`` (the rate must stay at most ``limit``): pass if ``upper <= limit``, fail if
    ``lower > limit``; ``"min"``: pass if ``lower >= limit``, fail if ``upper < limit``; otherwise
    inconclusive, and always inconclusive when ``n == 0``.
    """
    k, n = _counts(k, n)
    limit = _limit(limit, 0.0, 1.0)
    direction = _direction(direction)
    alpha = _open_unit("alpha", alpha)
    method = _method(method)
    upper = rate_bound(k, n, alpha, "upper", method)
    lower = rate_bound(k, n, alpha, "lower", method)
    if n == 0:
        return "inconclusive", upper, lower
    return outcome_of_bounds(upper, lower, limit, direction), upper, lower


def paired_bound_for_limit(
    b: int,
    c: int,
    n: int,
    limit: float,
    alpha: float,
    method: Method = "exact",
    *,
    direction: Direction = "max",
) -> tuple[str, float, float]:
    """``bound_for_limit`` for the paired difference (refusal drop) with ``paired_difference_bound``.

    ``limit`` lies in ``[-1, 1]``; by default the drop must stay at most ``limit``.
    """
    limit = _limit(limit, -1.0, 1.0)
    direction = _direction(direction)
    upper = paired_difference_bound(b, c, n, alpha, "upper", method)
    lower = paired_difference_bound(b, c, n, alpha, "lower", method)
    if n == 0:
        return "inconclusive", upper, lower
    return outcome_of_bounds(upper, lower, limit, direction), upper, lower


# --- how many more prompts -----------------------------------------------------------------------


def _held_count(k: int, n: int, n2: int) -> int:
    """``round(k / n * n2)`` in exact integers (half to even, like ``round``)."""
    q, r = divmod(k * n2, n)
    if 2 * r > n or (2 * r == n and q % 2 == 1):
        q += 1
    return q


def _first_outside(k: int, n: int, limit: float, alpha: float, method: Method, cap: int) -> int | None:
    """The first ``n' in [n, cap]`` where ``limit`` leaves the confidence set with the rate held.

    Tracked in O(1) per step: the exact tails at ``limit`` by the binomial recurrences, or
    ``log M_n'(limit)`` by its one-observation increments (see the module docstring).
    """
    t = limit
    kk = k
    if method == "sequence":
        a, b = CS_PRIOR
        threshold = math.log(1.0 / alpha)
        log_t, log_1mt = math.log(t), math.log1p(-t)  # 0 < t < 1 here
        log_m = _log_mixture_ratio(kk, n, t, CS_PRIOR)
        for m in range(n, cap + 1):
            if log_m >= threshold:
                return m
            k_next = _held_count(k, n, m + 1)
            if k_next > kk:  # one event among the next prompt
                log_m += math.log((a + kk) / (a + b + m)) - log_t
            else:
                log_m += math.log((b + m - kk) / (a + b + m)) - log_1mt
            kk = k_next
        return None
    pmf = binomial_pmf(kk, n, t)  # P(X_m = kk)
    cdf = _binomial_cdf(kk, n, t)  # P(X_m <= kk)
    for m in range(n, cap + 1):
        if cdf <= alpha or 1.0 - cdf + pmf <= alpha:  # P(X <= kk) or P(X >= kk) at most alpha
            return m
        k_next = _held_count(k, n, m + 1)
        if k_next > kk:  # P(X_{m+1} <= kk + 1) = P(X_m <= kk) + (1 - t) P(X_m = kk + 1)
            cdf += pmf * (m - kk) / (kk + 1) * t
            pmf *= t * (m + 1) / (kk + 1)
        else:  # P(X_{m+1} <= kk) = P(X_m <= kk) - t P(X_m = kk)
            cdf -= t * pmf
            pmf *= (1.0 - t) * (m + 1) / (m + 1 - kk)
        kk = k_next
    return None


def needed_n(
    k: int,
    n: int,
    limit: float,
    direction: Direction,
    alpha: float,
    method: Method,
    *,
    cap: int = 100_000,
) -> int | None:
    """The smallest total ``n' >= n`` that decides the threshold with the observed rate ``k / n`` held.

    ``k' = round(k / n * n')``; returns ``n`` itself when ``(k, n)`` already decides. None when
    ``n == 0``, when ``k / n`` equals ``limit`` (no ``n'`` decides), or when no ``n' <= cap`` does.
    A linear scan with O(1) work per ``n'`` (about 25 ms to the default cap), confirmed by
    ``bound_for_limit``.
    """
    k, n = _counts(k, n)
    limit = _limit(limit, 0.0, 1.0)
    direction = _direction(direction)
    alpha = _open_unit("alpha", alpha)
    method = _method(method)
    cap = _count("cap", cap)
    if n == 0 or math.isclose(k / n, limit, rel_tol=0.0, abs_tol=1e-12):
        return None

    def decided(m: int) -> bool:
        outcome = bound_for_limit(_held_count(k, n, m), m, limit, direction, alpha, method)[0]
        return outcome != "inconclusive"

    if decided(n):
        return n
    if limit in (0.0, 1.0):
        # k / n != limit and (k, n) undecided cannot happen at an end of [0, 1]: an upper bound
        # below 1 or a lower bound above 0 decides it at once (both hold for any 0 < k < n).
        return None
    found = _first_outside(k, n, limit, alpha, method, cap)
    if found is None:
        return None
    # Confirm with the decision itself (the O(1) recurrences may differ from it within ~1e-11).
    while found <= cap and not decided(found):
        found += 1
    if found > cap:
        return None
    while found - 1 > n and decided(found - 1):
        found -= 1
    return found
