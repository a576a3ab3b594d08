"""A fused CPU fast path for INT-k per-token and per-group quantization (``torch.compile``, inductor).

Covers :class:`IntScheme` with TOKEN granularity or GROUP granularity (G along head_dim), any bit
width, symmetric and asymmetric, on float CPU tensors (``fused_supports`` says which schemes).
Results are ``torch.equal`` to the torch reference (int_ref.py, packing.py) on the packed codes,
the bf16 scale and zero, and the dequantized tensor: the compiled graphs do the reference's float32
operations in the same order (true division, no reciprocal; FMA contraction and unsafe math forced
off), so they round identically. tests/kernels/test_fused.py checks this.

Each quantize call runs one compiled C++ kernel (OpenMP, vectorized) with three parallel loops:
per-group min/max, per-group bf16 scale and zero, then codes computed and packed straight into
the output bytes (bits 2, 4, 8; bits 3, 5, 6, 7 go through a code buffer first). So the input is
read twice, the first two loops' outputs are 1/G of its size, and no float32 copy is ever made.
Each dequantize call is one loop (unpack, scale, cast). When the group size G is a multiple
of 8 (every real head_dim, per token or g32/g64/g128), the graphs see the tensor as
[groups, G] with both sizes dynamic, so one graph per (operation, bits, dtype) serves every
shape, token count and group size; other shapes get a graph per (bits, G, head_dim). Symmetric and
asymmetric share graphs (the constants that differ are a runtime tensor). Compilation happens on
the first call of each variant (seconds: inductor generates C++ and runs gcc; it caches the result
on disk under TORCHINDUCTOR_CACHE_DIR), never at import.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from kvsafety_tests.spec import Granularity, IntScheme

from .int_ref import dequantize_int, group_view, quantize_int
from .packing import packed_width
from .stored import MAX_ABS, QuantizedTensor, check_input

__all__ = ["dequantize_fused", "fused_supports", "quantize_fused"]

_FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
# Bit-exactness needs these inductor C++ flags: no a*b+c -> fma, no unsafe reassociation.
_COMPILE_OPTIONS: dict[str, Any] = {
    "cpp.enable_floating_point_contract_flag": "off",
    "cpp.enable_unsafe_math_opt_flag": False,
    # Speed only: the graphs are compiled with dynamic sizes, and inductor decides whether to run a
    # loop in parallel from the sizes seen at compile time; without this a small first call makes
    # the per-group scale loop single-threaded for every later (large) call.
    "cpp.min_chunk_size": 1,
}
# Quantize only, speed only: store each group's scale and zero once instead of recomputing their
# ~30-op chain for every vector of the group (a quarter of the kernel's time otherwise). Not for
# dequantize, where it would materialize a float32 copy of the codes.
_QUANTIZE_OPTIONS: dict[str, Any] = {**_COMPILE_OPTIONS, "realize_opcount_threshold": 8}
_LOW16 = 0xFFFF

# A graph key: (operation, bits, word-input flag or output dtype, static (G, D) or None for [groups, G]).
_Key = tuple[str, int, Any, tuple[int, int] | None]


# -- what the fast path covers -------------------------------------------------------------
def _unsupported(scheme: object) -> str | None:
    """Why ``scheme`` is outside the fused path, or None if it is covered."""
    if not isinstance(scheme, IntScheme):
        return f"scheme {scheme} (not an INT scheme)"
    if scheme.granularity not in (Granularity.TOKEN, Granularity.GROUP):
        return f"scheme {scheme} ({scheme.granularity.value} granularity)"
    return None


def fused_supports(scheme: object) -> bool:
    """True if quantize_fused / dequantize_fused cover ``scheme`` (INT, per token or per group)."""
    return _unsupported(scheme) is None


def _require(scheme: object) -> IntScheme:
    why = _unsupported(scheme)
    if why is not None:
        raise ValueError(
            f"the fused CPU path does not cover {why}; it covers INT-k with token or g<G> "
            "granularity (use kvsafety_tests.kernels.api.quantize / dequantize for the others)"
        )
    assert isinstance(scheme, IntScheme)
    return scheme


def _group_size(scheme: IntScheme, d: int) -> int:
    return d if scheme.granularity is Granularity.TOKEN else scheme.group_size  # type: ignore[return-value]


# -- graph pieces (traced by dynamo) -----------------------------------------------------------
def _bf16_up(a: torch.Tensor) -> torch.Tensor:
    """float32 -> smallest bf16 value >= a, as float32 (rounding.bf16_round_up)."""
    trunc = a.view(torch.int32) & ~_LOW16
    t = trunc.view(torch.float32)
    return torch.where(t < a, (trunc + (1 << 16)).view(torch.float32), t)


def _bf16_down(a: torch.Tensor) -> torch.Tensor:
    """float32 -> largest bf16 value <= a, as float32 (rounding.bf16_round_down)."""
    trunc = a.view(torch.int32) & ~_LOW16
    t = trunc.view(torch.float32)
    return torch.where(t > a, (trunc + (1 << 16)).view(torch.float32), t)


def _bf16_words(w: torch.Tensor, k: int) -> list[torch.Tensor]:
    """int32 (k=2) / int64 (k=4) words [...] holding k bf16 values -> k float32 tensors [...], exact."""
    if k == 2:
        return [(w << 16).view(torch.float32), (w & ~_LOW16).view(torch.float32)]
    return [((w >> (16 * i)) << 16).to(torch.int32).view(torch.float32) for i in range(k)]


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [N, D] -> packed uint8 [N, packed_width(D, bits)] (packing.py's layout)."""
    n, d = codes.shape
    blocks = -(-d // 8)
    if blocks * 8 != d:
        codes = F.pad(codes, (0, blocks * 8 - d))  # [N, blocks * 8], zero codes in the padding
    if bits == 8:
        return codes
    c = codes.view(n, blocks, 8)  # [N, blocks, 8]
    out = []
    for j in range(bits):  # byte j of each block of 8 codes
        acc: torch.Tensor | None = None
        for i in range(8):
            lo = bits * i
            if lo + bits <= 8 * j or lo >= 8 * (j + 1):
                continue  # code i has no bit in byte j
            shift = lo - 8 * j
            part = c[:, :, i] << shift if shift >= 0 else c[:, :, i] >> -shift  # uint8: wraps = & 0xFF
            acc = part if acc is None else acc | part
        assert acc is not None
        out.append(acc)
    return torch.stack(out, dim=-1).view(n, blocks * bits)  # [N, blocks * bits]


def _unpack(data: torch.Tensor, bits: int, d: int | None) -> torch.Tensor:
    """packed uint8 [N, W] -> uint8 codes [N, d] (d=None: all W * 8 / bits of them)."""
    n, width = data.shape
    if bits == 8:
        codes = data  # [N, blocks * 8]
    else:
        b = data.view(n, width // bits, bits)  # [N, blocks, bits]
        mask = (1 << bits) - 1
        parts = []
        for i in range(8):
            j, shift = divmod(bits * i, 8)
            v = b[:, :, j] >> shift
            if shift + bits > 8:  # the code straddles bytes j and j + 1
                v = v | (b[:, :, j + 1] << (8 - shift))
            parts.append(v & mask)
        codes = torch.stack(parts, dim=-1).view(n, -1)  # [N, blocks * 8]
    return codes if d is None or d == codes.shape[1] else codes[:, :d]


def _codes(x: torch.Tensor, z: torch.Tensor, s: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """float32 x [O, ...] -> uint8 codes; z, s [O, 1] broadcast over the rest."""
    q = torch.round((x - z) / s)  # symmetric: z == +0 and x - 0 == x exactly, the reference formula
    return (q + offset).to(torch.uint8)  # no clamp: see _make_quantize


def _scale_zero(
    mn: torch.Tensor, mx: torch.Tensor, params: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group min/max [...] -> (scale, zero, offset, non-finite flag), as int_ref.int_params."""
    bad = ((mx <= MAX_ABS) & (mn >= -MAX_ABS)).logical_not()  # check_input's test; NaN propagates
    qmax, offset, sym = params[0], params[1], params[2] > 0.5
    z = torch.where(sym, torch.zeros_like(mn), _bf16_down(mn))
    rng = torch.where(sym, torch.maximum(-mn, mx), mx - z)  # amax = max(-min, max), or max - zero
    s = _bf16_up(rng / qmax)
    s = torch.where(s == 0, torch.ones_like(s), s)
    return s, z, offset, bad


def _make_quantize(bits: int, word: bool, static: tuple[int, int] | None) -> Callable[..., Any]:
    """The quantize graph for ``bits``; ``static`` = (G, D) for the fixed-shape fallback.

    Input layouts: with ``static`` None, x [O, G] (one row per scale group, G % 8 == 0), or for
    bf16 and bits 2 / 4 (``word``) the same memory as int32 / int64 words [O, G / k], each holding
    the k = 8 / bits values that share one output byte, so loads and stores stay contiguous.
    Otherwise x [N, D], G | D, packed with packing.py's general layout (padding when D % 8 != 0).

    The reference clamps the rounded quotient to [0, qmax] (asymmetric) or [-qmax, qmax]
    (symmetric). For finite input within MAX_ABS (anything else raises) the clamp never binds,
    so these graphs leave it out (it cost about a fifth of the kernel's time). Asymmetric:
    z = down(min) <= x, so fl(x - z) >= 0 and the code is >= 0; fl(x - z) <= fl(max - z) = r
    (rounding is monotonic) and s >= fl(r / qmax) >= (r / qmax)(1 - 2^-24) when that quotient is
    normal, so fl(r / s) <= qmax (1 + 2^-23) < qmax + 1/2; when it is subnormal, s is at least the
    smallest bf16 subnormal 2^-133 and fl(r / qmax) is off by at most 2^-150, so
    r / s <= qmax (1 + 2^-17); when it is 0, s = 1 and r < 2^-142 rounds to code 0. Symmetric: the
    same with r = amax and |x| <= amax. tests/kernels/test_fused.py checks boundary cases against the
    reference.
    """
    k = 8 // bits
    by_byte = 8 % bits == 0  # k whole codes per byte

    def quantize_rows(
        x: torch.Tensor, params: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        # x [O, G] float, or [O, G/k] int words of bf16; params float32 [3] = (qmax, offset, symmetric)
        o = x.shape[0]
        if word:
            parts = _bf16_words(x, k)  # k x [O, G/k]: value i of every word
            mn = torch.stack([p.amin(dim=-1, keepdim=True) for p in parts]).amin(dim=0)  # [O, 1]
            mx = torch.stack([p.amax(dim=-1, keepdim=True) for p in parts]).amax(dim=0)  # [O, 1]
        else:
            xf = x.float()  # [O, G]
            mn = xf.amin(dim=-1, keepdim=True)  # [O, 1]; min and max propagate NaN
            mx = xf.amax(dim=-1, keepdim=True)
            if by_byte:
                xk = xf.view(o, -1, k)  # [O, G/k, k]
                parts = [xk[..., i] for i in range(k)]  # k x [O, G/k], strided
        s, z, offset, bad = _scale_zero(mn, mx, params)  # [O, 1] each
        if by_byte:  # byte m of a row holds values k*m .. k*m+k-1, value i in bits i*b .. i*b+b-1
            data = _codes(parts[0], z, s, offset)  # [O, G/k]
            for i in range(1, k):
                data = data | (_codes(parts[i], z, s, offset) << (bits * i))
        else:
            data = _pack(_codes(xf, z, s, offset), bits)  # [O, G * bits / 8]
        return data, s.to(torch.bfloat16), z.to(torch.bfloat16), bad.view(-1)

    def quantize_static(
        x: torch.Tensor, params: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        # x [N, D] float; params as above
        assert static is not None
        group, d = static
        n = x.shape[0]
        xg = x.float().view(n, d // group, group)  # [N, D/G, G]
        mn = xg.amin(dim=-1, keepdim=True)  # [N, D/G, 1]
        mx = xg.amax(dim=-1, keepdim=True)
        s, z, offset, bad = _scale_zero(mn, mx, params)  # [N, D/G, 1] each
        data = _pack(_codes(xg, z, s, offset).view(n, d), bits)  # [N, packed_width(D, bits)]
        scale = s.view(-1, 1).to(torch.bfloat16)  # [O, 1]; exact, s holds a bf16 value
        return data, scale, z.view(-1, 1).to(torch.bfloat16), bad.view(-1)

    return quantize_rows if static is None else quantize_static


def _to_output(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 -> dtype as stored.to_output: float16 first clamped to +-65504 (no overflow to inf)."""
    if dtype == torch.float16:
        values = values.clamp(-65504.0, 65504.0)
    return values.to(dtype)


def _make_dequantize(bits: int, dtype: torch.dtype, static: tuple[int, int] | None) -> Callable[..., Any]:
    """The dequantize graph for ``bits`` and output ``dtype``; ``static`` as in _make_quantize."""

    def dequantize_rows(
        data: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, offset: torch.Tensor
    ) -> torch.Tensor:
        # data [O, G * bits / 8] uint8; scale, zero [O, 1] bf16 (zero all 0 when symmetric); offset []
        codes = _unpack(data, bits, None)  # [O, G]
        # symmetric: (c - 2^(b-1)) * s + 0 == the reference's (c - 2^(b-1)) * s; asymmetric: c * s + z
        out = (codes.float() - offset) * scale.float() + zero.float()
        return _to_output(out, dtype)  # [O, G]

    def dequantize_static(
        data: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, offset: torch.Tensor
    ) -> torch.Tensor:
        # data [N, W] uint8; scale, zero [N * D/G, 1] bf16; offset []
        assert static is not None
        group, d = static
        n = data.shape[0]
        cg = _unpack(data, bits, d).float().view(n, d // group, group)  # [N, D/G, G]
        s = scale.float().view(n, d // group, 1)
        z = zero.float().view(n, d // group, 1)
        return _to_output(((cg - offset) * s + z).view(n, d), dtype)  # [N, D]

    return dequantize_rows if static is None else dequantize_static


# -- compiled-graph cache --------------------------------------------------------------------
_lock = threading.Lock()
_graphs: dict[_Key, Callable[..., Any]] = {}
_params: dict[tuple[Any, ...], torch.Tensor] = {}


def _compiled(key: _Key) -> Callable[..., Any]:
    """The compiled graph for ``key``, created (not yet compiled: that happens on its first call) once.

    Each variant gets its own code object, named after the key, so dynamo's per-code-object
    recompile limit never sends a variant back to eager, and profiles name the variant.
    """
    fn = _graphs.get(key)
    if fn is not None:
        return fn
    with _lock:
        fn = _graphs.get(key)
        if fn is None:
            op, bits, flavour, static = key
            body = (
                _make_quantize(bits, flavour, static)
                if op == "q"
                else _make_dequantize(bits, flavour, static)
            )
            name = re.sub(r"\W+", "_", f"kvsafety_fused_{op}_int{bits}_{flavour}_{static}").strip("_")
            body.__code__ = body.__code__.replace(co_name=name)
            body.__name__ = body.__qualname__ = name
            options = _QUANTIZE_OPTIONS if op == "q" else _COMPILE_OPTIONS
            fn = torch.compile(body, fullgraph=True, options=options)
            _graphs[key] = fn
    return fn


_warm: set[tuple[Any, ...]] = set()


def _run(key: _Key, *args: torch.Tensor) -> Any:
    """Call the graph for ``key``. The first call per input dtype compiles: torch internals warn
    then (a torch.jit deprecation on importing dynamo, inductor's "bf16 and fp16 are mixed" for
    fp16 tensors with bf16 scales), and these warnings, about torch and not the caller, are
    silenced for that call only."""
    fn = _compiled(key)
    sig = (key, args[0].dtype)
    if sig in _warm:
        return fn(*args)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="bf16 and fp16 are mixed", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        out = fn(*args)
    _warm.add(sig)
    return out


def _param_tensor(key: tuple[Any, ...], values: tuple[float, ...]) -> torch.Tensor:
    t = _params.get(key)
    if t is None:
        t = torch.tensor(values, dtype=torch.float32)
        _params[key] = t
    return t


def _offset(scheme: IntScheme) -> float:
    return float(1 << (scheme.bits - 1)) if scheme.symmetric else 0.0


def _check_device(t: torch.Tensor, what: str) -> None:
    if t.device.type != "cpu":
        raise ValueError(
            f"the fused path is CPU only; {what} is on {t.device} (use backend='triton' on CUDA)"
        )


def _dynamic(t: torch.Tensor, *dims: int) -> torch.Tensor:
    for dim in dims:
        torch._dynamo.maybe_mark_dynamic(t, dim)
    return t


# -- public API ------------------------------------------------------------------------------
def quantize_fused(x: torch.Tensor, scheme: IntScheme, *, where: str = "") -> QuantizedTensor:
    """x [*lead, T, D] float CPU tensor -> the reference's stored form, in one compiled kernel.

    Equal (``torch.equal`` on data, scale, zero, and same shapes) to
    ``api.quantize(x, scheme, backend="torch", where=where)``. Raises ValueError for schemes outside
    the fast path (per-tensor, per-channel, FP8), non-float dtypes and non-CPU tensors, and the
    reference's ValueError when G does not divide D. A non-contiguous x is copied first. As in
    the reference quantizer, ``scheme.outliers`` is not acted on here (QuantizedStream splits the
    outlier channels off before it quantizes). Inputs with a single scale group (and empty ones)
    are handed to the reference: same result, and no recompilation for a size-1 dimension.

    Non-finite input (inf, NaN, or |x| > MAX_ABS) raises the reference's ``NonFiniteError`` with
    the same message. What that check costs here: almost nothing. The kernel already has every
    group's min and max (NaN propagates through both), so the test is two comparisons per scale
    group, written as one bool per group (1/G of the element count), then an eager ``any()``
    over those bools and one host read of the result; only when a group is bad does the
    reference ``check_input`` run (a full extra pass, to name the first bad element). The
    reference runs ``check_input`` up front on every call instead: isfinite, abs, compare, or and
    any over the whole input, with input-sized temporaries, several extra passes over memory.
    """
    scheme = _require(scheme)
    if x.dim() < 2:
        check_input(x, where)  # raises the reference's shape error
    _check_device(x, "the input")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"the fused path quantizes float tensors, got {x.dtype}")
    group_view(x.shape, scheme)  # raises the reference's error when G does not divide D
    d = x.shape[-1]
    group = _group_size(scheme, d)
    rows = x.numel() // (group if group % 8 == 0 else d)
    if rows < 2:  # empty (the reference raises) or one row: a size-1 dim would cost a recompile
        return quantize_int(x, scheme, where=where)
    bits = scheme.bits
    k = 8 // bits  # values per byte when bits divides 8
    x = x.detach().contiguous()
    if group % 8 == 0:
        word = x.dtype == torch.bfloat16 and bits in (2, 4)
        x2 = x.view(-1, group)  # [O, G]: one row per scale group
        if word:
            if x2.storage_offset() % k:
                x2 = x2.clone()  # a word view needs a word-aligned element offset
            x2 = x2.view(torch.int32 if k == 2 else torch.int64)  # [O, G/k]
        key: _Key = ("q", bits, word, None)
        x2 = _dynamic(x2, 0, 1)
    else:
        key = ("q", bits, False, (group, d))
        x2 = _dynamic(x.view(-1, d), 0)  # [N, D]
    params = _param_tensor(
        ("q", bits, scheme.symmetric), (float(scheme.qmax), _offset(scheme), float(scheme.symmetric))
    )
    with torch.no_grad():
        data, scale, zero, bad = _run(key, x2, params)
    if bool(bad.any()):
        check_input(x, where)  # raises NonFiniteError with the reference's message
        raise AssertionError("fused non-finite test disagrees with check_input")  # pragma: no cover
    return QuantizedTensor(
        data=data.view(*x.shape[:-1], packed_width(d, bits)),  # [*lead, T, W]
        scale=scale,  # [O, 1] bf16
        zero=None if scheme.symmetric else zero,  # [O, 1] bf16
        shape=x.shape,
        dtype=x.dtype,
        scheme=scheme,
    )


def dequantize_fused(q: QuantizedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Stored INT form (token / group) -> tensor of the original shape, in ``dtype`` (default: original).

    Equal (``torch.equal``) to ``api.dequantize(q, backend="torch", dtype=dtype)``.
    """
    scheme = _require(q.scheme)
    _check_device(q.data, "the stored data")
    out_dtype = dtype or q.dtype
    if out_dtype not in _FLOAT_DTYPES:
        raise ValueError(f"the fused path dequantizes to float dtypes, got {out_dtype}")
    d = q.shape[-1]
    group = _group_size(scheme, d)
    if q.data.numel() // q.data.shape[-1] * (d // group if group % 8 == 0 else 1) < 2:
        return dequantize_int(q, dtype)  # as in quantize_fused
    bits = scheme.bits
    scale = q.scale.contiguous().view(-1, 1)  # [O, 1]
    if q.zero is not None:
        zero = q.zero.contiguous().view(-1, 1)  # [O, 1]
    elif scheme.symmetric:
        zero = torch.zeros_like(scale)
    else:
        raise ValueError(f"{scheme}: asymmetric stored form without a zero-point")
    if group % 8 == 0:
        data = _dynamic(q.data.contiguous().view(-1, group * bits // 8), 0, 1)  # [O, G * bits / 8]
        key: _Key = ("dq", bits, out_dtype, None)
    else:
        data = _dynamic(q.data.contiguous().view(-1, q.data.shape[-1]), 0)  # [N, W]
        key = ("dq", bits, out_dtype, (group, d))
    offset = _param_tensor(("dq", bits, scheme.symmetric), (_offset(scheme),)).view(())
    with torch.no_grad():
        out = _run(key, data, _dynamic(scale, 0), _dynamic(zero, 0), offset)
    return out.view(q.shape)
