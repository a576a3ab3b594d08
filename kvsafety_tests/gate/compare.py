"""Release gating against a saved report: did this audit get worse than the baseline?

A baseline is a ``report.json`` written by an earlier ``pytest --kvsafety`` run. Runs are matched
by (model, quantizer, prompt set); each check compares one field of each matched pair and fails
when the field moved in its bad direction by more than the check allows.

Check grammar (one check per command-line value)::

    CHECK   FIELD:LIMIT
    LIMIT   N        absolute, in the field's own unit       perplexity_ratio:0.02
            N%       relative to the baseline's value         perplexity_ratio:5%
            Npp      percentage points, rate fields only      refusal_drop:2pp
    N       a non-negative decimal number (2, 0.5, .5, 1e-3)

FIELD and the direction in which it gets worse:

    higher is worse  refusal_drop, conditional_flip_rate, compliance_flip_rate,
                     over_refusal_flip_rate, reverse_flip_rate, incoherent_rate_quantized,
                     perplexity_ratio, kv_bytes_ratio, noise_ratio
    lower is worse   refusal_rate_quantized

Rate fields hold fractions (refusal_drop: a difference of two) so ``2pp`` allows +0.02; an
absolute limit on a rate is a fraction and must lie in [0, 1], a ``pp`` limit in [0, 100]: a
larger one is a typo that would let everything pass, and a safety gate must not pass by doing
nothing. A change exactly at the limit passes (up to float round-off); anything beyond it fails.

Fail closed: a value the baseline measured and this run did not is a failure, and so are a run
whose verdict is ``error`` and a baseline run missing from this report (a release gate must not
pass by auditing less). What cannot be compared (a new run without a baseline, a value the
baseline lacks) is a warning, as is every difference in where or how the two audits ran (weights,
versions, device, judge). Baselines of schema version 1 and 2 are both read.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KvSafetyError
from ..report import Report, ReportError, RunEntry, load_report
from .violation import Violation

__all__ = [
    "CHECK_KINDS",
    "RATE_FIELDS",
    "WORSE_WHEN",
    "CompareCheck",
    "CompareError",
    "CompareResult",
    "compare_reports",
    "load_baseline",
    "parse_compare_check",
]

#: Field -> the direction in which it gets worse.
WORSE_WHEN: dict[str, str] = {
    "refusal_drop": "higher",
    "conditional_flip_rate": "higher",
    "compliance_flip_rate": "higher",
    "over_refusal_flip_rate": "higher",
    "reverse_flip_rate": "higher",
    "incoherent_rate_quantized": "higher",
    "perplexity_ratio": "higher",
    "kv_bytes_ratio": "higher",
    "noise_ratio": "higher",
    "refusal_rate_quantized": "lower",
}
#: Fields holding fractions (refusal_drop: a difference of two): the ones ``pp`` applies to.
RATE_FIELDS: tuple[str, ...] = (
    "refusal_drop",
    "conditional_flip_rate",
    "compliance_flip_rate",
    "over_refusal_flip_rate",
    "reverse_flip_rate",
    "incoherent_rate_quantized",
    "refusal_rate_quantized",
)
#: ``CompareCheck.kind``: absolute (field's unit), relative (percent of the baseline), pp (points).
CHECK_KINDS: tuple[str, ...] = ("absolute", "relative", "pp")
_UNIT_OF_KIND = {"absolute": "", "relative": "%", "pp": "pp"}

# Differences of k/n fractions carry round-off (0.17 - 0.15 = 0.020000000000000018); 1e-9 is far
# below one prompt in any prompt set, so a change exactly at the limit passes.
_TOLERANCE = 1e-9
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_FORMS = "N (absolute), N% (relative to the baseline) or Npp (percentage points, rate fields only)"
_BASELINE_HINT = "a baseline is a report.json written by pytest --kvsafety"
_ENVIRONMENT_FIELDS: tuple[str, ...] = ("torch", "transformers", "vllm", "triton", "device")


class CompareError(KvSafetyError):
    """A compare check or a baseline that cannot be used. One line, naming the bad value."""


def _number(value: float) -> str:
    """The shortest text that reads back as ``value`` (2.0 -> "2", 0.02 -> "0.02")."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _beyond(value: float, bound: float, decimals: int) -> str:
    """``value`` signed, with the fewest decimals (at least ``decimals``) showing |value| > bound."""
    text = f"{value:+.{decimals}f}"
    for digits in range(decimals, 10):
        text = f"{value:+.{digits}f}"
        if abs(float(text)) > bound:
            break
    return text


def _problem(field_name: str, kind: str, limit: float) -> str | None:
    """Why (field, kind, limit) is not a valid check; None when it is."""
    if field_name not in WORSE_WHEN:
        return f"unknown field {field_name!r}; valid: {', '.join(WORSE_WHEN)}"
    if kind not in CHECK_KINDS:
        return f"unknown kind {kind!r}; valid: {', '.join(CHECK_KINDS)}"
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not math.isfinite(limit):
        return f"limit {limit!r} is not a finite number; expected {_FORMS}"
    if limit < 0:
        return (
            f"limit {_number(limit)}{_UNIT_OF_KIND[kind]} is negative; a limit is how much worse "
            "than the baseline is allowed, 0 or more"
        )
    if kind == "pp" and field_name not in RATE_FIELDS:
        return (
            f"pp (percentage points) applies only to the rate fields ({', '.join(RATE_FIELDS)}); "
            f"for {field_name} use N% (relative) or N (absolute)"
        )
    if kind == "pp" and limit > 100:
        return f"limit {_number(limit)}pp is more than 100 points, no limit on a rate; expected 0 to 100"
    if kind == "absolute" and field_name in RATE_FIELDS and limit > 1:
        return (
            f"an absolute limit on the rate {field_name} is a fraction in [0, 1], got {_number(limit)}; "
            f"for percentage points write {_number(limit)}pp"
        )
    return None


@dataclass(frozen=True, kw_only=True)
class CompareCheck:
    """One regression check: ``field`` may get worse than the baseline by at most ``limit``.

    ``limit`` is in the unit ``kind`` names: for "absolute" the field's own unit (0.02), for
    "relative" percent of the baseline's value (5.0 = 5%), for "pp" percentage points (2.0 =
    +0.02 on a fraction). ``str(check)`` is the canonical text ``parse_compare_check`` reads.
    """

    field: str
    kind: str
    limit: float

    def __post_init__(self) -> None:
        problem = _problem(self.field, self.kind, self.limit)
        if problem is not None:
            raise CompareError(
                f"CompareCheck(field={self.field!r}, kind={self.kind!r}, limit={self.limit!r}): {problem}"
            )
        object.__setattr__(self, "limit", float(self.limit) + 0.0)  # -0.0 -> 0.0, ints -> float

    def __str__(self) -> str:
        return f"{self.field}:{_number(self.limit)}{_UNIT_OF_KIND[self.kind]}"

    @property
    def worse_when(self) -> str:
        """ "higher" or "lower": the direction in which ``field`` gets worse."""
        return WORSE_WHEN[self.field]

    def allowed(self, baseline: float) -> float:
        """How far, in the field's unit, the value may move in its bad direction from ``baseline``."""
        if self.kind == "pp":
            return self.limit / 100
        if self.kind == "relative":
            return self.limit / 100 * abs(baseline)
        return self.limit

    def fails(self, current: float | None, baseline: float | None) -> str | None:
        """A one-line message when ``current`` is worse than ``baseline`` by more than the limit.

        None when it is not, and when there is no baseline value to compare with (the caller
        warns). A baseline value this run did not measure fails: the gate cannot vouch for it.
        """
        if baseline is None or not math.isfinite(baseline):
            return None
        if current is None:
            return f"{self.field}: not measured in this run (baseline {baseline:.3f})"
        if not math.isfinite(current):
            return f"{self.field}: {current!r} in this run is not a finite number (baseline {baseline:.3f})"
        sign = 1.0 if self.worse_when == "higher" else -1.0
        delta = current - baseline
        if sign * delta <= self.allowed(baseline) + _TOLERANCE:
            return None
        values = f"{self.field}: {current:.3f} vs baseline {baseline:.3f}"
        compare = ">" if sign > 0 else "<"
        bound = f"{'' if sign > 0 else '-'}{_number(self.limit)}{_UNIT_OF_KIND[self.kind]}"
        if self.kind == "pp":
            return f"{values} ({_beyond(100 * delta, self.limit, 1)}pp {compare} {bound})"
        if self.kind == "relative" and baseline != 0:
            change = 100 * delta / abs(baseline)
            return f"{values} ({_beyond(change, self.limit, 1)}% {compare} {bound})"
        if self.kind == "relative":
            return f"{values} ({delta:+.3f} from a baseline of 0: {bound} of 0 allows no change)"
        return f"{values} ({_beyond(delta, self.limit, 3)} {compare} {bound})"


def parse_compare_check(text: str) -> CompareCheck:
    """The check ``text`` names (``refusal_drop:2pp``, ``perplexity_ratio:5%``, ``noise_ratio:0.1``).

    CompareError, one line naming the bad part and the valid choices, for anything else.
    """
    head = f"compare check {text!r}"
    name, colon, limit_text = text.partition(":")
    name, limit_text = name.strip(), limit_text.strip()
    if not colon or not name or not limit_text:
        raise CompareError(
            f"{head}: expected FIELD:LIMIT, e.g. refusal_drop:2pp, perplexity_ratio:5%, "
            f"perplexity_ratio:0.02; valid fields: {', '.join(WORSE_WHEN)}"
        )
    if name not in WORSE_WHEN:
        raise CompareError(f"{head}: unknown field {name!r}; valid: {', '.join(WORSE_WHEN)}")
    lowered = limit_text.lower()
    if lowered.endswith("pp"):
        kind, number = "pp", limit_text[:-2].strip()
    elif lowered.endswith("%"):
        kind, number = "relative", limit_text[:-1].strip()
    else:
        kind, number = "absolute", limit_text
    if not _NUMBER.fullmatch(number):
        raise CompareError(f"{head}: limit {limit_text!r} is not a number; expected {_FORMS}")
    problem = _problem(name, kind, float(number))
    if problem is not None:
        raise CompareError(f"{head}: {problem}")
    return CompareCheck(field=name, kind=kind, limit=float(number))


@dataclass(frozen=True)
class CompareResult:
    """The comparison's outcome: failures fail the gate, warnings are shown and do not."""

    #: One per failed check (kind ``compare``), errored run (``error``) and baseline run this
    #: report lacks (``missing``); ``str()`` of each is its line.
    failures: list[Violation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


RunKey = tuple[str, str, str]


def _key(run: RunEntry) -> RunKey:
    return (run.model, run.quantizer, run.prompt_set)


def _label(key: RunKey) -> str:
    return " / ".join(key)


def _shown(value: object) -> str:
    return "none" if value is None else str(value)


def _setting_warnings(current: Report, baseline: Report) -> list[str]:
    """One line per difference in where (environment) or how (judge, tokens) the audits ran."""
    lines: list[str] = []
    for name in _ENVIRONMENT_FIELDS:
        now, then = getattr(current.environment, name), getattr(baseline.environment, name)
        if now != then:
            lines.append(
                f"environment.{name} differs: {_shown(now)} in this run, {_shown(then)} in the baseline"
            )
    for name in ("judge", "max_new_tokens"):
        now, then = getattr(current.config, name), getattr(baseline.config, name)
        if now != then:
            lines.append(
                f"config.{name} differs: {_shown(now)} in this run, {_shown(then)} in the baseline; "
                "refusal labels may not be comparable"
            )
    return lines


def compare_reports(current: Report, baseline: Report, checks: Sequence[CompareCheck]) -> CompareResult:
    """Every check on every run of ``current`` against the baseline run with the same key.

    Runs are matched by (model, quantizer, prompt set). Failures (typed ``Violation``): a check that
    fails, a current run whose verdict is ``error``, a baseline run missing from ``current``. Warnings: runs on one side only, values the baseline lacks,
    and differences in weights (model_sha256), backend, environment and judge.
    """
    failures: list[Violation] = []
    warnings = _setting_warnings(current, baseline)
    by_key: dict[RunKey, RunEntry] = {}
    for run in baseline.runs:
        if _key(run) in by_key:
            warnings.append(
                f"the baseline has more than one run for {_label(_key(run))}; compared with the first"
            )
        else:
            by_key[_key(run)] = run
    seen_weights: set[tuple[str, str | None, str | None]] = set()
    current_keys: set[RunKey] = set()
    for run in current.runs:
        key = _key(run)
        label = _label(key)
        current_keys.add(key)
        if run.verdict == "error":
            failures.append(
                Violation(
                    kind="error",
                    model=run.model,
                    quantizer=run.quantizer,
                    prompt_set=run.prompt_set,
                    message=f"{label}: the run errored ({run.error or 'no reason recorded'}); nothing was compared",
                )
            )
            continue
        old = by_key.get(key)
        if old is None:
            warnings.append(f"no baseline for {label}: not compared")
            continue
        if old.verdict == "error":
            warnings.append(
                f"{label}: the baseline run errored ({old.error or 'no reason recorded'}): not compared"
            )
            continue
        weights = (run.model, run.model_sha256, old.model_sha256)
        if run.model_sha256 != old.model_sha256 and weights not in seen_weights:
            seen_weights.add(weights)
            known = run.model_sha256 is not None and old.model_sha256 is not None
            warnings.append(
                f"{run.model}: model_sha256 differs: {_shown(run.model_sha256)} in this run, "
                f"{_shown(old.model_sha256)} in the baseline; "
                + ("the weights changed" if known else "cannot tell whether the weights changed")
            )
        if run.backend != old.backend:
            warnings.append(
                f"{label}: backend differs: {run.backend} in this run, {old.backend} in the baseline"
            )
        for check in checks:
            now: float | None = getattr(run, check.field)
            then: float | None = getattr(old, check.field)
            message = check.fails(now, then)
            if message is not None:
                failures.append(
                    Violation(
                        kind="compare",
                        model=run.model,
                        quantizer=run.quantizer,
                        prompt_set=run.prompt_set,
                        metric=check.field,
                        check=str(check),
                        message=f"{label}: {message}",
                    )
                )
            elif then is None:
                where = "this run or the baseline" if now is None else "the baseline"
                warnings.append(f"{label}: {check.field} not measured in {where}: {check} not checked")
    for key, gone in by_key.items():
        if key not in current_keys:
            failures.append(
                Violation(
                    kind="missing",
                    model=gone.model,
                    quantizer=gone.quantizer,
                    prompt_set=gone.prompt_set,
                    message=(
                        f"{_label(key)} is in the baseline but not in this run: the release audits less "
                        "than the baseline did (was it deselected with -k/-m, or dropped from the quantizers?)"
                    ),
                )
            )
    return CompareResult(failures=failures, warnings=warnings)


def load_baseline(path: str | os.PathLike[str]) -> Report:
    """The baseline report at ``path``; CompareError (one line) if it is not a usable baseline.

    Refused: a missing or unreadable file, invalid JSON, another schema, an incomplete report
    (the audit that wrote it did not finish), and a report with no runs or only errored runs. A
    ``partial`` report (gate items deselected) is a baseline for the runs it holds.
    """
    source = str(path)
    head = f"--kvsafety-compare {source}"

    def refuse(reason: str) -> CompareError:
        return CompareError(f"{head}: {reason}; {_BASELINE_HINT}")

    target = Path(path)
    if not target.exists():
        raise refuse("no such file")
    if target.is_dir():
        raise refuse("is a folder, not a file")
    try:
        report = load_report(target)
    except ReportError as e:
        reason = str(e)
        reason = reason[len(source) + 2 :] if reason.startswith(f"{source}: ") else reason
        raise refuse(reason) from None
    if report.status == "incomplete":  # a partial report (runs deselected) is a baseline for what it ran
        why = f" ({report.notes[-1]})" if report.notes else ""
        raise refuse(f"the report is {report.status}{why}: the audit that wrote it did not finish")
    if not report.runs:
        raise refuse("the report has no runs")
    if all(run.verdict == "error" for run in report.runs):
        raise refuse(f"all {len(report.runs)} run(s) in the report errored")
    return report
