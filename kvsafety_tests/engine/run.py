"""``run_audit``: one model's whole audit, in one process, to one report.

The report is written after every run, so a crash leaves what was done. The pytest plugin and the
CLI audit through ``GateSession`` (``engine.session``) instead, which computes each run once across
processes; both drive the same ``ModelAudit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..models import log_progress
from ..prompts import PromptSet, load_prompts
from ..report import (
    AuditConfig,
    Report,
    RunEntry,
    add_run,
    detect_environment,
    finish_report,
    new_report,
    write_report,
)
from ..report.schema import JudgeMeasurement
from .audit import AuditSettings, Log, ModelAudit

__all__ = ["judge_config", "run_audit"]


def judge_config(name_or_path: str, *, require_measured: bool = False) -> dict[str, Any]:
    """The report's judge fields (``AuditConfig``: judge, judge_version, judge_measured,
    judge_accuracy) for the judge ``name_or_path``. Loads it, so a bad judge fails here, before
    any model loads. A judge with no measurement on the labelled set's test split (a local
    classifier folder) is reported as unmeasured."""
    from ..judge import load_judge, measured_accuracy

    judge = load_judge(name_or_path)
    measured = measured_accuracy(judge.name)
    if measured is None and require_measured:
        from ..judge import JUDGE_NAMES, JudgeError

        raise JudgeError(
            f"judge = {name_or_path!r} ({judge.name}) has no measured accuracy on the labelled set's test "
            f"split, and require_measured_judge = true; measured judges: {', '.join(JUDGE_NAMES)}"
        )
    accuracy = None
    if measured is not None:
        accuracy = JudgeMeasurement(
            labelled_set=measured.labelled_set,
            n=measured.n,
            accuracy=measured.accuracy,
            accuracy_interval=measured.accuracy_interval,
            refusal_accuracy=measured.refusal_accuracy,
            refusal_accuracy_interval=measured.refusal_accuracy_interval,
            recall=measured.recall,
            recall_interval={k: v for k, v in measured.recall_interval.items() if v is not None},
            support=dict(measured.support),
        )
    return {
        "judge": judge.name,
        "judge_version": getattr(judge, "version", None),
        "judge_measured": measured is not None,
        "judge_accuracy": accuracy,
    }


def run_audit(
    settings: AuditSettings,
    *,
    report_path: str | None = None,
    log: Log = log_progress,
    prompt_set: PromptSet | None = None,
    on_run: Callable[[RunEntry], None] | None = None,
) -> Report:
    """Run the whole audit; the report is written after every run, so a crash leaves what was done
    (status incomplete, failing the gate) and a finished audit leaves status complete.
    ``on_run``: called with each finished run once the report (and report_path) holds it (per-run callbacks;
    an exception it raises stops the audit like any other, keeping the runs already written)."""
    settings.validate()
    judge = judge_config(
        settings.judge, require_measured=settings.require_measured_judge
    )  # before any model loads
    prompts = prompt_set or load_prompts(settings.prompts, limit=settings.limit, seed=settings.prompt_seed)
    config = AuditConfig(
        models=(settings.model,),
        quantizers=tuple(str(s) for s in settings.specs()),
        prompt_sets=(prompts.name,),
        **judge,
        max_new_tokens=settings.max_new_tokens,
        thresholds=settings.thresholds.as_dict(),
        confidence=settings.confidence,
        inconclusive=settings.inconclusive,
        batch_size=settings.batch_size,
    )
    report = new_report(detect_environment(settings.device), config)

    def save(r: Report) -> None:
        if report_path is not None:
            try:
                write_report(report_path, r)
            except OSError as e:  # say which file: the caller prints one line
                raise OSError(f"cannot write the report to {report_path}: {e}") from e

    save(report)
    try:
        engine = ModelAudit(settings, prompts, log=log)
        for q in settings.quantizers:
            run = engine.audit(q)
            report = add_run(report, run)
            save(report)
            if on_run is not None:
                on_run(run)
    except BaseException as e:
        reason = f"audit stopped: {type(e).__name__}: {e}"
        report = finish_report(report, status="incomplete", reason=reason)
        save(report)
        raise
    report = finish_report(report)
    save(report)
    return report
