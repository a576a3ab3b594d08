"""PCR's plan as something to deploy: the vLLM engine settings a plan's QuantSpec maps to.

A plan is a QuantSpec with per-layer overrides (``fp8_e5m2;L3=none;L7-8=none``). vLLM runs it when
the base is FP8 at scale 1.0 and every override leaves a whole layer at the model dtype::

    fp8_e5m2;L3=none;L7-8=none  ->  {"kv_cache_dtype": "fp8_e5m2",
                                     "kv_cache_dtype_skip_layers": ["3", "7", "8"]}

i.e. ``vllm.LLM(model, kv_cache_dtype="fp8_e5m2", kv_cache_dtype_skip_layers=["3", "7", "8"])`` or
``vllm serve MODEL --kv-cache-dtype fp8_e5m2 --kv-cache-dtype-skip-layers 3 7 8`` (vLLM's
``CacheConfig.kv_cache_dtype_skip_layers``: layer indices as strings; each named attention layer
keeps ``kv_cache_dtype="auto"``). Anything else gets a one-line reason instead of settings: an
integer or KIVI base, a calibrated FP8 scale (vLLM 0.32 takes scales only from a quantized
checkpoint), an FP8 rounding option (``-rtz``: the engine rounds as its platform does), a plan that
fixes a layer other than by leaving it whole at 16 bits (16-bit outlier channels, a finer scale),
a residual window or ``prefill=fp``. The mapping is the vllm backend's own (``vllm_cache_args``),
so what deploys here is exactly what ``--kvsafety-backend=vllm`` runs. Pure: imports no vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..backends.vllm import VLLMUnsupported, vllm_cache_args
from ..spec import QuantSpec, parse_spec

__all__ = ["VllmDeployment", "vllm_deployment", "vllm_settings"]


def vllm_settings(spec: QuantSpec | str, num_layers: int | None = None) -> dict[str, Any]:
    """The vLLM engine arguments (``kv_cache_dtype``, ``kv_cache_dtype_skip_layers``) that run
    ``spec``; ``num_layers`` checks the skipped layers' range. ``ValueError`` (one line, with the
    reason) when vLLM cannot express it."""
    args = vllm_cache_args(spec, num_layers)
    return {
        "kv_cache_dtype": args.kv_cache_dtype,
        "kv_cache_dtype_skip_layers": [str(layer) for layer in args.skip_layers],
    }


@dataclass(frozen=True)
class VllmDeployment:
    """A plan's vLLM settings, or why there are none (exactly one of the two is set)."""

    spec: str
    settings: dict[str, Any] | None
    reason: str | None

    @property
    def expressible(self) -> bool:
        return self.settings is not None

    def line(self) -> str:
        """One line for Markdown and the terminal."""
        if self.settings is None:
            return f"vLLM: not deployable ({self.reason})"
        skip = self.settings["kv_cache_dtype_skip_layers"]
        return f"vLLM: kv_cache_dtype={self.settings['kv_cache_dtype']}" + (
            f", kv_cache_dtype_skip_layers=[{', '.join(skip)}]" if skip else ""
        )


def vllm_deployment(spec: QuantSpec | str, num_layers: int | None = None) -> VllmDeployment:
    """``vllm_settings`` as a value: the settings, or the reason vLLM cannot run ``spec``. An
    invalid spec is not a plan: it raises ``SpecError``."""
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    try:
        return VllmDeployment(str(parsed), vllm_settings(parsed, num_layers), None)
    except VLLMUnsupported as e:
        return VllmDeployment(e.spec, None, e.reason)
