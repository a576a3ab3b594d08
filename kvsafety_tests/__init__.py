"""pytest-kvsafety: a release gate on the safety of quantized KV caches.

Importing this package is cheap: nothing heavy (torch, triton, transformers, vllm) is imported
until a kernel, a model or an audit is used.
"""

from .audit import DEFAULT_QUANTIZERS, AuditSettings, run_audit
from .compare import CompareCheck, compare_reports, parse_compare_check
from .config import GateConfig, resolve_config
from .judge import load_judge
from .metrics import ArmLabels, RefusalMetrics, compute_refusal_metrics
from .mitigation import Recovery, baseline_specs, measure_recovery
from .models import DEFAULT_MODEL, ModelError, load_model, resolve_model
from .pcr import Diagnosis, diagnose
from .prompts import Prompt, PromptError, PromptSet, load_prompts
from .report import Report, RunEntry, load_report, to_markdown, write_report
from .spec import (
    Fp8Scheme,
    Granularity,
    IntScheme,
    KVScheme,
    NoQuant,
    QuantSpec,
    SpecError,
    nominal_bits,
    parse_spec,
)
from .thresholds import Thresholds
from .views import terminal_table, write_plots

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_QUANTIZERS",
    "ArmLabels",
    "AuditSettings",
    "CompareCheck",
    "Diagnosis",
    "Fp8Scheme",
    "GateConfig",
    "Granularity",
    "IntScheme",
    "KVScheme",
    "ModelError",
    "NoQuant",
    "Prompt",
    "PromptError",
    "PromptSet",
    "QuantSpec",
    "Recovery",
    "RefusalMetrics",
    "Report",
    "RunEntry",
    "SpecError",
    "Thresholds",
    "__version__",
    "baseline_specs",
    "compare_reports",
    "compute_refusal_metrics",
    "diagnose",
    "load_judge",
    "load_model",
    "load_prompts",
    "load_report",
    "measure_recovery",
    "nominal_bits",
    "parse_compare_check",
    "parse_spec",
    "resolve_config",
    "resolve_model",
    "run_audit",
    "terminal_table",
    "to_markdown",
    "write_plots",
    "write_report",
]
