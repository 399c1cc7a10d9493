"""Bit-exact minifloat codecs shared by the fp4 and fp8 formats.

- E2M1 (FP4): 1 sign, 2 exponent (bias 1), 1 mantissa bit. Magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6;
  no inf, no NaN.
- E4M3FN (FP8): 1 sign, 4 exponent (bias 7), 3 mantissa bits. Max 448, no infinities; only
  S.1111.111 is NaN (S.1111.000 .. S.1111.110 are the finite 256 .. 448).
- E8M0 (MX scale): an unsigned biased exponent, value 2**(e - 127); 0xFF is NaN.
"""
from __future__ import annotations

import torch

E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_MAX = 6.0
E4M3_MAX = 448.0


def decode_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (ints in [0, 16)) -> float32 values, from the bit fields."""
    c = codes.to(torch.int32)
    sign = 1.0 - 2.0 * ((c >> 3) & 1).to(torch.float32)
    exp = (c >> 1) & 3
    man = (c & 1).to(torch.float32)
    normal = (1.0 + 0.5 * man) * torch.pow(2.0, (exp - 1).to(torch.float32))
    sub = 0.5 * man
    return sign * torch.where(exp == 0, sub, normal)


def encode_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Round float values to the nearest E2M1 code (ties to the even code), saturating at +-6."""
    x = x.to(torch.float32)
    mag = x.abs().clamp(max=E2M1_MAX)
    grid = torch.tensor(E2M1_MAGNITUDES, device=x.device)
    mids = (grid[1:] + grid[:-1]) / 2
    idx = torch.bucketize(mag, mids)  # a value on a midpoint gets the lower neighbour ...
    on_mid = (idx < 7) & (mag == mids[idx.clamp(max=6)])
    idx = torch.where(on_mid & (idx % 2 == 1), idx + 1, idx)  # ... or the even code if that is odd
    sign = (x < 0) & (idx > 0)
    return (idx | (sign.to(torch.int64) << 3)).to(torch.uint8)


def decode_e4m3fn(codes: torch.Tensor) -> torch.Tensor:
    """E4M3FN codes (uint8) -> float32 values, from the bit fields (NaN only for S.1111.111)."""
    c = codes.to(torch.int32)
    sign = 1.0 - 2.0 * ((c >> 7) & 1).to(torch.float32)
    exp = (c >> 3) & 15
    man = (c & 7).to(torch.float32)
    normal = (1.0 + man / 8.0) * torch.pow(2.0, (exp - 7).to(torch.float32))
    sub = (man / 8.0) * 2.0 ** -6
    val = sign * torch.where(exp == 0, sub, normal)
    return torch.where((c & 0x7F) == 0x7F, torch.full_like(val, float("nan")), val)


def encode_e4m3fn(x: torch.Tensor) -> torch.Tensor:
    """Round float values to E4M3FN codes (round to nearest even, saturating at +-448)."""
    x = x.to(torch.float32).clamp(-E4M3_MAX, E4M3_MAX)
    return x.to(torch.float8_e4m3fn).view(torch.uint8)


def decode_e8m0(codes: torch.Tensor) -> torch.Tensor:
    c = codes.to(torch.int32)
    val = torch.pow(2.0, (c - 127).to(torch.float32))
    return torch.where(c == 255, torch.full_like(val, float("nan")), val)


def encode_e8m0_floor(x: torch.Tensor) -> torch.Tensor:
    """Positive values -> E8M0 code of 2**floor(log2(x)) (zeros map to the smallest scale)."""
    x = x.to(torch.float32)
    e = torch.floor(torch.log2(torch.where(x > 0, x, torch.full_like(x, 2.0 ** -127))))
    return (e + 127).clamp(0, 254).to(torch.uint8)
