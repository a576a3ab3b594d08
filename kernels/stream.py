"""A streaming quantized tensor: one layer's keys or values as tokens arrive.

Tokens wait in full precision and are quantized in whole windows of W tokens (W = max(residual,
channel token group), see spec.py): after each append, the oldest floor(n / W) * W buffered tokens
are quantized as one chunk. This is KIVI's rule (keys per channel in groups of G tokens, a
full-precision residual of the < R most recent tokens) and the only sound way to use per-channel
scales in a cache: a lone decode token quantized per channel would have min = max.

Static grids (INT per-tensor, FP8 amax) are calibrated on the first chunk and frozen. Outlier
channels (``out{K}``) are chosen per (batch, head) by absmax on the first chunk, kept in 16-bit,
and kept out of every scale: in the quantized copy they are replaced by a value already inside
their group's range, so min, max and amax are those of the other channels.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from kvsafety_tests.spec import Fp8Scheme, Granularity, IntScheme, NoQuant, TensorScheme

from .api import Backend, dequantize, quantize
from .int_ref import group_view
from .stored import QuantizedTensor, check_input

__all__ = ["QuantizedStream"]


class QuantizedStream:
    """Quantized chunks plus a full-precision tail, for a tensor [B, H, T, D] growing along T."""

    def __init__(self, scheme: TensorScheme, window: int = 1, *, backend: Backend = "torch", where: str = ""):
        token_group = scheme.token_group if isinstance(scheme, IntScheme) else 1
        if window < 1 or window % token_group:
            raise ValueError(f"window {window} must be a positive multiple of the token group {token_group}")
        self.scheme = scheme
        self.window = window
        self.backend: Backend = backend
        self.where = where
        self.chunks: list[QuantizedTensor] = []
        self.outliers: list[torch.Tensor] = []  # per chunk: [B, H, T_chunk, K] in the input dtype
        self.outlier_index: torch.Tensor | None = None  # [B, H, K] channel indices, frozen
        self.tail: torch.Tensor | None = None  # [B, H, T_tail, D] full precision
        self._static: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._dequantized: torch.Tensor | None = None  # [B, H, T_quantized, D]
        self.n_quantized = 0

    @property
    def n_tokens(self) -> int:
        return self.n_quantized + (0 if self.tail is None else self.tail.shape[-2])

    def append(self, x: torch.Tensor) -> None:
        """Add tokens x [B, H, T, D]; quantize every whole window now buffered."""
        if x.dim() != 4:
            raise ValueError(f"expected [batch, heads, tokens, head_dim], got shape {tuple(x.shape)}")
        check_input(x, self.where)  # reject bad tokens on arrival, not later when they flush
        tail = x if self.tail is None else torch.cat([self.tail, x], dim=-2)
        n_flush = 0 if isinstance(self.scheme, NoQuant) else (tail.shape[-2] // self.window) * self.window
        if n_flush:
            self._store(tail[..., :n_flush, :])
        self.tail = tail[..., n_flush:, :]

    def _store(self, chunk: torch.Tensor) -> None:
        scheme = self.scheme
        assert isinstance(scheme, IntScheme | Fp8Scheme)
        kept = None
        if isinstance(scheme, IntScheme) and scheme.outliers:
            chunk, kept = self._split_outliers(chunk, scheme)
            scheme = replace(scheme, outliers=0)  # the kernels see the neutralised chunk
        scale, zero = self._static if self._static is not None else (None, None)
        where = f"{self.where} tokens {self.n_quantized}.." if self.where else ""
        q = quantize(chunk, scheme, backend=self.backend, scale=scale, zero=zero, where=where)
        if self._static is None and _is_static(scheme):
            self._static = (q.scale, q.zero)
        deq = dequantize(q, backend=self.backend)
        if kept is not None:
            assert self.outlier_index is not None
            deq = deq.scatter(-1, self._expand_index(deq), kept)
            self.outliers.append(kept)
        self.chunks.append(q)
        self._dequantized = deq if self._dequantized is None else torch.cat([self._dequantized, deq], dim=-2)
        self.n_quantized += chunk.shape[-2]

    def _expand_index(self, like: torch.Tensor) -> torch.Tensor:
        assert self.outlier_index is not None
        b, h, t, _ = like.shape
        return self.outlier_index.unsqueeze(2).expand(b, h, t, -1)

    def _split_outliers(self, chunk: torch.Tensor, scheme: IntScheme) -> tuple[torch.Tensor, torch.Tensor]:
        """(chunk with outlier channels neutralised, the outlier values [B, H, T, K])."""
        if self.outlier_index is None:
            absmax = chunk.abs().amax(dim=-2)  # [B, H, D]
            self.outlier_index = absmax.topk(scheme.outliers, dim=-1).indices.sort(dim=-1).values
        index = self._expand_index(chunk)
        kept = chunk.gather(-1, index)
        mask = torch.zeros_like(chunk, dtype=torch.bool).scatter(-1, index, True)
        o, r, i = group_view(chunk.shape, scheme)
        xg, mg = chunk.float().reshape(o, r, i), mask.reshape(o, r, i)
        # a value inside the group's range: the smallest non-outlier (0 if every member is an outlier)
        fill = torch.where(mg, torch.inf, xg).amin(dim=1, keepdim=True)
        fill = torch.where(torch.isinf(fill), torch.zeros_like(fill), fill)
        neutral = torch.where(mg, fill.expand_as(xg), xg).reshape(chunk.shape).to(chunk.dtype)
        return neutral, kept

    def dequantized(self) -> torch.Tensor:
        """All tokens so far [B, H, T, D]: the dequantized chunks, then the full-precision tail."""
        parts = [p for p in (self._dequantized, self.tail) if p is not None]
        if not parts:
            raise ValueError("the stream holds no tokens yet")
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)

    @property
    def nbytes(self) -> int:
        """True bytes held: stored chunks, outlier values and indices, the full-precision tail."""
        n = sum(q.nbytes for q in self.chunks) + sum(t.numel() * t.element_size() for t in self.outliers)
        if self.outlier_index is not None:
            n += self.outlier_index.numel() * 2  # indices < head_dim fit int16
        if self.tail is not None:
            n += self.tail.numel() * self.tail.element_size()
        return n


def _is_static(scheme: IntScheme | Fp8Scheme) -> bool:
    if isinstance(scheme, Fp8Scheme):
        return scheme.scale != "one"
    return scheme.granularity is Granularity.TENSOR
