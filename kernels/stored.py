"""The stored form of a quantized tensor, and the input checks every quantizer shares."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvsafety_tests.errors import KvSafetyError
from kvsafety_tests.spec import Fp8Scheme, IntScheme

__all__ = ["MAX_ABS", "NonFiniteError", "QuantizedTensor", "check_input", "to_output"]

# Largest |x| any quantizer accepts: the asymmetric range max - min must stay finite in fp32,
# and a bf16 scale of range / qmax must not round up to inf. Real K/V are far below this.
MAX_ABS = 2.0**120


class NonFiniteError(KvSafetyError):
    """K or V holds inf/NaN (an fp16 overflow upstream, say) or a magnitude beyond MAX_ABS."""


@dataclass
class QuantizedTensor:
    """What a quantizer stores for one tensor.

    data:  uint8. INT: codes packed along the last axis, LSB-first, 8 codes in ``bits`` bytes
           (see packing.py), shape [*lead, T, ceil(D / 8) * bits]. FP8: one byte per element
           (the e4m3fn / e5m2 bit pattern), shape [*lead, T, D].
    scale: INT: bfloat16 [O, I] in the scheme's group view (see int_ref.group_view);
           FP8: float32, [] (per tensor) or [P] (per leading row: batch x head).
    zero:  INT asymmetric: bfloat16 [O, I], the value code 0 stands for. Else None.
    shape, dtype: the original tensor's, restored by dequantize.
    """

    data: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    shape: torch.Size
    dtype: torch.dtype
    scheme: IntScheme | Fp8Scheme

    @property
    def nbytes(self) -> int:
        """True bytes held: codes, scales and zero-points."""
        n = self.data.numel() * self.data.element_size() + self.scale.numel() * self.scale.element_size()
        if self.zero is not None:
            n += self.zero.numel() * self.zero.element_size()
        return n


def check_input(x: torch.Tensor, where: str = "") -> None:
    """Raise NonFiniteError naming the first bad element's position, if any.

    ``where`` (e.g. "layer 5 keys") is put in front of the position, which is given as
    (batch, head, token, channel) for 4-D K/V and as an index tuple otherwise.
    """
    if x.dim() < 2:
        raise ValueError(f"expected K/V of shape [..., tokens, head_dim], got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"nothing to quantize: empty tensor of shape {tuple(x.shape)}")
    bad = ~torch.isfinite(x) | (x.abs() > MAX_ABS)  # (MAX_ABS is inf in fp16: isfinite covers it)
    if not bool(bad.any()):
        return
    idx = tuple(int(i) for i in torch.nonzero(bad)[0])
    value = float(x[idx])
    names = ("batch", "head", "token", "channel") if x.dim() == 4 else None
    pos = ", ".join(f"{n}={i}" for n, i in zip(names, idx, strict=True)) if names else str(idx)
    kind = "non-finite value" if not torch.isfinite(x[idx]) else f"|value| above {MAX_ABS:.3g}"
    prefix = f"{where}: " if where else ""
    hint = (
        "K/V overflowed float16 upstream: run the model in bfloat16 or float32"
        if x.dtype == torch.float16
        else "the model produced non-finite or out-of-range K/V upstream"
    )
    raise NonFiniteError(f"{prefix}{kind} {value} at ({pos}) of {int(bad.sum())} bad element(s); {hint}")


def to_output(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 dequantized values -> ``dtype``. For float16, values are first clamped to +-65504:
    the outward-rounded grid can reach just past the largest finite fp16 value, which the cast
    would turn into inf (the Triton kernels clamp the same way)."""
    if dtype == torch.float16:
        values = values.clamp(-65504.0, 65504.0)
    return values.to(dtype)
