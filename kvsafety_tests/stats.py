"""Statistics for the audit's rates: Wilson intervals, exact McNemar, exact binomial power.

Pure stdlib (``math``): no scipy, numpy or torch, so the report can be built and checked anywhere.

- ``wilson_interval(k, n)``: the Wilson score interval for a binomial proportion (docs/metrics.md:
  "Wilson 95% interval for every rate").
- ``mcnemar_exact_p(b, c)``: the exact two-sided McNemar test on the discordant pairs of a paired
  change (docs/metrics.md: "exact two-sided McNemar p-value for the paired change on H").
- ``min_detectable_effect(n)``: the smallest flip rate a one-sided exact binomial test on the
  at-risk n detects with the stated power (docs/metrics.md: "the minimum detectable effect at 80%
  power for the at-risk n"); the formula is in its docstring.
- ``normal_quantile(p)``: the standard normal inverse CDF (Acklam's rational approximation, refined
  by one Halley step against ``math.erfc``: about 1e-15 relative error).
"""

from __future__ import annotations

import math
import operator
from typing import Any

__all__ = [
    "binomial_pmf",
    "binomial_sf",
    "mcnemar_exact_p",
    "min_detectable_effect",
    "normal_cdf",
    "normal_quantile",
    "wilson_interval",
]

# Acklam's rational approximation of the normal quantile (relative error < 1.15e-9 before the
# Halley refinement step below).
_A = (
    -3.969683028665376e01,
    2.209460984245205e02,
    -2.759285104469687e02,
    1.383577518672690e02,
    -3.066479806614716e01,
    2.506628277459239e00,
)
_B = (
    -5.447609879822406e01,
    1.615858368580409e02,
    -1.556989798598866e02,
    6.680131188771972e01,
    -1.328068155288572e01,
)
_C = (
    -7.784894002430293e-03,
    -3.223964580411365e-01,
    -2.400758277161838e00,
    -2.549732539343734e00,
    4.374664141464968e00,
    2.938163982698783e00,
)
_D = (
    7.784695709041462e-03,
    3.224671290700398e-01,
    2.445134137142996e00,
    3.754408661907416e00,
)
_P_LOW = 0.02425
_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)


def _count(name: str, value: Any) -> int:
    """``value`` as a non-negative int (numpy integers accepted; bools and floats rejected)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    try:
        as_int = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}") from None
    if as_int < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {as_int}")
    return as_int


def _open_unit(name: str, value: float) -> float:
    """``value`` checked to lie strictly inside (0, 1)."""
    if not (isinstance(value, int | float) and 0.0 < value < 1.0):
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def normal_cdf(x: float) -> float:
    """Standard normal CDF, ``Phi(x) = erfc(-x / sqrt 2) / 2``."""
    return 0.5 * math.erfc(-x / _SQRT2)


def _lower_quantile(p: float) -> float:
    """Phi^-1(p) for 0 < p <= 0.5 (the lower half, where ``p`` carries full relative precision)."""
    if p < _P_LOW:
        q = math.sqrt(-2.0 * math.log(p))
        num = ((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]
        den = (((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0
        x = num / den
    else:
        q = p - 0.5
        r = q * q
        num = (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q
        den = ((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0
        x = num / den
    # One Halley step on Phi(x) - p = 0 (Acklam's refinement): cubic convergence takes the
    # 1e-9 approximation to the precision of erfc.
    e = 0.5 * math.erfc(-x / _SQRT2) - p
    u = e * _SQRT2PI * math.exp(0.5 * x * x)
    return x - u / (1.0 + 0.5 * x * u)


def normal_quantile(p: float) -> float:
    """Standard normal quantile ``Phi^-1(p)`` for ``0 < p < 1``.

    Acklam's rational approximation refined by one Halley step. The upper half is computed as
    ``-Phi^-1(1 - p)``: ``1 - p`` is exact in floating point for ``p >= 0.5``, and the lower tail
    keeps full relative precision in ``erfc``.
    """
    p = _open_unit("p", p)
    if p > 0.5:
        return -_lower_quantile(1.0 - p)
    return _lower_quantile(p)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval for ``k`` successes in ``n`` trials; None when ``n == 0``.

    ``center = (k + z^2/2) / (n + z^2)``,
    ``half = z / (n + z^2) * sqrt(k (n - k) / n + z^2 / 4)``,
    interval ``[center - half, center + half]`` (exactly 0 below when ``k == 0`` and exactly 1
    above when ``k == n``). ``z = 1.96`` gives the 95% interval.
    """
    k = _count("k", k)
    n = _count("n", n)
    if k > n:
        raise ValueError(f"k must be at most n, got k={k}, n={n}")
    if not (isinstance(z, int | float) and math.isfinite(z) and z > 0):
        raise ValueError(f"z must be a positive finite number, got {z!r}")
    if n == 0:
        return None
    z2 = z * z
    denom = n + z2
    center = (k + z2 / 2.0) / denom
    half = z / denom * math.sqrt(k * (n - k) / n + z2 / 4.0)
    low = 0.0 if k == 0 else max(0.0, center - half)
    high = 1.0 if k == n else min(1.0, center + half)
    return (low, high)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for ``b`` and ``c`` discordant pairs; 1.0 when ``b + c == 0``.

    Under H0 (no paired change) ``b ~ Binomial(b + c, 1/2)``;
    ``p = min(1, 2 * P(X <= min(b, c)))``, summed in exact integer arithmetic:
    ``2 * sum_{i <= min(b, c)} C(b + c, i) / 2^(b + c)``.
    """
    b = _count("b", b)
    c = _count("c", c)
    n = b + c
    if n == 0:
        return 1.0
    smaller = min(b, c)
    term = 1  # C(n, 0)
    total = 1
    for i in range(1, smaller + 1):
        term = term * (n - i + 1) // i
        total += term
    # int / int true division is correctly rounded for any size of integer
    return min(1.0, (2 * total) / (1 << n))


def binomial_pmf(i: int, n: int, p: float) -> float:
    """``P(X = i)`` for ``X ~ Binomial(n, p)``, computed in log space (lgamma)."""
    i = _count("i", i)
    n = _count("n", n)
    if not (isinstance(p, int | float) and 0.0 <= p <= 1.0):
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    if i > n:
        return 0.0
    if p == 0.0:
        return 1.0 if i == 0 else 0.0
    if p == 1.0:
        return 1.0 if i == n else 0.0
    log_pmf = (
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
    )
    return math.exp(log_pmf)


def binomial_sf(k: int, n: int, p: float) -> float:
    """Upper tail ``P(X >= k)`` for ``X ~ Binomial(n, p)`` (note: ``>=``, not ``>``).

    Sums whichever tail lies away from the mean (the upper one from ``k`` up, or ``1 -`` the lower
    one from ``k - 1`` down), each term from its neighbour by the pmf's ratio recurrence: O(n)
    multiplications, one lgamma evaluation.
    """
    n = _count("n", n)
    if not (isinstance(p, int | float) and 0.0 <= p <= 1.0):
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p == 0.0:
        return 0.0
    if p == 1.0:
        return 1.0
    odds = p / (1.0 - p)
    if k > n * p:  # upper tail, terms decreasing away from the mode
        term = binomial_pmf(k, n, p)
        terms = [term]
        for i in range(k, n):
            term *= (n - i) / (i + 1) * odds
            terms.append(term)
            if term < 1e-300:
                break
        return min(1.0, math.fsum(terms))
    term = binomial_pmf(k - 1, n, p)  # lower tail P(X <= k - 1)
    terms = [term]
    for i in range(k - 1, 0, -1):
        term *= i / (n - i + 1) / odds
        terms.append(term)
        if term < 1e-300:
            break
    return max(0.0, 1.0 - math.fsum(terms))


def min_detectable_effect(n: int, alpha: float = 0.05, power: float = 0.8, p0: float = 0.0) -> float | None:
    """Smallest true flip rate that ``n`` at-risk prompts detect, or None when none can be.

    Formula (one-sided exact binomial test, no normal approximation): with ``X`` the number of
    flips among the ``n`` at-risk prompts (the baseline's refusals on H),

    - the critical count ``k* = min{k >= 1 : P(X >= k | p0) <= alpha}`` (reject "flip rate <= p0"
      at level ``alpha``);
    - the MDE is the smallest ``p`` with ``P(X >= k* | p) >= power``, found by bisection to 1e-12
      (rounded up, so the returned rate has at least the stated power).

    ``p0 = 0`` (the default: "distinguishable from no flips at all") gives ``k* = 1`` and the
    closed form ``1 - (1 - power)^(1/n)``. With ``p0`` = the measured noise floor it is the
    smallest flip rate distinguishable from the floor. For ``p0 > 0`` the MDE is a sawtooth in
    ``n`` (discreteness of the exact test), decreasing only on the whole; for ``p0 = 0`` it is
    strictly decreasing. None when ``n == 0``, or when even ``k* = n`` flips would not be
    significant at ``alpha`` (``p0^n > alpha``).
    """
    n = _count("n", n)
    alpha = _open_unit("alpha", alpha)
    power = _open_unit("power", power)
    if not (isinstance(p0, int | float) and 0.0 <= p0 < 1.0):
        raise ValueError(f"p0 must be a rate in [0, 1), got {p0!r}")
    p0 = float(p0)
    if n == 0:
        return None
    # Tail probabilities under p0 for every k, accumulated from the top: P(X >= k | p0).
    pmf0 = [binomial_pmf(i, n, p0) for i in range(n + 1)]
    tail = 0.0
    k_crit: int | None = None
    for k in range(n, 0, -1):
        tail += pmf0[k]
        if tail <= alpha:
            k_crit = k
        else:
            break
    if k_crit is None:
        return None
    if k_crit == 1 and p0 == 0.0:
        return 1.0 - (1.0 - power) ** (1.0 / n)
    low, high = p0, 1.0  # power(low) < power <= power(high) == 1
    for _ in range(200):
        if high - low <= 1e-12:
            break
        mid = 0.5 * (low + high)
        if binomial_sf(k_crit, n, mid) >= power:
            high = mid
        else:
            low = mid
    return high
