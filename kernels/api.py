"""quantize / dequantize for any tensor scheme, on one of three bit-exact implementations.

- ``torch``: the eager reference that defines each scheme (int_ref.py, fp8_ref.py);
- ``compiled``: torch.compile'd C++ for INT per-token / per-group schemes on CPU (fused.py); any
  other scheme, device or a frozen grid falls back to the reference;
- ``triton``: the Triton kernels (triton_kernels.py), native on CUDA, interpreted on CPU
  (``TRITON_INTERPRET=1``).

All three store the same bytes, scales and zero-points (the tests check it), so an audit's numbers
do not depend on the choice; ``resolve_kernels`` turns the ``kernels`` setting into one of them.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

from kvsafety_tests.spec import Fp8Scheme, IntScheme

from .fp8_ref import dequantize_fp8, quantize_fp8
from .int_ref import dequantize_int, quantize_int
from .stored import QuantizedTensor, check_input

__all__ = ["AUTO_CPU", "BACKENDS", "Backend", "dequantize", "implementation", "quantize", "resolve_kernels"]

Backend = Literal["torch", "compiled", "triton"]
BACKENDS: tuple[str, ...] = ("torch", "compiled", "triton")
#: What ``kernels = "auto"`` runs off CUDA (see docs/quantizers.md#kernels for the measurement).
AUTO_CPU: Backend = "torch"


def resolve_kernels(setting: str, device: str) -> Backend:
    """The implementation the ``kernels`` setting (auto, torch, compiled, triton) runs on
    ``device``; ValueError naming the valid choices when it cannot run there."""
    cuda = device.startswith("cuda")
    if setting == "auto":
        return "triton" if cuda else AUTO_CPU
    if setting == "compiled" and cuda:
        raise ValueError("kernels = 'compiled' is the CPU path; valid on cuda: auto, torch, triton")
    if setting == "triton" and not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "kernels = 'triton' on cpu needs the Triton interpreter: set TRITON_INTERPRET=1 (slow; "
            "for checks), or use auto, torch or compiled"
        )
    if setting not in BACKENDS:
        raise ValueError(f"kernels = {setting!r} is not valid; valid: auto, {', '.join(BACKENDS)}")
    return setting  # type: ignore[return-value]


def _compiled_covers(scheme: IntScheme | Fp8Scheme, device: torch.device | None) -> bool:
    from .fused import fused_supports

    return fused_supports(scheme) and (device is None or device.type == "cpu")


def implementation(
    scheme: IntScheme | Fp8Scheme, backend: Backend, device: torch.device | None = None
) -> str:
    """Which implementation ``backend`` quantizes ``scheme`` with: ``compiled`` falls back to the
    torch reference for what the fused path does not cover."""
    if backend == "compiled" and not _compiled_covers(scheme, device):
        return "torch"
    return backend


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
    if backend == "compiled" and scale is None and _compiled_covers(scheme, x.device):
        from .fused import quantize_fused

        return quantize_fused(x, scheme, where=where)  # type: ignore[arg-type]
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
    if backend == "compiled" and _compiled_covers(q.scheme, q.data.device):
        from .fused import dequantize_fused

        return dequantize_fused(q, dtype)
    if isinstance(q.scheme, IntScheme):
        return dequantize_int(q, dtype)
    return dequantize_fp8(q, dtype)
