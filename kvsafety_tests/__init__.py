"""pytest-kvsafety: a release gate on the safety of quantized KV caches.

Importing this package is cheap: nothing heavy (torch, triton, transformers, vllm) is imported
until a kernel, a model or an audit is used.
"""

from typing import TYPE_CHECKING

from .lazy import LazyExports

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from .config import GateConfig, resolve_config
    from .engine import DEFAULT_QUANTIZERS, AuditSettings, run_audit
    from .errors import KvSafetyError
    from .gate.compare import CompareCheck, compare_reports, parse_compare_check
    from .gate.thresholds import Thresholds
    from .judge import load_judge
    from .metrics import ArmLabels, RefusalMetrics, compute_refusal_metrics
    from .models import DEFAULT_MODEL, ModelError, load_model, resolve_model
    from .pcr import Diagnosis, Recovery, baseline_specs, diagnose, measure_recovery
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
#: ``from kvsafety_tests import run_audit`` import ``kvsafety_tests.engine`` then, not before. The
#: pytest plugin (``kvsafety_tests.plugin``) imports this package in every pytest run.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "config": ("GateConfig", "resolve_config"),
    "engine": ("DEFAULT_QUANTIZERS", "AuditSettings", "run_audit"),
    "errors": ("KvSafetyError",),
    "gate.compare": ("CompareCheck", "compare_reports", "parse_compare_check"),
    "gate.thresholds": ("Thresholds",),
    "judge": ("load_judge",),
    "metrics": ("ArmLabels", "RefusalMetrics", "compute_refusal_metrics"),
    "models": ("DEFAULT_MODEL", "ModelError", "load_model", "resolve_model"),
    "pcr": ("Diagnosis", "Recovery", "baseline_specs", "diagnose", "measure_recovery"),
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

__version__ = "0.1.0"

_LAZY = LazyExports(__name__, _EXPORTS)
__getattr__, __dir__ = _LAZY.getattr, _LAZY.dir
__all__ = [*_LAZY.all, "__version__"]
