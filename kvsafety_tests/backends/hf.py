"""The hf backend: batched greedy decoding through a transformers model with a quantized KV cache.

One loop serves generation and teacher forcing (perplexity): prompts are chat-templated, sorted
by length and left-padded into batches; every step feeds one token per sequence through the
model with the QuantizedKVCache, so a forced continuation attends to exactly the K/V that greedy
decoding would have stored at that step. A sequence stops at EOS; a batch ends when all stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..cache import QuantizedKVCache, cache_kwarg
from ..kernels import Backend as Kernels
from ..spec import QuantSpec, parse_spec
from .chat import chat_prompt_ids, eos_ids
from .protocol import Completion, Progress

__all__ = ["LOGPROB_CHUNK_ELEMENTS", "HFBackend"]

#: Teacher forcing's log-probabilities go through the LM head this many logits at a time (64 MiB
#: of float32; 220 positions of a 152k vocabulary). None: the whole-vocabulary log-softmax.
LOGPROB_CHUNK_ELEMENTS: int | None = 1 << 24


class HFBackend:
    """A loaded causal LM + tokenizer that runs (prompts, spec) -> completions (a ``Backend``)."""

    name = "hf"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 16,
        system_prompt: str | None = None,
        kernels: Kernels = "torch",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.system_prompt = system_prompt
        #: The kernel implementation that quantizes the cache (resolved: torch, compiled or triton).
        self.kernels: Kernels = kernels
        self.num_layers = int(model.config.num_hidden_layers)
        self.head_dim = int(
            getattr(model.config, "head_dim", None)
            or model.config.hidden_size // model.config.num_attention_heads
        )
        self.num_kv_heads = int(
            getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads
        )
        #: Positions the model was trained for (None when its config does not say).
        self.max_positions: int | None = getattr(model.config, "max_position_embeddings", None)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self._cache_kw = cache_kwarg(model)
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        self.eos_ids = eos_ids(eos, tokenizer)
        #: True stored K/V bytes per held token position in the last ``run`` (all layers, K and V).
        self.last_kv_bytes_per_token: float | None = None

    @property
    def decoder_layers(self) -> Any:
        """The model's decoder layers (Llama/Qwen2-style ``model.model.layers``)."""
        layers = getattr(getattr(self.model, "model", None), "layers", None)
        if layers is None or len(layers) != self.num_layers:
            raise ValueError(
                f"cannot find {self.num_layers} decoder layers at model.model.layers in "
                f"{type(self.model).__name__}: residual capture and PCR need a Llama/Qwen2-style layout"
            )
        return layers

    # -- prompts -----------------------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        """Token ids of the chat-templated prompt, ending where the assistant's answer begins."""
        return chat_prompt_ids(self.tokenizer, prompt, self.system_prompt)

    @property
    def fp16_bytes_per_token(self) -> int:
        """Bytes per token of the model's own 16-bit K/V cache, all layers."""
        return 2 * 2 * self.num_layers * self.num_kv_heads * self.head_dim

    # -- the loop ----------------------------------------------------------------------------
    @torch.inference_mode()
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
        """Greedy completions (or, with ``forced``, teacher-forced log-probabilities) per prompt.

        ``score_tokens``: named token sets whose total log-probability at the first response
        position is recorded per prompt (the refusal score's numerator).
        ``capture_layers``: decoder layers whose output residual stream at the last prompt token
        is kept per prompt (``Completion.last_hidden``); nothing else of the sequence is kept.
        """
        spec = parse_spec(spec) if isinstance(spec, str) else spec
        spec.validate_for(head_dim=self.head_dim, num_layers=self.num_layers)
        if forced is not None and capture_layers:
            raise ValueError("capture_layers is for generation; teacher forcing does not capture")
        if forced is not None and len(forced) != len(prompts):
            raise ValueError(f"forced continuations: {len(forced)} given for {len(prompts)} prompts")
        encoded = [self.encode(p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
        results: dict[int, Completion] = {}
        self._kv_bytes = self._kv_positions = 0
        done = 0
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            batch_forced = [list(forced[i]) for i in batch] if forced is not None else None
            for i, completion in zip(
                batch,
                self._run_batch(
                    [encoded[i] for i in batch],
                    spec,
                    max_new_tokens,
                    batch_forced,
                    score_tokens,
                    capture_layers,
                ),
                strict=True,
            ):
                completion.prompt_index = i
                results[i] = completion
            done += len(batch)
            if progress is not None:
                progress(done, len(prompts))
        self.last_kv_bytes_per_token = self._kv_bytes / self._kv_positions if self._kv_positions else None
        return [results[i] for i in range(len(prompts))]

    def _run_batch(
        self,
        encoded: list[list[int]],
        spec: QuantSpec,
        max_new_tokens: int,
        forced: list[list[int]] | None,
        score_tokens: dict[str, Sequence[int]] | None,
        capture_layers: Sequence[int] | None = None,
    ) -> list[Completion]:
        b = len(encoded)
        width = max(len(e) for e in encoded)
        pads = [width - len(e) for e in encoded]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor(
            [[pad_id] * p + e for p, e in zip(pads, encoded, strict=True)], device=self.device
        )  # [B, T]
        mask = torch.tensor(
            [[0] * p + [1] * len(e) for p, e in zip(pads, encoded, strict=True)], device=self.device
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]
        cache = QuantizedKVCache(spec, self.num_layers, pads, backend=self.kernels)
        if forced is not None and _one_pass_exact(spec, self.num_layers):
            return self._forced_one_pass(encoded, ids, mask, positions, cache, forced, pad_id)
        captured: dict[int, torch.Tensor] = {}
        hooks = [
            self.decoder_layers[layer].register_forward_hook(_last_token_hook(captured, layer))
            for layer in (capture_layers or ())
        ]
        steps = max(len(f) for f in forced) if forced is not None else max_new_tokens
        out_tokens: list[list[int]] = [[] for _ in range(b)]
        logprobs: list[list[float]] = [[] for _ in range(b)]
        scores: list[dict[str, float]] = [{} for _ in range(b)]
        finished = torch.zeros(b, dtype=torch.bool, device=self.device)
        eos = torch.tensor(self.eos_ids, device=self.device)
        step_ids, step_mask, step_pos = ids, mask, positions
        fraction: float | None = None
        for step in range(steps):
            try:
                out = self.model(
                    input_ids=step_ids,
                    attention_mask=step_mask,
                    position_ids=step_pos,
                    use_cache=True,
                    logits_to_keep=1,
                    **{self._cache_kw: cache},
                )
            finally:
                for hook in hooks:  # the prompt pass only
                    hook.remove()
            logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # [B, V]
            if step == 0:
                fraction = 0.0 if spec.prefill == "fp" else cache.quantized_fraction()
                if score_tokens:
                    for name, token_ids in score_tokens.items():
                        sel = torch.logsumexp(logp[:, list(token_ids)], dim=-1)  # [B]
                        for r in range(b):
                            scores[r][name] = float(sel[r])
            if forced is not None:
                nxt = torch.tensor(
                    [f[step] if step < len(f) else pad_id for f in forced], device=self.device
                )  # [B]
                chosen = logp.gather(1, nxt[:, None])[:, 0]
                for r in range(b):
                    if step < len(forced[r]):
                        logprobs[r].append(float(chosen[r]))
                finished = torch.tensor([step + 1 >= len(f) for f in forced], device=self.device)
            else:
                nxt = logp.argmax(dim=-1)  # [B]; greedy
                nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
                for r in range(b):
                    if not finished[r]:
                        out_tokens[r].append(int(nxt[r]))
                finished = finished | torch.isin(nxt, eos)
            if bool(finished.all()):
                break
            mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype, device=self.device)], dim=1)
            step_ids, step_mask = nxt[:, None], mask
            step_pos = positions[:, -1:] + 1 + step
        self._kv_bytes += cache.nbytes
        self._kv_positions += cache.held_positions
        completions = self._completions(encoded, out_tokens, scores, logprobs, fraction)
        if capture_layers:
            hidden = torch.stack(
                [captured[layer] for layer in capture_layers], dim=1
            )  # [B, n_layers, hidden]
            for r, c in enumerate(completions):
                c.last_hidden = hidden[r]
        return completions

    def _forced_one_pass(
        self,
        encoded: list[list[int]],
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: QuantizedKVCache,
        forced: list[list[int]],
        pad_id: int,
    ) -> list[Completion]:
        """Teacher forcing in two passes (prompt, then every forced token at once). Exact for specs
        whose every token is quantized on arrival by itself (window 1, token-local): each forced
        token then attends to the same stored K/V as in step-by-step decoding.

        The continuation's log-probabilities come from the decoder's last hidden states through the
        LM head in chunks of positions (``LOGPROB_CHUNK_ELEMENTS``): never the [B, L, V] logits and
        their float32 log-softmax (2.5 GB each at batch 64 and a 152k vocabulary). Used when the
        prompt pass shows that the model's logits are its LM head of those hidden states (no
        soft-capping or scaling after the head); otherwise the whole-vocabulary path."""
        b = len(encoded)
        length = max(len(f) for f in forced)
        decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        budget = LOGPROB_CHUNK_ELEMENTS
        hidden: list[torch.Tensor] = []
        hook = decoder.register_forward_hook(_hidden_hook(hidden))
        try:
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kw: cache},
            )
            last = out.logits[:, -1, :]  # [B, V]
            chunked = (
                budget is not None
                and head is not None
                and len(hidden) == 1
                and torch.equal(head(hidden[0][:, -1:, :])[:, -1, :], last)
            )
            first = torch.log_softmax(last.float(), dim=-1)  # [B, V]
            cont = torch.tensor(
                [f + [pad_id] * (length - len(f)) for f in forced], device=self.device
            )  # [B, L]
            cont_mask = torch.tensor(
                [[1] * len(f) + [0] * (length - len(f)) for f in forced], device=self.device
            )
            cont_pos = positions[:, -1:] + 1 + torch.arange(length, device=self.device)[None, :]  # [B, L]
            hidden.clear()
            out = self.model(
                input_ids=cont,
                attention_mask=torch.cat([mask, cont_mask], 1),
                position_ids=cont_pos,
                use_cache=True,
                **({"logits_to_keep": 1} if chunked else {}),
                **{self._cache_kw: cache},
            )
        finally:
            hook.remove()
        # position (r, j) of the continuation predicts forced token j + 1 of row r
        rows = [r for r, f in enumerate(forced) for _ in range(len(f) - 1)]
        cols = [j for f in forced for j in range(len(f) - 1)]
        targets = torch.tensor(
            [t for f in forced for t in f[1:]], dtype=torch.long, device=self.device
        )  # [P]
        if chunked and budget is not None:
            states = hidden[0][rows, cols]  # [P, hidden]: only the positions that predict a forced token
            rest = _head_logprobs(head, states, targets, budget // int(last.shape[-1]))  # [P]
        else:
            logits = out.logits[:, :-1, :]  # [B, L-1, V]
            rest = torch.log_softmax(logits[rows, cols].float(), dim=-1).gather(1, targets[:, None])[:, 0]
        logprobs: list[list[float]] = []
        at = 0
        for r, f in enumerate(forced):
            row = [float(first[r, f[0]])] if f else []
            if len(f) > 1:
                row += rest[at : at + len(f) - 1].tolist()
                at += len(f) - 1
            logprobs.append(row)
        return self._completions(encoded, [[] for _ in range(b)], [{} for _ in range(b)], logprobs, None)

    def _completions(
        self,
        encoded: list[list[int]],
        out_tokens: list[list[int]],
        scores: list[dict[str, float]],
        logprobs: list[list[float]],
        fraction: float | None,
    ) -> list[Completion]:
        completions = []
        for r in range(len(encoded)):
            tokens = out_tokens[r]
            text_tokens = [t for t in tokens if t not in self.eos_ids]
            completions.append(
                Completion(
                    prompt_index=-1,
                    token_ids=tokens,
                    text=self.tokenizer.decode(text_tokens, skip_special_tokens=True),
                    prompt_tokens=len(encoded[r]),
                    first_token_scores=scores[r],
                    logprobs=logprobs[r],
                    quantized_fraction=fraction,
                )
            )
        return completions


def _last_token_hook(store: dict[int, torch.Tensor], layer: int) -> Callable[..., None]:
    """A forward hook keeping a decoder layer's output at the last position (the last prompt token
    under left padding) as float32 [B, hidden], and nothing else of the sequence."""

    def hook(module: Any, args: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output  # [B, T, hidden]
        store[layer] = hidden[:, -1, :].float()

    return hook


def _hidden_hook(store: list[torch.Tensor]) -> Callable[..., None]:
    """A forward hook on the decoder keeping its last hidden states [B, T, hidden] (what the LM
    head reads)."""

    def hook(module: Any, args: Any, output: Any) -> None:
        store.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    return hook


def _head_logprobs(head: Any, states: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """log softmax(head(states))[targets] per position, ``chunk`` positions at a time, in float32:
    the same row-wise operations as the whole-vocabulary path, so the same numbers."""
    chunk = max(1, chunk)
    out = []
    for start in range(0, states.shape[0], chunk):
        logp = torch.log_softmax(head(states[start : start + chunk]).float(), dim=-1)  # [c, V]
        out.append(logp.gather(1, targets[start : start + chunk, None])[:, 0])  # [c]
    return torch.cat(out) if out else states.new_zeros(0, dtype=torch.float32)  # [P]


def _one_pass_exact(spec: QuantSpec, num_layers: int) -> bool:
    """Whether a whole forced continuation can go through in one pass without changing what any
    token attends to: every layer quantizes each token on arrival, by itself."""
    from ..cache import is_token_local

    return all(
        spec.window(i) == 1 and is_token_local(spec.layer(i).key) and is_token_local(spec.layer(i).value)
        for i in range(num_layers)
    )
