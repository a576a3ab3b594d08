"""The audit engine: (model, quantizers, prompt set) -> runs -> one report, as docs/metrics.md defines it.

The parts, in the order data flows through them::

    calibration  the refusal-token probe: the first tokens the first-token refusal score counts
    audit        ModelAudit: one loaded model, its fp arm once, then each quantizer's run (RunEntry)
    evidence     a run's numbers as the gate's evidence (k / n, discordant pairs, bootstrap bounds)
    run          run_audit: one model's whole audit in one process, the report written after each run
    store        SharedStore: values computed once across processes; ProgressFile: workers' progress
    devices      pick_device, cuda_count, visible_gpus, worker_gpus: each process's device or GPUs
    session      GateSession: each (model, quantizer) once across processes, then the report

The pytest plugin (``kvsafety_tests.plugin``) and the CLI (``python -m kvsafety_tests``) audit
through ``GateSession``; ``run_audit`` is the same engine for one model, from Python. Importing
this package imports no torch, transformers or vllm: a model loads when ``ModelAudit`` is built.
"""

from .audit import (
    DEFAULT_QUANTIZERS,
    DEFAULT_THRESHOLDS,
    MIN_QUANTIZED_FRACTION,
    Arm,
    AuditSettings,
    Log,
    Memo,
    ModelAudit,
)
from .calibration import (
    CALIBRATION_NEW_TOKENS,
    FALLBACK_REFUSAL_OPENINGS,
    calibration_refusal_tokens,
    fallback_refusal_tokens,
)
from .devices import cuda_count, pick_device, visible_gpus, worker_gpus
from .run import run_audit
from .session import Combo, GateSession
from .store import ProgressFile, SharedStore

__all__ = [
    "CALIBRATION_NEW_TOKENS",
    "DEFAULT_QUANTIZERS",
    "DEFAULT_THRESHOLDS",
    "FALLBACK_REFUSAL_OPENINGS",
    "MIN_QUANTIZED_FRACTION",
    "Arm",
    "AuditSettings",
    "Combo",
    "GateSession",
    "Log",
    "Memo",
    "ModelAudit",
    "ProgressFile",
    "SharedStore",
    "calibration_refusal_tokens",
    "cuda_count",
    "fallback_refusal_tokens",
    "pick_device",
    "run_audit",
    "visible_gpus",
    "worker_gpus",
]
