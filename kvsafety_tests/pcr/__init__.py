"""PCR (Per-Channel Reduction): which layers of a quantized KV cache break refusals, why, the cheapest
per-layer fix, and whether the fix recovers them (docs/metrics.md, "PCR" and "Recovery").

The parts, in the order data flows through them::

    diagnosis  diagnose(backend, spec, harmful calibration prompts) -> Diagnosis: the per-layer
               recovery curves, the failure mode, a plan (a QuantSpec with per-layer overrides
               within a memory budget) and its predicted recovery
    plan       the plan applied and measured: baseline_specs (the plan against uniform, random,
               first-last and attention allocations at equal memory), measure_recovery
    deploy     the plan as vLLM engine settings (kv_cache_dtype, kv_cache_dtype_skip_layers), or
               the one-line reason vLLM cannot run it: vllm_settings, vllm_deployment
    subspace   the safety subspace and the quantization-noise ratio (capture, noise_ratio)

A ``Diagnosis`` is a plain value; the audit engine turns it into the report's ``pcr`` entry
(``kvsafety_tests.report.pcr_from_diagnosis``), so this package knows nothing of the report's schema.
This package re-exports diagnosis and plan; the subspace module imports torch at import time and is
imported from its module (``kvsafety_tests.pcr.subspace``), so diagnosing imports torch only for
the memory probe (and the backend it runs on).
"""

from .deploy import VllmDeployment, vllm_deployment, vllm_settings
from .diagnosis import (
    DEFAULT_BUDGET,
    DILUTION_BELOW,
    FINE_GROUP,
    GRANULARITY_SHARE,
    MIN_DAMAGE,
    OUTLIER_FRACTION,
    OUTLIER_MAX,
    OUTLIER_MIN,
    TOP_FRACTION,
    TOP_LAYERS,
    Diagnosis,
    Intervention,
    choose_mode,
    diagnose,
    finer,
    intervention,
    override_extra_bytes,
    spec_bytes_per_token,
    top_layers,
    with_outliers,
)
from .plan import BOOTSTRAP_RESAMPLES, Recovery, attention_concentration, baseline_specs, measure_recovery

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "DEFAULT_BUDGET",
    "DILUTION_BELOW",
    "FINE_GROUP",
    "GRANULARITY_SHARE",
    "MIN_DAMAGE",
    "OUTLIER_FRACTION",
    "OUTLIER_MAX",
    "OUTLIER_MIN",
    "TOP_FRACTION",
    "TOP_LAYERS",
    "Diagnosis",
    "Intervention",
    "Recovery",
    "VllmDeployment",
    "attention_concentration",
    "baseline_specs",
    "choose_mode",
    "diagnose",
    "finer",
    "intervention",
    "measure_recovery",
    "override_extra_bytes",
    "spec_bytes_per_token",
    "top_layers",
    "vllm_deployment",
    "vllm_settings",
    "with_outliers",
]
