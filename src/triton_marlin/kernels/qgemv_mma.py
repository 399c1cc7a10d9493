"""Register-fragment GEMV for small M (``KernelConfig(family="mma")``, up to 16 activation rows).

Formats: the 4-bit plane (``int4``; E2M1 ``fp4``, ``mxfp4``, ``nvfp4``), the 2-bit plane (``int2``), the 2-bit
plus 1-bit planes (``int3``) and unpacked bytes (``int8``; E4M3 ``fp8``), with fp16 or bf16 activations.

Each thread loads its words straight into registers and builds the tensor-core operand in place: no
shared memory, no ``cp.async``, no ``ldmatrix``, no barrier in the K loop. It reads the packed layout as
stored (``k16_interleaved``, docs/formats.md): word row ``w`` of K tile ``t`` holds, in code slot ``i``, the
code of ``k = T t + 16 i + w`` for one output column (tile ``T`` = 128 rows of 8 slots for 4-bit codes, 256 rows
of 16 slots for 2- and 3-bit codes). 8-bit codes (``uint8 [K, N]``) take 128-row tiles of 8 slots whose k rows a
thread loads itself: rows ``16 i + 4c .. 4c + 3`` of its columns, as whole words where N allows.

One ``mma.sync.m16n8k16`` multiplies a 16 x 16 block of weights (16 output columns x the 16 k of one code
slot) by the activations of up to 8 rows (the MMA's N). Thread ``(g, c)`` of a warp (``g = lane / 4``,
``c = lane % 4``) owns word rows ``4c .. 4c + 3`` of two output columns per 16-column tile; the fragment's
k order is permuted so that those four word rows are exactly its A elements (columns ``2c, 2c+1, 2c+8,
2c+9``), and B (the activations) takes the same permutation: B's elements of thread ``(g, c)`` are
``x[g, 16 i + 4c .. 4c + 3]``, one 8-byte load. A's rows are output columns: row ``g`` the thread's column
``2j`` of n-tile ``j``, row ``g + 8`` column ``2j + 1``, so a thread's columns of all its n-tiles are
contiguous and its word loads are 8-, 16- or 32-byte vectors.

The A registers come from a PTX pair unpack (as in :mod:`.decode`): one ``prmt`` gathers the half-words of two
word rows, then per slot
- integers: one shift and one ``lop3`` give ``{1024 + q, 1024 + q'}`` in fp16 (``128 + q`` in bf16), one packed
  subtract of ``1024 + z`` the exact integer ``q - z``; a 3-bit code's high bit comes from the 1-bit plane's pair
  (one more shift and ``lop3``);
- E2M1: two shifts, an ``and`` and a ``lop3`` put the magnitude bits under the fp16 exponent and the sign at bit
  15: the exact ``e2m1(q) * 2**-14`` (for bf16 activations converted to bf16x2 through fp32, exactly);
- bytes: one ``prmt`` per pair gathers a byte of two k rows into the two half-words, then as integers
  (``0x6400 | q``) or E4M3 (magnitude shifted by 7, sign to bit 15: ``e4m3(q) * 2**-8``), in fp16 (for bf16
  activations converted as above: ``128 + q`` is not exact in bf16 for q >= 128).
The group scale (decoded: fp16/bf16, E8M0, or E4M3's raw fp16 value) multiplies each scale group's fp32 partial
product (fold); per-channel scales multiply once at the end, as do the constant factors (2**14 for E2M1 codes,
2**8 for E4M3 codes, 2**8 times the global scale for E4M3 scales).

Under the CPU interpreter the same kernel runs a portable emulation of the unpack and of the warp's MMA
(the per-thread values gathered across the warp with reshapes): same operands, same sums in fp32.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .decode import e4m3_raw_fp16, e8m0_to_fp32, raw_factor

MMA_MAX_M = 16         # activation rows one launch multiplies (two blocks of the MMA's N = 8)
MMA_FORMATS = ("int4", "fp4", "mxfp4", "nvfp4", "int2", "int3", "int8", "fp8")


def _slot_asm(kind: int, bits: int, slot: int, bf16: bool, mt: int, zsum: bool = False) -> str:
    """PTX of one code slot of one n-tile: the A operand from the gathered half-word pairs, then one m16n8k16 MMA
    per block of 8 activation rows (``mt`` of them, sharing A).

    A: integers ``(M + q) - (M + z)`` (M = 1024 in fp16, 128 in bf16) = the exact ``q - z``; 3-bit codes take
    their high bit from the 1-bit plane's pairs; E2M1 (kind 1) the raw value ``e2m1(q) * 2**-14`` (magnitude bits
    under the fp16 exponent, sign to bit 15; code 1 is the fp16 subnormal 2**-15), no zero point; for bf16
    activations those fp16 pairs convert to bf16x2 through fp32 (three conversions, exact: every raw value is a
    normal bf16). 8-bit codes (one byte in the low half of each half-word, see :func:`_byte_pairs`): integers
    ``(1024 + q) - (1024 + z)`` in fp16, E4M3 (kind 2) the raw value ``e4m3(q) * 2**-8`` (magnitude bits shifted
    by 7, sign to bit 15); with bf16 activations both go through the fp32 conversion (``128 + q`` is not exact in
    bf16 for q >= 128).
    Operands: $0 .. $(4 mt - 1) = D; then the 4 gathered pairs (rows 01 col A, rows 01 col B, rows 23 col A,
    rows 23 col B); for 3-bit codes the 4 high-bit pairs in the same order; B (two registers per row block);
    the zero offsets of col A / col B (f16x2, or bf16x2 for the 2-4 bit integers); C (4 per row block).
    ``zsum`` (integer codes of up to 4 bits): A is ``ZSUM_BASE + q`` (the code's bits placed under the exponent of
    16: one shift and one ``lop3``, no subtract; exact in fp16 and bf16) and the zero offsets are unused: the kernel
    takes ``(ZSUM_BASE + z) * sum(x)`` off each scale group's partial product instead (``ZSUM`` in the kernel)."""
    conv = bf16 and (kind != 0 or bits == 8)        # A built in fp16, then converted to bf16x2
    magic = "0x43004300" if bf16 and not conv else "0x64006400"
    sub = "sub.rn.bf16x2" if bf16 and not conv else "sub.f16x2"
    ty = "bf16" if bf16 else "f16"
    plane = 2 if bits == 3 else bits
    per_half = 16 // plane
    shift = 0 if bits == 8 else plane * (slot % per_half)
    src0 = 4 * mt
    hi0 = src0 + 4
    b0 = hi0 + (4 if bits == 3 else 0)
    z0 = b0 + 2 * mt
    c0 = z0 + 2
    lines = ["{", ".reg .b32 t, h, a0, a1, a2, a3;"]
    if conv:
        lines.append(".reg .b16 l16, u16;\n.reg .f32 lf, uf;")
    # a0: row g (col A) k 2c..2c+1; a1: row g+8 (col B); a2: row g, k 2c+8..; a3: row g+8, k 2c+8..
    for r, (a, z) in enumerate((("a0", z0), ("a1", z0 + 1), ("a2", z0), ("a3", z0 + 1))):
        reg = f"${src0 + r}"
        if kind == 2:
            # E4M3 byte: magnitude bits [0, 7) -> [7, 14), sign bit 7 -> 15, in both halves
            lines.append(f"shl.b32 t, {reg}, 7;\nshl.b32 h, {reg}, 8;\nand.b32 h, h, 0x80008000;")
            lines.append(f"lop3.b32 {a}, t, 0x3f803f80, h, 0xea;")
        elif kind == 1:
            # magnitude bits [shift, shift + 3) -> [9, 12), sign bit shift + 3 -> 15, in both halves
            up = 9 - shift
            lines.append(f"shl.b32 t, {reg}, {up};" if up >= 0 else f"shr.u32 t, {reg}, {-up};")
            if shift != 12:
                lines.append(f"shl.b32 h, {reg}, {12 - shift};")
                lines.append("and.b32 h, h, 0x80008000;")
            else:
                lines.append(f"and.b32 h, {reg}, 0x80008000;")
            lines.append(f"lop3.b32 {a}, t, 0x0e000e00, h, 0xea;")
        elif zsum:
            # the code's bits -> [p0, p0 + plane) of each half, under the exponent of 16 (0x4C00 fp16, 0x4180 bf16)
            p0 = 3 if bf16 else 6
            base = "0x41804180" if bf16 else "0x4c004c00"
            move = p0 - shift
            if move:
                lines.append(f"shl.b32 t, {reg}, {move};" if move > 0 else f"shr.u32 t, {reg}, {-move};")
                reg = "t"
            if bits == 3:
                hmove = p0 + 2 - slot
                hreg = f"${hi0 + r}"
                if hmove:
                    lines.append(f"shl.b32 h, {hreg}, {hmove};" if hmove > 0 else f"shr.u32 h, {hreg}, {-hmove};")
                    hreg = "h"
                hm = 1 << (p0 + 2)
                lines.append(f"lop3.b32 h, {hreg}, {hm | hm << 16:#010x}, {base}, 0xea;")
                lm = 3 << p0
                lines.append(f"lop3.b32 {a}, {reg}, {lm | lm << 16:#010x}, h, 0xea;")
            else:
                mk = ((1 << bits) - 1) << p0
                lines.append(f"lop3.b32 {a}, {reg}, {mk | mk << 16:#010x}, {base}, 0xea;")
        else:
            if shift:
                lines.append(f"shr.u32 t, {reg}, {shift};")
                reg = "t"
            if bits == 3:
                # the high bit (bit ``slot`` of each half of the 1-bit plane's pair) -> bit 2, with the magic
                hreg = f"${hi0 + r}"
                if slot != 2:
                    lines.append(f"shl.b32 h, {hreg}, {2 - slot};" if slot < 2 else f"shr.u32 h, {hreg}, {slot - 2};")
                    hreg = "h"
                lines.append(f"lop3.b32 h, {hreg}, 0x00040004, {magic}, 0xea;")
                lines.append(f"lop3.b32 {a}, {reg}, 0x00030003, h, 0xea;")
            else:
                mask = (1 << bits) - 1
                lines.append(f"lop3.b32 {a}, {reg}, {mask | mask << 16:#010x}, {magic}, 0xea;")
            lines.append(f"{sub} {a}, {a}, ${z};")
        if conv:
            # exact fp16 values, normal in bf16: through fp32, both conversions exact
            lines.append(f"mov.b32 {{l16, u16}}, {a};\ncvt.f32.f16 lf, l16;\ncvt.f32.f16 uf, u16;\n"
                         f"cvt.rn.bf16x2.f32 {a}, uf, lf;")
    lines += _mma_lines(ty, "a0,a1,a2,a3", mt, b0, c0)
    lines.append("}")
    return "\n".join(lines)


def _mma_lines(ty: str, a: str, mt: int, b0: int, c0: int) -> list:
    """One m16n8k16 MMA per block of 8 activation rows, all sharing the A registers ``a``: block m writes
    $4m .. $4m+3 (D), reads B from $(b0 + 2m), $(b0 + 2m + 1) and C from $(c0 + 4m) .. $(c0 + 4m + 3)."""
    out = []
    for m in range(mt):
        d = ",".join(f"${4 * m + r}" for r in range(4))
        cc = ",".join(f"${c0 + 4 * m + r}" for r in range(4))
        out.append(f"mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32 {{{d}}}, {{{a}}}, "
                   f"{{${b0 + 2 * m},${b0 + 2 * m + 1}}}, {{{cc}}};")
    return out


# PTX: 8 words (rows 4c..4c+3 of col A, then of col B) -> 8 gathered half-word pairs:
# (rows 01 col A lo, hi), (rows 01 col B lo, hi), (rows 23 col A lo, hi), (rows 23 col B lo, hi)
PAIRS_ASM = tl.constexpr("\n".join(
    ["{"]
    + [f"prmt.b32 ${2 * p}, ${8 + a}, ${8 + b}, 0x5410;\nprmt.b32 ${2 * p + 1}, ${8 + a}, ${8 + b}, 0x7632;"
       for p, (a, b) in enumerate(((0, 1), (4, 5), (2, 3), (6, 7)))]
    + ["}"]))
# the 1-bit plane (int3): 8 int16 words, same order -> 4 pairs (rows 01 col A, rows 01 col B, rows 23 A, rows 23 B)
HI_PAIRS_ASM = tl.constexpr("\n".join(
    ["{"] + [f"prmt.b32 ${p}, ${4 + a}, ${4 + b}, 0x5410;" for p, (a, b) in enumerate(((0, 1), (4, 5), (2, 3), (6, 7)))]
    + ["}"]))


SLOT_ASM = {(kind, bits, slot, bf16, mt, False): _slot_asm(kind, bits, slot, bf16, mt)
            for kind, bits in ((0, 4), (1, 4), (0, 2), (0, 3), (0, 8), (2, 8))
            for slot in range(8 if bits == 8 else 32 // (2 if bits == 3 else bits))
            for bf16 in (False, True) for mt in (1, 2)}
SLOT_ASM.update({(0, bits, slot, bf16, mt, True): _slot_asm(0, bits, slot, bf16, mt, True)
                 for bits in (2, 3, 4) for slot in range(32 // (2 if bits == 3 else bits))
                 for bf16 in (False, True) for mt in (1, 2)})
ZSUM_BASE = tl.constexpr(16)      # ZSUM operands are ZSUM_BASE + q


def _ones_asm(bf16: bool, mt: int) -> str:
    """PTX of the activation sums of one code slot: an MMA with every A element 1, so D[n][j] = the sum over the
    slot's 16 k of x[j, k] for every row n. $0 .. $(4 mt - 1) = D; B (two registers per row block); C (4 per row
    block)."""
    ty = "bf16" if bf16 else "f16"
    one = "0x3f803f80" if bf16 else "0x3c003c00"
    lines = ["{", ".reg .b32 one;", f"mov.b32 one, {one};"] + _mma_lines(ty, "one,one,one,one", mt, 4 * mt, 6 * mt)
    lines.append("}")
    return "\n".join(lines)


ONES_ASM = {(bf16, mt): _ones_asm(bf16, mt) for bf16 in (False, True) for mt in (1, 2)}


@triton.constexpr_function
def _ones_code(bf16, mt):
    return ONES_ASM[(bool(bf16), int(mt))]


@triton.constexpr_function
def _ones_constraints(mt):
    return ",".join(["=f"] * (4 * int(mt)) + ["r"] * (2 * int(mt)) + ["f"] * (4 * int(mt)))


@triton.constexpr_function
def _slot_code(kind, bits, slot, bf16, mt, zsum):
    return SLOT_ASM[(int(kind), int(bits), int(slot), bool(bf16), int(mt), bool(zsum))]


@triton.jit
def _stack4(a, b, c, d):
    """[B] x 4 -> [B, 4] (column i = the i-th argument)."""
    t = tl.permute(tl.join(tl.join(a, b), tl.join(c, d)), (0, 2, 1))
    return tl.reshape(t, (a.shape[0], 4))


@triton.jit
def _columns(v, NC: tl.constexpr):
    """A per-thread ``[B, NC]`` vector (NC in 1, 2, 4, 8) -> tuple of NC ``[B]`` tensors, in column order."""
    if NC == 1:
        return (tl.reshape(v, (v.shape[0],)),)
    elif NC == 2:
        a, b = tl.split(v)
        return (a, b)
    elif NC == 4:
        a, b = tl.split(tl.reshape(v, (v.shape[0], 2, 2)))   # a = cols 0, 2; b = cols 1, 3
        a0, a1 = tl.split(a)
        b0, b1 = tl.split(b)
        return (a0, b0, a1, b1)
    else:
        a, b = tl.split(tl.reshape(v, (v.shape[0], 4, 2)))   # a = cols 0, 2, 4, 6; b = 1, 3, 5, 7
        a0, a1 = tl.split(tl.reshape(a, (v.shape[0], 2, 2)))   # a0 = 0, 4; a1 = 2, 6
        b0, b1 = tl.split(tl.reshape(b, (v.shape[0], 2, 2)))
        c0, c4 = tl.split(a0)
        c2, c6 = tl.split(a1)
        c1, c5 = tl.split(b0)
        c3, c7 = tl.split(b1)
        return (c0, c1, c2, c3, c4, c5, c6, c7)


@triton.jit
def _pairs(w, ASM: tl.constexpr):
    """8 words of an n-tile (rows 4c..4c+3 of col A, then col B) -> the 8 half-word pairs of PAIRS_ASM."""
    if ASM:
        return tl.inline_asm_elementwise(PAIRS_ASM, "=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r,r,r,r,r",
                                         [w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]],
                                         dtype=(tl.int32,) * 8, is_pure=True, pack=1)
    else:
        out = ()
        for q in tl.static_range(4):
            lo_w = w[(0, 4, 2, 6)[q]]
            hi_w = w[(1, 5, 3, 7)[q]]
            out = out + ((lo_w & 0xFFFF) | (hi_w << 16), ((lo_w >> 16) & 0xFFFF) | (hi_w & -65536))
        return out


@triton.jit
def _half_fp32(v, HI: tl.constexpr, IS_BF16: tl.constexpr):
    """fp16 (bf16) half ``HI`` of an int32 register pair -> fp32 (portable emulation of the B operand)."""
    if HI:
        h = ((v >> 16) & 0xFFFF).to(tl.int16)
    else:
        h = (v & 0xFFFF).to(tl.int16)
    if IS_BF16:
        return h.to(tl.bfloat16, bitcast=True).to(tl.float32)
    else:
        return h.to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _warp_mma(av, bv, NW: tl.constexpr):
    """Portable emulation of one m16n8k16 MMA per warp from per-thread values: ``av`` = (A[g][2c],
    A[g][2c+1], A[g][2c+8], A[g][2c+9]) of one A row set, ``bv`` = (B[2c][g], B[2c+1][g], B[2c+8][g],
    B[2c+9][g]); returns thread (g, c)'s (D[g][2c], D[g][2c+1])."""
    a = tl.reshape(_stack4(av[0], av[1], av[2], av[3]), (NW, 8, 1, 4, 4))     # [w, g, -, c', j]
    b = tl.reshape(_stack4(bv[0], bv[1], bv[2], bv[3]), (NW, 1, 8, 4, 4))     # [w, -, m, c', j]
    d = tl.sum(tl.sum(a * b, axis=4), axis=3)                                  # [w, g, m]
    d0, d1 = tl.split(tl.reshape(d, (NW, 8, 4, 2)))                            # m = 2c, 2c + 1
    return tl.reshape(d0, (NW * 32,)), tl.reshape(d1, (NW * 32,))


def _byte_pairs_asm(ba: int) -> str:
    """PTX for :func:`_byte_pairs`: prmt selector ``b | b << 4 | (4 + b) << 8 | (4 + b) << 12`` takes byte ``b`` of the
    first word to bytes 0-1 and byte ``b`` of the second to bytes 2-3."""
    lines = ["{"]
    for q in range(4):
        b = ba + q % 2
        lines.append(f"prmt.b32 ${q}, ${4 + (q // 2) * 2}, ${5 + (q // 2) * 2}, "
                     f"{b | b << 4 | (4 + b) << 8 | (4 + b) << 12:#06x};")
    lines.append("}")
    return "\n".join(lines)


BYTE_PAIRS_ASM = {ba: _byte_pairs_asm(ba) for ba in (0, 2)}


@triton.constexpr_function
def _byte_pairs_code(ba):
    return BYTE_PAIRS_ASM[int(ba)]


@triton.jit
def _byte_pairs(w, BA: tl.constexpr, ASM: tl.constexpr):
    """8-bit codes: the words of k rows 4c..4c+3 (``w``, 4 int32) -> the 4 pairs of :func:`_slot_mma` (rows 01 col
    A, rows 01 col B, rows 23 col A, rows 23 col B) with code byte ``BA`` (col A) or ``BA + 1`` (col B) of the first
    row in half-word 0 and of the second in half-word 1, each in the half-word's low byte (the high byte: a copy,
    masked later)."""
    if ASM:
        return tl.inline_asm_elementwise(_byte_pairs_code(BA), "=r,=r,=r,=r,r,r,r,r", [w[0], w[1], w[2], w[3]],
                                         dtype=(tl.int32,) * 4, is_pure=True, pack=1)
    else:
        out = ()
        for q in tl.static_range(4):
            b = BA + q % 2
            lo = (w[(q // 2) * 2] >> (8 * b)) & 0xFF
            hi = (w[(q // 2) * 2 + 1] >> (8 * b)) & 0xFF
            out = out + (lo | (hi << 16),)
        return out


@triton.jit
def _slot_byte_pairs(w, SLOT: tl.constexpr, J: tl.constexpr, NW8: tl.constexpr, ASM: tl.constexpr):
    """8-bit codes: the 4 pairs of slot SLOT, n-tile J from a tile's words (:func:`_load_tile`): columns 2J and
    2J + 1 are bytes 2 (J % 2) and 2 (J % 2) + 1 of word J // 2 of each k row."""
    base: tl.constexpr = SLOT * 4 * NW8 + J // 2
    return _byte_pairs((w[base], w[base + NW8], w[base + 2 * NW8], w[base + 3 * NW8]), 2 * (J % 2), ASM)


@triton.jit
def _load_byte_words(qw_ptr, k, col0, N, K, NC: tl.constexpr, ALIGNED: tl.constexpr, EVEN_K: tl.constexpr):
    """8-bit codes of k row ``k`` (one per thread; rows >= K read as 0, checked unless EVEN_K) for the thread's NC
    columns from ``col0`` -> tuple of max(NC / 4, 1) int32 words (byte j = column j of the word's 4; NC = 2: the low
    half). ALIGNED (N a multiple of 4, of 2 for NC = 2): one 32- or 16-bit load per word; else byte loads packed
    into words."""
    if EVEN_K:
        k_ok = col0 >= 0
    else:
        k_ok = k < K
    if ALIGNED:
        if NC == 2:
            v = tl.load(qw_ptr.to(tl.pointer_type(tl.int16)) + (k * N + col0) // 2, mask=k_ok & (col0 < N), other=0)
            return (v.to(tl.int32) & 0xFFFF,)
        else:
            c4 = col0[:, None] + 4 * tl.arange(0, NC // 4)[None, :]
            v = tl.load(qw_ptr.to(tl.pointer_type(tl.int32)) + (k[:, None] * N + c4) // 4,
                        mask=k_ok[:, None] & (c4 < N), other=0)
            if NC == 4:
                return (tl.reshape(v, (v.shape[0],)),)
            else:
                a, b = tl.split(v)
                return (a, b)
    else:
        cols = col0[:, None] + tl.arange(0, NC)[None, :]
        by = _columns(tl.load(qw_ptr + k[:, None] * N + cols, mask=k_ok[:, None] & (cols < N), other=0).to(tl.int32),
                      NC)
        out = ()
        for q in tl.static_range((NC + 3) // 4):
            wd = by[4 * q] | (by[4 * q + 1] << 8)
            if NC >= 4:
                wd = wd | (by[4 * q + 2] << 16) | (by[4 * q + 3] << 24)
            out = out + (wd,)
        return out


@triton.constexpr_function
def _constraints(bits, mt):
    """Constraints of :func:`_slot_asm`'s operands: 4 mt fp32 outputs; the 4 pairs (+ 4 high-bit pairs for 3-bit
    codes), 2 mt B registers and 2 zero offsets; 4 mt fp32 accumulators."""
    n_r = 4 + (4 if int(bits) == 3 else 0) + 2 * int(mt) + 2
    return ",".join(["=f"] * (4 * int(mt)) + ["r"] * n_r + ["f"] * (4 * int(mt)))


@triton.jit
def _hi_pairs(w, OFF: tl.constexpr, ASM: tl.constexpr):
    """8 int16 words of the 1-bit plane (int3; ``w[OFF:OFF + 8]``: rows 4c..4c+3 of col A, then col B, as int32)
    -> the 4 pairs of HI_PAIRS_ASM (half-word 0 from the first row of a pair, half-word 1 from the second)."""
    if ASM:
        return tl.inline_asm_elementwise(HI_PAIRS_ASM, "=r,=r,=r,=r,r,r,r,r,r,r,r,r",
                                         [w[OFF], w[OFF + 1], w[OFF + 2], w[OFF + 3], w[OFF + 4], w[OFF + 5],
                                          w[OFF + 6], w[OFF + 7]],
                                         dtype=(tl.int32,) * 4, is_pure=True, pack=1)
    else:
        out = ()
        for q in tl.static_range(4):
            out = out + ((w[OFF + (0, 4, 2, 6)[q]] & 0xFFFF) | (w[OFF + (1, 5, 3, 7)[q]] << 16),)
        return out


@triton.jit
def _e2m1_raw_fp32(c):
    """E2M1 code (int32, 4 bits) -> fp32 ``e2m1(c) * 2**-14`` through the same bits as the PTX (emulation)."""
    bits = ((c & 7) << 9) | ((c & 8) << 12)
    return bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _slot_mma(p, hp, b, zA, zB, cc, SLOT: tl.constexpr, KIND: tl.constexpr, BITS: tl.constexpr,
              IS_BF16: tl.constexpr, ASM: tl.constexpr, NW: tl.constexpr, MT: tl.constexpr,
              ZSUM: tl.constexpr = False):
    """One code slot of one n-tile: D = A(codes of slot SLOT) @ x-slot + C for MT blocks of 8 activation rows.
    ``p`` = the 8 pairs of :func:`_pairs` (8-bit codes: the slot's 4 pairs of :func:`_byte_pairs`); ``hp`` the 4
    high-bit pairs of :func:`_hi_pairs` (int3; else unused); ``b`` the B registers (2 per row block); ``zA``/``zB``
    the zero offsets (packed halves; integers only); ``cc`` the 4 MT accumulators. A: ``q - z`` (integers),
    ``e2m1(q) * 2**-14`` (E2M1) or ``e4m3(q) * 2**-8`` (E4M3). Returns the new 4 MT accumulators."""
    PB: tl.constexpr = 2 if BITS == 3 else BITS       # bits of the plane a slot's low code bits sit in
    PER_HALF: tl.constexpr = 16 // PB                 # slots a half-word holds
    HI: tl.constexpr = SLOT >= PER_HALF
    SH: tl.constexpr = 0 if BITS == 8 else PB * (SLOT % PER_HALF)
    if BITS == 8:
        src = p
    else:
        src = (p[0 + HI], p[2 + HI], p[4 + HI], p[6 + HI])     # rows 01 col A, rows 01 col B, rows 23 A, rows 23 B
    if ASM:
        if BITS == 3:
            args = src + hp
        else:
            args = src
        for m in tl.static_range(MT):
            args = args + (b[2 * m], b[2 * m + 1])
        args = args + (zA, zB) + cc
        return tl.inline_asm_elementwise(_slot_code(KIND, BITS, SLOT, IS_BF16, MT, ZSUM),
                                         _constraints(BITS, MT),
                                         args, dtype=(tl.float32,) * (4 * MT), is_pure=True, pack=1)
    else:
        # the A values of both halves of each pair register
        qa = ()
        for r in tl.static_range(4):
            v = src[r] >> SH
            if KIND == 1:
                qa = qa + (_e2m1_raw_fp32(v & 15), _e2m1_raw_fp32((v >> 16) & 15))
            elif KIND == 2:
                qa = qa + (e4m3_raw_fp16(v & 255).to(tl.float32), e4m3_raw_fp16((v >> 16) & 255).to(tl.float32))
            else:
                z = (zA, zB, zA, zB)[r] & 255         # the zero point: the low byte of the zero offset
                if BITS == 3:
                    h = hp[r] >> SLOT
                    lo = (v & 3) | ((h & 1) << 2)
                    hi = ((v >> 16) & 3) | (((h >> 16) & 1) << 2)
                else:
                    lo = v & ((1 << BITS) - 1)
                    hi = (v >> 16) & ((1 << BITS) - 1)
                if ZSUM:
                    z = z * 0 - ZSUM_BASE                 # the operand is ZSUM_BASE + q
                qa = qa + ((lo - z).to(tl.float32), (hi - z).to(tl.float32))
        out = ()
        for m in tl.static_range(MT):
            bv = _b_values(b, m, IS_BF16)
            dA0, dA1 = _warp_mma((qa[0], qa[1], qa[4], qa[5]), bv, NW)      # row g: col A
            dB0, dB1 = _warp_mma((qa[2], qa[3], qa[6], qa[7]), bv, NW)      # row g + 8: col B
            out = out + (cc[4 * m] + dA0, cc[4 * m + 1] + dA1, cc[4 * m + 2] + dB0, cc[4 * m + 3] + dB1)
        return out


@triton.jit
def _ones_mma(b, on, IS_BF16: tl.constexpr, ASM: tl.constexpr, NW: tl.constexpr, MT: tl.constexpr):
    """The activation sums of one code slot added into ``on`` (4 MT accumulators, the layout of an n-tile's: thread
    (g, c) holds rows 2c, 2c + 1 of each row block, twice): an MMA whose A is all ones (ZSUM)."""
    if ASM:
        args = ()
        for m in tl.static_range(MT):
            args = args + (b[2 * m], b[2 * m + 1])
        return tl.inline_asm_elementwise(_ones_code(IS_BF16, MT), _ones_constraints(MT), args + on,
                                         dtype=(tl.float32,) * (4 * MT), is_pure=True, pack=1)
    else:
        one = tl.full(b[0].shape, 1.0, tl.float32)
        out = ()
        for m in tl.static_range(MT):
            d0, d1 = _warp_mma((one, one, one, one), _b_values(b, m, IS_BF16), NW)
            out = out + (on[4 * m] + d0, on[4 * m + 1] + d1, on[4 * m + 2] + d0, on[4 * m + 3] + d1)
        return out


@triton.jit
def _b_values(b, m: tl.constexpr, IS_BF16: tl.constexpr):
    """Row block m's four B values of a thread as fp32 (portable emulation)."""
    return (_half_fp32(b[2 * m], False, IS_BF16), _half_fp32(b[2 * m], True, IS_BF16),
            _half_fp32(b[2 * m + 1], False, IS_BF16), _half_fp32(b[2 * m + 1], True, IS_BF16))


@triton.jit
def _fold_zsum(acc, part, on, sA, sB, zA, zB, Q: tl.constexpr, O: tl.constexpr):
    """One n-tile's 4 accumulators from Q with ZSUM: acc + scale * (part - (ZSUM_BASE + z) * sum(x)) (columns A, A,
    B, B; ``on`` from O the activation sums of rows 2c, 2c + 1; zA/zB = ZSUM_BASE + z as fp32)."""
    return (acc[Q] + sA * (part[Q] - zA * on[O]), acc[Q + 1] + sA * (part[Q + 1] - zA * on[O + 1]),
            acc[Q + 2] + sB * (part[Q + 2] - zB * on[O]), acc[Q + 3] + sB * (part[Q + 3] - zB * on[O + 1]))


@triton.jit
def _zsum_base(zo):
    """ZSUM_BASE + z as fp32 from a zero offset of :func:`_zero_offset` (its low byte is z)."""
    return ((zo & 255) + ZSUM_BASE).to(tl.float32)


@triton.jit
def _load_words(qw_ptr, t, wrow, cols, col_ok, N, NC: tl.constexpr):
    """Words of K tile ``t``: rows 4c..4c+3 (``wrow`` = 4c) x the thread's NC contiguous columns ->
    tuple indexed [col * 4 + row] (int32; int16 words of the 1-bit plane sign-extend, only their low half is read)."""
    out = ()
    per_row = ()
    for r in tl.static_range(4):
        offs = (t * 16 + wrow + r)[:, None] * N + cols
        per_row = per_row + (_columns(tl.load(qw_ptr + offs, mask=col_ok, other=0).to(tl.int32), NC),)
    for j in tl.static_range(NC):
        for r in tl.static_range(4):
            out = out + (per_row[r][j],)
    return out


@triton.jit
def _zero_offset(z, SYMMETRIC: tl.constexpr, BITS: tl.constexpr, IS_BF16: tl.constexpr):
    """Packed halves ``{M + z, M + z}`` (M = 1024 in fp16, 128 in bf16 for codes of up to 4 bits: 8-bit codes are
    unpacked in fp16 whatever the activations) from zero-point codes z (int32)."""
    if SYMMETRIC:
        zz = tl.full(z.shape, 1 << (BITS - 1), tl.int32)
    else:
        zz = z
    if IS_BF16 and BITS < 8:
        h = zz | 0x4300
    else:
        h = zz | 0x6400
    return h | (h << 16)


@triton.jit
def _fold4(acc, part, sA, sB, Q: tl.constexpr):
    """One n-tile's 4 accumulators from Q: acc + part * scale (columns A, A, B, B)."""
    return (acc[Q] + part[Q] * sA, acc[Q + 1] + part[Q + 1] * sA, acc[Q + 2] + part[Q + 2] * sB,
            acc[Q + 3] + part[Q + 3] * sB)


@triton.jit
def _scale4(acc, sA, sB, Q: tl.constexpr):
    return acc[Q] * sA, acc[Q + 1] * sA, acc[Q + 2] * sB, acc[Q + 3] * sB


@triton.jit
def _scale_value(raw, SCALE_KIND: tl.constexpr):
    """A loaded scale block -> fp32, up to a constant factor (:func:`_scale_factor`): fp16/bf16 as is, E8M0 the
    power of two, E4M3 its raw fp16 decode (``e4m3 * 2**-8``; the global scale and 2**8 wait for the end)."""
    if SCALE_KIND == 1:
        return e8m0_to_fp32(raw.to(tl.int32))
    elif SCALE_KIND == 2:
        return e4m3_raw_fp16(raw.to(tl.int32)).to(tl.float32)
    else:
        return raw.to(tl.float32)


@triton.jit
def _scale_factor(gs_ptr, KIND: tl.constexpr, SCALE_KIND: tl.constexpr):
    """The constant every output multiplies by: the power of two a raw E2M1 operand carries (2**14), and for E4M3
    scales 2**8 times the global scale."""
    if SCALE_KIND == 2:
        return tl.load(gs_ptr) * (raw_factor(KIND) * raw_factor(2))   # 2: the E4M3 kind's raw factor, 2**8
    else:
        return raw_factor(KIND)


@triton.jit
def _tile_scales(s_ptr, z_ptr, grp, cols, col_ok, N, G, NC: tl.constexpr, KIND: tl.constexpr,
                 BITS: tl.constexpr, SYMMETRIC: tl.constexpr, SCALE_KIND: tl.constexpr, IS_BF16: tl.constexpr):
    """fp32 scales (:func:`_scale_value`) and zero offsets (:func:`_zero_offset`; integers) of scale rows ``grp``
    (one per thread) for the thread's NC columns (rows past G, the K padding, read as scale 0)."""
    grp = grp[:, None]
    g_ok = col_ok & (grp < G)
    sc = _scale_value(tl.load(s_ptr + grp * N + cols, mask=g_ok, other=0), SCALE_KIND)
    if SYMMETRIC:
        zc = cols * 0
    else:
        zc = tl.load(z_ptr + grp * N + cols, mask=g_ok, other=0).to(tl.int32)
    return _columns(sc, NC), _columns(_zero_offset(zc, SYMMETRIC, BITS, IS_BF16), NC)


@triton.jit
def _load_tile(qw_ptr, qh_ptr, s_ptr, z_ptr, t, wrow, cols, col_ok, col0, N, K, G, GROUP: tl.constexpr,
               NC: tl.constexpr, KIND: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr,
               SCALE_KIND: tl.constexpr, IS_BF16: tl.constexpr, TILE_K: tl.constexpr, TILE_SCALES: tl.constexpr,
               ALIGNED: tl.constexpr, EVEN_K: tl.constexpr):
    """The 4 NC words of K tile ``t`` (for 3-bit codes then the 4 NC words of the 1-bit plane; for 8-bit codes the
    words of :func:`_load_byte_words` of rows 16 i + 4c + r, in order [slot i][r][word]) and the NC scales of each
    of its TILE_SCALES scale groups (0: none), then their NC zero offsets, in one flat tuple (a loop-carried value).
    """
    if BITS == 8:
        w = ()
        for i in tl.static_range(8):
            for r in tl.static_range(4):
                w = w + _load_byte_words(qw_ptr, t * 128 + 16 * i + wrow + r, col0, N, K, NC, ALIGNED, EVEN_K)
    else:
        w = _load_words(qw_ptr, t, wrow, cols, col_ok, N, NC)
    if BITS == 3:
        w = w + _load_words(qh_ptr, t, wrow, cols, col_ok, N, NC)
    if TILE_SCALES:
        sc = ()
        zo = ()
        for gi in tl.static_range(TILE_SCALES):
            s1, z1 = _tile_scales(s_ptr, z_ptr, (t * TILE_K) // GROUP + gi, cols, col_ok, N, G, NC, KIND, BITS,
                                  SYMMETRIC, SCALE_KIND, IS_BF16)
            sc = sc + s1
            zo = zo + z1
        w = w + sc + zo
    return w


@triton.jit
def _load_x_slot(xw_ptr, kw, live, g, pair, stride_xw, M, KW, MT: tl.constexpr, EVEN_K: tl.constexpr):
    """The B operand of one code slot (``kw``: its first activation pair): per row block m, ``x[g + 8m, 16 i + 4c ..
    +3]`` as two int32 pairs (rows >= M, pairs past K and tiles not ``live`` read as zero), in one flat tuple [m][2]."""
    out = ()
    for m in tl.static_range(MT):
        x_ok = ((g + 8 * m) < M)[:, None] & live
        if not EVEN_K:
            x_ok = x_ok & ((kw + pair) < KW)
        xv = tl.load(xw_ptr + (g + 8 * m)[:, None] * stride_xw + kw + pair, mask=x_ok, other=0)
        out = out + tl.split(xv)
    return out


@triton.jit
def _load_x(xw_ptr, t, t_last, t_end, g, pair, stride_xw, M, KW, TILE_K: tl.constexpr, SLOTS: tl.constexpr,
            MT: tl.constexpr, EVEN_K: tl.constexpr):
    """The B operands of K tile ``t`` (clamped to ``t_last`` for the address; zero for a tile at or past ``t_end``):
    :func:`_load_x_slot` of each code slot, in one flat tuple [slot][m][2] (``KernelConfig.x_ahead``: loaded with the
    tile's words)."""
    live = (t < t_end)[:, None]
    tc = tl.minimum(t, t_last)
    out = ()
    for si in tl.static_range(SLOTS):
        out = out + _load_x_slot(xw_ptr, (tc * (TILE_K // 2) + si * 8)[:, None], live, g, pair, stride_xw, M, KW, MT,
                                 EVEN_K)
    return out


@triton.jit(do_not_specialize=["M", "G", "TILES", "TILES_PER_SPLIT", "SPLIT_K"])
def _qgemv_mma_kernel(
        xw_ptr, qw_ptr, qh_ptr, s_ptr, z_ptr, gs_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
        M, N, K, G, TILES, TILES_PER_SPLIT, SPLIT_K, stride_xw, stride_om,
        KIND: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr, SCALE_KIND: tl.constexpr,
        SLOTS: tl.constexpr, GROUP: tl.constexpr, GROUP_SLOTS: tl.constexpr,
        HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, SPLIT_P2: tl.constexpr, IS_BF16: tl.constexpr,
        ASM: tl.constexpr, EVEN_K: tl.constexpr, TN: tl.constexpr, NW: tl.constexpr, MT: tl.constexpr,
        PREFETCH: tl.constexpr, ALIGNED: tl.constexpr, ZSUM: tl.constexpr = False, XA: tl.constexpr = False):
    """``out [M, N] = x [M, K] @ W.T (+ bias)`` for M <= 8 MT (see the module docstring).

    xw: the activations as int32 pairs ``[M, K/2]`` (row stride ``stride_xw`` pairs; zero-padded to even K);
    qw: the code plane, int32 ``[Kp * BITS / 32, N]`` (KIND 0 integers, 1 E2M1; BITS 2, 3 or 4); qh: the 1-bit
    plane of 3-bit codes, int16 ``[Kp/16, N]``; s: ``[G, N]`` scales (SCALE_KIND: fp16/bf16, E8M0 or E4M3 times
    the fp32 global scale ``gs[0]``); z: uint8 ``[G, N]`` zero points (asymmetric integers); ws/cnt: the
    split-K workspace ``[SPLIT_K, M, N]`` fp32 and tickets (see qgemm._splitk_reduce; SPLIT_P2 = SPLIT_K rounded
    up to a power of two: the last split loads every partial at once). Grid: (cdiv(N, 16 TN), SPLIT_K).
    Program pid_n owns columns ``16 TN pid_n + [0, 16 TN)``, thread (g, c) the 2 TN of them from ``2 TN g``;
    its NW warps split the program's K tiles (warp w takes tiles w, w + NW, ...) and their sums are added in
    the CTA at the end. MT: blocks of 8 activation rows (1 or 2; each slot's A feeds one MMA per block).
    A K tile is SLOTS code slots of 16 k (8 for 4-bit codes, 16 for 2- and 3-bit codes).
    GROUP_SLOTS: slots per scale group in a tile (0: per-channel scales, applied once at the end). PREFETCH
    (0, 1, 2): the words of a warp's next PREFETCH tiles (and their scales, see TILE_SCALES in the body) load
    before this tile's math. EVEN_K: K is a whole number of tiles (no activation mask along K). ALIGNED (8-bit
    codes): a thread's NC code bytes of a k row load as whole 32-bit words (16-bit for NC = 2). ZSUM (integer codes
    of up to 4 bits): the operand is ``ZSUM_BASE + q`` (no subtract per weight) and each scale group's partial product
    loses ``(ZSUM_BASE + z) * sum(x)``, the sums from one all-ones MMA per slot shared by the thread's n-tiles; the
    terms cancelled are ~5x the result's (ZSUM_BASE + z against q - z), so the fp32 sums lose ~2 bits of their 24.
    XA: a tile's activations load with its words (as far ahead as PREFETCH), not at each code slot."""
    TILE_K: tl.constexpr = 16 * SLOTS
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    BLOCK: tl.constexpr = 32 * NW
    NC: tl.constexpr = 2 * TN
    NA: tl.constexpr = 4 * TN               # accumulators per row block
    NW8: tl.constexpr = NC // 4 if NC >= 4 else 1          # words a k row of 8-bit codes takes (NC bytes)
    WORDS: tl.constexpr = 32 * NW8 if BITS == 8 else 4 * NC * (2 if BITS == 3 else 1)   # a tile's tuple starts with
    e = tl.arange(0, BLOCK)
    warp = e // 32
    lane = e % 32
    g = lane // 4
    c = lane % 4
    col0 = pid_n * (16 * TN) + g * NC
    cols = col0[:, None] + tl.arange(0, NC)[None, :]
    col_ok = cols < N
    wrow = 4 * c
    # B of row block m: x[g + 8m, 16 i + 4c .. +3] = pairs 8 i + 2c, 2c + 1 (rows >= M read as zero)
    pair = 2 * c[:, None] + tl.arange(0, 2)[None, :]
    KW = (K + 1) // 2
    acc = ()
    for a in tl.static_range(NA * MT):
        acc = acc + (tl.zeros((BLOCK,), dtype=tl.float32),)
    t_begin = pid_k * TILES_PER_SPLIT
    t_end = tl.minimum(t_begin + TILES_PER_SPLIT, TILES)
    t_last = t_end - 1
    # scale groups of a tile whose scales (and zero offsets) load with its words, ahead like them: one group, or
    # the groups of an 8-slot tile while they are at most 16 values a thread; else none (read at each group's fold:
    # carried, the 16-slot tiles of int2 g128 spill on sm_90)
    GROUPS: tl.constexpr = SLOTS // GROUP_SLOTS if GROUP_SLOTS != 0 else 0
    ZERO_REGS: tl.constexpr = 2 if KIND == 0 and not SYMMETRIC else 1
    TILE_SCALES: tl.constexpr = GROUPS if GROUPS == 1 or (SLOTS == 8 and GROUPS * NC * ZERO_REGS <= 16) else 0
    XOFF: tl.constexpr = WORDS + 2 * TILE_SCALES * NC       # where a tile's activations start in its tuple (XA)
    # a warp's tiles past t_end (the program's tile count need not divide by NW) load the last tile again and
    # multiply it by zero activations
    t_warp = t_begin + warp
    if PREFETCH >= 1:
        nxt = _load_tile(qw_ptr, qh_ptr, s_ptr, z_ptr, tl.minimum(t_warp, t_last), wrow, cols, col_ok, col0, N, K, G,
                         GROUP, NC, KIND, BITS, SYMMETRIC, SCALE_KIND, IS_BF16, TILE_K, TILE_SCALES, ALIGNED, EVEN_K)
        if XA:
            nxt = nxt + _load_x(xw_ptr, t_warp, t_last, t_end, g, pair, stride_xw, M, KW, TILE_K, SLOTS, MT, EVEN_K)
    if PREFETCH >= 2:
        nxt2 = _load_tile(qw_ptr, qh_ptr, s_ptr, z_ptr, tl.minimum(t_warp + NW, t_last), wrow, cols, col_ok,
                          col0, N, K, G, GROUP, NC, KIND, BITS, SYMMETRIC, SCALE_KIND, IS_BF16, TILE_K, TILE_SCALES,
                          ALIGNED, EVEN_K)
        if XA:
            nxt2 = nxt2 + _load_x(xw_ptr, t_warp + NW, t_last, t_end, g, pair, stride_xw, M, KW, TILE_K, SLOTS, MT,
                                  EVEN_K)
    FOLD_SLOTS: tl.constexpr = GROUP_SLOTS if GROUP_SLOTS != 0 else SLOTS
    if GROUP_SLOTS == 0:
        if SYMMETRIC:
            zc = cols * 0
        else:
            zc = tl.load(z_ptr + cols, mask=col_ok, other=0).to(tl.int32)
        z_pc = _columns(_zero_offset(zc, SYMMETRIC, BITS, IS_BF16), NC)
    on_all = ()
    for a in tl.static_range(4 * MT):
        on_all = on_all + (tl.zeros((BLOCK,), dtype=tl.float32),)
    for t0 in range(t_begin, t_end, NW):
        t = t0 + warp
        live = (t < t_end)[:, None]
        tc = tl.minimum(t, t_last)
        if PREFETCH >= 2:
            cur = nxt
            nxt = nxt2
            nxt2 = _load_tile(qw_ptr, qh_ptr, s_ptr, z_ptr, tl.minimum(t + 2 * NW, t_last), wrow, cols,
                              col_ok, col0, N, K, G, GROUP, NC, KIND, BITS, SYMMETRIC, SCALE_KIND, IS_BF16, TILE_K,
                              TILE_SCALES, ALIGNED, EVEN_K)
            if XA:
                nxt2 = nxt2 + _load_x(xw_ptr, t + 2 * NW, t_last, t_end, g, pair, stride_xw, M, KW, TILE_K, SLOTS,
                                      MT, EVEN_K)
        elif PREFETCH >= 1:
            cur = nxt
            nxt = _load_tile(qw_ptr, qh_ptr, s_ptr, z_ptr, tl.minimum(t + NW, t_last), wrow, cols, col_ok,
                             col0, N, K, G, GROUP, NC, KIND, BITS, SYMMETRIC, SCALE_KIND, IS_BF16, TILE_K, TILE_SCALES,
                             ALIGNED, EVEN_K)
            if XA:
                nxt = nxt + _load_x(xw_ptr, t + NW, t_last, t_end, g, pair, stride_xw, M, KW, TILE_K, SLOTS, MT,
                                    EVEN_K)
        else:
            cur = _load_tile(qw_ptr, qh_ptr, s_ptr, z_ptr, tc, wrow, cols, col_ok, col0, N, K, G, GROUP, NC, KIND,
                             BITS, SYMMETRIC, SCALE_KIND, IS_BF16, TILE_K, TILE_SCALES, ALIGNED, EVEN_K)
            if XA:
                cur = cur + _load_x(xw_ptr, t, t_last, t_end, g, pair, stride_xw, M, KW, TILE_K, SLOTS, MT, EVEN_K)
        w = cur
        p = ()
        for j in tl.static_range(TN if BITS != 8 else 0):
            p = p + (_pairs((w[8 * j], w[8 * j + 1], w[8 * j + 2], w[8 * j + 3],
                             w[8 * j + 4], w[8 * j + 5], w[8 * j + 6], w[8 * j + 7]), ASM),)
        hp = ()
        if BITS == 3:
            for j in tl.static_range(TN):
                hp = hp + (_hi_pairs(w, 4 * NC + 8 * j, ASM),)
        for gi in tl.static_range(SLOTS // FOLD_SLOTS):
            if TILE_SCALES:
                sc = ()
                zo = ()
                for q in tl.static_range(NC):
                    sc = sc + (cur[WORDS + gi * NC + q],)
                    zo = zo + (cur[WORDS + (GROUPS + gi) * NC + q],)
            elif GROUP_SLOTS != 0:
                sc, zo = _tile_scales(s_ptr, z_ptr, (tc * TILE_K + gi * 16 * GROUP_SLOTS) // GROUP, cols,
                                      col_ok, N, G, NC, KIND, BITS, SYMMETRIC, SCALE_KIND, IS_BF16)
            else:
                zo = z_pc
            part = ()
            for a in tl.static_range(NA * MT):
                part = part + (tl.zeros((BLOCK,), dtype=tl.float32),)
            if GROUP_SLOTS != 0:
                on = ()
                for a in tl.static_range(4 * MT):
                    on = on + (tl.zeros((BLOCK,), dtype=tl.float32),)
            else:
                on = on_all
            for si in tl.static_range(FOLD_SLOTS):
                b = ()
                if XA:
                    for q in tl.static_range(2 * MT):
                        b = b + (cur[XOFF + (gi * FOLD_SLOTS + si) * 2 * MT + q],)
                else:
                    b = _load_x_slot(xw_ptr, (tc * (TILE_K // 2) + (gi * FOLD_SLOTS + si) * 8)[:, None], live, g,
                                     pair, stride_xw, M, KW, MT, EVEN_K)
                if ZSUM:
                    on = _ones_mma(b, on, IS_BF16, ASM, NW, MT)
                if GROUP_SLOTS != 0:
                    cc = part
                else:
                    cc = acc
                new = ()
                for j in tl.static_range(TN):
                    ccj = ()
                    for m in tl.static_range(MT):
                        ccj = ccj + (cc[m * NA + 4 * j], cc[m * NA + 4 * j + 1], cc[m * NA + 4 * j + 2],
                                     cc[m * NA + 4 * j + 3])
                    if BITS == 3:
                        hpj = hp[j]
                    else:
                        hpj = ()
                    if BITS == 8:
                        pj = _slot_byte_pairs(w, gi * FOLD_SLOTS + si, j, NW8, ASM)
                    else:
                        pj = p[j]
                    new = new + (_slot_mma(pj, hpj, b, zo[2 * j], zo[2 * j + 1], ccj, gi * FOLD_SLOTS + si, KIND,
                                           BITS, IS_BF16, ASM, NW, MT, ZSUM),)
                # new[j][4 m + r] -> accumulator m * NA + 4 j + r
                flat = ()
                for m in tl.static_range(MT):
                    for j in tl.static_range(TN):
                        flat = flat + (new[j][4 * m], new[j][4 * m + 1], new[j][4 * m + 2], new[j][4 * m + 3])
                if GROUP_SLOTS != 0:
                    part = flat
                else:
                    acc = flat
            if GROUP_SLOTS != 0:
                folded = ()
                for m in tl.static_range(MT):
                    for j in tl.static_range(TN):
                        if ZSUM:
                            folded = folded + _fold_zsum(acc, part, on, sc[2 * j], sc[2 * j + 1], _zsum_base(zo[2 * j]),
                                                         _zsum_base(zo[2 * j + 1]), m * NA + 4 * j, 4 * m)
                        else:
                            folded = folded + _fold4(acc, part, sc[2 * j], sc[2 * j + 1], m * NA + 4 * j)
                acc = folded
            else:
                on_all = on
    # the NW warps' sums -> one warp's worth ([32] per accumulator: lane (g, c) of the program)
    if NW > 1:
        red = ()
        for a in tl.static_range(NA * MT):
            red = red + (tl.sum(tl.reshape(acc[a], (NW, 32)), axis=0),)
        acc = red
        if ZSUM and GROUP_SLOTS == 0:
            red = ()
            for a in tl.static_range(4 * MT):
                red = red + (tl.sum(tl.reshape(on_all[a], (NW, 32)), axis=0),)
            on_all = red
    ln = tl.arange(0, 32)
    g32 = ln // 4
    c32 = ln % 4
    cols32 = (pid_n * (16 * TN) + g32 * NC)[:, None] + tl.arange(0, NC)[None, :]
    if GROUP_SLOTS == 0:
        sc = _columns(_scale_value(tl.load(s_ptr + cols32, mask=cols32 < N, other=0), SCALE_KIND), NC)
        if ZSUM:
            if SYMMETRIC:
                zc32 = cols32 * 0
            else:
                zc32 = tl.load(z_ptr + cols32, mask=cols32 < N, other=0).to(tl.int32)
            zo32 = _columns(_zero_offset(zc32, SYMMETRIC, BITS, IS_BF16), NC)
            zeros = ()
            for a in tl.static_range(NA * MT):
                zeros = zeros + (tl.zeros_like(acc[a]),)
        scaled = ()
        for m in tl.static_range(MT):
            for j in tl.static_range(TN):
                if ZSUM:
                    scaled = scaled + _fold_zsum(zeros, acc, on_all, sc[2 * j], sc[2 * j + 1], _zsum_base(zo32[2 * j]),
                                                 _zsum_base(zo32[2 * j + 1]), m * NA + 4 * j, 4 * m)
                else:
                    scaled = scaled + _scale4(acc, sc[2 * j], sc[2 * j + 1], m * NA + 4 * j)
        acc = scaled
    if KIND != 0 or SCALE_KIND == 2:
        f = _scale_factor(gs_ptr, KIND, SCALE_KIND)
        scaled = ()
        for a in tl.static_range(NA * MT):
            scaled = scaled + (acc[a] * f,)
        acc = scaled
    # lane (g, c) holds, for row block m and n-tile j: (col 2j, row 2c), (col 2j, row 2c+1), (col 2j+1, row 2c),
    # (col 2j+1, row 2c+1), rows offset by 8m
    colv = cols32[:, :, None]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + colv, mask=colv < N, other=0.0).to(tl.float32)
    for m in tl.static_range(MT):
        blk = ()
        for a in tl.static_range(NA):
            blk = blk + (acc[m * NA + a],)
        res = _stack_acc(blk, TN)                                 # [32, NC, 2]: [lane, column, row 2c + h]
        rowv = (2 * c32 + 8 * m)[:, None, None] + tl.arange(0, 2)[None, None, :]
        ok = (colv < N) & (rowv < M)
        if SPLIT:
            tl.store(ws_ptr + pid_k * M * N + rowv * N + colv, res, mask=ok)
        else:
            if HAS_BIAS:
                res += bias
            tl.store(out_ptr + rowv * stride_om + colv, res.to(out_ptr.dtype.element_ty), mask=ok)
    if SPLIT:
        tl.debug_barrier()
        ticket = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel")
        if ticket == SPLIT_K - 1:
            KB: tl.constexpr = SPLIT_P2 if SPLIT_P2 < 4 else 4
            ks = tl.arange(0, KB)[:, None, None, None]
            for m in tl.static_range(MT):
                rowv = (2 * c32 + 8 * m)[:, None, None] + tl.arange(0, 2)[None, None, :]
                ok = (colv < N) & (rowv < M)
                # the partials KB splits at a time in one load each (independent, in flight together), summed in
                # a fixed order
                total = tl.zeros((32, NC, 2), dtype=tl.float32)
                for k0 in tl.static_range(0, SPLIT_P2, KB):
                    parts = tl.load(ws_ptr + (k0 + ks) * M * N + (rowv * N + colv)[None],
                                    mask=((k0 + ks) < SPLIT_K) & ok[None], other=0.0, cache_modifier=".cg")
                    total += tl.sum(parts, axis=0)
                if HAS_BIAS:
                    total += bias
                tl.store(out_ptr + rowv * stride_om + colv, total.to(out_ptr.dtype.element_ty), mask=ok)
            tl.atomic_xchg(cnt_ptr + pid_n, 0)


@triton.jit
def _stack_acc(acc, TN: tl.constexpr):
    """The 4 TN accumulators -> ``[B, 2 TN, 2]`` (column 2j + a, row 2c + h) = acc[4j + 2a + h]."""
    cols = ()
    for q in tl.static_range(2 * TN):
        cols = cols + (tl.join(acc[2 * q], acc[2 * q + 1]),)              # [B, 2]
    if TN == 1:
        return tl.permute(tl.join(cols[0], cols[1]), (0, 2, 1))
    elif TN == 2:
        lo = tl.permute(tl.join(cols[0], cols[2]), (0, 2, 1))             # [B, 2(col 0, 2), 2]
        hi = tl.permute(tl.join(cols[1], cols[3]), (0, 2, 1))
        return tl.reshape(tl.permute(tl.join(lo, hi), (0, 1, 3, 2)), (lo.shape[0], 4, 2))
    else:
        a = tl.permute(tl.join(cols[0], cols[4]), (0, 2, 1))              # cols 0, 4
        b = tl.permute(tl.join(cols[2], cols[6]), (0, 2, 1))              # 2, 6
        cc = tl.permute(tl.join(cols[1], cols[5]), (0, 2, 1))             # 1, 5
        d = tl.permute(tl.join(cols[3], cols[7]), (0, 2, 1))              # 3, 7
        even = tl.reshape(tl.permute(tl.join(a, b), (0, 1, 3, 2)), (a.shape[0], 4, 2))    # 0, 2, 4, 6
        odd = tl.reshape(tl.permute(tl.join(cc, d), (0, 1, 3, 2)), (a.shape[0], 4, 2))    # 1, 3, 5, 7
        return tl.reshape(tl.permute(tl.join(even, odd), (0, 1, 3, 2)), (a.shape[0], 8, 2))


def mma_tiles(block_n: int) -> int:
    """16-column tiles (TN) of a ``family="mma"`` program; ValueError unless block_n is 16, 32 or 64."""
    if block_n not in (16, 32, 64):
        raise ValueError(f"the mma family takes block_n in (16, 32, 64) (16-column tiles a thread), got {block_n}")
    return block_n // 16
