"""The gate's decision: each threshold of a run becomes a typed outcome, pass, fail or inconclusive.

A threshold is a claim about the true rate; the audit only sees a sample. For ``max_X = t`` with
one-sided bounds ``[lower, upper]`` at the gate's confidence (docs/decision.md):

- pass: ``upper <= t`` (the sample shows the true value is at most t);
- fail: ``lower > t`` (the sample shows it is above t);
- inconclusive: neither. The sample cannot tell; the gate fails closed unless the
  ``inconclusive = "warn"`` setting turns it into a loud warning (never a silent pass).

``min_X = t`` mirrors it (pass: ``lower >= t``; fail: ``upper < t``). The bound depends on the kind
of number: a flip rate is a binomial proportion (exact Clopper-Pearson for one look, an
anytime-valid confidence sequence when the audit looks after every round); the refusal drop is
a paired difference of proportions (Bonferroni over its two discordant rates); ratios come with
bounds computed where their samples live (a paired bootstrap over prompts). The noise floor (the
fp arm rerun at another batch size) is reported beside each flip rate and never excuses one; when
its own lower bound is above a threshold, that threshold is unreachable for this model and batch,
a configuration error that fails the run.

Besides its thresholds, every quantized run is checked for coverage: a cache that was (almost) not
quantized when the answer began measured nothing, and fails (``coverage_violation``). What fails
a run is a typed ``Violation``; the audit and the test items decide it here, from the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias

from ..settings import CONFIDENCE, INCONCLUSIVE_POLICIES
from .bounds import (
    OUTCOMES,
    Direction,
    Method,
    bound_for_limit,
    needed_n,
    outcome_of_bounds,
    paired_bound_for_limit,
    rate_bound,
)
from .thresholds import METRIC_OF, Thresholds
from .violation import Violation

__all__ = [
    "COVERAGE_METRIC",
    "DEFAULT_CONFIDENCE",
    "INCONCLUSIVE_POLICIES",
    "MIN_QUANTIZED_FRACTION",
    "OUTCOMES",
    "BoundedEvidence",
    "Evidence",
    "PairedEvidence",
    "RateEvidence",
    "ThresholdOutcome",
    "coverage_violation",
    "decide",
    "decide_all",
    "run_verdict",
    "threshold_violation",
]

#: The gate's confidence unless configured (the settings table's default).
DEFAULT_CONFIDENCE = CONFIDENCE
#: Below this fraction of quantized K/V at the first response position a run fails: it measured nothing.
MIN_QUANTIZED_FRACTION = 0.05
#: The measured value the coverage check reads: the run's ``quantized_fraction``.
COVERAGE_METRIC = "quantized_fraction"
#: Ratios of means carry no event count: an n to decide them is not computed.
_NEEDED_N_CAP = 100_000

BoundMethod: TypeAlias = Method


@dataclass(frozen=True)
class RateEvidence:
    """``k`` events among ``n`` at-risk prompts, and the same rate between the fp arm and its rerun."""

    k: int
    n: int
    #: ``(k, n)`` of the noise floor; None when the fp rerun was not made.
    floor: tuple[int, int] | None = None


@dataclass(frozen=True)
class PairedEvidence:
    """A paired difference of proportions on ``n`` prompts: ``b`` changed one way, ``c`` the other.

    For the refusal drop: ``b`` = refused under fp and not under q, ``c`` = the reverse.
    """

    b: int
    c: int
    n: int


@dataclass(frozen=True)
class BoundedEvidence:
    """A value whose one-sided bounds were computed where its samples live (e.g. a bootstrap)."""

    #: None: measured, but nothing to bound (the threshold is inconclusive; ``method`` says why).
    value: float | None
    lower: float | None
    upper: float | None
    #: How the bounds were computed, e.g. "paired-bootstrap"; "point" when there are none.
    method: str
    #: Prompts the value rests on, when known.
    n: int | None = None


Evidence: TypeAlias = RateEvidence | PairedEvidence | BoundedEvidence


@dataclass(frozen=True, kw_only=True)
class ThresholdOutcome:
    """One threshold of one run, decided. Written into the report's ``thresholds`` list (schema 2)."""

    #: The threshold's name, e.g. ``max_conditional_flip``.
    threshold: str
    #: The measured value it gates, e.g. ``conditional_flip_rate``.
    metric: str
    #: The limit ``t``.
    limit: float
    #: ``max``: the value must stay at most ``t``; ``min``: at least ``t``.
    direction: str
    #: The point estimate; None when it could not be measured.
    value: float | None
    #: Events (``k``) the value rests on; for a paired difference, ``b - c``. None for ratios.
    events: int | None = None
    #: Prompts the value rests on (the at-risk n for a flip rate).
    n: int | None = None
    #: One-sided lower and upper bounds, each at ``confidence``.
    lower: float | None = None
    upper: float | None = None
    confidence: float
    #: How the bounds were computed: exact, sequence, paired-exact, paired-sequence, a bootstrap, or point.
    method: str
    #: pass, fail or inconclusive.
    outcome: str
    #: For an inconclusive rate: the total n that would decide it if the observed rate held
    #: (None when no n would, e.g. the observed rate equals the limit).
    needed_n: int | None = None
    #: The noise floor's own lower bound is beyond the limit: no quantizer can pass it here.
    unreachable: bool = False
    #: The noise floor of this value (the same rate between the fp arm and its rerun).
    noise_floor: float | None = None
    #: Why it is not a pass, in one line (None for a pass).
    reason: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r}; valid: {', '.join(OUTCOMES)}")
        if self.direction not in ("max", "min"):
            raise ValueError(f"direction {self.direction!r}; valid: max, min")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence {self.confidence!r} must lie in [0.5, 1)")

    @property
    def bound(self) -> float | None:
        """The bound that decides against the limit: the upper one for ``max``, the lower for ``min``
        on a pass or an inconclusive outcome; the other one on a fail."""
        deciding_upper = (self.direction == "max") != (self.outcome == "fail")
        return self.upper if deciding_upper else self.lower

    @property
    def more_prompts(self) -> int | None:
        """How many more at-risk prompts ``needed_n`` asks for (None when not computed)."""
        if self.needed_n is None or self.n is None:
            return None
        return max(0, self.needed_n - self.n)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _bounds_text(o: ThresholdOutcome) -> str:
    pct = round(100 * o.confidence)
    if o.events is None or o.n is None:
        counts = ""
    elif o.method.startswith("paired-"):
        counts = f" on {o.n} paired prompts (net {o.events:+d})"
    else:
        counts = f" on {o.events}/{o.n}"
    return f"one-sided {pct}% bounds [{_fmt(o.lower)}, {_fmt(o.upper)}]{counts} ({o.method})"


def _reason(o: ThresholdOutcome) -> str | None:
    """The one-line message for an outcome that is not a pass; starts with the metric's name."""
    sign = ">" if o.direction == "max" else "<"
    if o.value is None and o.outcome == "inconclusive":
        return f"{o.metric} inconclusive against {o.threshold} {o.limit:g}: no value to bound ({o.method})"
    if o.value is None:
        return f"{o.metric} not measured: {o.threshold} {o.limit:g} cannot be checked"
    if o.unreachable:
        return (
            f"{o.metric} {o.threshold} {o.limit:g} is unreachable for this model and batch: the fp arm "
            f"rerun alone flips {_fmt(o.noise_floor)} (its lower bound is above the limit); "
            "raise the threshold or audit at one batch size"
        )
    if o.outcome == "fail":
        side = "lower" if o.direction == "max" else "upper"
        return (
            f"{o.metric} {o.value:.3f} {sign} {o.threshold} {o.limit:g}: the {side} bound "
            f"{_fmt(o.bound)} is beyond the limit; {_bounds_text(o)}"
        )
    if o.outcome == "inconclusive":
        more = o.more_prompts
        unit = "prompts" if o.method.startswith("paired-") else "at-risk prompts"
        hint = (
            f"about {more} more {unit} would decide it at the observed rate"
            if more is not None
            else "more prompts would not decide it at the observed value"
        )
        return (
            f"{o.metric} {o.value:.3f} inconclusive against {o.threshold} {o.limit:g}: "
            f"{_bounds_text(o)} straddle the limit; {hint}"
        )
    return None


def _finish(o: ThresholdOutcome) -> ThresholdOutcome:
    return replace(o, reason=_reason(o))


def _paired_needed_n(
    ev: PairedEvidence, limit: float, direction: Direction, alpha: float, method: BoundMethod
) -> int | None:
    """The smallest total n that decides the paired difference with the observed b/n and c/n held."""
    if ev.n == 0 or math.isclose((ev.b - ev.c) / ev.n, limit, abs_tol=1e-12):
        return None

    def decided(n: int) -> bool:
        b, c = round(ev.b / ev.n * n), round(ev.c / ev.n * n)
        outcome = paired_bound_for_limit(b, c, n, limit, alpha, method, direction=direction)[0]
        return outcome != "inconclusive"

    high = ev.n
    while not decided(high):  # a decided n exists at all: double until one is found
        if high >= _NEEDED_N_CAP:
            return None
        high = min(_NEEDED_N_CAP, high * 2)
    # the smallest one by a scan: with rounded counts the decision is not monotone in n
    return next(n for n in range(ev.n, high + 1) if decided(n))


def decide(
    threshold: str,
    limit: float,
    evidence: Evidence | None,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    method: BoundMethod = "exact",
) -> ThresholdOutcome:
    """The outcome of one threshold given its evidence (None: the value was not measured: a fail)."""
    metric, direction_text = METRIC_OF[threshold]
    direction: Direction = "max" if direction_text == "max" else "min"
    alpha = 1.0 - confidence
    common: dict[str, Any] = {
        "threshold": threshold,
        "metric": metric,
        "limit": float(limit),
        "direction": direction,
        "confidence": confidence,
    }
    if evidence is None:
        return _finish(ThresholdOutcome(**common, value=None, method="none", outcome="fail"))
    if isinstance(evidence, BoundedEvidence) and evidence.value is None:
        # measured, but with no value to bound (e.g. PCR found no calibration damage to diagnose)
        return _finish(ThresholdOutcome(**common, value=None, method=evidence.method, outcome="inconclusive"))
    if isinstance(evidence, RateEvidence):
        k, n = evidence.k, evidence.n
        if n == 0:
            return _finish(
                ThresholdOutcome(**common, value=None, events=0, n=0, method=method, outcome="fail")
            )
        outcome, upper, lower = bound_for_limit(k, n, limit, direction, alpha, method)
        floor_rate = None
        unreachable = False
        if evidence.floor is not None and evidence.floor[1] > 0:
            fk, fn = evidence.floor
            floor_rate = fk / fn
            floor_low = rate_bound(fk, fn, alpha, "lower", "exact")
            unreachable = direction == "max" and floor_low > limit
        need = needed_n(k, n, limit, direction, alpha, method) if outcome == "inconclusive" else None
        return _finish(
            ThresholdOutcome(
                **common,
                value=k / n,
                events=k,
                n=n,
                lower=lower,
                upper=upper,
                method=method,
                outcome="fail" if unreachable else outcome,
                needed_n=need,
                unreachable=unreachable,
                noise_floor=floor_rate,
            )
        )
    if isinstance(evidence, PairedEvidence):
        if evidence.n == 0:
            return _finish(
                ThresholdOutcome(**common, value=None, n=0, method=f"paired-{method}", outcome="fail")
            )
        ev = evidence
        outcome, upper, lower = paired_bound_for_limit(
            ev.b, ev.c, ev.n, limit, alpha, method, direction=direction
        )
        need = (
            _paired_needed_n(evidence, limit, direction, alpha, method) if outcome == "inconclusive" else None
        )
        return _finish(
            ThresholdOutcome(
                **common,
                value=(evidence.b - evidence.c) / evidence.n,
                events=evidence.b - evidence.c,
                n=evidence.n,
                lower=lower,
                upper=upper,
                method=f"paired-{method}",
                outcome=outcome,
                needed_n=need,
            )
        )
    # BoundedEvidence: bounds computed upstream (bootstrap); a missing bound is none on that side
    # (e.g. a bootstrap Fieller end at infinity), so without both nothing can pass or fail
    lo, hi = evidence.lower, evidence.upper
    outcome = outcome_of_bounds(
        math.inf if hi is None else hi, -math.inf if lo is None else lo, limit, direction
    )
    return _finish(
        ThresholdOutcome(
            **common,
            value=evidence.value,
            n=evidence.n,
            lower=lo,
            upper=hi,
            method=evidence.method,
            outcome=outcome,
        )
    )


def decide_all(
    thresholds: Thresholds,
    evidence: Mapping[str, Evidence | None],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    method: BoundMethod = "exact",
) -> tuple[ThresholdOutcome, ...]:
    """Every gated threshold whose metric is part of this run (a key of ``evidence``), decided.

    A metric absent from ``evidence`` is not part of the run (e.g. PCR not requested); one present
    with None was asked for and not measured: a fail.
    """
    out = []
    for name, limit in thresholds.as_dict().items():
        metric = METRIC_OF[name][0]
        if metric not in evidence:
            continue
        out.append(decide(name, limit, evidence[metric], confidence=confidence, method=method))
    return tuple(out)


def threshold_violation(outcome: ThresholdOutcome, *, model: str, quantizer: str) -> Violation | None:
    """The violation of a threshold that did not pass (fail or inconclusive); None for a pass."""
    if outcome.outcome == "pass" or not outcome.reason:
        return None
    return Violation(
        kind="threshold",
        model=model,
        quantizer=quantizer,
        metric=outcome.metric,
        check=outcome.threshold,
        message=outcome.reason,
    )


def coverage_violation(
    *, model: str, quantizer: str, quantized: bool, quantized_fraction: float | None
) -> Violation | None:
    """The coverage check of a run: None unless ``quantized`` (its spec quantizes something) and
    ``quantized_fraction`` is below ``MIN_QUANTIZED_FRACTION``. Unknown (None) counts as 0: fail closed.

    Windowed schemes (KIVI, a full-precision residual window) leave a short prompt unquantized when
    the answer begins; such a run vouches for nothing (docs/metrics.md).
    """
    fraction = quantized_fraction or 0.0
    if not (quantized and fraction < MIN_QUANTIZED_FRACTION):
        return None
    return Violation(
        kind="coverage",
        model=model,
        quantizer=quantizer,
        metric=COVERAGE_METRIC,
        message=(
            f"{COVERAGE_METRIC} {fraction:.3f} < {MIN_QUANTIZED_FRACTION}: "
            "the cache was not quantized when the answer began; use long-context prompts "
            "(e.g. builtin-long) or a smaller full-precision window"
        ),
    )


def run_verdict(
    outcomes: Sequence[ThresholdOutcome], other_violations: Sequence[Violation | str] = ()
) -> str:
    """``fail`` if any threshold failed or another check failed (``other_violations``, e.g. the
    coverage check), else ``inconclusive`` if any threshold is undecided, else ``pass``."""
    if other_violations or any(o.outcome == "fail" for o in outcomes):
        return "fail"
    if any(o.outcome == "inconclusive" for o in outcomes):
        return "inconclusive"
    return "pass"
