"""Property tests of the INT-k torch reference (the definition the Triton kernels must match).

Stated float error: all arithmetic is float32, so beyond the grid's s/2 each of the subtraction,
division and the final add may round by half an ulp of its operands. The bound checked is
``|x - dequant(quant(x))| <= s/2 + 2^-22 * (|x| + |z| + qmax * s)`` per element.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from kvsafety_tests.kernels import dequantize, group_view, quantize, unpack_codes
from kvsafety_tests.spec import INT_BITS, Granularity, IntScheme

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_EXP = {torch.float32: 30, torch.bfloat16: 30, torch.float16: 4}  # 10^exp stays finite


@st.composite
def int_cases(draw: st.DrawFn, *, symmetric: bool | None = None) -> tuple[torch.Tensor, IntScheme]:
    bits = draw(st.sampled_from(INT_BITS))
    sym = draw(st.booleans()) if symmetric is None else symmetric
    gran = draw(st.sampled_from(list(Granularity)))
    dtype = draw(st.sampled_from(DTYPES))
    lead = (draw(st.integers(1, 2)), draw(st.integers(1, 3)))
    group = None
    if gran is Granularity.GROUP:
        group = draw(st.sampled_from([1, 2, 8, 16]))
        d = group * draw(st.integers(1, 5))
        t = draw(st.integers(1, 9))
    elif gran is Granularity.CHANNEL:
        group = draw(st.sampled_from([2, 3, 8]))
        t = group * draw(st.integers(1, 3))
        d = draw(st.integers(1, 40))
    else:
        t, d = draw(st.integers(1, 9)), draw(st.integers(1, 40))
    scheme = IntScheme(bits, sym, gran, group)
    exp = draw(st.integers(-DTYPE_EXP[dtype], DTYPE_EXP[dtype]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, t, d, generator=g) * (10.0**exp)
    kind = draw(st.sampled_from(["normal", "offset", "zeros", "constant", "sparse"]))
    if kind == "offset":  # all one sign: the asymmetric zero-point matters
        x = x.abs() + 3 * (10.0**exp)
    elif kind == "zeros":
        x = torch.zeros_like(x)
    elif kind == "constant":
        x = torch.full_like(x, draw(st.floats(-1e3, 1e3, allow_nan=False, width=32)))
    elif kind == "sparse":
        x = x * (torch.rand(x.shape, generator=g) < 0.1)
    return x.to(dtype), scheme


def _grid(q, scheme: IntScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element scale and zero, broadcast to the tensor's shape."""
    o, r, i = group_view(q.shape, scheme)
    s = q.scale.float().reshape(o, 1, i).expand(o, r, i).reshape(q.shape)
    z = (
        torch.zeros_like(s)
        if q.zero is None
        else q.zero.float().reshape(o, 1, i).expand(o, r, i).reshape(q.shape)
    )
    return s, z


@given(int_cases())
def test_round_trip_error_is_at_most_half_a_step(case: tuple[torch.Tensor, IntScheme]) -> None:
    x, scheme = case
    q = quantize(x, scheme)
    deq = dequantize(q, dtype=torch.float32)
    s, z = _grid(q, scheme)
    xf = x.float()
    bound = s / 2 + 2.0**-22 * (xf.abs() + z.abs() + scheme.qmax * s)
    assert bool(((xf - deq).abs() <= bound).all()), float(((xf - deq).abs() - bound).max())


@given(int_cases())
def test_codes_stay_in_range(case: tuple[torch.Tensor, IntScheme]) -> None:
    x, scheme = case
    q = quantize(x, scheme)
    codes = unpack_codes(q.data, scheme.bits, x.shape[-1]).long()
    lo = 1 if scheme.symmetric else 0  # symmetric codes are q + 2^(b-1) with |q| <= 2^(b-1) - 1
    assert int(codes.min()) >= lo and int(codes.max()) <= (1 << scheme.bits) - 1
    assert q.scale.dtype == torch.bfloat16 and bool((q.scale > 0).all())


@given(int_cases())
def test_requantization_on_the_same_grid_is_idempotent(case: tuple[torch.Tensor, IntScheme]) -> None:
    """quant(dequant(quant(x))) == quant(x) with the grid (scale, zero) held."""
    x, scheme = case
    q1 = quantize(x, scheme)
    s, z = _grid(q1, scheme)
    # the grid must be resolvable in float32: a step far below an ulp of the zero-point is not
    assume(bool((s >= 2.0**-20 * (z.abs() + scheme.qmax * s)).all()))
    q2 = quantize(dequantize(q1, dtype=torch.float32), scheme, scale=q1.scale, zero=q1.zero)
    assert torch.equal(q1.data, q2.data)


@given(int_cases(symmetric=True))
def test_symmetric_requantization_recomputes_the_same_grid(case: tuple[torch.Tensor, IntScheme]) -> None:
    """With the scale recomputed too, for symmetric schemes up to 7 bits.

    The bf16 scale is rounded up by less than 2^-7 relative, so the largest element lands on code
    qmax whenever qmax * 2^-7 < 1/2, i.e. qmax <= 63 (7 bits). At 8 bits (qmax 127) it can land
    on 126 and the recomputed scale shrinks: idempotence then holds on the held grid only (above).
    """
    x, scheme = case
    assume(scheme.bits <= 7)
    q1 = quantize(x, scheme)
    q2 = quantize(dequantize(q1, dtype=torch.float32), scheme)
    assert torch.equal(q1.data, q2.data) and torch.equal(q1.scale, q2.scale)


def test_int8_symmetric_recomputed_grid_can_shrink() -> None:
    """The documented 8-bit exception, pinned so a change of scale storage is noticed."""
    x = torch.tensor([[0.1541]])
    scheme = IntScheme(8, True, Granularity.TENSOR)
    q1 = quantize(x, scheme)
    q2 = quantize(dequantize(q1, dtype=torch.float32), scheme)
    assert not torch.equal(q1.scale, q2.scale)


@given(int_cases(symmetric=True))
def test_symmetric_schemes_are_sign_symmetric(case: tuple[torch.Tensor, IntScheme]) -> None:
    x, scheme = case
    qp, qn = quantize(x, scheme), quantize(-x, scheme)
    assert torch.equal(qp.scale, qn.scale)
    assert torch.equal(dequantize(qn, dtype=torch.float32), -dequantize(qp, dtype=torch.float32))


@given(int_cases())
def test_more_bits_never_coarsen_the_grid(case: tuple[torch.Tensor, IntScheme]) -> None:
    """Per group, the step shrinks with bits, so the guaranteed error s/2 does too; and the
    measured max error at b+1 bits never exceeds the coarser b-bit guarantee."""
    x, scheme = case
    assume(scheme.bits < 8)
    finer = IntScheme(scheme.bits + 1, scheme.symmetric, scheme.granularity, scheme.group_size)
    qa, qb = quantize(x, scheme), quantize(x, finer)
    assert bool((qb.scale.float() <= qa.scale.float()).all())
    err_b = (x.float() - dequantize(qb, dtype=torch.float32)).abs().max()
    sa, za = _grid(qa, scheme)
    slack = 2.0**-21 * (x.float().abs().max() + za.abs().max() + scheme.qmax * sa.max())
    assert float(err_b) <= float((sa / 2).max() + slack)


def test_measured_max_error_is_not_monotone_in_bits() -> None:
    """Why the property above is about the grid: data on the 2-bit grid is exact at 2 bits but
    not at 3 (steps 1.5/3 and 1.5/7: the grids are not nested), so 'more bits never increase the measured
    error' is false for some inputs."""
    x = torch.tensor([[0.0, 0.5, 1.0, 1.5]])
    err = {b: float((x - dequantize(quantize(x, IntScheme(b)))).abs().max()) for b in (2, 3)}
    assert err[2] < 1e-6 < err[3]


@pytest.mark.parametrize("bits", INT_BITS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_zero_tensor_and_representable_constants_are_exact(bits: int, symmetric: bool) -> None:
    scheme = IntScheme(bits, symmetric)
    zeros = torch.zeros(2, 3, 5, 16, dtype=torch.bfloat16)
    assert torch.equal(dequantize(quantize(zeros, scheme)), zeros)
    const = torch.full((1, 2, 4, 16), -2.75, dtype=torch.bfloat16)  # bf16-representable
    if not symmetric:
        assert torch.equal(dequantize(quantize(const, scheme)), const)


def test_single_element_groups_are_exact_for_asymmetric() -> None:
    x = torch.randn(2, 2, 3, 8).to(torch.bfloat16)
    out = dequantize(quantize(x, IntScheme(2, False, Granularity.GROUP, 1)))
    assert torch.equal(out, x)  # z = x itself (x is bf16), range 0


def test_extreme_magnitudes_keep_relative_precision() -> None:
    x = torch.tensor([[1e30, -3e29, 5e28, 1e-30]], dtype=torch.float32)
    deq = dequantize(quantize(x, IntScheme(8, True)))
    assert float((deq - x).abs().max()) <= 1e30 / 127 / 2 * 1.01
    tiny = torch.tensor([[1e-38, -2e-39, 3e-40, 0.0]], dtype=torch.float32)  # subnormal scales
    assert float((dequantize(quantize(tiny, IntScheme(8, True))) - tiny).abs().max()) <= 1e-38 / 127


@pytest.mark.parametrize(
    ("scheme", "shape", "message"),
    [
        (
            IntScheme(4, False, Granularity.GROUP, 48),
            (1, 1, 4, 128),
            "group size 48 does not divide head_dim 128",
        ),
        (IntScheme(4, False, Granularity.CHANNEL, 32), (1, 1, 1, 64), "whole groups of 32 tokens, got 1"),
        (IntScheme(4, False, Granularity.CHANNEL, 2), (1, 1, 3, 64), "whole groups of 2 tokens, got 3"),
    ],
)
def test_shapes_a_scheme_cannot_take_are_refused(
    scheme: IntScheme, shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        quantize(torch.ones(shape), scheme)


def test_scale_and_zero_are_bf16_and_cover_the_group() -> None:
    x = torch.randn(3, 4, 7, 64) * 5 + 1
    scheme = IntScheme(4, False, Granularity.GROUP, 16)
    q = quantize(x, scheme)
    o, r, i = group_view(x.shape, scheme)
    xg = x.reshape(o, r, i)
    z, s = q.zero.float(), q.scale.float()
    assert bool((z <= xg.amin(1)).all())
    assert bool((z + s * scheme.qmax >= xg.amax(1) - 1e-6 * xg.abs().amax(1)).all())
    assert math.isclose(q.nbytes, x.numel() / 2 + 2 * 2 * o, rel_tol=0)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fp16_extremes_dequantize_finite(backend: str) -> None:
    """The outward-rounded grid can end just past 65504; the fp16 output is clamped, not inf."""
    x = torch.tensor([[-65504.0, 0.0, 30000.0, 65504.0]], dtype=torch.float16)
    for scheme in (IntScheme(8), IntScheme(4), IntScheme(3, True)):
        out = dequantize(quantize(x, scheme, backend=backend), backend=backend)  # type: ignore[arg-type]
        assert bool(torch.isfinite(out).all())
        assert (
            float((out.float() - x.float()).abs().max()) <= float(quantize(x, scheme).scale.float().max()) / 2
        )


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_frozen_scale_must_be_finite_and_positive(bad: float) -> None:
    x = torch.ones(1, 1, 2, 8)
    with pytest.raises(ValueError, match="a frozen scale must be finite and > 0"):
        quantize(x, IntScheme(8, True, Granularity.TENSOR), scale=torch.tensor([[bad]]))


def test_a_frozen_grid_is_used_as_stored() -> None:
    """A float32 scale bf16 cannot hold is rounded to the stored bf16 value before quantizing, so
    dequantize uses the grid the codes were made on; symmetric schemes keep no zero-point."""
    x = torch.linspace(-1, 1, 16).reshape(1, 1, 2, 8)
    scheme = IntScheme(8, True, Granularity.TENSOR)
    odd = torch.tensor([[1 / 127 + 1e-6]])
    q = quantize(x, scheme, scale=odd, zero=torch.tensor([[0.5]]))
    assert q.zero is None and q.scale.dtype == torch.bfloat16
    again = quantize(x, scheme, scale=q.scale)
    assert torch.equal(q.data, again.data)
