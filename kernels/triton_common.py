"""Exact float helpers for the Triton kernels (triton_kernels.py): every result is bit-identical to
the torch reference (int_ref.py, fp8_ref.py, rounding.py) on GPU and under the Triton interpreter.

Importing this module decides how Triton runs: if ``TRITON_INTERPRET`` is not set and
``torch.cuda.is_available()`` is False, it sets ``TRITON_INTERPRET=1`` *before* importing triton,
because ``@triton.jit`` picks the interpreter at decoration time. The kernels then run on CPU
tensors (slowly: numpy per program, so the launchers use large tiles). A user who wants something
else sets ``TRITON_INTERPRET`` themselves before the first import.

Why the helpers avoid the obvious Triton op (all measured with triton 3.9):

* fp32 -> bf16 casts truncate under the interpreter, and bf16 loads go through the same lossy
  converter, so bf16 is moved as int16 bits and converted with integer ops (exact everywhere).
* FP8 casts under the interpreter lose the mantissa carry, round ties up and turn out-of-range
  values into NaN, so FP8 encode/decode are written with integer ops on the float bits.
* ``libdevice.rint`` does not run under the interpreter: round-half-even is the add-and-subtract of
  1.5 * 2^23, exact for |y| < 2^22 (callers clamp first; the codes are at most 255).
* plain ``/`` is approximate on GPU: every division is ``tl.math.div_rn``. The launchers pass
  ``enable_fp_fusion=False`` so ``a * b + c`` stays two roundings, as in torch.
"""

from __future__ import annotations

import os
import sys

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    if "triton.language" in sys.modules:
        # triton.language's own @jit helpers (tl.max, tl.sum, ...) were decorated for a GPU when it
        # was first imported; interpreted kernels calling them fail deep inside the interpreter.
        raise ImportError(
            "the Triton kernels need TRITON_INTERPRET=1 on a machine without CUDA, but triton was "
            "imported before it was set (by torch.compile, transformers or another library); set "
            "TRITON_INTERPRET=1 in the environment before starting Python, or use backend='torch'"
        )
    os.environ["TRITON_INTERPRET"] = "1"

import triton  # after the TRITON_INTERPRET decision above
import triton.language as tl

from .stored import MAX_ABS

__all__ = [
    "F32_MAX_ABS",
    "INTERPRET",
    "RNE_MAGIC",
    "bf16_round_down",
    "bf16_round_up",
    "fp8_decode",
    "fp8_encode",
    "int_params",
    "load_f32",
    "rne",
    "sanitize",
    "store_out",
]

INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"
F32_MAX_ABS: float = float(MAX_ABS)  # 2^120, exact in float32
RNE_MAGIC: float = 12582912.0  # 1.5 * 2^23: (y + M) - M rounds y half-to-even for |y| < 2^22

# Output dtype codes for store_out.
OUT_F32: int = 0
OUT_F16: int = 1
OUT_BF16: int = 2


@triton.jit
def load_f32(ptr, offs, mask, IS_BF16: tl.constexpr):
    """Load and widen to float32 (exact). bf16 data must be passed as its int16 view."""
    if IS_BF16:
        h = tl.load(ptr + offs, mask=mask, other=0)  # int16 bits
        return (h.to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def store_out(ptr, offs, val, mask, OUT: tl.constexpr):
    """Store float32 ``val`` as float32 / float16 / bfloat16 (round to nearest even, as torch's cast).

    bf16 goes through the output's int16 view: bits + 0x7FFF + lsb, then >> 16; NaN -> 0x7FC0 (c10).
    """
    if OUT == 2:
        bits = val.to(tl.int32, bitcast=True)
        r = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
        r = tl.where(val != val, 0x7FC0, r)
        tl.store(ptr + offs, r.to(tl.int16), mask=mask)
    elif OUT == 1:  # clamped first, as stored.to_output: the outward grid can pass 65504
        val = tl.minimum(tl.maximum(val, -65504.0), 65504.0)
        tl.store(ptr + offs, val.to(tl.float16), mask=mask)
    else:
        tl.store(ptr + offs, val, mask=mask)


@triton.jit
def sanitize(x, MAXABS: tl.constexpr):
    """(x with bad elements zeroed, bad flags). Bad: not |x| <= MAX_ABS (NaN compares False)."""
    ok = tl.abs(x) <= MAXABS
    return tl.where(ok, x, 0.0), ~ok


@triton.jit
def bf16_round_up(a):
    """Smallest bf16 value >= a, as float32 (rounding.bf16_round_up). Finite a."""
    tb = a.to(tl.int32, bitcast=True) & -65536  # clear the low 16 bits: toward zero
    t = tb.to(tl.float32, bitcast=True)
    return tl.where(t < a, (tb + 65536).to(tl.float32, bitcast=True), t)


@triton.jit
def bf16_round_down(a):
    """Largest bf16 value <= a, as float32 (rounding.bf16_round_down). Finite a."""
    tb = a.to(tl.int32, bitcast=True) & -65536
    t = tb.to(tl.float32, bitcast=True)
    return tl.where(t > a, (tb + 65536).to(tl.float32, bitcast=True), t)


@triton.jit
def rne(y):
    """Round half to even; exact for |y| < 2^22."""
    return (y + 12582912.0) - 12582912.0


@triton.jit
def int_params(mn, mx, SYM: tl.constexpr, QMAX_F: tl.constexpr):
    """(scale, zero) from a group's float32 min and max, as int_ref.int_params (zero = 0 if SYM).

    symmetric: s = up(amax / qmax) with amax = max(max, -min) = max |x|;
    asymmetric: z = down(min), s = up((max - z) / qmax); s == 0 -> 1.0.
    """
    if SYM:
        amax = tl.maximum(mx, -mn)
        s = bf16_round_up(tl.math.div_rn(amax, tl.full(amax.shape, QMAX_F, tl.float32)))
        z = tl.zeros_like(s)
    else:
        z = bf16_round_down(mn)
        d = mx - z
        s = bf16_round_up(tl.math.div_rn(d, tl.full(d.shape, QMAX_F, tl.float32)))
    s = tl.where(s == 0.0, 1.0, s)
    return s, z


@triton.jit
def fp8_encode(
    v,
    MBITS: tl.constexpr,
    BIAS: tl.constexpr,
    FMAX: tl.constexpr,
    MIN_NORMAL: tl.constexpr,
    SUB_SCALE: tl.constexpr,
    RTZ: tl.constexpr = False,
):
    """float32 -> FP8 byte (int32 0..255): saturate to +-FMAX, round to nearest even (or toward
    zero with RTZ).

    The rounding happens in float32: with e = max(exponent(|v|), emin), adding and subtracting
    2^(e - MBITS + 23) rounds |v| to a multiple of the FP8 spacing 2^(e - MBITS) (subnormals
    included). The byte is then assembled from sign, biased exponent and mantissa. RTZ steps the
    magnitude's code down by one where that nearest value lies above |v| (codes grow with the
    magnitude). NaN -> 0x7F (only reachable with a frozen scale of 0; the reference leaves that
    case undefined).
    """
    nan = v != v
    v = tl.where(nan, 0.0, v)
    v = tl.minimum(tl.maximum(v, -FMAX), FMAX)
    bits = v.to(tl.int32, bitcast=True)
    sign = (bits >> 31) & 1
    abits = bits & 0x7FFFFFFF
    a = abits.to(tl.float32, bitcast=True)
    e = tl.maximum((abits >> 23) - 127, 1 - BIAS)  # binade of |v|, at least the min normal's
    magic = ((e - MBITS + 150) << 23).to(tl.float32, bitcast=True)  # 2^(e - MBITS + 23)
    r = (a + magic) - magic  # |v| on the FP8 grid, round half to even
    rb = r.to(tl.int32, bitcast=True)
    normal = (((rb >> 23) - 127 + BIAS) << MBITS) | ((rb >> (23 - MBITS)) & ((1 << MBITS) - 1))
    sub = (tl.minimum(r, MIN_NORMAL) * SUB_SCALE).to(tl.int32)  # r / 2^(emin - MBITS), exact, <= 2^MBITS
    mag = tl.where(r >= MIN_NORMAL, normal, sub)
    if RTZ:
        mag = mag - (r > a).to(tl.int32)
    code = mag | (sign << 7)
    return tl.where(nan, 0x7F, code)


@triton.jit
def fp8_decode(b, MBITS: tl.constexpr, BIAS: tl.constexpr, E4M3: tl.constexpr, SUB_QUANTUM: tl.constexpr):
    """FP8 byte (int32 0..255) -> float32, exact; NaN patterns -> NaN, e5m2 inf -> inf."""
    EMAX_FIELD: tl.constexpr = (1 << (7 - MBITS)) - 1
    sign = (b >> 7) & 1
    e = (b >> MBITS) & EMAX_FIELD
    m = b & ((1 << MBITS) - 1)
    if E4M3:
        fexp = e - BIAS + 127  # e4m3fn has no inf: the top binade is finite except S.1111.111
    else:
        fexp = tl.where(e == EMAX_FIELD, 255, e - BIAS + 127)  # e5m2: IEEE-like inf / NaN
    normal = (fexp << 23) | (m << (23 - MBITS))
    sub = (m.to(tl.float32) * SUB_QUANTUM).to(tl.int32, bitcast=True)  # exact: m * 2^(emin - MBITS)
    bits = tl.where(e == 0, sub, normal)
    if E4M3:
        bits = tl.where((e == EMAX_FIELD) & (m == (1 << MBITS) - 1), 0x7FC00000, bits)  # NaN
    else:
        bits = tl.where((e == EMAX_FIELD) & (m != 0), bits | 0x400000, bits)  # quiet NaN
    return (bits | (sign << 31)).to(tl.float32, bitcast=True)
