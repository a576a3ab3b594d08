"""Exact rounding helpers shared by the torch reference (the Triton kernels mirror them bit for bit)."""

from __future__ import annotations

import torch

__all__ = ["bf16_round_down", "bf16_round_up"]

_LOW16 = 0xFFFF


def _bf16_truncate(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    bits = a.view(torch.int32)
    trunc_bits = bits & ~_LOW16  # clear the low 16 mantissa bits: round toward zero
    return trunc_bits, trunc_bits.view(torch.float32)


def bf16_round_up(a: torch.Tensor) -> torch.Tensor:
    """float32 -> the smallest bfloat16 value >= a (returned as float32). Finite a only."""
    trunc_bits, t = _bf16_truncate(a)
    return torch.where(t < a, (trunc_bits + (1 << 16)).view(torch.float32), t)


def bf16_round_down(a: torch.Tensor) -> torch.Tensor:
    """float32 -> the largest bfloat16 value <= a (returned as float32). Finite a only."""
    trunc_bits, t = _bf16_truncate(a)
    return torch.where(t > a, (trunc_bits + (1 << 16)).view(torch.float32), t)
