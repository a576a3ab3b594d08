"""The test items ``pytest --kvsafety`` collects: one per (model, quantizer, gated metric).

Each item asks the session for its run (computed once, shared by every item of that run) and
reads its threshold's typed outcome (``gate.ThresholdOutcome``): fail fails the item; an
inconclusive outcome fails it too, unless ``inconclusive = "warn"``, where it passes with a
warning (never silently). The coverage item (``quantized_fraction``) applies the audit's own rule
(``gate.coverage_violation``) to the run's numbers. The items and the report's verdicts cannot
disagree. A run that errored fails every one of its items with the error.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from ..gate import COVERAGE_METRIC, METRIC_OF, coverage_violation
from ..spec import parse_spec

if TYPE_CHECKING:
    from ..engine import GateSession
    from ..report import RunEntry

__all__ = ["COVERAGE_METRIC", "GateFailure", "GateItem", "InconclusiveWarning", "gate_items"]


class GateFailure(AssertionError):
    """A gated value crossed its threshold (or was not measured): shown without a traceback."""


class InconclusiveWarning(UserWarning):
    """A threshold the sample could not decide, let through by ``inconclusive = "warn"``."""


class GateItem(pytest.Item):
    """``kvsafety[<model>-<quantizer>-<metric>]``: asserts one threshold of one audited run."""

    def __init__(
        self,
        *,
        gate: GateSession,
        model: str,
        quantizer: str,
        metric: str,
        threshold: str | None,
        limit: float | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.gate = gate
        self.model = model
        self.quantizer = quantizer
        self.metric = metric
        self.threshold = threshold
        self.limit = limit
        self.add_marker(pytest.mark.kvsafety)

    @property
    def combo(self) -> tuple[str, str]:
        return (self.model, self.quantizer)

    def runtest(self) -> None:
        run = self.gate.run(self.model, self.quantizer)
        outcome = next((o for o in run.thresholds if o.threshold == self.threshold), None)
        if self.metric == "pcr_recovery":  # the recovery the gate decided on (pcr_recovery_basis)
            value = outcome.value if outcome is not None else None
        else:
            value = getattr(run, self.metric, None)
        for key, item in (
            ("kvsafety_model", self.model),
            ("kvsafety_quantizer", self.quantizer),
            ("kvsafety_metric", self.metric),
            ("kvsafety_value", value),
            ("kvsafety_threshold", f"{self.threshold} {self.limit:g}" if self.threshold else None),
            ("kvsafety_verdict", run.verdict),
        ):
            self.user_properties.append((key, item))
        ci = run.intervals.get(self.metric) or (
            run.conditional_flip_ci if self.metric == "conditional_flip_rate" else None
        )
        if ci is not None:
            self.user_properties.append(("kvsafety_ci", f"[{ci[0]:.3f}, {ci[1]:.3f}]"))
        if outcome is not None:
            for key, item in (
                ("kvsafety_outcome", outcome.outcome),
                ("kvsafety_bound", outcome.bound),
                ("kvsafety_bounds", f"[{outcome.lower}, {outcome.upper}]"),
                ("kvsafety_events", outcome.events),
                ("kvsafety_n", outcome.n),
                ("kvsafety_needed_n", outcome.needed_n),
                ("kvsafety_method", outcome.method),
            ):
                self.user_properties.append((key, item))
        if run.verdict == "error":
            raise GateFailure(f"{self._where()}: the audit errored, nothing was measured: {run.error}")
        if self.threshold is None:  # the coverage check, decided from the run's numbers as the audit did
            violation = coverage_violation(
                model=run.model,
                quantizer=run.quantizer,
                quantized=parse_spec(run.quantizer).is_quantized,
                quantized_fraction=run.quantized_fraction,
            )
            if violation is not None:
                raise GateFailure(f"{self._where()}: {violation}")
            return
        if outcome is None:  # fail closed: a gated threshold the run did not decide
            raise GateFailure(f"{self._where()}: {self.threshold} was not decided by the audit")
        if outcome.outcome == "pass":
            return
        line = f"{self._where()}: {outcome.reason}{self._detail(run, ci)}"
        if outcome.outcome == "inconclusive" and self.gate.config.inconclusive == "warn":
            warnings.warn(InconclusiveWarning(f"{line} (inconclusive = warn: not failed)"), stacklevel=1)
            return
        raise GateFailure(line)

    def _where(self) -> str:
        return f"{self.model} / {self.quantizer}"

    def _detail(self, run: RunEntry, ci: tuple[float, float] | None) -> str:
        parts = []
        if ci is not None:
            parts.append(f"95% CI [{ci[0]:.3f}, {ci[1]:.3f}]")
        counts = run.counts.get(self.metric)
        if counts is not None:
            parts.append(f"{counts[0]}/{counts[1]} prompts")
        if run.refusal_rate_baseline is not None and run.refusal_rate_quantized is not None:
            parts.append(
                f"refusal rate {run.refusal_rate_baseline:.1%} fp -> {run.refusal_rate_quantized:.1%}"
            )
        return f" ({'; '.join(parts)})" if parts else ""

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, GateFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"kvsafety: {self.model} / {self.quantizer} / {self.metric}"


def gate_items(session: pytest.Session, gate: GateSession) -> Iterator[GateItem]:
    """The items for every (model, quantizer) and each threshold that model gates on."""
    for model, quantizer in gate.config.combos():
        thresholds = gate.config.thresholds_for(model).as_dict()
        checks: list[tuple[str, str | None, float | None]] = [
            (METRIC_OF[name][0], name, limit) for name, limit in thresholds.items()
        ]
        checks.append((COVERAGE_METRIC, None, None))
        for metric, threshold, limit in checks:
            name = f"kvsafety[{model}-{quantizer}-{metric}]"
            yield GateItem.from_parent(
                session,
                name=name,
                nodeid=name,  # not "::kvsafety[...]": the items hang off the session, not a file
                gate=gate,
                model=model,
                quantizer=quantizer,
                metric=metric,
                threshold=threshold,
                limit=limit,
            )
