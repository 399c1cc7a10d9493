"""Bit packing of sub-byte codes in the kernel layout ("k16-interleaved", see docs/formats.md).

Codes of a weight ``[N, K]`` are stored K-major with N contiguous, so a kernel tile of BLOCK_N output
columns reads whole contiguous rows. Along K, codes are grouped into tiles of ``T = 16 * P`` where
``P`` codes share one word. Within a tile, word row ``w`` (0..15) holds, in its code slot ``i``
(bits ``[i*b, (i+1)*b)``), the code of ``k = tile*T + i*16 + w``. Unpacking slot ``i`` of 16
consecutive word rows therefore yields a ``[16, N]`` block for 16 *contiguous* k, the operand shape of
one tensor-core step, with a single shift and mask.

Plane word types: 4-bit and 2-bit codes use int32 words (P = 8, 16); 1-bit codes use int16 words
(P = 16). A 3-bit code is a 2-bit plane (low bits) plus a 1-bit plane (high bit), both with T = 256.
K is padded with code 0 to a multiple of T; the padding is never read as weight (activations beyond
K are masked to zero by every consumer, and unpack drops it).
"""
from __future__ import annotations

import torch

WORD_ROWS = 16  # word rows per tile: the contiguous-k run unpacked by one shift


def plane_word_dtype(bits: int) -> torch.dtype:
    if bits in (2, 4):
        return torch.int32
    if bits == 1:
        return torch.int16
    raise ValueError(f"no packed plane for {bits}-bit codes (planes are 1, 2 or 4 bits)")


def codes_per_word(bits: int) -> int:
    return (32 if plane_word_dtype(bits) == torch.int32 else 16) // bits


def tile_k(bits: int) -> int:
    """K extent of one packed tile for a plane of ``bits``-bit codes."""
    return WORD_ROWS * codes_per_word(bits)


def code_tile_k(bits: int) -> int:
    """K tile of a whole code (a 3-bit code uses 2+1-bit planes with T = 256)."""
    if bits == 3:
        return 256
    if bits == 8:
        return 1
    return tile_k(bits)


def padded_k(K: int, bits: int) -> int:
    t = code_tile_k(bits)
    return (K + t - 1) // t * t


def pack_plane(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``codes`` ``[N, K]`` (integers in ``[0, 2**bits)``) into words ``[Kp // P, N]``."""
    N, K = codes.shape
    P = codes_per_word(bits)
    T = WORD_ROWS * P
    Kp = (K + T - 1) // T * T
    c = torch.zeros((N, Kp), dtype=torch.int64, device=codes.device)
    c[:, :K] = codes.to(torch.int64) & ((1 << bits) - 1)
    # [N, tiles, slot i, word row w] -> shift slot i into place and OR over i
    c = c.view(N, Kp // T, P, WORD_ROWS)
    shifts = (torch.arange(P, device=codes.device, dtype=torch.int64) * bits).view(1, 1, P, 1)
    words = (c << shifts).sum(dim=2)  # disjoint bit fields: sum == OR
    words = words.reshape(N, Kp // P).t().contiguous()  # [Kp/P, N]
    wbits = 32 if plane_word_dtype(bits) == torch.int32 else 16
    words = torch.where(words >= (1 << (wbits - 1)), words - (1 << wbits), words)  # to signed range
    return words.to(plane_word_dtype(bits))


def unpack_plane(words: torch.Tensor, bits: int, K: int) -> torch.Tensor:
    """Inverse of :func:`pack_plane`: words ``[Kp // P, N]`` -> codes ``[N, K]`` (uint8)."""
    P = codes_per_word(bits)
    T = WORD_ROWS * P
    rows, N = words.shape
    Kp = rows * P
    w = words.to(torch.int64).t().reshape(N, Kp // T, 1, WORD_ROWS)
    shifts = (torch.arange(P, device=words.device, dtype=torch.int64) * bits).view(1, 1, P, 1)
    c = (w >> shifts) & ((1 << bits) - 1)  # [N, tiles, P, 16]
    return c.reshape(N, Kp)[:, :K].to(torch.uint8)


def pack_codes(codes: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """Pack integer codes ``[N, K]`` of ``bits`` in {2, 3, 4, 8} into the kernel layout.

    Returns ``{"qweight": ...}`` (plus ``"qweight_hi"`` for 3-bit codes). 8-bit codes are stored as
    ``uint8 [K, N]`` without interleaving.
    """
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D [N, K], got {tuple(codes.shape)}")
    if bits == 8:
        return {"qweight": codes.to(torch.uint8).t().contiguous()}
    if bits == 3:
        c = codes.to(torch.int64)
        N, K = c.shape
        Kp = padded_k(K, 3)
        full = torch.zeros((N, Kp), dtype=torch.int64, device=codes.device)
        full[:, :K] = c
        return {"qweight": pack_plane(full & 3, 2), "qweight_hi": pack_plane(full >> 2, 1)}
    if bits in (2, 4):
        return {"qweight": pack_plane(codes, bits)}
    raise ValueError(f"cannot pack {bits}-bit codes: expected 2, 3, 4 or 8")


def unpack_codes(tensors: dict[str, torch.Tensor], bits: int, K: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: codes ``[N, K]`` as uint8."""
    if bits == 8:
        return tensors["qweight"].t()[:, :K].to(torch.uint8)
    if bits == 3:
        lo = unpack_plane(tensors["qweight"], 2, K)
        hi = unpack_plane(tensors["qweight_hi"], 1, K)
        return lo | (hi << 2)
    return unpack_plane(tensors["qweight"], bits, K)


def packed_shapes(bits: int, N: int, K: int) -> dict[str, tuple[tuple[int, int], torch.dtype]]:
    """Shapes and dtypes :func:`pack_codes` produces for a ``[N, K]`` weight."""
    if bits == 8:
        return {"qweight": ((K, N), torch.uint8)}
    Kp = padded_k(K, bits)
    if bits == 3:
        return {"qweight": ((Kp // codes_per_word(2), N), torch.int32),
                "qweight_hi": ((Kp // codes_per_word(1), N), torch.int16)}
    return {"qweight": ((Kp // codes_per_word(bits), N), plane_word_dtype(bits))}
