"""Triton helpers that turn packed weight codes into fp16/bf16 weights with a few integer ops each.

Every decoder avoids integer-to-float conversion instructions (slow on Hopper) by writing the code's
bits straight into a float's exponent/mantissa fields and bitcasting:

- integers: ``q | 0x6400`` read as fp16 is ``1024 + q`` (exact for q < 1024); ``q | 0x4300`` read
  as bf16 is ``128 + q`` (exact for q < 128). Subtracting ``MAGIC + z`` (built the same way from the
  zero point) leaves the exact ``q - z``, one multiply by the scale gives the weight.
- E2M1 (fp4): the 3 magnitude bits shifted to fp16 bits [11:9] and the sign to bit 15 give
  ``e2m1(q) * 2**-14`` exactly (code 1, the E2M1 subnormal 0.5, lands on the fp16 subnormal
  2**-15); the factor 2**14 goes into the scale.
- E4M3 (fp8): the 7 magnitude bits shifted to fp16 bits [13:7] and the sign to bit 15 give
  ``e4m3(q) * 2**-8`` exactly, subnormals included; the factor 2**8 goes into the scale. The code
  S.1111.111 (NaN in E4M3FN, never produced by the quantizer) decodes to the finite +-480.
- E8M0 scales (mxfp4): ``e << 23`` read as fp32 is ``2**(e - 127)`` (e = 0, i.e. 2**-127, reads 0).

For bf16 activations codes decode exactly in fp32 (integers: ``(q | 0x4B000000)`` read as fp32 is
``2**23 + q``) or fp16 (minifloats), meet the scale in fp32 and round once to bf16.

Packed layout (see formats/packing.py): a tile of 16 word rows holds, in code slot ``i``, the codes of
16 contiguous k. ``unpack_slot(words, i, BITS)`` therefore gives a ``[16, BN]`` block of codes for
k = tile_start + 16*i + (0..15), the operand of one k=16 tensor-core step.

Format kinds (constexpr ``KIND``): :data:`KIND_INT`, :data:`KIND_E2M1`, :data:`KIND_E4M3`.
Scale kinds (constexpr ``SCALE_KIND``): :data:`SCALE_FLOAT` (fp16/bf16 tensor), :data:`SCALE_E8M0`
(uint8 power of two), :data:`SCALE_E4M3` (uint8 E4M3 times an fp32 global scale).
"""
from __future__ import annotations

import triton
import triton.language as tl

KIND_INT = 0
KIND_E2M1 = 1
KIND_E4M3 = 2

SCALE_FLOAT = 0
SCALE_E8M0 = 1
SCALE_E4M3 = 2

# Power of two folded out of the raw minifloat decodes (value = raw * RAW_FACTOR).
E2M1_RAW_FACTOR = 16384.0  # 2**14
E4M3_RAW_FACTOR = 256.0    # 2**8


@triton.jit
def unpack_slot(words, SLOT: tl.constexpr, BITS: tl.constexpr):
    """Codes in slot ``SLOT`` (bits ``[SLOT*BITS, (SLOT+1)*BITS)``) of int32/int16 ``words`` as int32.

    The shift is logical (on uint32), so shift and mask compile to one funnel shift plus one LOP3
    (an arithmetic shift makes the compiler sign-extend first).
    """
    w = words.to(tl.int32).to(tl.uint32, bitcast=True)
    if SLOT != 0:
        w = w >> (SLOT * BITS)
    return (w & ((1 << BITS) - 1)).to(tl.int32, bitcast=True)


@triton.jit
def unpack_int3_slot(words_lo, words_hi, SLOT: tl.constexpr):
    """3-bit codes of slot ``SLOT``: 2 low bits from the int32 plane, the high bit from the int16 plane."""
    lo = unpack_slot(words_lo, SLOT, 2)
    hi = unpack_slot(words_hi, SLOT, 1)
    return lo | (hi << 2)


@triton.jit
def unpack_codes(words_lo, words_hi, SLOT: tl.constexpr, BITS: tl.constexpr):
    """Codes of slot ``SLOT`` for a ``BITS``-bit plane set (``words_hi`` is only read for 3 bits)."""
    if BITS == 3:
        return unpack_int3_slot(words_lo, words_hi, SLOT)
    else:
        return unpack_slot(words_lo, SLOT, BITS)


@triton.jit
def int_magic_fp16(q):
    """``1024 + q`` as fp16, exact for 0 <= q < 1024 (two integer ops, no conversion instruction)."""
    return (q | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def int_magic_bf16(q):
    """``128 + q`` as bf16, exact for 0 <= q < 128."""
    return (q | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)


@triton.jit
def int_magic_fp32(q):
    """``2**23 + q`` as fp32, exact for 0 <= q < 2**23."""
    return (q | 0x4B000000).to(tl.float32, bitcast=True)


@triton.jit
def e2m1_raw_fp16(c):
    """E2M1 code (int32, 4 bits) -> fp16 ``e2m1(c) * 2**-14``, exact."""
    bits = ((c & 0x7) << 9) | ((c & 0x8) << 12)
    return bits.to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def e4m3_raw_fp16(c):
    """E4M3FN code (int32, 8 bits) -> fp16 ``e4m3(c) * 2**-8``, exact (subnormals included)."""
    bits = ((c & 0x7F) << 7) | ((c & 0x80) << 8)
    return bits.to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def raw_factor(KIND: tl.constexpr):
    """The power of two a raw fp16 code value carries: ``e2m1_raw_fp16`` is the value * 2**-14,
    ``e4m3_raw_fp16`` the value * 2**-8, integers none; multiply the scale by this to undo it."""
    if KIND == 1:
        return 16384.0
    elif KIND == 2:
        return 256.0
    else:
        return 1.0


@triton.jit
def e8m0_to_fp32(e):
    """E8M0 scale code (int32) -> fp32 ``2**(e - 127)`` (code 0 reads 0 instead of 2**-127)."""
    return (e << 23).to(tl.float32, bitcast=True)


@triton.jit
def e4m3_to_fp32(c):
    """E4M3FN code (int32) -> fp32 value."""
    return e4m3_raw_fp16(c).to(tl.float32) * 256.0


@triton.jit
def decode_scale(raw, global_scale, SCALE_KIND: tl.constexpr):
    """A loaded scale block -> fp32 scales. ``global_scale`` (fp32 scalar) is read for E4M3 only."""
    if SCALE_KIND == 1:
        return e8m0_to_fp32(raw.to(tl.int32))
    elif SCALE_KIND == 2:
        return e4m3_to_fp32(raw.to(tl.int32)) * global_scale
    else:
        return raw.to(tl.float32)


@triton.jit
def dequant(codes, scale, zero, KIND: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr,
            IS_BF16: tl.constexpr):
    """Codes (int32) -> weights in fp16 (``IS_BF16`` False) or bf16.

    ``scale``: fp32 per-group scale, broadcastable against ``codes`` (already decoded by
    :func:`decode_scale`). ``zero``: int32 zero-point codes broadcastable against ``codes``, read only
    for asymmetric integer formats (pass 0 otherwise).

    integer: ``(q - z) * s``; E2M1: ``e2m1(q) * s``; E4M3: ``e4m3(q) * s``.
    """
    if KIND == 0:
        if IS_BF16:
            # exact q - z in fp32, one rounding to bf16 (bf16 arithmetic would round q - z twice
            # for 8-bit codes, and the CPU interpreter mis-evaluates bf16 arithmetic)
            if SYMMETRIC:
                zf: tl.constexpr = 8388608.0 + (1 << (BITS - 1))
                qz = int_magic_fp32(codes) - zf
            else:
                qz = int_magic_fp32(codes) - int_magic_fp32(zero)
            w = (qz * scale).to(tl.bfloat16)
        else:
            # 1024 + q and 1024 + z are exact in fp16 for codes < 1024: q - z exact, one rounding
            if SYMMETRIC:
                zf: tl.constexpr = 1024.0 + (1 << (BITS - 1))
                qz = int_magic_fp16(codes) - zf
            else:
                qz = int_magic_fp16(codes) - int_magic_fp16(zero)
            w = qz * scale.to(tl.float16)
    elif KIND == 1:
        raw = e2m1_raw_fp16(codes)
        if IS_BF16:
            w = (raw.to(tl.float32) * (scale * 16384.0)).to(tl.bfloat16)
        else:
            w = (raw * 16384.0) * scale.to(tl.float16)
    else:
        raw = e4m3_raw_fp16(codes)
        if IS_BF16:
            w = (raw.to(tl.float32) * (scale * 256.0)).to(tl.bfloat16)
        else:
            w = (raw * 256.0) * scale.to(tl.float16)
    return w


# ------------------------------------------------------------------------------------------------
# GPU-only (PTX) unpackers: two words per instance, every code slot at once. Each output register
# holds two fp16 values (one per word), so one LOP3 makes two weights and the f16x2 pair needs no
# repacking; a PRMT per half-word set gathers the two words' halves first. Not available under the
# CPU interpreter (it cannot run PTX): kernels take them behind a constexpr flag.
# ------------------------------------------------------------------------------------------------
def _magic_asm(bits: int) -> str:
    """PTX for :func:`unpack_magic_fp16_asm`: outputs $0..$(S-1) = 0x6400 | code of slot i, two lanes."""
    slots = 32 // bits
    half = slots // 2
    mask = (1 << bits) - 1
    mask2 = mask | (mask << 16)
    lines = ["{", ".reg .b32 lo, hi, t;",
             f"prmt.b32 lo, ${slots}, ${slots + 1}, 0x5410;",
             f"prmt.b32 hi, ${slots}, ${slots + 1}, 0x7632;"]
    for i in range(slots):
        src = "lo" if i < half else "hi"
        shift = (i % half) * bits
        if shift:
            lines.append(f"shr.u32 t, {src}, {shift};")
            src = "t"
        lines.append(f"lop3.b32 ${i}, {src}, {mask2:#x}, 0x64006400, 0xea;")
    lines.append("}")
    return "\n".join(lines)


def _e2m1_asm() -> str:
    """PTX for :func:`unpack_e2m1_fp16_asm`: outputs = e2m1 raw fp16 (value * 2**-14) per slot."""
    lines = ["{", ".reg .b32 lo, hi, a, b;",
             "prmt.b32 lo, $8, $9, 0x5410;",
             "prmt.b32 hi, $8, $9, 0x7632;"]
    for i in range(8):
        src = "lo" if i < 4 else "hi"
        j = (i % 4) * 4
        # magnitude bits [j, j+3) -> [9, 12); sign bit j+3 -> 15 (in both 16-bit lanes)
        lines.append(f"shl.b32 a, {src}, {9 - j};" if 9 - j >= 0 else f"shr.u32 a, {src}, {j - 9};")
        lines.append(f"shl.b32 b, {src}, {12 - j};" if 12 - j >= 0 else f"shr.u32 b, {src}, {j - 12};")
        lines.append("and.b32 b, b, 0x80008000;")
        lines.append(f"lop3.b32 ${i}, a, 0x0e000e00, b, 0xea;")
    lines.append("}")
    return "\n".join(lines)


def _int3_asm() -> str:
    """PTX for :func:`unpack_int3_magic_fp16_asm`: $16,$17 the 2-bit plane words, $18 the two int16
    high-bit words (packed in one register); outputs 0x6400 | lo | hi << 2 per slot, two lanes."""
    lines = ["{", ".reg .b32 lo, hi, t, h;",
             "prmt.b32 lo, $16, $17, 0x5410;",
             "prmt.b32 hi, $16, $17, 0x7632;"]
    for i in range(16):
        src = "lo" if i < 8 else "hi"
        shift = (i % 8) * 2
        if shift:
            lines.append(f"shr.u32 t, {src}, {shift};")
            src = "t"
        lines.append(f"shl.b32 h, $18, {2 - i};" if i <= 2 else f"shr.u32 h, $18, {i - 2};")
        lines.append("lop3.b32 h, h, 0x40004, 0x64006400, 0xea;")
        lines.append(f"lop3.b32 ${i}, {src}, 0x30003, h, 0xea;")
    lines.append("}")
    return "\n".join(lines)


MAGIC_ASM_4 = tl.constexpr(_magic_asm(4))
INT3_ASM = tl.constexpr(_int3_asm())
MAGIC_ASM_2 = tl.constexpr(_magic_asm(2))
E2M1_ASM = tl.constexpr(_e2m1_asm())


@triton.jit
def unpack_magic_fp16_asm(words, BITS: tl.constexpr):
    """int32 words -> tuple of 32/BITS fp16 tensors ``1024 + code of slot i`` (BITS in 2, 4; GPU only)."""
    if BITS == 4:
        return tl.inline_asm_elementwise(
            MAGIC_ASM_4, "=r,=r,=r,=r,=r,=r,=r,=r,r,r", [words],
            dtype=(tl.float16,) * 8, is_pure=True, pack=2)
    else:
        return tl.inline_asm_elementwise(
            MAGIC_ASM_2, "=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,r,r", [words],
            dtype=(tl.float16,) * 16, is_pure=True, pack=2)


@triton.jit
def unpack_int3_magic_fp16_asm(words_lo, words_hi):
    """2-bit plane (int32) + high-bit plane (int16) words -> tuple of 16 fp16 tensors ``1024 + code``
    (GPU only)."""
    return tl.inline_asm_elementwise(
        INT3_ASM, "=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,r,r,r", [words_lo, words_hi],
        dtype=(tl.float16,) * 16, is_pure=True, pack=2)


@triton.jit
def unpack_e2m1_fp16_asm(words):
    """int32 words of E2M1 codes -> tuple of 8 fp16 tensors ``e2m1(code of slot i) * 2**-14`` (GPU only)."""
    return tl.inline_asm_elementwise(
        E2M1_ASM, "=r,=r,=r,=r,=r,=r,=r,=r,r,r", [words],
        dtype=(tl.float16,) * 8, is_pure=True, pack=2)


@triton.jit
def unpack_slots_fp16_asm(words, words_hi, BITS: tl.constexpr, INTEGER: tl.constexpr):
    """Every code slot of a tile's word rows from the PTX pair unpackers (GPU only): integer codes as
    ``1024 + code`` (3-bit codes from their 2-bit and 1-bit planes, ``words_hi`` the latter), else E2M1 codes
    as raw fp16 values. A tuple with one fp16 tensor per slot."""
    if BITS == 3:
        raws = unpack_int3_magic_fp16_asm(words, words_hi)
    elif INTEGER:
        raws = unpack_magic_fp16_asm(words, BITS)
    else:
        raws = unpack_e2m1_fp16_asm(words)
    return raws
