"""Sub-byte packing: the documented layout, and pack/unpack as exact inverses."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kvsafety_tests.kernels import pack_codes, packed_width, unpack_codes

BITS = [1, 2, 3, 4, 5, 6, 7, 8]


def test_int4_is_two_codes_per_byte_low_nibble_first() -> None:
    codes = torch.tensor([0x1, 0xA, 0xF, 0x3], dtype=torch.uint8)
    assert pack_codes(codes, 4).tolist() == [0xA1, 0x3F, 0x00, 0x00]  # 8-code block, zero-padded
    assert packed_width(128, 4) == 64


def test_int2_is_four_codes_per_byte() -> None:
    codes = torch.tensor([1, 2, 3, 0, 3, 3, 3, 3], dtype=torch.uint8)
    assert pack_codes(codes, 2).tolist() == [0b00111001, 0xFF]
    assert packed_width(128, 2) == 32


def test_int3_packs_eight_codes_into_three_bytes_lsb_first() -> None:
    codes = torch.tensor([7, 0, 5, 0, 0, 6, 0, 1], dtype=torch.uint8)
    word = sum(int(c) << (3 * i) for i, c in enumerate(codes))
    assert pack_codes(codes, 3).tolist() == [word & 0xFF, (word >> 8) & 0xFF, (word >> 16) & 0xFF]
    # code 2 straddles bytes 0 and 1: its low two bits are bits 6-7 of byte 0
    assert pack_codes(torch.tensor([0, 0, 5, 0, 0, 0, 0, 0], dtype=torch.uint8), 3).tolist() == [
        0x40,
        0x01,
        0x00,
    ]
    assert packed_width(128, 3) == 48


@pytest.mark.parametrize("bits", BITS)
def test_all_codes_survive_packing(bits: int) -> None:
    codes = torch.arange(1 << bits, dtype=torch.int64).repeat(3)[: 8 * 7 + 3].to(torch.uint8)
    assert torch.equal(unpack_codes(pack_codes(codes, bits), bits, codes.numel()), codes)


@given(
    bits=st.sampled_from(BITS),
    lead=st.lists(st.integers(1, 3), max_size=2),
    n=st.integers(1, 70),
    seed=st.integers(0, 2**31 - 1),
)
def test_pack_then_unpack_is_identity(bits: int, lead: list[int], n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (*lead, n), generator=g).to(torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (*lead, packed_width(n, bits))
    assert torch.equal(unpack_codes(packed, bits, n), codes)


def test_unpack_rejects_a_width_that_cannot_hold_the_codes() -> None:
    with pytest.raises(ValueError, match="packed width 4 does not hold 16 codes of 4 bits"):
        unpack_codes(torch.zeros(4, dtype=torch.uint8), 4, 16)
