"""The audit report: a typed, versioned JSON document (docs/report.md) and its human views.

The parts, in the order data flows through them::

    schema       the document as frozen dataclasses (Report, RunEntry, ...) and the computed gate
    codec        the generic dataclass <-> JSON codec the schema's field rules drive; ReportError
    build        a report built in code: new_report -> add_run(run_from_metrics(...)) -> finish_report;
                 pcr_from_diagnosis: a run's PCR entry from PCR's Diagnosis
    files        the report as JSON dicts and files: write_report (atomic), load_report
    atomic       atomic file writes (the report, the plots, the plugin's shared store)
    markdown     to_markdown: the gate and every run's rates, as Markdown
    views        the terminal table, the GitHub step summary, PNG plots (matplotlib imported lazily)
    flip_review  flips.html: every prompt whose refusal flipped, fp and quantized side by side

This package re-exports the document's API (schema, build, files, markdown); the views and the
flip review page are imported from their modules (``kvsafety_tests.report.views``), so loading a
report imports neither.
"""

from .build import (
    add_run,
    detect_environment,
    error_run,
    finish_report,
    new_report,
    pcr_from_diagnosis,
    prompt_record,
    run_from_metrics,
    utc_now,
)
from .codec import ReportError
from .files import (
    load_report,
    report_from_dict,
    report_path_problem,
    report_to_dict,
    run_from_dict,
    run_to_dict,
    write_report,
)
from .markdown import threshold_table, to_markdown
from .schema import (
    BACKENDS,
    PCR_MODES,
    PROMPT_KINDS,
    SCHEMA,
    SCHEMAS,
    STATUSES,
    VERDICTS,
    AuditConfig,
    Environment,
    Gate,
    PcrEntry,
    PcrPerLayer,
    PromptRecord,
    Report,
    RunEntry,
    SourceRates,
    compute_gate,
)

__all__ = [
    "BACKENDS",
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
    "SourceRates",
    "add_run",
    "compute_gate",
    "detect_environment",
    "error_run",
    "finish_report",
    "load_report",
    "new_report",
    "pcr_from_diagnosis",
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
