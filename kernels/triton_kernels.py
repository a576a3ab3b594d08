"""Triton kernels for INT-k and FP8 KV storage, bit for bit equal to the torch reference.

``quantize(x, scheme, scale=, zero=, where=)`` and ``dequantize(q, dtype=)`` return exactly what
``int_ref.quantize_int`` / ``fp8_ref.quantize_fp8`` and their dequantizers return: the same packed
bytes in ``data``, the same ``scale`` / ``zero`` (dtype, shape and bits), and the same dequantized
tensor, for every IntScheme (bits 2..8, sym/asym, TOKEN / GROUP / CHANNEL / TENSOR, frozen grids)
and Fp8Scheme (e4m3 / e5m2, scale "one" / "tensor" / "head", frozen scale), on bf16 / fp16 / fp32
input of shape [*lead, T, D]. ``kernels/api.py`` calls them for ``backend="triton"``.

Without CUDA they run under the Triton interpreter on CPU tensors: importing this module sets
``TRITON_INTERPRET=1`` first when it is unset and ``torch.cuda.is_available()`` is False (see
triton_common.py, which also lists the exact-arithmetic rules every kernel follows).

Layout: x is read as rows [N = P * T, D]. A program handles a tile of BLOCK_T rows by DP =
next_pow2(D) columns (masked), so there are few programs (the interpreter's cost is per program).

* INT, TOKEN / GROUP with G a power of two / CHANNEL with G a power of two: one fused kernel
  reduces each scale group inside the tile (GROUP: [BLOCK_T, DP/G, G], CHANNEL: [BLOCK_T/G, G,
  DP]), writes the bf16 scale and zero, quantizes, and packs 8 codes into ``bits`` bytes.
* Other INT cases (TENSOR, GROUP/CHANNEL with other G, frozen grids): a stats kernel computes
  per-program partial min/max (TENSOR: partials over the flat tensor, finished by a second small
  kernel), then the quantize kernel gathers each element's scale and zero.
* FP8: "tensor" / "head" use the same two-stage amax; the quantize kernel divides by the scale
  and encodes the byte with integer ops (triton_common.fp8_encode).

Non-finite input: every quantize kernel flags elements with ``not |x| <= MAX_ABS`` per program;
if any flag is set the host calls ``check_input(x, where)``, which raises the reference's
NonFiniteError naming the first bad position (no extra pass over clean input).

Devices: under the interpreter the tensors are CPU tensors; compiled, they must be CUDA tensors
(``kernel_device()`` says which). Empty tensors (numel 0) are handed to the torch reference
(nothing to launch). Head dims above MAX_HEAD_DIM are refused (a row must fit one tile). float64
input is checked and converted to float32 on the host (an extra pass), as the reference does.

Where the reference is undefined the kernels pick: a frozen scale of 0 makes 0 / 0 = NaN, which
torch turns into an unspecified uint8 (0 on x86); here NaN becomes INT code 0 and FP8 byte 0x7F.
"""

from __future__ import annotations

import math

import torch

# isort: off
from .triton_common import (  # first: it decides TRITON_INTERPRET before triton is imported
    F32_MAX_ABS,
    INTERPRET,
    OUT_BF16,
    OUT_F16,
    OUT_F32,
    fp8_decode,
    fp8_encode,
    int_params,
    load_f32,
    rne,
    sanitize,
    store_out,
)
import triton
import triton.language as tl

# isort: on
from kvsafety_tests.spec import Fp8Scheme, Granularity, IntScheme

from .fp8_ref import FP8_MAX, quantize_fp8
from .int_ref import group_view, quantize_int
from .stored import QuantizedTensor, check_input

__all__ = ["MAX_HEAD_DIM", "dequantize", "kernel_device", "quantize"]

MAX_HEAD_DIM = 8192
# Elements per program tile: large under the interpreter (per-program overhead dominates).
TILE = 65536 if INTERPRET else 4096
_FINAL_TILE = 1024  # partials per program in the finishing reduction
_LAUNCH = {"enable_fp_fusion": False, "num_warps": 4}

_MODE = {Granularity.TOKEN: 0, Granularity.GROUP: 1, Granularity.CHANNEL: 2, Granularity.TENSOR: 3}
_KIND_INT, _KIND_FP8 = 0, 1
# fmt -> (mantissa bits, exponent bias, min normal 2^emin, 2^(MBITS - emin), 2^(emin - MBITS))
_FP8_CONST: dict[str, tuple[int, int, float, float, float]] = {
    "e4m3": (3, 7, 2.0**-6, 2.0**9, 2.0**-9),
    "e5m2": (2, 15, 2.0**-14, 2.0**16, 2.0**-16),
}
_OUT = {torch.float32: OUT_F32, torch.float16: OUT_F16, torch.bfloat16: OUT_BF16}


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _store_params(
    mn,
    mx,
    s_ptr,
    z_ptr,
    offs,
    mask,
    KIND: tl.constexpr,
    SYM: tl.constexpr,
    QMAX_F: tl.constexpr,
    FMAX: tl.constexpr,
):
    """Scale (and zero) from group min/max; INT: bf16 (int16 view), FP8: float32. Returns (s, z)."""
    valid = mn <= mx  # False only for a group with no unmasked element (padding)
    mn = tl.where(valid, mn, 0.0)
    mx = tl.where(valid, mx, 0.0)
    if KIND == 0:
        s, z = int_params(mn, mx, SYM, QMAX_F)
        store_out(s_ptr, offs, s, mask, 2)  # exact: s is bf16-representable
        if not SYM:
            store_out(z_ptr, offs, z, mask, 2)
    else:
        amax = tl.maximum(mx, -mn)  # = max |x|
        s = tl.math.div_rn(amax, tl.full(amax.shape, FMAX, tl.float32))
        s = tl.where(s == 0.0, 1.0, s)
        z = tl.zeros_like(s)
        tl.store(s_ptr + offs, s, mask=mask)
    return s, z


@triton.jit
def _row_stats_kernel(
    x_ptr,
    part_ptr,
    s_ptr,
    z_ptr,
    M,
    L,
    C,
    IN_BF16: tl.constexpr,
    MAXABS: tl.constexpr,
    FINAL: tl.constexpr,
    KIND: tl.constexpr,
    SYM: tl.constexpr,
    QMAX_F: tl.constexpr,
    FMAX: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """x as [M, L]: min/max of each row over a chunk of BLOCK_L; program id = pm * C + pc.

    FINAL (C == 1): write the parameters directly. Else write partials [2, M, C] (min, max).
    """
    pid = tl.program_id(0).to(tl.int64)
    pm = pid // C
    pc = pid % C
    rows = pm * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    cols = pc * BLOCK_L + tl.arange(0, BLOCK_L)  # [BLOCK_L]
    rmask = rows < M
    mask = rmask[:, None] & (cols < L)[None, :]  # [BLOCK_M, BLOCK_L]
    x = load_f32(x_ptr, rows[:, None] * L + cols[None, :], mask, IN_BF16)  # [BLOCK_M, BLOCK_L]
    x, _ = sanitize(x, MAXABS)
    mn = tl.min(tl.where(mask, x, float("inf")), axis=1)  # [BLOCK_M]
    mx = tl.max(tl.where(mask, x, -float("inf")), axis=1)  # [BLOCK_M]
    if FINAL:
        _store_params(mn, mx, s_ptr, z_ptr, rows, rmask, KIND, SYM, QMAX_F, FMAX)
    else:
        tl.store(part_ptr + rows * C + pc, mn, mask=rmask)
        tl.store(part_ptr + M * C + rows * C + pc, mx, mask=rmask)


@triton.jit
def _channel_stats_kernel(
    x_ptr,
    part_ptr,
    s_ptr,
    z_ptr,
    O,
    C,
    M,
    D: tl.constexpr,
    GS: tl.constexpr,
    IN_BF16: tl.constexpr,
    MAXABS: tl.constexpr,
    FINAL: tl.constexpr,
    SYM: tl.constexpr,
    QMAX_F: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_G: tl.constexpr,
    DP: tl.constexpr,
):
    """x as [O, GS, D]: per-channel min/max of BLOCK_O token groups over a chunk of BLOCK_G tokens.

    Program id = po * C + pc. M = O * D parameters; FINAL (C == 1) writes them directly.
    """
    pid = tl.program_id(0).to(tl.int64)
    po = pid // C
    pc = pid % C
    grp = po * BLOCK_O + tl.arange(0, BLOCK_O)  # [BLOCK_O] token-group index
    t = pc * BLOCK_G + tl.arange(0, BLOCK_G)  # [BLOCK_G] token within the group
    cols = tl.arange(0, DP)  # [DP]
    omask = grp < O
    cmask = cols < D
    mask = omask[:, None, None] & (t < GS)[None, :, None] & cmask[None, None, :]  # [BLOCK_O, BLOCK_G, DP]
    offs = (grp[:, None, None] * GS + t[None, :, None]) * D + cols[None, None, :]
    x = load_f32(x_ptr, offs, mask, IN_BF16)  # [BLOCK_O, BLOCK_G, DP]
    x, _ = sanitize(x, MAXABS)
    mn = tl.min(tl.where(mask, x, float("inf")), axis=1)  # [BLOCK_O, DP]
    mx = tl.max(tl.where(mask, x, -float("inf")), axis=1)  # [BLOCK_O, DP]
    sidx = grp[:, None] * D + cols[None, :]  # [BLOCK_O, DP]
    smask = omask[:, None] & cmask[None, :]
    if FINAL:
        _store_params(mn, mx, s_ptr, z_ptr, sidx, smask, 0, SYM, QMAX_F, 1.0)
    else:
        tl.store(part_ptr + sidx * C + pc, mn, mask=smask)
        tl.store(part_ptr + M * C + sidx * C + pc, mx, mask=smask)


@triton.jit
def _finalize_kernel(
    part_ptr,
    s_ptr,
    z_ptr,
    M,
    C,
    KIND: tl.constexpr,
    SYM: tl.constexpr,
    QMAX_F: tl.constexpr,
    FMAX: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Second stage of a global reduction: partials [2, M, C] -> parameters [M]."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    rmask = rows < M
    mn = tl.full([BLOCK_M], float("inf"), tl.float32)
    mx = tl.full([BLOCK_M], -float("inf"), tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)  # [BLOCK_C]
        m2 = rmask[:, None] & (cols < C)[None, :]  # [BLOCK_M, BLOCK_C]
        offs = rows[:, None] * C + cols[None, :]
        mn = tl.minimum(mn, tl.min(tl.load(part_ptr + offs, mask=m2, other=float("inf")), axis=1))
        mx = tl.maximum(mx, tl.max(tl.load(part_ptr + M * C + offs, mask=m2, other=-float("inf")), axis=1))
    _store_params(mn, mx, s_ptr, z_ptr, rows, rmask, KIND, SYM, QMAX_F, FMAX)


@triton.jit
def _gather_params(
    s_ptr,
    z_ptr,
    rows,
    cols,
    rmask,
    mask,
    D: tl.constexpr,
    MODE: tl.constexpr,
    GS: tl.constexpr,
    SYM: tl.constexpr,
    S_BF16: tl.constexpr,
    BLOCK_T: tl.constexpr,
    DP: tl.constexpr,
):
    """Each element's scale and zero from the [O, I] parameters, broadcast to [BLOCK_T, DP]."""
    if MODE == 0:  # TOKEN: one per row
        idx = rows[:, None] + cols[None, :] * 0  # [BLOCK_T, DP]
    elif MODE == 1:  # GROUP: one per (row, column // GS)
        idx = rows[:, None] * (D // GS) + (cols // GS)[None, :]
    elif MODE == 2:  # CHANNEL: one per (row // GS, column)
        idx = (rows // GS)[:, None] * D + cols[None, :]
    else:  # TENSOR
        idx = rows[:, None] * 0 + cols[None, :] * 0
    s = load_f32(s_ptr, idx, mask, S_BF16)  # [BLOCK_T, DP]
    s = tl.where(mask, s, 1.0)
    if SYM:
        z = tl.zeros_like(s)
    else:
        z = load_f32(z_ptr, idx, mask, S_BF16)  # [BLOCK_T, DP]
    return s, z


@triton.jit
def _int_quant_kernel(
    x_ptr,
    s_ptr,
    z_ptr,
    out_ptr,
    flag_ptr,
    N,
    D: tl.constexpr,
    BITS: tl.constexpr,
    SYM: tl.constexpr,
    QMAX_F: tl.constexpr,
    MODE: tl.constexpr,
    GS: tl.constexpr,
    FUSED: tl.constexpr,
    S_BF16: tl.constexpr,
    IN_BF16: tl.constexpr,
    MAXABS: tl.constexpr,
    BLOCK_T: tl.constexpr,
    DP: tl.constexpr,
):
    """x [N, D] -> packed codes [N, ceil(D / 8) * BITS]; FUSED also computes and stores s / z."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    cols = tl.arange(0, DP)  # [DP]
    rmask = rows < N
    cmask = cols < D
    mask = rmask[:, None] & cmask[None, :]  # [BLOCK_T, DP]
    x = load_f32(x_ptr, rows[:, None] * D + cols[None, :], mask, IN_BF16)  # [BLOCK_T, DP]
    x, bad = sanitize(x, MAXABS)
    tl.store(flag_ptr + pid, tl.sum(bad.to(tl.int32)))
    if FUSED:
        lo = tl.where(mask, x, float("inf"))  # [BLOCK_T, DP]
        hi = tl.where(mask, x, -float("inf"))  # [BLOCK_T, DP]
        if MODE == 0:  # TOKEN: reduce each row
            mn = tl.min(lo, axis=1)  # [BLOCK_T]
            mx = tl.max(hi, axis=1)  # [BLOCK_T]
            s1, z1 = _store_params(mn, mx, s_ptr, z_ptr, rows, rmask, 0, SYM, QMAX_F, 1.0)
            s = tl.broadcast_to(s1[:, None], [BLOCK_T, DP])
            z = tl.broadcast_to(z1[:, None], [BLOCK_T, DP])
        elif MODE == 1:  # GROUP, GS a power of two: [BLOCK_T, NG, GS]
            NG: tl.constexpr = DP // GS
            mn = tl.min(tl.reshape(lo, [BLOCK_T, NG, GS]), axis=2)  # [BLOCK_T, NG]
            mx = tl.max(tl.reshape(hi, [BLOCK_T, NG, GS]), axis=2)  # [BLOCK_T, NG]
            g = tl.arange(0, NG)  # [NG]
            sidx = rows[:, None] * (D // GS) + g[None, :]  # [BLOCK_T, NG]
            smask = rmask[:, None] & (g < D // GS)[None, :]
            s2, z2 = _store_params(mn, mx, s_ptr, z_ptr, sidx, smask, 0, SYM, QMAX_F, 1.0)
            s = tl.reshape(tl.broadcast_to(s2[:, :, None], [BLOCK_T, NG, GS]), [BLOCK_T, DP])
            z = tl.reshape(tl.broadcast_to(z2[:, :, None], [BLOCK_T, NG, GS]), [BLOCK_T, DP])
        else:  # CHANNEL, GS a power of two dividing BLOCK_T: [NB, GS, DP]
            NB: tl.constexpr = BLOCK_T // GS
            mn = tl.min(tl.reshape(lo, [NB, GS, DP]), axis=1)  # [NB, DP]
            mx = tl.max(tl.reshape(hi, [NB, GS, DP]), axis=1)  # [NB, DP]
            grp = pid.to(tl.int64) * NB + tl.arange(0, NB)  # [NB] token-group index
            sidx = grp[:, None] * D + cols[None, :]  # [NB, DP]
            smask = (grp * GS < N)[:, None] & cmask[None, :]
            s2, z2 = _store_params(mn, mx, s_ptr, z_ptr, sidx, smask, 0, SYM, QMAX_F, 1.0)
            s = tl.reshape(tl.broadcast_to(s2[:, None, :], [NB, GS, DP]), [BLOCK_T, DP])
            z = tl.reshape(tl.broadcast_to(z2[:, None, :], [NB, GS, DP]), [BLOCK_T, DP])
        s = tl.where(mask, s, 1.0)
    else:
        s, z = _gather_params(s_ptr, z_ptr, rows, cols, rmask, mask, D, MODE, GS, SYM, S_BF16, BLOCK_T, DP)
    if SYM:  # round(x / s).clamp(-qmax, qmax) + 2^(b-1); clamping first is equal (integer bounds)
        y = tl.math.div_rn(x, s)
        ok = mask & (y == y)  # NaN only from a frozen scale of 0 (undefined in the reference)
        q = rne(tl.minimum(tl.maximum(y, -QMAX_F), QMAX_F)) + (QMAX_F + 1.0)
    else:  # round((x - z) / s).clamp(0, qmax)
        y = tl.math.div_rn(x - z, s)
        ok = mask & (y == y)
        q = rne(tl.minimum(tl.maximum(y, 0.0), QMAX_F))
    codes = tl.where(ok, q, 0.0).to(tl.int64)  # [BLOCK_T, DP]; padding columns hold code 0
    # pack: 8 codes -> 64-bit word sum(code_i << (BITS * i)) -> its low BITS bytes
    i8 = tl.arange(0, 8)  # [8]
    c3 = tl.reshape(codes, [BLOCK_T, DP // 8, 8])  # [BLOCK_T, DP/8, 8]
    word = tl.sum(c3 << (i8.to(tl.int64) * BITS)[None, None, :], axis=2)  # [BLOCK_T, DP/8]
    byt = (word[:, :, None] >> (i8.to(tl.int64) * 8)[None, None, :]) & 255  # [BLOCK_T, DP/8, 8]
    blk = tl.arange(0, DP // 8)  # [DP/8]
    W: tl.constexpr = (D + 7) // 8 * BITS
    ooffs = rows[:, None, None] * W + (blk * BITS)[None, :, None] + i8[None, None, :]
    omask = rmask[:, None, None] & (blk * 8 < D)[None, :, None] & (i8 < BITS)[None, None, :]
    tl.store(out_ptr + ooffs, byt.to(tl.uint8), mask=omask)


@triton.jit
def _int_dequant_kernel(
    q_ptr,
    s_ptr,
    z_ptr,
    out_ptr,
    N,
    D: tl.constexpr,
    BITS: tl.constexpr,
    SYM: tl.constexpr,
    MODE: tl.constexpr,
    GS: tl.constexpr,
    S_BF16: tl.constexpr,
    OUT: tl.constexpr,
    HALF_F: tl.constexpr,
    BLOCK_T: tl.constexpr,
    DP: tl.constexpr,
):
    """Packed codes [N, ceil(D / 8) * BITS] -> values [N, D]: (c - 2^(b-1)) * s or c * s + z."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    rmask = rows < N
    i8 = tl.arange(0, 8)  # [8]
    blk = tl.arange(0, DP // 8)  # [DP/8]
    W: tl.constexpr = (D + 7) // 8 * BITS
    boffs = rows[:, None, None] * W + (blk * BITS)[None, :, None] + i8[None, None, :]
    bmask = rmask[:, None, None] & (blk * 8 < D)[None, :, None] & (i8 < BITS)[None, None, :]
    byt = tl.load(q_ptr + boffs, mask=bmask, other=0).to(tl.int64)  # [BLOCK_T, DP/8, 8]
    word = tl.sum(byt << (i8.to(tl.int64) * 8)[None, None, :], axis=2)  # [BLOCK_T, DP/8]
    c3 = (word[:, :, None] >> (i8.to(tl.int64) * BITS)[None, None, :]) & ((1 << BITS) - 1)
    codes = tl.reshape(c3, [BLOCK_T, DP]).to(tl.float32)  # [BLOCK_T, DP]
    cols = tl.arange(0, DP)  # [DP]
    mask = rmask[:, None] & (cols < D)[None, :]  # [BLOCK_T, DP]
    s, z = _gather_params(s_ptr, z_ptr, rows, cols, rmask, mask, D, MODE, GS, SYM, S_BF16, BLOCK_T, DP)
    if SYM:
        out = (codes - HALF_F) * s
    else:
        out = codes * s + z  # two roundings: launched with enable_fp_fusion=False
    store_out(out_ptr, rows[:, None] * D + cols[None, :], out, mask, OUT)


@triton.jit
def _fp8_scale_tile(
    s_ptr, rows, rmask, offs, T, PER_ROW: tl.constexpr, BLOCK_T: tl.constexpr, DP: tl.constexpr
):
    """The FP8 scale for every element of the tile: one per leading row p = n // T, or one value."""
    if PER_ROW:
        s = tl.load(s_ptr + rows // T, mask=rmask, other=1.0)  # [BLOCK_T]
        return tl.broadcast_to(s[:, None], [BLOCK_T, DP])
    else:
        return tl.load(s_ptr + offs * 0)  # [BLOCK_T, DP], one value


@triton.jit
def _fp8_quant_kernel(
    x_ptr,
    s_ptr,
    out_ptr,
    flag_ptr,
    N,
    T,
    D: tl.constexpr,
    PER_ROW: tl.constexpr,
    IN_BF16: tl.constexpr,
    MAXABS: tl.constexpr,
    MBITS: tl.constexpr,
    BIAS: tl.constexpr,
    FMAX: tl.constexpr,
    MIN_NORMAL: tl.constexpr,
    SUB_SCALE: tl.constexpr,
    RTZ: tl.constexpr,
    BLOCK_T: tl.constexpr,
    DP: tl.constexpr,
):
    """x [N = P * T, D] -> FP8 bytes [N, D] of x / s (s: scalar, or per leading row p = n // T)."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    cols = tl.arange(0, DP)  # [DP]
    rmask = rows < N
    mask = rmask[:, None] & (cols < D)[None, :]  # [BLOCK_T, DP]
    offs = rows[:, None] * D + cols[None, :]  # [BLOCK_T, DP]
    x = load_f32(x_ptr, offs, mask, IN_BF16)  # [BLOCK_T, DP]
    x, bad = sanitize(x, MAXABS)
    tl.store(flag_ptr + pid, tl.sum(bad.to(tl.int32)))
    s2 = _fp8_scale_tile(s_ptr, rows, rmask, offs, T, PER_ROW, BLOCK_T, DP)  # [BLOCK_T, DP]
    y = tl.math.div_rn(x, s2)
    code = fp8_encode(y, MBITS, BIAS, FMAX, MIN_NORMAL, SUB_SCALE, RTZ)  # [BLOCK_T, DP] int32
    tl.store(out_ptr + offs, code.to(tl.uint8), mask=mask)


@triton.jit
def _fp8_dequant_kernel(
    q_ptr,
    s_ptr,
    out_ptr,
    N,
    T,
    D: tl.constexpr,
    PER_ROW: tl.constexpr,
    MBITS: tl.constexpr,
    BIAS: tl.constexpr,
    E4M3: tl.constexpr,
    SUB_QUANTUM: tl.constexpr,
    OUT: tl.constexpr,
    BLOCK_T: tl.constexpr,
    DP: tl.constexpr,
):
    """FP8 bytes [N, D] -> decode(byte) * s, cast to the output dtype."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    cols = tl.arange(0, DP)  # [DP]
    rmask = rows < N
    mask = rmask[:, None] & (cols < D)[None, :]  # [BLOCK_T, DP]
    offs = rows[:, None] * D + cols[None, :]  # [BLOCK_T, DP]
    b = tl.load(q_ptr + offs, mask=mask, other=0).to(tl.int32)  # [BLOCK_T, DP]
    v = fp8_decode(b, MBITS, BIAS, E4M3, SUB_QUANTUM)  # [BLOCK_T, DP] float32
    s2 = _fp8_scale_tile(s_ptr, rows, rmask, offs, T, PER_ROW, BLOCK_T, DP)  # [BLOCK_T, DP]
    store_out(out_ptr, offs, v * s2, mask, OUT)


# ---------------------------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------------------------
def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _row_tile(d: int, n: int) -> tuple[int, int]:
    """(BLOCK_T, DP) for a [n, d] row tile: DP = next_pow2(d) (>= 8 for packing)."""
    dp = max(8, _pow2(d))
    return max(1, min(TILE // dp, _pow2(n))), dp


def _kernel_input(x: torch.Tensor, where: str) -> tuple[torch.Tensor, bool]:
    """Contiguous x as the kernels read it: bf16 as its int16 view (exact widening in-kernel).

    Other float dtypes (float64) are checked on the host (their |x| <= MAX_ABS test is not the
    float32 one) and converted with the reference's ``x.float()``.
    """
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point K/V tensor, got {x.dtype}")
    x = x.contiguous()
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16), True
    if x.dtype in (torch.float16, torch.float32):
        return x, False
    check_input(x, where)
    return x.float(), False


def _param_view(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A parameter tensor as the kernels read it: (bf16 int16 view, True) or (float32, False)."""
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16), True
    return t.float(), False


def _check_flags(flags: torch.Tensor, x: torch.Tensor, where: str) -> None:
    if bool(flags.any()):
        check_input(x, where)  # raises NonFiniteError naming the first bad element
        raise RuntimeError("triton kernels flagged a non-finite element that check_input accepts")


def _failing(x: torch.Tensor, where: str, err: Exception) -> Exception:
    """The reference checks x first: a non-finite x wins over any later argument error."""
    check_input(x, where)
    return err


def _row_params(
    xin: torch.Tensor,
    in_bf16: bool,
    m: int,
    length: int,
    *,
    kind: int,
    sym: bool,
    qmax_f: float,
    fmax: float,
    s_out: torch.Tensor,
    z_out: torch.Tensor,
) -> None:
    """Parameters of each row of x seen as [m, length] (INT GROUP/TENSOR, FP8 tensor/head)."""
    block_l = min(_pow2(length), TILE)
    block_m = max(1, min(TILE // block_l, _pow2(m)))
    c = triton.cdiv(length, block_l)
    final = c == 1
    part = s_out if final else torch.empty(2 * m * c, dtype=torch.float32, device=xin.device)
    grid = (triton.cdiv(m, block_m) * c,)
    _row_stats_kernel[grid](
        xin,
        part,
        s_out,
        z_out,
        m,
        length,
        c,
        IN_BF16=in_bf16,
        MAXABS=F32_MAX_ABS,
        FINAL=final,
        KIND=kind,
        SYM=sym,
        QMAX_F=qmax_f,
        FMAX=fmax,
        BLOCK_M=block_m,
        BLOCK_L=block_l,
        **_LAUNCH,
    )
    if not final:
        _finalize(part, m, c, kind=kind, sym=sym, qmax_f=qmax_f, fmax=fmax, s_out=s_out, z_out=z_out)


def _channel_params(
    xin: torch.Tensor,
    in_bf16: bool,
    o: int,
    gs: int,
    d: int,
    *,
    sym: bool,
    qmax_f: float,
    s_out: torch.Tensor,
    z_out: torch.Tensor,
) -> None:
    """Per-channel parameters over token groups: x as [o, gs, d] -> [o, d]."""
    dp = _pow2(d)
    block_g = max(1, min(TILE // dp, _pow2(gs)))  # tokens per chunk
    block_o = max(1, min(TILE // (dp * block_g), _pow2(o)))  # token groups per program
    c = triton.cdiv(gs, block_g)
    final = c == 1
    m = o * d
    part = s_out if final else torch.empty(2 * m * c, dtype=torch.float32, device=xin.device)
    _channel_stats_kernel[(triton.cdiv(o, block_o) * c,)](
        xin,
        part,
        s_out,
        z_out,
        o,
        c,
        m,
        D=d,
        GS=gs,
        IN_BF16=in_bf16,
        MAXABS=F32_MAX_ABS,
        FINAL=final,
        SYM=sym,
        QMAX_F=qmax_f,
        BLOCK_O=block_o,
        BLOCK_G=block_g,
        DP=dp,
        **_LAUNCH,
    )
    if not final:
        _finalize(part, m, c, kind=_KIND_INT, sym=sym, qmax_f=qmax_f, fmax=1.0, s_out=s_out, z_out=z_out)


def _finalize(
    part: torch.Tensor,
    m: int,
    c: int,
    *,
    kind: int,
    sym: bool,
    qmax_f: float,
    fmax: float,
    s_out: torch.Tensor,
    z_out: torch.Tensor,
) -> None:
    block_c = min(_pow2(c), _FINAL_TILE)
    block_m = max(1, min(_FINAL_TILE // block_c, _pow2(m)))
    _finalize_kernel[(triton.cdiv(m, block_m),)](
        part,
        s_out,
        z_out,
        m,
        c,
        KIND=kind,
        SYM=sym,
        QMAX_F=qmax_f,
        FMAX=fmax,
        BLOCK_M=block_m,
        BLOCK_C=block_c,
        **_LAUNCH,
    )


def kernel_device() -> torch.device:
    """Where the kernels run: CPU under the interpreter, else the current CUDA device."""
    return torch.device("cpu") if INTERPRET else torch.device("cuda", torch.cuda.current_device())


def _check_device(t: torch.Tensor) -> None:
    if not INTERPRET and t.device.type != "cuda":
        raise ValueError(
            f"compiled Triton kernels need CUDA tensors, got one on {t.device}; move it to the GPU, "
            "use backend='torch', or set TRITON_INTERPRET=1 before importing the kernels"
        )


def _check_head_dim(d: int) -> None:
    if d > MAX_HEAD_DIM:
        raise ValueError(
            f"triton kernels support head_dim up to {MAX_HEAD_DIM}, got {d}; use backend='torch'"
        )


def _quantize_int(
    x: torch.Tensor, scheme: IntScheme, scale: torch.Tensor | None, zero: torch.Tensor | None, where: str
) -> QuantizedTensor:
    if x.dim() < 2:
        check_input(x, where)  # raises the reference's shape error
    try:
        o, r, i = group_view(x.shape, scheme)
    except ValueError as e:
        raise _failing(x, where, e) from None
    if x.numel() == 0:
        return quantize_int(x, scheme, scale=scale, zero=zero, where=where)
    d = x.shape[-1]
    _check_device(x)
    _check_head_dim(d)
    n = x.numel() // d
    sym, bits = scheme.symmetric, scheme.bits
    qmax_f = float(scheme.qmax)
    mode = _MODE[scheme.granularity]
    gs = scheme.group_size or 1
    dev = x.device
    xin, in_bf16 = _kernel_input(x, where)

    block_t, dp = _row_tile(d, n)
    fused = False
    if scale is not None:  # frozen grid: the kernels read float32 scale (and zero) [O, I]
        try:
            s = scale.float().reshape(o, i)
            z = None if zero is None else zero.float().reshape(o, i)
            if z is None and not sym:
                raise ValueError("an asymmetric scheme needs both scale and zero to freeze its grid")
        except (ValueError, RuntimeError) as e:
            raise _failing(x, where, e) from None
        s_arg, s_bf16 = _param_view(s.to(dev))
        z_arg = s_arg if z is None else _param_view(z.to(dev))[0]
        scale_out = s.to(torch.bfloat16)
        zero_out = None if z is None else z.to(torch.bfloat16)
    else:
        scale_out = torch.empty((o, i), dtype=torch.bfloat16, device=dev)
        zero_out = None if sym else torch.empty((o, i), dtype=torch.bfloat16, device=dev)
        s_arg, s_bf16 = scale_out.view(torch.int16), True
        z_arg = s_arg if zero_out is None else zero_out.view(torch.int16)
        pow2_group = gs & (gs - 1) == 0
        if scheme.granularity is Granularity.TOKEN:
            fused = True
        elif scheme.granularity is Granularity.GROUP and pow2_group:
            fused = True
        elif scheme.granularity is Granularity.CHANNEL and pow2_group and gs * dp <= 2 * TILE:
            fused = True
            block_t = max(block_t, gs)  # a whole number of token groups per tile
        elif scheme.granularity is Granularity.CHANNEL:
            _channel_params(xin, in_bf16, o, gs, d, sym=sym, qmax_f=qmax_f, s_out=s_arg, z_out=z_arg)
        else:  # GROUP with another G ([N * D / G, G] rows), TENSOR ([1, N * D])
            _row_params(
                xin, in_bf16, o, r, kind=_KIND_INT, sym=sym, qmax_f=qmax_f, fmax=1.0, s_out=s_arg, z_out=z_arg
            )

    out = torch.empty((*x.shape[:-1], -(-d // 8) * bits), dtype=torch.uint8, device=dev)
    grid = (triton.cdiv(n, block_t),)
    flags = torch.zeros(grid[0], dtype=torch.int32, device=dev)
    _int_quant_kernel[grid](
        xin,
        s_arg,
        z_arg,
        out,
        flags,
        n,
        D=d,
        BITS=bits,
        SYM=sym,
        QMAX_F=qmax_f,
        MODE=mode,
        GS=gs,
        FUSED=fused,
        S_BF16=s_bf16,
        IN_BF16=in_bf16,
        MAXABS=F32_MAX_ABS,
        BLOCK_T=block_t,
        DP=dp,
        **_LAUNCH,
    )
    _check_flags(flags, x, where)
    return QuantizedTensor(
        data=out, scale=scale_out, zero=zero_out, shape=x.shape, dtype=x.dtype, scheme=scheme
    )


def _fp8_scale_layout(s: torch.Tensor, p: int) -> bool:
    """Whether a float32 FP8 scale is per leading row (True) or one value (False)."""
    if s.dim() == 0 or (s.dim() == 1 and s.numel() == 1):
        return False
    if s.dim() == 1 and s.numel() == p:
        return True
    raise ValueError(
        f"fp8 scale must be a scalar or have {p} entries (one per leading row), got {tuple(s.shape)}"
    )


def _quantize_fp8(
    x: torch.Tensor, scheme: Fp8Scheme, scale: torch.Tensor | None, where: str
) -> QuantizedTensor:
    if x.dim() < 2:
        check_input(x, where)
    if x.numel() == 0:
        return quantize_fp8(x, scheme, scale=scale, where=where)
    *lead, t, d = x.shape
    _check_device(x)
    _check_head_dim(d)
    p = math.prod(lead)
    n = p * t
    dev = x.device
    fmax = FP8_MAX[scheme.fmt]
    mbits, bias, min_normal, sub_scale, _ = _FP8_CONST[scheme.fmt]
    xin, in_bf16 = _kernel_input(x, where)
    if scale is not None:
        s = scale.float()
        try:
            per_row = _fp8_scale_layout(s, p)
        except ValueError as e:
            raise _failing(x, where, e) from None
        s_arg = s.to(dev).contiguous()
    elif scheme.scale == "one":
        s = s_arg = torch.ones((), dtype=torch.float32, device=dev)
        per_row = False
    else:
        per_row = scheme.scale == "head"
        m, length = (p, t * d) if per_row else (1, n * d)
        s = s_arg = torch.empty((p,) if per_row else (), dtype=torch.float32, device=dev)
        _row_params(
            xin, in_bf16, m, length, kind=_KIND_FP8, sym=True, qmax_f=1.0, fmax=fmax, s_out=s_arg, z_out=s_arg
        )
    out = torch.empty(x.shape, dtype=torch.uint8, device=dev)
    block_t, dp = _row_tile(d, n)
    grid = (triton.cdiv(n, block_t),)
    flags = torch.zeros(grid[0], dtype=torch.int32, device=dev)
    _fp8_quant_kernel[grid](
        xin,
        s_arg,
        out,
        flags,
        n,
        t,
        D=d,
        PER_ROW=per_row,
        IN_BF16=in_bf16,
        MAXABS=F32_MAX_ABS,
        MBITS=mbits,
        BIAS=bias,
        FMAX=fmax,
        MIN_NORMAL=min_normal,
        SUB_SCALE=sub_scale,
        RTZ=scheme.rounding == "rtz",
        BLOCK_T=block_t,
        DP=dp,
        **_LAUNCH,
    )
    _check_flags(flags, x, where)
    return QuantizedTensor(data=out, scale=s, zero=None, shape=x.shape, dtype=x.dtype, scheme=scheme)


def quantize(
    x: torch.Tensor,
    scheme: IntScheme | Fp8Scheme,
    *,
    scale: torch.Tensor | None = None,
    zero: torch.Tensor | None = None,
    where: str = "",
) -> QuantizedTensor:
    """x [*lead, T, D] -> stored form, equal to the torch reference's. ``scale``/``zero`` freeze a grid."""
    if isinstance(scheme, IntScheme):
        return _quantize_int(x, scheme, scale, zero, where)
    if isinstance(scheme, Fp8Scheme):
        return _quantize_fp8(x, scheme, scale, where)
    raise TypeError(f"no quantizer for scheme {scheme!r}")


def _out_buffer(
    shape: torch.Size, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(result tensor, what the kernel writes, OUT code). Other dtypes: float32, cast on the host."""
    kind = _OUT.get(dtype, OUT_F32)
    out = torch.empty(shape, dtype=dtype if dtype in _OUT else torch.float32, device=device)
    return out, (out.view(torch.int16) if kind == OUT_BF16 else out), kind


def dequantize(q: QuantizedTensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Stored form -> tensor of the original shape, in ``dtype`` (default: the original dtype)."""
    target = dtype or q.dtype
    shape = q.shape
    scheme = q.scheme
    if math.prod(shape) == 0:
        from .api import dequantize as ref_dequantize

        return ref_dequantize(q, backend="torch", dtype=dtype)
    *lead, t, d = shape
    _check_device(q.data)
    _check_head_dim(d)
    n = math.prod(shape) // d
    dev = q.data.device
    out, out_arg, kind = _out_buffer(shape, target, dev)
    block_t, dp = _row_tile(d, n)
    grid = (triton.cdiv(n, block_t),)
    data = q.data.contiguous()
    if isinstance(scheme, IntScheme):
        o, _, i = group_view(shape, scheme)
        s_arg, s_bf16 = _param_view(q.scale.reshape(o, i))
        if not scheme.symmetric:
            assert q.zero is not None
            if s_bf16 and q.zero.dtype == torch.bfloat16:
                z_arg = q.zero.contiguous().view(torch.int16)
            else:
                s_arg, s_bf16 = q.scale.float().contiguous(), False
                z_arg = q.zero.float().contiguous()
        else:
            z_arg = s_arg
        _int_dequant_kernel[grid](
            data,
            s_arg,
            z_arg,
            out_arg,
            n,
            D=d,
            BITS=scheme.bits,
            SYM=scheme.symmetric,
            MODE=_MODE[scheme.granularity],
            GS=scheme.group_size or 1,
            S_BF16=s_bf16,
            OUT=kind,
            HALF_F=float(1 << (scheme.bits - 1)),
            BLOCK_T=block_t,
            DP=dp,
            **_LAUNCH,
        )
    elif isinstance(scheme, Fp8Scheme):
        s = q.scale.float()
        per_row = _fp8_scale_layout(s, math.prod(lead))
        mbits, bias, _, _, sub_quantum = _FP8_CONST[scheme.fmt]
        _fp8_dequant_kernel[grid](
            data,
            s.contiguous(),
            out_arg,
            n,
            t,
            D=d,
            PER_ROW=per_row,
            MBITS=mbits,
            BIAS=bias,
            E4M3=scheme.fmt == "e4m3",
            SUB_QUANTUM=sub_quantum,
            OUT=kind,
            BLOCK_T=block_t,
            DP=dp,
            **_LAUNCH,
        )
    else:
        raise TypeError(f"no dequantizer for scheme {scheme!r}")
    return out if out.dtype == target else out.to(target)
