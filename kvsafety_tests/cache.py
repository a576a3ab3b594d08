"""A transformers ``Cache`` whose layers store what the kernels return and hand attention the
dequantized K/V, for prefill and decode alike.

Batches are left-padded. Where a scheme's scale groups or flush windows span tokens (per-channel,
per-tensor or amax scales, outlier channels calibrated on the first chunk, a residual window),
padding would shift the groups and make a prompt's result depend on its batch neighbours; those
layers keep one stream per sequence over its real tokens only, so verdicts do not change with
batch size. Token-local schemes (per-token / per-group INT, FP8 at scale 1.0, none) keep one
batched stream: pad positions only ever quantize themselves.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .kernels import Backend, QuantizedStream
from .spec import Fp8Scheme, Granularity, NoQuant, QuantSpec, TensorScheme

__all__ = ["QuantizedKVCache", "QuantizedKVLayer", "cache_kwarg", "is_token_local"]


def is_token_local(scheme: TensorScheme) -> bool:
    """True when no scale, zero-point or calibration of this scheme spans tokens."""
    if isinstance(scheme, NoQuant):
        return True
    if isinstance(scheme, Fp8Scheme):
        return scheme.scale == "one"
    return scheme.granularity in (Granularity.TOKEN, Granularity.GROUP) and not scheme.outliers


class QuantizedKVLayer(DynamicLayer):
    """One decoder layer's quantized keys and values.

    ``pad_lengths``: left-padding per sequence of the batch (None: no padding).
    ``prefill``: "stored" (attention in the prompt pass sees the stored, dequantized K/V) or "fp"
    (it sees the fresh full-precision K/V of that pass; later steps see the stored ones).
    """

    is_croppable = False

    def __init__(
        self,
        spec: QuantSpec,
        layer_idx: int,
        pad_lengths: Sequence[int] | None = None,
        backend: Backend = "torch",
    ) -> None:
        super().__init__()
        kv = spec.layer(layer_idx)
        self.layer_idx = layer_idx
        self.prefill = spec.prefill
        self.window = spec.window(layer_idx)
        self.pad_lengths = list(pad_lengths) if pad_lengths is not None else None
        self.backend: Backend = backend
        pads = self.pad_lengths or []
        per_sequence = (
            any(pads)  # some sequence is padded
            and not (spec.residual == 0 and is_token_local(kv.key) and is_token_local(kv.value))
        )
        rows = len(pads) if per_sequence else 1
        self.per_sequence = per_sequence

        def streams(scheme: TensorScheme, what: str) -> list[QuantizedStream]:
            return [
                QuantizedStream(
                    scheme,
                    self.window,
                    backend=backend,
                    where=f"layer {layer_idx} {what}" + (f" sequence {r}" if per_sequence else ""),
                )
                for r in range(rows)
            ]

        self.key_streams = streams(kv.key, "keys")
        self.value_streams = streams(kv.value, "values")
        self.cumulative_length = 0
        self.batch_size = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.dtype = key_states.dtype
        self.batch_size = key_states.shape[0]
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # key_states, value_states: [B, H_kv, T_new, D]
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        first = self.cumulative_length == 0
        self.cumulative_length += key_states.shape[-2]
        if self.per_sequence:
            assert self.pad_lengths is not None
            for r, pad in enumerate(self.pad_lengths):
                skip = pad if first else 0  # padding only ever precedes the prompt
                self.key_streams[r].append(key_states[r : r + 1, :, skip:])
                self.value_streams[r].append(value_states[r : r + 1, :, skip:])
        else:
            self.key_streams[0].append(key_states)
            self.value_streams[0].append(value_states)
        if first and self.prefill == "fp":
            return key_states, value_states
        return self._gather(self.key_streams), self._gather(self.value_streams)

    def _gather(self, streams: list[QuantizedStream]) -> torch.Tensor:
        """The attended K or V [B, H_kv, T, D]; per-sequence rows re-padded on the left with zeros."""
        if not self.per_sequence:
            return streams[0].dequantized()
        rows = [s.dequantized() for s in streams]  # each [1, H_kv, T - pad_r, D]
        total = self.cumulative_length
        out = rows[0].new_zeros(len(rows), rows[0].shape[1], total, rows[0].shape[3])
        for r, row in enumerate(rows):
            out[r : r + 1, :, total - row.shape[-2] :] = row
        return out

    def get_seq_length(self) -> int:
        return self.cumulative_length

    @property
    def nbytes(self) -> int:
        """Bytes stored for this layer's keys and values (codes, scales, zero-points, fp tails)."""
        return sum(s.nbytes for s in (*self.key_streams, *self.value_streams))

    def token_counts(self) -> tuple[int, int]:
        """(quantized, total) key and value positions held, over the batch's real tokens only."""
        quantized = total = 0
        for s in (*self.key_streams, *self.value_streams):
            if self.per_sequence:
                quantized, total = quantized + s.n_quantized, total + s.n_tokens
            else:  # one batched stream: every row holds n_tokens positions, pads included
                pads = sum(self.pad_lengths or [])
                quantized += max(0, s.n_quantized * self.batch_size - pads)
                total += s.n_tokens * self.batch_size - pads
        return quantized, total

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "a quantized KV layer cannot be cropped (speculative decoding is not supported)"
        )

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError(
            "a quantized KV layer does not support beam search; generation here is greedy"
        )


class QuantizedKVCache(Cache):
    """A ``Cache`` of QuantizedKVLayer, one per decoder layer."""

    def __init__(
        self,
        spec: QuantSpec,
        num_layers: int,
        pad_lengths: Sequence[int] | None = None,
        backend: Backend = "torch",
    ) -> None:
        layers = [QuantizedKVLayer(spec, i, pad_lengths, backend) for i in range(num_layers)]
        super().__init__(layers=list(layers))
        self.spec = spec
        self.kv_layers: list[QuantizedKVLayer] = layers  # typed view of self.layers

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.kv_layers)

    @property
    def held_positions(self) -> int:
        """Token positions the cache holds per layer (pads included where a stream is batched)."""
        layer = self.kv_layers[0]
        return sum(s.n_tokens * (1 if layer.per_sequence else layer.batch_size) for s in layer.key_streams)

    def quantized_fraction(self) -> float | None:
        """Fraction of the real K/V token positions now held quantized (None before any update)."""
        quantized = total = 0
        for layer in self.kv_layers:
            q, t = layer.token_counts()
            quantized, total = quantized + q, total + t
        return None if total == 0 else quantized / total


def cache_kwarg(model: Any) -> str:
    """The keyword ``generate``/``forward`` take a cache by: ``cache`` (transformers >= 5.24) or
    ``past_key_values`` (5.19 .. 5.23)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
