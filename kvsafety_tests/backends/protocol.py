"""What a backend is: the ``Backend`` protocol the audit engine, PCR and the noise ratio run through,
and the ``Completion`` every backend returns.

Both backends (``hf``, ``vllm``) satisfy ``Backend`` structurally; ``make_backend`` is annotated to
return it, so the type checker holds each of them to it. Anything only one backend has (the hf
backend's ``model``, ``device`` and ``kernels``; the vllm backend's engines and ``close``) stays off
the protocol: code that needs it takes that backend's class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..spec import QuantSpec

if TYPE_CHECKING:
    import torch

__all__ = ["Backend", "Completion", "Progress"]

#: ``progress(done, total)``: prompts finished so far out of all the prompts of one ``run``.
Progress = Callable[[int, int], None]


@dataclass
class Completion:
    """One prompt's result under one quantizer."""

    prompt_index: int
    token_ids: list[int]
    text: str
    prompt_tokens: int
    first_token_scores: dict[str, float] = field(default_factory=dict)
    logprobs: list[float] = field(default_factory=list)  # teacher forcing: log p(token) per forced token
    quantized_fraction: float | None = None  # of the attended K/V at the first response position
    #: Residual stream at the last prompt token after each captured decoder layer, [n_layers, hidden]
    #: float32 (``run(capture_layers=...)``, hf backend only), else None.
    last_hidden: torch.Tensor | None = None


@runtime_checkable
class Backend(Protocol):
    """A model that runs (prompts, spec) -> completions with its KV cache quantized by ``spec``."""

    #: The backend's name in settings and reports: ``hf`` or ``vllm``.
    name: str
    #: The model's own tokenizer (what the fallback refusal openings are encoded with).
    tokenizer: Any
    #: Prompts per batch in ``run``; the engine changes it for one arm (the noise-floor rerun).
    batch_size: int
    num_layers: int
    head_dim: int
    num_kv_heads: int
    #: Positions the model was trained for (None when its config does not say).
    max_positions: int | None
    #: Stored K/V bytes per held token position in the last ``run`` (all layers, K and V).
    last_kv_bytes_per_token: float | None

    @property
    def fp16_bytes_per_token(self) -> int:
        """Bytes per token of the model's own 16-bit K/V cache, all layers."""
        ...

    def encode(self, prompt: str) -> list[int]:
        """Token ids of the chat-templated prompt, ending where the assistant's answer begins."""
        ...

    def run(
        self,
        prompts: Sequence[str],
        spec: QuantSpec | str = "none",
        *,
        max_new_tokens: int = 64,
        forced: Sequence[Sequence[int]] | None = None,
        score_tokens: dict[str, Sequence[int]] | None = None,
        progress: Progress | None = None,
        capture_layers: Sequence[int] | None = None,
    ) -> list[Completion]:
        """Greedy completions (or, with ``forced``, teacher-forced log-probabilities) per prompt, in
        order. ``score_tokens``: named token sets whose total log-probability at the first response
        position is kept per prompt. ``capture_layers``: decoder layers whose residual stream at
        the last prompt token is kept (a backend without one refuses with ValueError)."""
        ...
