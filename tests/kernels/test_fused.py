"""The fused CPU path (kernels/fused.py) stores and restores exactly what the torch reference does.

Runtime is mostly compilation: each distinct graph is generated as C++ and built with gcc once
(about 2-4 s each here, cached on disk by inductor for later runs). The cases are chosen to need
few graphs: symmetric/asymmetric, token/g64 and every row count share one graph per (operation,
bits, dtype), so the 16 bf16 cases build 8 graphs, the float32 case 2 and the odd head_dim case 2.
The edge-case and error tests reuse those graphs.
"""

from __future__ import annotations

import pytest
import torch

from kvsafety_tests.kernels.api import dequantize, quantize
from kvsafety_tests.kernels.fused import dequantize_fused, fused_supports, quantize_fused
from kvsafety_tests.kernels.stored import MAX_ABS, NonFiniteError, QuantizedTensor
from kvsafety_tests.spec import Fp8Scheme, Granularity, IntScheme, parse_spec

SHAPE = (2, 4, 33, 128)  # [batch, kv_heads, tokens, head_dim]; 33 tokens: an odd row count
BITS = (2, 3, 4, 8)


def _scheme(bits: int, symmetric: bool, group: int | None) -> IntScheme:
    if group is None:
        return IntScheme(bits, symmetric)
    return IntScheme(bits, symmetric, Granularity.GROUP, group)


def _kv(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """K/V-like data: unit Gaussian, a few outlier channels, one constant row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    x[..., 3] *= 20.0  # outlier channel, as real keys have
    x[..., 0, :] = 0.5  # a constant token: min == max
    return x.to(dtype)


def assert_matches_reference(x: torch.Tensor, scheme: IntScheme) -> QuantizedTensor:
    ref = quantize(x, scheme, backend="torch")
    got = quantize_fused(x, scheme)
    assert got.data.dtype == torch.uint8 and got.data.shape == ref.data.shape
    assert torch.equal(got.data, ref.data), "packed codes differ"
    assert got.scale.dtype == ref.scale.dtype and got.scale.shape == ref.scale.shape
    assert torch.equal(got.scale, ref.scale), "scales differ"
    if ref.zero is None:
        assert got.zero is None
    else:
        assert got.zero is not None and got.zero.dtype == ref.zero.dtype
        assert torch.equal(got.zero, ref.zero), "zero-points differ"
    assert (got.shape, got.dtype, got.scheme) == (ref.shape, ref.dtype, ref.scheme)
    out_ref = dequantize(ref, backend="torch")
    out = dequantize_fused(got)
    assert out.dtype == out_ref.dtype and out.shape == x.shape
    assert torch.equal(out, out_ref), "dequantized values differ"
    return got


@pytest.mark.parametrize("group", [None, 64], ids=["token", "g64"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", BITS)
def test_bf16_matches_reference(bits: int, symmetric: bool, group: int | None) -> None:
    assert_matches_reference(_kv(SHAPE, torch.bfloat16, seed=bits), _scheme(bits, symmetric, group))


def test_float32_matches_reference() -> None:
    scheme = _scheme(4, False, 64)
    x = _kv(SHAPE, torch.float32, seed=7)
    x[0, 0, 1, :64] = 0.1  # constant group whose value is not a bf16 value: z = down(0.1) < 0.1
    assert_matches_reference(x, scheme)
    assert_matches_reference(x, _scheme(4, True, 64))  # same compiled graph


def test_head_dim_not_multiple_of_8() -> None:
    """Head dims that are not a multiple of 8 take the general packing layout (zero padding)."""
    assert_matches_reference(_kv((2, 2, 5, 20), torch.bfloat16), _scheme(3, True, None))


def _edge_rows(dtype: torch.dtype, width: int) -> torch.Tensor:
    """Rows [R, width] at the corners of the rounding argument in fused._make_quantize."""
    ramp = torch.linspace(-1.0, 1.0, width)
    tiny = torch.finfo(torch.bfloat16).smallest_normal
    rows = [
        torch.zeros(width),
        torch.full((width,), -0.0),
        torch.full((width,), 3.0),
        torch.full((width,), -7.5),
        torch.where(torch.arange(width) == 5, 1.0, 0.0),  # one spike
        ramp * tiny * 8,  # subnormal to tiny normal: scale near the smallest bf16 values
        ramp * tiny / 64,  # all subnormal: (max - min) / qmax underflows
        ramp * MAX_ABS,  # the largest accepted magnitudes: max - min = 2^121
        torch.where(torch.arange(width) % 2 == 0, MAX_ABS, -tiny),
        torch.arange(width, dtype=torch.float32) * 0.5,  # many x / s exactly half-way between codes
        (torch.arange(width, dtype=torch.float32) - 3) * 0.25,
    ]
    return torch.stack(rows).to(dtype)


@pytest.mark.parametrize("group", [None, 64], ids=["token", "g64"])
@pytest.mark.parametrize("bits", BITS)
def test_edge_values_match_reference(bits: int, group: int | None) -> None:
    """Boundary inputs, where a missing clamp or a different rounding would show (bf16 graphs reused)."""
    x = _edge_rows(torch.bfloat16, SHAPE[-1]).reshape(1, 1, -1, SHAPE[-1])
    for symmetric in (True, False):
        assert_matches_reference(x, _scheme(bits, symmetric, group))


def test_edge_values_float32() -> None:
    x = _edge_rows(torch.float32, SHAPE[-1]).reshape(1, 1, -1, SHAPE[-1])
    x[0, 0, 2] = 3.0 + 2.0**-20  # not a bf16 value: zero and scale round outward
    for symmetric in (True, False):
        assert_matches_reference(x, _scheme(4, symmetric, 64))


def test_non_contiguous_and_misaligned_input() -> None:
    base = _kv(SHAPE, torch.bfloat16, seed=3)
    assert_matches_reference(base[:, :, 5:20, :], _scheme(4, False, None))  # a token slice
    flat = base.flatten()
    shifted = flat[2 : 2 + 2 * 4 * 16 * 128].view(2, 4, 16, 128)  # offset 2: not int64-aligned
    assert_matches_reference(shifted, _scheme(2, False, None))


@pytest.mark.parametrize(
    "position, value",
    [
        ((1, 2, 30, 7), float("nan")),
        ((0, 3, 0, 0), float("inf")),
        ((1, 0, 4, 127), float("-inf")),
        ((0, 1, 17, 64), 2.0**121),
    ],
    ids=["nan", "inf", "-inf", "too-large"],
)
def test_non_finite_raises_reference_error(position: tuple[int, ...], value: float) -> None:
    x = _kv(SHAPE, torch.bfloat16)
    x[position] = value
    scheme = _scheme(8, False, None)
    with pytest.raises(NonFiniteError) as ref:
        quantize(x, scheme, backend="torch", where="layer 3 keys")
    with pytest.raises(NonFiniteError) as got:
        quantize_fused(x, scheme, where="layer 3 keys")
    assert str(got.value) == str(ref.value)


@pytest.mark.parametrize(
    "scheme",
    [parse_spec("int4-channel").kv.key, parse_spec("int8-tensor").kv.key, Fp8Scheme("e4m3")],
    ids=str,
)
def test_unsupported_schemes_raise(scheme: IntScheme | Fp8Scheme) -> None:
    assert not fused_supports(scheme)
    with pytest.raises(ValueError, match="fused CPU path does not cover"):
        quantize_fused(torch.zeros(2, 4, 32, 128), scheme)


def test_other_bad_inputs_raise() -> None:
    assert fused_supports(_scheme(4, True, 64)) and fused_supports(_scheme(3, False, None))
    with pytest.raises(ValueError, match="does not divide"):
        quantize_fused(torch.zeros(2, 4, 8, 128), _scheme(4, False, 48))
    with pytest.raises(ValueError, match="float tensors"):
        quantize_fused(torch.zeros(2, 4, 8, 128, dtype=torch.int32), _scheme(4, False, None))
    with pytest.raises(ValueError, match="expected K/V"):
        quantize_fused(torch.zeros(128), _scheme(4, False, None))
    with pytest.raises(ValueError) as ref:
        quantize(torch.zeros(2, 0, 128), _scheme(4, False, None))
    with pytest.raises(ValueError) as got:
        quantize_fused(torch.zeros(2, 0, 128), _scheme(4, False, None))
    assert str(got.value) == str(ref.value)


def test_single_row_uses_reference_result() -> None:
    x = _kv((1, 1, 1, 128), torch.bfloat16)
    assert_matches_reference(x, _scheme(8, True, None))
