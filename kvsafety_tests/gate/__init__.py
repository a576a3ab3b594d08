"""The gate: thresholds, their bounds and decisions, typed violations, and the compare step.

- ``thresholds``: which measured value each threshold gates (stdlib only: the settings table and
  so the pytest plugin import it in every run);
- ``bounds``: one-sided bounds on rates and paired differences, and the n that would decide;
- ``decision``: each threshold of a run becomes pass, fail or inconclusive; the coverage check;
- ``violation``: ``Violation``, what failed, typed;
- ``compare``: ``--kvsafety-compare``, a report against a baseline report.

Importing this package imports none of them: each public name loads its module on first use
(PEP 562), so ``kvsafety_tests.gate.thresholds`` stays as cheap as the settings table needs and
the report module, which ``compare`` reads, is not imported by the decision code.
"""

from typing import TYPE_CHECKING

from ..lazy import LazyExports

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports on first use
    from .bounds import (
        CS_PRIOR,
        DIRECTIONS,
        METHODS,
        OUTCOMES,
        SIDES,
        Direction,
        Method,
        Side,
        binomial_cs_bound,
        bound_for_limit,
        clopper_pearson_bound,
        needed_n,
        outcome_of_bounds,
        paired_bound_for_limit,
        paired_difference_bound,
        rate_bound,
    )
    from .compare import (
        CHECK_KINDS,
        RATE_FIELDS,
        WORSE_WHEN,
        CompareCheck,
        CompareError,
        CompareResult,
        compare_reports,
        load_baseline,
        parse_compare_check,
    )
    from .decision import (
        COVERAGE_METRIC,
        DEFAULT_CONFIDENCE,
        INCONCLUSIVE_POLICIES,
        MIN_QUANTIZED_FRACTION,
        BoundedEvidence,
        Evidence,
        PairedEvidence,
        RateEvidence,
        ThresholdOutcome,
        coverage_violation,
        decide,
        decide_all,
        run_verdict,
        threshold_violation,
    )
    from .thresholds import METRIC_OF, RATE_THRESHOLDS, RECOVERY_BASES, Thresholds
    from .violation import VIOLATION_KINDS, Violation, ViolationKind

#: Each public name by the module that defines it.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "bounds": (
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
    ),
    "compare": (
        "CHECK_KINDS",
        "RATE_FIELDS",
        "WORSE_WHEN",
        "CompareCheck",
        "CompareError",
        "CompareResult",
        "compare_reports",
        "load_baseline",
        "parse_compare_check",
    ),
    "decision": (
        "COVERAGE_METRIC",
        "DEFAULT_CONFIDENCE",
        "INCONCLUSIVE_POLICIES",
        "MIN_QUANTIZED_FRACTION",
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
    ),
    "thresholds": ("METRIC_OF", "RATE_THRESHOLDS", "RECOVERY_BASES", "Thresholds"),
    "violation": ("VIOLATION_KINDS", "Violation", "ViolationKind"),
}
_LAZY = LazyExports(__name__, _EXPORTS)
__getattr__, __dir__ = _LAZY.getattr, _LAZY.dir
__all__ = _LAZY.all
