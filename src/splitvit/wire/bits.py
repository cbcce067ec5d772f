"""Bit packing: ``n`` codes of ``bits`` bits each (1..8) in ``ceil(n * bits / 8)`` bytes.

Eight codes make one ``8 * bits``-bit word (at most 64 bits), written as ``bits`` bytes, so the
work is a few whole-tensor ops on ``n / 8`` words rather than one op per bit.
"""

from __future__ import annotations

import torch


def packed_size(n: int, bits: int) -> int:
    """Bytes that ``n`` values of ``bits`` bits each take when packed."""
    return -(-n * bits // 8)


def _check(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in [1, 8], got {bits}")


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes in ``[0, 2**bits)``, any shape -> uint8 ``[ceil(numel * bits / 8)]``."""
    _check(bits)
    flat = codes.reshape(-1).to(torch.int64)
    n = flat.numel()
    flat = torch.cat([flat, flat.new_zeros((-n) % 8)]).view(-1, 8)
    word = (flat << (torch.arange(8, device=flat.device) * bits)).sum(1)  # the bits of 8 codes, code 0 lowest
    out = (word[:, None] >> (torch.arange(bits, device=flat.device) * 8)) & 0xFF
    return out.to(torch.uint8).reshape(-1)[: packed_size(n, bits)]


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` codes, as int64 ``[n]``."""
    _check(bits)
    if packed.numel() != packed_size(n, bits):
        raise ValueError(f"{packed.numel()} bytes do not hold exactly {n} codes of {bits} bits")
    flat = packed.reshape(-1).to(torch.int64)
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % bits)]).view(-1, bits)
    word = (flat << (torch.arange(bits, device=flat.device) * 8)).sum(1)
    codes = (word[:, None] >> (torch.arange(8, device=flat.device) * bits)) & ((1 << bits) - 1)
    return codes.reshape(-1)[:n]


def row_bytes(n: int, bits: int) -> int:
    """Bytes per row of :func:`pack_rows`: ``n`` codes padded to a multiple of 8 (at most ``bits - 1``
    bytes more than the tightest packing), so that every row is a whole number of 8-code words."""
    return -(-n // 8) * bits


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``[B, n]`` codes -> uint8 ``[B, row_bytes(n, bits)]``: one row per sample, so a message's shape
    is ``[batch, bytes per sample]`` and its schema can bound the batch alone."""
    B, n = codes.shape
    padded = torch.nn.functional.pad(codes.to(torch.int64), (0, (-n) % 8))
    return pack_bits(padded, bits).view(B, row_bytes(n, bits))


def unpack_rows(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_rows`: int64 ``[B, n]``."""
    B, m = packed.shape
    if m != row_bytes(n, bits):
        raise ValueError(f"rows of {m} bytes do not hold {n} codes of {bits} bits")
    return unpack_bits(packed, bits, B * (m * 8 // bits)).view(B, -1)[:, :n]


def erased_codes(lost: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Which of the ``n`` codes per row of :func:`pack_rows` a loss of bytes took: ``lost [B, row_bytes]``
    (bool) -> ``[B, n]``. The 8 codes of a word share its ``bits`` bytes, so one lost byte loses all 8."""
    B, m = lost.shape
    if m != row_bytes(n, bits):
        raise ValueError(f"rows of {m} bytes do not hold {n} codes of {bits} bits")
    return lost.view(B, m // bits, bits).any(-1).repeat_interleave(8, dim=1)[:, :n]
