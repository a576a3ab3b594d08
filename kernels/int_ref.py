"""Uniform INT-k quantization: the torch reference that defines the stored codes.

For one scale group (see group_view), with qmax from the scheme and all arithmetic in float32:

    symmetric:   s = up(amax / qmax)            q = clamp(rne(x / s), -qmax, qmax)   code = q + 2^(b-1)
    asymmetric:  z = down(min); s = up((max - z) / qmax)   code = clamp(rne((x - z) / s), 0, qmax)

``up`` / ``down`` round to bfloat16 outward (rounding.py), so the stored bf16 scale and zero cover
the data and every element satisfies |x - dequant(code)| <= s / 2 up to float32 rounding of the
two subtractions (see tests/kernels/test_int_properties.py for the stated bound). A scale that comes out 0
(an all-zero group, or a constant group whose value bf16 represents exactly) is stored as 1.0. ``rne`` is round half to even. Dequantization is
``(code - 2^(b-1)) * s`` or ``code * s + z`` in float32, then a cast to the original dtype.
"""

from __future__ import annotations

import math

import torch

from kvsafety_tests.spec import Granularity, IntScheme

from .packing import pack_codes, unpack_codes
from .rounding import bf16_round_down, bf16_round_up
from .stored import QuantizedTensor, check_input, to_output

__all__ = ["dequantize_int", "group_view", "int_params", "quantize_int"]


def group_view(shape: torch.Size | tuple[int, ...], scheme: IntScheme) -> tuple[int, int, int]:
    """(O, R, I): the tensor [*lead, T, D] seen as [O, R, I] with one scale per (o, i), reduced over R."""
    *lead, t, d = shape
    p = math.prod(lead)
    g = scheme.granularity
    if g is Granularity.TOKEN:
        return p * t, d, 1
    if g is Granularity.GROUP:
        size = scheme.group_size
        assert size is not None
        if d % size:
            raise ValueError(f"group size {size} does not divide head_dim {d}")
        return p * t * (d // size), size, 1
    if g is Granularity.CHANNEL:
        size = scheme.group_size
        assert size is not None
        if t % size:
            raise ValueError(
                f"per-channel scales need whole groups of {size} tokens, got {t} tokens; "
                "keep the unfilled group in full precision until it fills (QuantizedStream does)"
            )
        return p * (t // size), size, d
    return 1, p * t * d, 1


def int_params(xg: torch.Tensor, scheme: IntScheme) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale (and zero) for float32 xg [O, R, I]: float32 [O, I] holding bf16-representable values."""
    if scheme.symmetric:
        amax = xg.abs().amax(dim=1)
        s = bf16_round_up(amax / scheme.qmax)
        return torch.where(s == 0, torch.ones_like(s), s), None
    mn, mx = xg.amin(dim=1), xg.amax(dim=1)
    z = bf16_round_down(mn)
    s = bf16_round_up((mx - z) / scheme.qmax)
    return torch.where(s == 0, torch.ones_like(s), s), z


def quantize_int(
    x: torch.Tensor,
    scheme: IntScheme,
    *,
    scale: torch.Tensor | None = None,
    zero: torch.Tensor | None = None,
    where: str = "",
) -> QuantizedTensor:
    """x [*lead, T, D] -> packed codes. ``scale``/``zero`` ([O, I], bf16) freeze a static grid."""
    check_input(x, where)
    o, r, i = group_view(x.shape, scheme)
    xg = x.float().reshape(o, r, i)
    if scale is None:
        s, z = int_params(xg, scheme)
    else:
        # frozen grid (normalised by api.quantize: bf16 values, no zero for symmetric schemes)
        s = scale.float().reshape(o, i)
        z = None if zero is None or scheme.symmetric else zero.float().reshape(o, i)
        if z is None and not scheme.symmetric:
            raise ValueError("an asymmetric scheme needs both scale and zero to freeze its grid")
    s3 = s.unsqueeze(1)  # [O, 1, I]
    if scheme.symmetric:
        half = 1 << (scheme.bits - 1)
        q = torch.round(xg / s3).clamp(-scheme.qmax, scheme.qmax) + half
    else:
        assert z is not None
        q = torch.round((xg - z.unsqueeze(1)) / s3).clamp(0, scheme.qmax)
    codes = q.to(torch.uint8).reshape(x.shape)
    return QuantizedTensor(
        data=pack_codes(codes, scheme.bits),
        scale=s.to(torch.bfloat16),
        zero=None if z is None else z.to(torch.bfloat16),
        shape=x.shape,
        dtype=x.dtype,
        scheme=scheme,
    )


def dequantize_int(q: QuantizedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Stored INT form -> tensor of the original shape, in ``dtype`` (default: the original)."""
    scheme = q.scheme
    assert isinstance(scheme, IntScheme)
    codes = unpack_codes(q.data, scheme.bits, q.shape[-1])
    o, r, i = group_view(q.shape, scheme)
    cg = codes.reshape(o, r, i).float()
    s3 = q.scale.float().unsqueeze(1)
    if scheme.symmetric:
        out = (cg - float(1 << (scheme.bits - 1))) * s3
    else:
        assert q.zero is not None
        out = cg * s3 + q.zero.float().unsqueeze(1)
    return to_output(out.reshape(q.shape), dtype or q.dtype)
