"""pytest-kvsafety: a release gate on the safety of quantized KV caches.

Importing this package is cheap: nothing heavy (torch, triton, transformers, vllm) is imported
until a kernel, a model or an audit is used.
"""

from .audit import DEFAULT_QUANTIZERS, AuditSettings, run_audit
from .judge import load_judge
from .metrics import ArmLabels, RefusalMetrics, compute_refusal_metrics
from .models import DEFAULT_MODEL, ModelError, load_model, resolve_model
from .prompts import Prompt, PromptError, PromptSet, load_prompts
from .report import Report, load_report, to_markdown, write_report
from .spec import (
    Fp8Scheme,
    Granularity,
    IntScheme,
    KVScheme,
    NoQuant,
    QuantSpec,
    SpecError,
    parse_spec,
)
from .thresholds import Thresholds

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_QUANTIZERS",
    "ArmLabels",
    "AuditSettings",
    "Fp8Scheme",
    "Granularity",
    "IntScheme",
    "KVScheme",
    "ModelError",
    "NoQuant",
    "Prompt",
    "PromptError",
    "PromptSet",
    "QuantSpec",
    "RefusalMetrics",
    "Report",
    "SpecError",
    "Thresholds",
    "__version__",
    "compute_refusal_metrics",
    "load_judge",
    "load_model",
    "load_prompts",
    "load_report",
    "parse_spec",
    "resolve_model",
    "run_audit",
    "to_markdown",
    "write_report",
]
