"""The Triton kernels (kernels/triton_kernels.py) against the torch reference, bit for bit.

Every check compares ``backend="triton"`` with ``backend="torch"``: the packed bytes, the scale and
zero-point (dtype, shape, value; None-ness), and the dequantized tensor (bitwise). Without CUDA the
kernels run under the Triton interpreter on CPU; the ``gpu`` twins at the end repeat the checks on
``device="cuda"`` where a GPU exists.
"""

from __future__ import annotations

import math
import os
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsafety_tests.kernels import (
    FP8_DTYPES,
    FP8_MAX,
    MAX_ABS,
    NonFiniteError,
    QuantizedTensor,
    dequantize,
    quantize,
    triton_kernels,
)
from kvsafety_tests.spec import Fp8Format, Fp8Rounding, Fp8ScaleMode, Fp8Scheme, Granularity, IntScheme

BITS = [2, 3, 4, 5, 6, 7, 8]
SYMMETRIC = [False, True]
GRANULARITIES = list(Granularity)
HEAD_DIMS = [64, 80, 128, 17]
TOKENS = [1, 17, 1025]
CHANNEL_TOKENS = [32, 96]
CHANNEL_GROUPS = [2, 3, 32, 96]
GROUP_SIZES = [1, 2, 5, 8, 16, 40, 80]  # on head_dim 80: powers of two fuse, others take the stats pass
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
FP8_FMTS: list[Fp8Format] = ["e4m3", "e5m2"]
FP8_SCALES: list[Fp8ScaleMode] = ["one", "tensor", "head"]
FP8_ROUNDINGS: list[Fp8Rounding] = ["rne", "rtz"]
DEQUANT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]

# Where the kernels run: CPU under the Triton interpreter (no CUDA), else the current CUDA device.
DEVICE = triton_kernels.kernel_device()

# GROUP size used for each head_dim in the shape sweep (a power of two, a non-power of two, G = D, G = 1)
GROUP_FOR_HEAD_DIM = {64: 32, 80: 40, 128: 16, 17: 17}
CHANNEL_GROUP = 32


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _bits(t: torch.Tensor) -> torch.Tensor:
    """A float tensor's bit pattern (for bitwise comparison, -0.0 != 0.0)."""
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.contiguous().view(ints[t.element_size()])


def assert_same_stored(ref: QuantizedTensor, tri: QuantizedTensor) -> None:
    assert tri.data.dtype == ref.data.dtype == torch.uint8
    assert tri.data.shape == ref.data.shape
    assert torch.equal(tri.data, ref.data), f"codes differ at {(tri.data != ref.data).nonzero()[:5].tolist()}"
    assert tri.scale.dtype == ref.scale.dtype and tri.scale.shape == ref.scale.shape
    assert torch.equal(tri.scale, ref.scale)
    assert torch.equal(_bits(tri.scale), _bits(ref.scale))
    assert (tri.zero is None) == (ref.zero is None)
    if ref.zero is not None:
        assert tri.zero is not None
        assert tri.zero.dtype == ref.zero.dtype and tri.zero.shape == ref.zero.shape
        assert torch.equal(tri.zero, ref.zero)  # value equality: the sign of a zero min is order-dependent
    assert tri.shape == ref.shape and tri.dtype == ref.dtype and tri.scheme == ref.scheme


def assert_same_tensor(ref: torch.Tensor, tri: torch.Tensor) -> None:
    assert tri.dtype == ref.dtype and tri.shape == ref.shape
    assert torch.equal(tri, ref)
    assert torch.equal(_bits(tri), _bits(ref)), "same values, different zero signs"


def check_roundtrip(
    x: torch.Tensor,
    scheme: IntScheme | Fp8Scheme,
    *,
    scale: torch.Tensor | None = None,
    zero: torch.Tensor | None = None,
    dtypes: tuple[torch.dtype | None, ...] = (None,),
) -> QuantizedTensor:
    """Quantize with both backends, compare; dequantize the reference's stored form with both, compare."""
    ref = quantize(x, scheme, backend="torch", scale=scale, zero=zero)
    tri = quantize(x, scheme, backend="triton", scale=scale, zero=zero)
    assert tri.data.device == x.device
    assert_same_stored(ref, tri)
    for dtype in dtypes:
        assert_same_tensor(
            dequantize(ref, backend="torch", dtype=dtype), dequantize(ref, backend="triton", dtype=dtype)
        )
    return ref


def kv(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    seed: int,
    *,
    device: str | torch.device = DEVICE,
    spread: float = 3.0,
) -> torch.Tensor:
    """Random K/V-like data: normal values, per-channel scale spread (outlier channels), a shift."""
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]
    x = torch.randn(shape, generator=g) * torch.exp(torch.randn(d, generator=g) * math.log(spread))
    x = x + torch.randn(d, generator=g)
    if dtype is torch.float16:
        x = x.clamp(-60000.0, 60000.0)  # stay finite in fp16
    return x.to(dtype).to(device)


def int_scheme(bits: int, sym: bool, gran: Granularity, head_dim: int, tokens: int) -> IntScheme:
    if gran is Granularity.GROUP:
        return IntScheme(bits, sym, gran, GROUP_FOR_HEAD_DIM.get(head_dim, head_dim))
    if gran is Granularity.CHANNEL:
        return IntScheme(bits, sym, gran, math.gcd(tokens, CHANNEL_GROUP))
    return IntScheme(bits, sym, gran)


# ---------------------------------------------------------------------------------------------
# INT
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("symmetric", SYMMETRIC)
@pytest.mark.parametrize("bits", BITS)
def test_int_every_scheme(bits: int, symmetric: bool, granularity: Granularity, dtype: torch.dtype) -> None:
    x = kv((2, 3, 32, 80), dtype, seed=bits * 10 + symmetric)
    group = {Granularity.GROUP: 16, Granularity.CHANNEL: 16}.get(granularity)
    check_roundtrip(x, IntScheme(bits, symmetric, granularity, group))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("granularity", [Granularity.TOKEN, Granularity.GROUP, Granularity.TENSOR])
def test_int_shapes(granularity: Granularity, head_dim: int, tokens: int, dtype: torch.dtype) -> None:
    x = kv((1, 2, tokens, head_dim), dtype, seed=head_dim + tokens)
    for bits, sym in ((3, False), (4, True)):
        check_roundtrip(x, int_scheme(bits, sym, granularity, head_dim, tokens))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("tokens", CHANNEL_TOKENS)
@pytest.mark.parametrize("group", CHANNEL_GROUPS)
def test_int_channel(group: int, tokens: int, head_dim: int, dtype: torch.dtype) -> None:
    x = kv((2, 2, tokens, head_dim), dtype, seed=group + head_dim)
    for bits, sym in ((2, False), (5, True)):
        scheme = IntScheme(bits, sym, Granularity.CHANNEL, group)
        if tokens % group:  # partial token groups: both backends refuse, with the same message
            for backend in ("torch", "triton"):
                with pytest.raises(ValueError, match=f"whole groups of {group} tokens, got {tokens} tokens"):
                    quantize(x, scheme, backend=backend)
        else:
            check_roundtrip(x, scheme)


@pytest.mark.parametrize("group", GROUP_SIZES)
def test_int_group_sizes(group: int) -> None:
    x = kv((2, 2, 17, 80), torch.bfloat16, seed=group)
    for bits, sym in ((2, True), (4, False), (7, False)):
        check_roundtrip(x, IntScheme(bits, sym, Granularity.GROUP, group))


def test_int_channel_partial_group_error() -> None:
    x = kv((1, 2, 33, 64), torch.float32, seed=0)
    scheme = IntScheme(4, False, Granularity.CHANNEL, 32)
    with pytest.raises(ValueError) as ref:
        quantize(x, scheme, backend="torch")
    with pytest.raises(ValueError) as tri:
        quantize(x, scheme, backend="triton")
    assert str(tri.value) == str(ref.value)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("symmetric", SYMMETRIC)
def test_int_frozen_grid(symmetric: bool, granularity: Granularity, dtype: torch.dtype) -> None:
    """Scale/zero calibrated on one chunk, frozen, applied to a wider chunk (codes clamp)."""
    scheme = int_scheme(4, symmetric, granularity, 64, 32)
    calib = quantize(kv((2, 2, 32, 64), dtype, seed=1), scheme, backend="torch")
    x = kv((2, 2, 32, 64), dtype, seed=2, spread=6.0) * 2
    check_roundtrip(x, scheme, scale=calib.scale, zero=calib.zero)
    # a float32 grid that is not bf16-representable: used as is, stored rounded to bf16
    odd_scale = calib.scale.float() * 1.0001
    odd_zero = None if calib.zero is None else calib.zero.float() - 0.0003
    check_roundtrip(x, scheme, scale=odd_scale, zero=odd_zero)


def test_int_frozen_grid_argument_rules() -> None:
    x = kv((1, 2, 8, 16), torch.float32, seed=3)
    sym = IntScheme(4, True, Granularity.TOKEN)
    calib = quantize(x, IntScheme(4, False, Granularity.TOKEN), backend="torch")
    # symmetric with a zero: the reference stores the zero (unused by the math)
    check_roundtrip(x, sym, scale=calib.scale, zero=calib.zero)
    # symmetric with a zero but no scale: the zero is ignored
    check_roundtrip(x, sym, zero=calib.zero)
    for kwargs, exc in (
        ({"scale": calib.scale}, ValueError),  # asymmetric without zero
        ({"scale": calib.scale[:3], "zero": calib.zero}, RuntimeError),  # wrong number of scales
    ):
        scheme = IntScheme(4, False, Granularity.TOKEN)
        with pytest.raises(exc) as ref:
            quantize(x, scheme, backend="torch", **kwargs)
        with pytest.raises(exc) as tri:
            quantize(x, scheme, backend="triton", **kwargs)
        assert str(tri.value) == str(ref.value)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # fp16 +-inf, as torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_int_special_rows(granularity: Granularity, dtype: torch.dtype) -> None:
    """All-zero rows, constant rows, a lone spike, huge and tiny magnitudes."""
    x = kv((2, 2, 32, 64), torch.float32, seed=4, device="cpu")
    x[0, 0, :4] = 0.0
    x[0, 1, 4:8] = 0.75
    x[0, 1, 8:12] = -3.0e-3
    x[1, 0, 12, 5] = 1000.0
    x[1, 1] *= 1e-6
    if dtype is torch.float32:
        x[1, 0, 20:24] *= 1e30
        x[1, 0, 24, 0] = MAX_ABS  # the largest accepted magnitude
        x[1, 0, 25:27] = 1e-40  # float32 subnormals
    elif dtype is torch.float16:
        x[1, 0, 20:24] = torch.linspace(-65504.0, 65504.0, 64)
        x[1, 0, 24:26] = 6e-8  # float16 subnormal
    else:
        x[1, 0, 20:24] *= 1e30
        x[1, 0, 24, 0] = 2.0**119  # bf16 reaches MAX_ABS too
    x = x.to(dtype).to(DEVICE)
    for bits, sym in ((2, False), (3, True), (8, False), (8, True)):
        check_roundtrip(x, int_scheme(bits, sym, granularity, 64, 32), dtypes=(None, torch.float32))


def test_all_zero_and_constant_tensors() -> None:
    for fill in (0.0, -0.0, 2.5, -7.0):
        x = torch.full((1, 2, 32, 17), fill, device=DEVICE)
        for gran in GRANULARITIES:
            for sym in SYMMETRIC:
                check_roundtrip(x, int_scheme(3, sym, gran, 17, 32))
        for fmt in FP8_FMTS:
            for mode in FP8_SCALES:
                check_roundtrip(x, Fp8Scheme(fmt, mode))


@pytest.mark.parametrize("dtype", DEQUANT_DTYPES)
def test_dequantize_dtype_override(dtype: torch.dtype) -> None:
    x = kv((1, 2, 17, 80), torch.bfloat16, seed=5)
    for scheme in (IntScheme(4), IntScheme(3, True, Granularity.GROUP, 16), Fp8Scheme("e5m2", "head")):
        check_roundtrip(x, scheme, dtypes=(dtype,))


def test_non_contiguous_and_2d_input() -> None:
    x = kv((2, 64, 3, 80), torch.float16, seed=6).transpose(1, 2)  # [2, 3, 64, 80], strided
    assert not x.is_contiguous()
    for scheme in (IntScheme(4), IntScheme(2, False, Granularity.CHANNEL, 32), Fp8Scheme("e4m3", "head")):
        check_roundtrip(x, scheme)
    check_roundtrip(kv((5, 24), torch.float32, seed=7), IntScheme(6, True, Granularity.TENSOR))


def test_float64_and_empty_input() -> None:
    x = kv((2, 3, 16, 20), torch.float64, seed=14)
    for scheme in (IntScheme(4), IntScheme(5, True, Granularity.TENSOR), Fp8Scheme("e5m2", "head")):
        check_roundtrip(x, scheme, dtypes=(None, torch.bfloat16))
    empty = torch.zeros((2, 3, 0, 64), device=DEVICE)  # no tokens: both backends refuse alike
    for scheme in (IntScheme(4), IntScheme(4, False, Granularity.TENSOR), Fp8Scheme("e4m3", "one")):
        for backend in ("torch", "triton"):
            with pytest.raises(
                ValueError, match=re.escape("nothing to quantize: empty tensor of shape (2, 3, 0, 64)")
            ):
                quantize(empty, scheme, backend=backend)


@pytest.mark.parametrize(
    "scheme",
    [
        IntScheme(4, False, Granularity.TOKEN),
        IntScheme(3, True, Granularity.TENSOR),
        IntScheme(5, False, Granularity.GROUP, 8),
        IntScheme(2, False, Granularity.GROUP, 6),
        IntScheme(4, False, Granularity.CHANNEL, 16),
        IntScheme(8, True, Granularity.CHANNEL, 48),
        Fp8Scheme("e4m3", "tensor"),
        Fp8Scheme("e5m2", "head"),
    ],
    ids=str,
)
def test_small_tiles(scheme: IntScheme | Fp8Scheme, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny tiles force many programs, chunked partial reductions and the looping finish kernel."""
    monkeypatch.setattr(triton_kernels, "TILE", 128)
    monkeypatch.setattr(triton_kernels, "_FINAL_TILE", 4)
    x = kv((2, 2, 48, 24), torch.bfloat16, seed=8)
    check_roundtrip(x, scheme)


# ---------------------------------------------------------------------------------------------
# FP8
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("mode", FP8_SCALES)
@pytest.mark.parametrize("fmt", FP8_FMTS)
def test_fp8_shapes(
    fmt: Fp8Format, mode: Fp8ScaleMode, head_dim: int, tokens: int, dtype: torch.dtype
) -> None:
    x = kv((1, 2, tokens, head_dim), dtype, seed=head_dim * tokens, spread=30.0)
    check_roundtrip(x, Fp8Scheme(fmt, mode))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FP8_FMTS)
def test_fp8_saturation_and_frozen_scale(fmt: Fp8Format, dtype: torch.dtype) -> None:
    fmax = FP8_MAX[fmt]
    x = kv((2, 3, 16, 64), torch.float32, seed=9, device="cpu") * fmax / 2
    x[0, 0, 0, :8] = torch.tensor(
        [fmax, -fmax, fmax * 1.03, -fmax * 1.07, fmax * 1.5, 61440.0, -61440.0, 1e4]
    )
    x = x.clamp(-6e4, 6e4) if dtype is torch.float16 else x
    x = x.to(dtype).to(DEVICE)
    for mode in FP8_SCALES:
        check_roundtrip(x, Fp8Scheme(fmt, mode), dtypes=(None, torch.float32))
    scheme = Fp8Scheme(fmt, "head")
    calib = quantize(x[:, :, :4] / 8, scheme, backend="torch").scale  # [P] frozen per-row scale
    for scale in (calib, calib[:1], calib[0], torch.tensor(0.37), torch.tensor(2.0, dtype=torch.bfloat16)):
        check_roundtrip(x, scheme, scale=scale)
    with pytest.raises(ValueError):
        quantize(x, scheme, backend="triton", scale=calib[:2])


def _finite_patterns(dtype: torch.dtype) -> torch.Tensor:
    """Every finite bit pattern of a 16-bit float within MAX_ABS, as a [rows, 256] tensor."""
    x = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(dtype)
    x = x[x.float().abs() <= MAX_ABS]
    pad = -x.numel() % 256
    return torch.cat([x, torch.zeros(pad, dtype=dtype)]).reshape(-1, 256).to(DEVICE)


@pytest.mark.parametrize("rounding", FP8_ROUNDINGS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", FP8_FMTS)
def test_fp8_encode_every_16bit_pattern(fmt: Fp8Format, dtype: torch.dtype, rounding: Fp8Rounding) -> None:
    x = _finite_patterns(dtype)
    check_roundtrip(x, Fp8Scheme(fmt, "one", rounding))


@pytest.mark.parametrize("rounding", FP8_ROUNDINGS)
@pytest.mark.parametrize("fmt", FP8_FMTS)
def test_fp8_encode_ties_and_float32(fmt: Fp8Format, rounding: Fp8Rounding) -> None:
    """Exact midpoints between neighbouring FP8 values (ties to even), and their float32 neighbours."""
    grid = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FP8_DTYPES[fmt]).float()
    grid = grid[torch.isfinite(grid) & (grid >= 0)].sort().values.double()
    mids = ((grid[1:] + grid[:-1]) / 2).float()  # exact in float32
    up = torch.nextafter(mids, torch.tensor(math.inf))
    down = torch.nextafter(mids, torch.tensor(-math.inf))
    g = torch.Generator().manual_seed(10)
    rand = torch.randn(4096, generator=g) * torch.exp(torch.randn(4096, generator=g) * 4)
    vals = torch.cat([mids, up, down, grid.float(), rand, torch.tensor([-0.0, 0.0, 1e-45, -1e-45])])
    vals = torch.cat([vals, -vals])
    x = torch.cat([vals, torch.zeros(-vals.numel() % 128)]).reshape(-1, 128).to(DEVICE)
    check_roundtrip(x, Fp8Scheme(fmt, "one", rounding))


@pytest.mark.parametrize("fmt", FP8_FMTS)
def test_fp8_decode_every_byte(fmt: Fp8Format) -> None:
    data = torch.arange(256, dtype=torch.int32).to(torch.uint8).reshape(1, 256).to(DEVICE)
    q = QuantizedTensor(
        data=data,
        scale=torch.ones((), device=DEVICE),
        zero=None,
        shape=torch.Size([1, 256]),
        dtype=torch.float32,
        scheme=Fp8Scheme(fmt, "one"),
    )
    expect = data.view(FP8_DTYPES[fmt]).float()
    got = dequantize(q, backend="triton")
    nan = torch.isnan(expect)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(_bits(got[~nan]), _bits(expect[~nan]))


# ---------------------------------------------------------------------------------------------
# non-finite input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 2.0**121])
def test_non_finite_raises(bad: float, dtype: torch.dtype) -> None:
    if dtype is not torch.float32 and bad == 2.0**121:
        bad = math.inf  # 2^121 is not a finite fp16; in bf16 it is, but keep the case fp32-only
    x = kv((1, 2, 32, 80), dtype, seed=11)
    x[0, 1, 20, 33] = bad
    x[0, 1, 30, 2] = bad
    schemes: list[IntScheme | Fp8Scheme] = [
        int_scheme(4, sym, g, 80, 32) for g in GRANULARITIES for sym in SYMMETRIC
    ]
    schemes += [Fp8Scheme(fmt, mode) for fmt in FP8_FMTS for mode in FP8_SCALES]
    for scheme in schemes:
        with pytest.raises(NonFiniteError) as ref:
            quantize(x, scheme, backend="torch", where="layer 3 keys")
        with pytest.raises(NonFiniteError) as tri:
            quantize(x, scheme, backend="triton", where="layer 3 keys")
        assert str(tri.value) == str(ref.value)
        assert "batch=0, head=1, token=20, channel=33" in str(tri.value)


def test_non_finite_wins_over_argument_errors() -> None:
    x = kv((1, 2, 33, 16), torch.float32, seed=12)
    x[0, 0, 3, 3] = math.nan
    with pytest.raises(NonFiniteError):  # the reference checks the values before the shape
        quantize(x, IntScheme(4, False, Granularity.CHANNEL, 32), backend="triton")
    with pytest.raises(NonFiniteError):
        quantize(x, IntScheme(4), backend="triton", scale=torch.ones(66, device=DEVICE))


def test_interpreter_without_cuda() -> None:
    if not torch.cuda.is_available():
        assert os.environ.get("TRITON_INTERPRET") == "1"
        assert triton_kernels.INTERPRET


# ---------------------------------------------------------------------------------------------
# random cases
# ---------------------------------------------------------------------------------------------
@st.composite
def random_cases(draw: st.DrawFn) -> tuple[torch.Tensor, IntScheme | Fp8Scheme]:
    dtype = draw(st.sampled_from(DTYPES))
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    d = draw(st.integers(1, 130))
    t = draw(st.integers(1, 70))
    seed = draw(st.integers(0, 2**31 - 1))
    spread = draw(st.sampled_from([1.0, 4.0, 100.0]))
    if draw(st.booleans()):
        scheme: IntScheme | Fp8Scheme = Fp8Scheme(
            draw(st.sampled_from(FP8_FMTS)),
            draw(st.sampled_from(FP8_SCALES)),
            draw(st.sampled_from(FP8_ROUNDINGS)),
        )
    else:
        bits = draw(st.sampled_from(BITS))
        sym = draw(st.booleans())
        gran = draw(st.sampled_from(GRANULARITIES))
        group = None
        if gran is Granularity.GROUP:
            group = draw(st.sampled_from([g for g in range(1, d + 1) if d % g == 0]))
        elif gran is Granularity.CHANNEL:
            group = draw(st.integers(1, 12))
            t = group * draw(st.integers(1, 4))
        scheme = IntScheme(bits, sym, gran, group)
    x = kv((*lead, t, d), dtype, seed=seed, spread=spread)
    return x, scheme


@settings(max_examples=40, deadline=None)
@given(random_cases())
def test_random_cases(case: tuple[torch.Tensor, IntScheme | Fp8Scheme]) -> None:
    x, scheme = case
    check_roundtrip(x, scheme)


# ---------------------------------------------------------------------------------------------
# GPU twins: the same equalities with the compiled kernels on CUDA tensors
# ---------------------------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: torch.cuda.is_available() is False"
)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("symmetric", SYMMETRIC)
@pytest.mark.parametrize("bits", BITS)
def test_gpu_int_every_scheme(
    bits: int, symmetric: bool, granularity: Granularity, dtype: torch.dtype
) -> None:
    for head_dim, tokens in ((128, 1024), (80, 96), (17, 32)):
        x = kv((2, 4, tokens, head_dim), dtype, seed=bits + head_dim, device="cuda")
        check_roundtrip(x, int_scheme(bits, symmetric, granularity, head_dim, tokens))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("group", GROUP_SIZES)
def test_gpu_int_group_and_channel_sizes(group: int) -> None:
    x = kv((2, 2, 96, 80), torch.bfloat16, seed=group, device="cuda")
    for bits, sym in ((2, True), (4, False)):
        check_roundtrip(x, IntScheme(bits, sym, Granularity.GROUP, group))
        if 96 % group == 0:
            check_roundtrip(x, IntScheme(bits, sym, Granularity.CHANNEL, group))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", FP8_SCALES)
@pytest.mark.parametrize("fmt", FP8_FMTS)
def test_gpu_fp8(fmt: Fp8Format, mode: Fp8ScaleMode, dtype: torch.dtype) -> None:
    for head_dim, tokens in ((128, 1025), (17, 3)):
        x = kv((2, 4, tokens, head_dim), dtype, seed=head_dim, device="cuda", spread=30.0)
        check_roundtrip(x, Fp8Scheme(fmt, mode), dtypes=(None, torch.float32))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", FP8_FMTS)
def test_gpu_fp8_every_16bit_pattern(fmt: Fp8Format, dtype: torch.dtype) -> None:
    for rounding in FP8_ROUNDINGS:
        check_roundtrip(_finite_patterns(dtype).to("cuda"), Fp8Scheme(fmt, "one", rounding))


@pytest.mark.gpu
@needs_cuda
def test_gpu_frozen_special_and_non_finite() -> None:
    x = kv((2, 2, 64, 128), torch.float32, seed=13, device="cuda")
    x[0, 0, :4] = 0.0
    x[0, 1, 4:8] = 0.75
    x[1, 0, 8:12] *= 1e30
    x[1, 1, 12:14] *= 1e-40  # float32 subnormals: the compiled kernels must not flush them
    for gran in GRANULARITIES:
        for sym in SYMMETRIC:
            scheme = int_scheme(3, sym, gran, 128, 64)
            calib = check_roundtrip(x[:, :, :32] if gran is not Granularity.TENSOR else x, scheme)
            if gran is not Granularity.CHANNEL:
                continue
            check_roundtrip(x[:, :, 32:], scheme, scale=calib.scale, zero=calib.zero)
    check_roundtrip(x, Fp8Scheme("e4m3", "head"), scale=torch.rand(4, device="cuda") + 0.5)
    x[1, 1, 3, 7] = math.inf
    with pytest.raises(NonFiniteError, match="batch=1, head=1, token=3, channel=7"):
        quantize(x, IntScheme(4), backend="triton")
