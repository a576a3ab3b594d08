"""Sub-byte code packing: the reference layout every kernel writes.

Layout: along the last axis, codes are taken in blocks of 8 (the last block zero-padded). A block of
8 ``b``-bit codes is a 64-bit little-endian word ``sum(code[i] << (b * i))`` stored as its low ``b``
bytes. So INT4 holds two codes per byte (element 2j in the low nibble, 2j+1 in the high nibble),
INT2 four per byte (element 4j in bits 0-1), INT8 one, and INT3 eight codes in three bytes, code
``i`` in bits ``3i .. 3i+2`` of the 24-bit block (codes 2 and 5 straddle a byte boundary).
"""

from __future__ import annotations

import torch

__all__ = ["pack_codes", "packed_width", "unpack_codes"]


def packed_width(n: int, bits: int) -> int:
    """Bytes that ``n`` codes of ``bits`` bits take along the packed axis."""
    return -(-n // 8) * bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [..., n] (each < 2**bits) -> packed uint8 [..., packed_width(n, bits)]."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    *lead, n = codes.shape
    blocks = -(-n // 8)
    c = torch.zeros(*lead, blocks * 8, dtype=torch.int64, device=codes.device)
    c[..., :n] = codes.to(torch.int64)
    c = c.view(*lead, blocks, 8)  # [..., blocks, 8]
    shifts = torch.arange(8, device=codes.device, dtype=torch.int64) * bits
    word = (c << shifts).sum(-1)  # [..., blocks]; the codes' bit ranges do not overlap
    byte_shifts = torch.arange(bits, device=codes.device, dtype=torch.int64) * 8
    packed = (word.unsqueeze(-1) >> byte_shifts) & 0xFF  # [..., blocks, bits]
    return packed.to(torch.uint8).reshape(*lead, blocks * bits)


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of pack_codes: packed uint8 [..., packed_width(n, bits)] -> uint8 codes [..., n]."""
    *lead, width = packed.shape
    blocks = width // bits
    if width != packed_width(n, bits):
        raise ValueError(f"packed width {width} does not hold {n} codes of {bits} bits")
    p = packed.to(torch.int64).view(*lead, blocks, bits)
    byte_shifts = torch.arange(bits, device=packed.device, dtype=torch.int64) * 8
    word = (p << byte_shifts).sum(-1)  # [..., blocks]
    shifts = torch.arange(8, device=packed.device, dtype=torch.int64) * bits
    codes = (word.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # [..., blocks, 8]
    return codes.reshape(*lead, blocks * 8)[..., :n].to(torch.uint8)
