"""pytest-kvsafety: a release gate on the safety of quantized KV caches.

Importing this package is cheap: nothing heavy (torch, triton, transformers, vllm) is imported
until a kernel, a model or an audit is used.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from .audit import DEFAULT_QUANTIZERS, AuditSettings, run_audit
    from .config import GateConfig, resolve_config
    from .errors import KvSafetyError
    from .gate.compare import CompareCheck, compare_reports, parse_compare_check
    from .gate.thresholds import Thresholds
    from .judge import load_judge
    from .metrics import ArmLabels, RefusalMetrics, compute_refusal_metrics
    from .mitigation import Recovery, baseline_specs, measure_recovery
    from .models import DEFAULT_MODEL, ModelError, load_model, resolve_model
    from .pcr import Diagnosis, diagnose
    from .prompts import Prompt, PromptError, PromptSet, load_prompts
    from .report import Report, RunEntry, load_report, to_markdown, write_report
    from .report.views import terminal_table, write_plots
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

#: Each public name by the submodule that defines it (PEP 562): ``kvsafety_tests.run_audit`` and
#: ``from kvsafety_tests import run_audit`` import ``kvsafety_tests.audit`` then, not before. The
#: pytest plugin (``kvsafety_tests.plugin``) imports this package in every pytest run.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "audit": ("DEFAULT_QUANTIZERS", "AuditSettings", "run_audit"),
    "config": ("GateConfig", "resolve_config"),
    "errors": ("KvSafetyError",),
    "gate.compare": ("CompareCheck", "compare_reports", "parse_compare_check"),
    "gate.thresholds": ("Thresholds",),
    "judge": ("load_judge",),
    "metrics": ("ArmLabels", "RefusalMetrics", "compute_refusal_metrics"),
    "mitigation": ("Recovery", "baseline_specs", "measure_recovery"),
    "models": ("DEFAULT_MODEL", "ModelError", "load_model", "resolve_model"),
    "pcr": ("Diagnosis", "diagnose"),
    "prompts": ("Prompt", "PromptError", "PromptSet", "load_prompts"),
    "report": ("Report", "RunEntry", "load_report", "to_markdown", "write_report"),
    "spec": (
        "Fp8Scheme",
        "Granularity",
        "IntScheme",
        "KVScheme",
        "NoQuant",
        "QuantSpec",
        "SpecError",
        "nominal_bits",
        "parse_spec",
    ),
    "report.views": ("terminal_table", "write_plots"),
}
_SUBMODULE_OF: dict[str, str] = {name: module for module, names in _EXPORTS.items() for name in names}

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
    "KvSafetyError",
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


def __getattr__(name: str) -> Any:
    module = _SUBMODULE_OF.get(name)
    if module is None:  # AttributeError lets ``from kvsafety_tests import kernels`` find the subpackage
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups find it without calling __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
