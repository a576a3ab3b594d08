"""quantize / dequantize for any tensor scheme, on the torch reference or the Triton kernels."""

from __future__ import annotations

from typing import Literal

import torch

from kvsafety_tests.spec import Fp8Scheme, IntScheme

from .fp8_ref import dequantize_fp8, quantize_fp8
from .int_ref import dequantize_int, quantize_int
from .stored import QuantizedTensor, check_input

__all__ = ["BACKENDS", "Backend", "dequantize", "quantize"]

Backend = Literal["torch", "triton"]
BACKENDS: tuple[str, ...] = ("torch", "triton")


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend {backend!r} unknown; valid: {', '.join(BACKENDS)}")


def quantize(
    x: torch.Tensor,
    scheme: IntScheme | Fp8Scheme,
    *,
    backend: Backend = "torch",
    scale: torch.Tensor | None = None,
    zero: torch.Tensor | None = None,
    where: str = "",
) -> QuantizedTensor:
    """x [*lead, T, D] -> stored form. ``scale``/``zero`` freeze a static grid (tensor/amax modes)."""
    _check_backend(backend)
    if isinstance(scheme, IntScheme) and scheme.outliers:
        raise ValueError(
            f"{scheme}: outlier channels are kept by QuantizedStream (kernels/stream.py), which "
            "quantizes the other channels with the same scheme minus out<K>"
        )
    try:
        scale, zero = _frozen_grid(scheme, scale, zero)
    except ValueError:
        check_input(x, where)  # bad K/V is the root cause to report, before a bad argument
        raise
    if backend == "triton":
        from . import triton_kernels

        return triton_kernels.quantize(x, scheme, scale=scale, zero=zero, where=where)
    if isinstance(scheme, IntScheme):
        return quantize_int(x, scheme, scale=scale, zero=zero, where=where)
    if isinstance(scheme, Fp8Scheme):
        return quantize_fp8(x, scheme, scale=scale, where=where)
    raise TypeError(f"no quantizer for scheme {scheme!r}")


def _frozen_grid(
    scheme: IntScheme | Fp8Scheme, scale: torch.Tensor | None, zero: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Normalise a frozen grid: INT scales and zeros are the bf16 values that will be stored (so
    the codes are computed on the grid dequantize uses); symmetric schemes take no zero."""
    if scale is None:
        return None, None
    if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
        raise ValueError("a frozen scale must be finite and > 0")
    if isinstance(scheme, Fp8Scheme):
        return scale, None
    if scheme.symmetric:
        return scale.to(torch.bfloat16), None
    if zero is None:
        raise ValueError("an asymmetric scheme needs both scale and zero to freeze its grid")
    if not bool(torch.isfinite(zero).all()):
        raise ValueError("a frozen zero-point must be finite")
    return scale.to(torch.bfloat16), zero.to(torch.bfloat16)


def dequantize(
    q: QuantizedTensor, *, backend: Backend = "torch", dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Stored form -> tensor of the original shape, in ``dtype`` (default: the original dtype)."""
    _check_backend(backend)
    if backend == "triton":
        from . import triton_kernels

        return triton_kernels.dequantize(q, dtype=dtype)
    if isinstance(q.scheme, IntScheme):
        return dequantize_int(q, dtype)
    return dequantize_fp8(q, dtype)
