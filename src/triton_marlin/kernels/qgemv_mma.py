"""Register-fragment GEMV for small M (``KernelConfig(family="mma")``, up to 8 activation rows).

Each thread loads its words straight into registers and builds the tensor-core operand in place: no
shared memory, no ``cp.async``, no ``ldmatrix``, no barrier in the K loop. It reads the packed layout as
stored (``k16_interleaved``, docs/formats.md): word row ``w`` of K tile ``t`` holds, in code slot ``i``, the
code of ``k = 128 t + 16 i + w`` for one output column.

One ``mma.sync.m16n8k16`` multiplies a 16 x 16 block of weights (16 output columns x the 16 k of one code
slot) by the activations of up to 8 rows (the MMA's N). Thread ``(g, c)`` of a warp (``g = lane / 4``,
``c = lane % 4``) owns word rows ``4c .. 4c + 3`` of two output columns per 16-column tile; the fragment's
k order is permuted so that those four word rows are exactly its A elements (columns ``2c, 2c+1, 2c+8,
2c+9``), and B (the activations) takes the same permutation: B's elements of thread ``(g, c)`` are
``x[g, 16 i + 4c .. 4c + 3]``, one 8-byte load. A's rows are output columns: row ``g`` the thread's column
``2j`` of n-tile ``j``, row ``g + 8`` column ``2j + 1``, so a thread's columns of all its n-tiles are
contiguous and its word loads are 8-, 16- or 32-byte vectors.

The A registers come from the PTX pair unpack of :mod:`.decode` (one ``prmt`` gathers the half-words of two
word rows, then per slot one shift and one ``lop3`` give ``{1024 + q, 1024 + q'}`` in fp16, or ``128 + q``
in bf16) and one packed subtract of ``1024 + z``: the operand is the exact integer ``q - z``. The group scale
multiplies each scale group's fp32 partial product (fold); per-channel scales multiply once at the end.

Under the CPU interpreter the same kernel runs a portable emulation of the unpack and of the warp's MMA
(the per-thread values gathered across the warp with reshapes): same operands, same sums in fp32.
"""
from __future__ import annotations

import triton
import triton.language as tl

MMA_MAX_M = 16         # activation rows one launch multiplies (two blocks of the MMA's N = 8)
MMA_FORMATS = ("int4",)


def _slot_asm(shift: int, bf16: bool, mt: int) -> str:
    """PTX of one code slot of one n-tile: A = unpacked codes minus ``1024 + z`` (``128 + z`` in bf16), then one
    m16n8k16 MMA per block of 8 activation rows (``mt`` of them, sharing A). $0 .. $(4 mt - 1) = D; then the
    gathered half-word pairs (rows 01 col A, rows 01 col B, rows 23 col A, rows 23 col B); B (two registers per
    row block); the zero offsets of col A / col B (f16x2 or bf16x2); C (4 per row block)."""
    magic = "0x43004300" if bf16 else "0x64006400"
    sub = "sub.rn.bf16x2" if bf16 else "sub.f16x2"
    ty = "bf16" if bf16 else "f16"
    src0 = 4 * mt
    b0 = src0 + 4
    z0 = b0 + 2 * mt
    c0 = z0 + 2
    lines = ["{", ".reg .b32 t, a0, a1, a2, a3;"]
    # a0: row g (col A) k 2c..2c+1; a1: row g+8 (col B); a2: row g, k 2c+8..; a3: row g+8, k 2c+8..
    for a, src, z in (("a0", src0, z0), ("a1", src0 + 1, z0 + 1), ("a2", src0 + 2, z0), ("a3", src0 + 3, z0 + 1)):
        reg = f"${src}"
        if shift:
            lines.append(f"shr.u32 t, {reg}, {shift};")
            reg = "t"
        lines.append(f"lop3.b32 {a}, {reg}, 0x000f000f, {magic}, 0xea;")
        lines.append(f"{sub} {a}, {a}, ${z};")
    for m in range(mt):
        d = ",".join(f"${4 * m + r}" for r in range(4))
        cc = ",".join(f"${c0 + 4 * m + r}" for r in range(4))
        lines.append(f"mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32 {{{d}}}, {{a0,a1,a2,a3}}, "
                     f"{{${b0 + 2 * m},${b0 + 2 * m + 1}}}, {{{cc}}};")
    lines.append("}")
    return "\n".join(lines)


# PTX: 8 words (rows 4c..4c+3 of col A, then of col B) -> 8 gathered half-word pairs:
# (rows 01 col A lo, hi), (rows 01 col B lo, hi), (rows 23 col A lo, hi), (rows 23 col B lo, hi)
PAIRS_ASM = tl.constexpr("\n".join(
    ["{"]
    + [f"prmt.b32 ${2 * p}, ${8 + a}, ${8 + b}, 0x5410;\nprmt.b32 ${2 * p + 1}, ${8 + a}, ${8 + b}, 0x7632;"
       for p, (a, b) in enumerate(((0, 1), (4, 5), (2, 3), (6, 7)))]
    + ["}"]))
SLOT_ASM = {(shift, bf16, mt): _slot_asm(shift, bf16, mt) for shift in (0, 4, 8, 12) for bf16 in (False, True)
            for mt in (1, 2)}


@triton.constexpr_function
def _slot_code(slot, bf16, mt):
    return SLOT_ASM[(4 * (slot % 4), bool(bf16), int(mt))]


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
def _half_fp32(v, HI: tl.constexpr):
    """fp16 half ``HI`` of an int32 register pair -> fp32 (portable emulation of the B operand)."""
    if HI:
        h = (v >> 16) & 0xFFFF
    else:
        h = v & 0xFFFF
    return h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _bf16_half_fp32(v, HI: tl.constexpr):
    if HI:
        h = (v >> 16) & 0xFFFF
    else:
        h = v & 0xFFFF
    return h.to(tl.int16).to(tl.bfloat16, bitcast=True).to(tl.float32)


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


@triton.jit
def _slot_mma(p, b, zA, zB, cc, SLOT: tl.constexpr, IS_BF16: tl.constexpr, ASM: tl.constexpr, NW: tl.constexpr,
              MT: tl.constexpr):
    """One code slot of one n-tile: D = (codes of slot SLOT - z) @ x-slot + C for MT blocks of 8 activation rows.
    ``p`` = the 8 pairs of :func:`_pairs`; ``b`` the B registers (2 per row block); ``zA``/``zB`` the zero
    offsets (packed halves); ``cc`` the 4 MT accumulators. Returns the new 4 MT accumulators."""
    HI: tl.constexpr = SLOT >= 4
    SH: tl.constexpr = 4 * (SLOT % 4)
    src = (p[0 + HI], p[2 + HI], p[4 + HI], p[6 + HI])     # rows 01 col A, rows 01 col B, rows 23 A, rows 23 B
    if ASM:
        if MT == 1:
            d = tl.inline_asm_elementwise(_slot_code(SLOT, IS_BF16, 1), "=f,=f,=f,=f,r,r,r,r,r,r,r,r,f,f,f,f",
                                          [src[0], src[1], src[2], src[3], b[0], b[1], zA, zB,
                                           cc[0], cc[1], cc[2], cc[3]],
                                          dtype=(tl.float32,) * 4, is_pure=True, pack=1)
            return d[0], d[1], d[2], d[3]
        else:
            d = tl.inline_asm_elementwise(_slot_code(SLOT, IS_BF16, 2),
                                          "=f,=f,=f,=f,=f,=f,=f,=f,r,r,r,r,r,r,r,r,r,r,f,f,f,f,f,f,f,f",
                                          [src[0], src[1], src[2], src[3], b[0], b[1], b[2], b[3], zA, zB,
                                           cc[0], cc[1], cc[2], cc[3], cc[4], cc[5], cc[6], cc[7]],
                                          dtype=(tl.float32,) * 8, is_pure=True, pack=1)
            return d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]
    else:
        # codes q of both halves, minus the zero point (the low 4 bits of the zero offset)
        qa = ()
        for r in tl.static_range(4):
            v = src[r] >> SH
            z = (zA, zB, zA, zB)[r] & 15
            qa = qa + (((v & 15) - z).to(tl.float32), (((v >> 16) & 15) - z).to(tl.float32))
        out = ()
        for m in tl.static_range(MT):
            if IS_BF16:
                bv = (_bf16_half_fp32(b[2 * m], False), _bf16_half_fp32(b[2 * m], True),
                      _bf16_half_fp32(b[2 * m + 1], False), _bf16_half_fp32(b[2 * m + 1], True))
            else:
                bv = (_half_fp32(b[2 * m], False), _half_fp32(b[2 * m], True), _half_fp32(b[2 * m + 1], False),
                      _half_fp32(b[2 * m + 1], True))
            dA0, dA1 = _warp_mma((qa[0], qa[1], qa[4], qa[5]), bv, NW)      # row g: col A
            dB0, dB1 = _warp_mma((qa[2], qa[3], qa[6], qa[7]), bv, NW)      # row g + 8: col B
            out = out + (cc[4 * m] + dA0, cc[4 * m + 1] + dA1, cc[4 * m + 2] + dB0, cc[4 * m + 3] + dB1)
        return out


@triton.jit
def _load_words(qw_ptr, t, wrow, cols, col_ok, N, NC: tl.constexpr):
    """Words of K tile ``t``: rows 4c..4c+3 (``wrow`` = 4c) x the thread's NC contiguous columns ->
    tuple indexed [col * 4 + row] (int32)."""
    out = ()
    per_row = ()
    for r in tl.static_range(4):
        offs = (t * 16 + wrow + r)[:, None] * N + cols
        per_row = per_row + (_columns(tl.load(qw_ptr + offs, mask=col_ok, other=0), NC),)
    for j in tl.static_range(NC):
        for r in tl.static_range(4):
            out = out + (per_row[r][j],)
    return out


@triton.jit
def _zero_offset(z, SYMMETRIC: tl.constexpr, BITS: tl.constexpr, IS_BF16: tl.constexpr):
    """Packed halves ``{M + z, M + z}`` (M = 1024 in fp16, 128 in bf16) from zero-point codes z (int32)."""
    if SYMMETRIC:
        zz = tl.full(z.shape, 1 << (BITS - 1), tl.int32)
    else:
        zz = z
    if IS_BF16:
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
def _tile_scales(s_ptr, z_ptr, grp, cols, col_ok, N, G, NC: tl.constexpr, SYMMETRIC: tl.constexpr,
                 BITS: tl.constexpr, IS_BF16: tl.constexpr):
    """fp32 scales and zero offsets (:func:`_zero_offset`) of scale rows ``grp`` (one per thread) for the thread's
    NC columns (rows past G, the K padding, read as scale 0)."""
    grp = grp[:, None]
    g_ok = col_ok & (grp < G)
    sc = _columns(tl.load(s_ptr + grp * N + cols, mask=g_ok, other=0).to(tl.float32), NC)
    if SYMMETRIC:
        zc = cols * 0
    else:
        zc = tl.load(z_ptr + grp * N + cols, mask=g_ok, other=0).to(tl.int32)
    return sc, _columns(_zero_offset(zc, SYMMETRIC, BITS, IS_BF16), NC)


@triton.jit
def _load_tile(qw_ptr, s_ptr, z_ptr, t, wrow, cols, col_ok, N, G, GROUP: tl.constexpr, NC: tl.constexpr,
               SYMMETRIC: tl.constexpr, BITS: tl.constexpr, IS_BF16: tl.constexpr, TILE_SCALES: tl.constexpr):
    """The 4 NC words of K tile ``t`` and, with TILE_SCALES (one scale group per tile), its NC scales and NC zero
    offsets, in one flat tuple (a loop-carried value)."""
    w = _load_words(qw_ptr, t, wrow, cols, col_ok, N, NC)
    if TILE_SCALES:
        sc, zo = _tile_scales(s_ptr, z_ptr, (t * 128) // GROUP, cols, col_ok, N, G, NC, SYMMETRIC, BITS, IS_BF16)
        w = w + sc + zo
    return w


@triton.jit(do_not_specialize=["M", "G", "TILES", "TILES_PER_SPLIT", "SPLIT_K"])
def _qgemv_mma_kernel(
        xw_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
        M, N, K, G, TILES, TILES_PER_SPLIT, SPLIT_K, stride_xw, stride_om,
        BITS: tl.constexpr, SYMMETRIC: tl.constexpr, GROUP: tl.constexpr, GROUP_SLOTS: tl.constexpr,
        HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, SPLIT_P2: tl.constexpr, IS_BF16: tl.constexpr,
        ASM: tl.constexpr, EVEN_K: tl.constexpr, TN: tl.constexpr, NW: tl.constexpr, MT: tl.constexpr,
        PREFETCH: tl.constexpr):
    """``out [M, N] = x [M, K] @ W.T (+ bias)`` for M <= 8 MT (see the module docstring).

    xw: the activations as int32 pairs ``[M, K/2]`` (row stride ``stride_xw`` pairs; zero-padded to even K);
    qw: int32 ``[Kp/8, N]``; s: ``[G, N]`` scales; z: uint8 ``[G, N]`` zero points (asymmetric); ws/cnt: the
    split-K workspace ``[SPLIT_K, M, N]`` fp32 and tickets (see qgemm._splitk_reduce; SPLIT_P2 = SPLIT_K rounded
    up to a power of two: the last split loads every partial at once). Grid: (cdiv(N, 16 TN), SPLIT_K).
    Program pid_n owns columns ``16 TN pid_n + [0, 16 TN)``, thread (g, c) the 2 TN of them from ``2 TN g``;
    its NW warps split the program's K tiles (warp w takes tiles w, w + NW, ...) and their sums are added in
    the CTA at the end. MT: blocks of 8 activation rows (1 or 2; each slot's A feeds one MMA per block).
    GROUP_SLOTS: slots per scale group in a tile (0: per-channel scales, applied once at the end). PREFETCH
    (0, 1, 2): the words of a warp's next PREFETCH tiles (and their scales, when a tile is one scale group) load
    before this tile's math. EVEN_K: K is a whole number of 128-row tiles (no activation mask along K)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    BLOCK: tl.constexpr = 32 * NW
    NC: tl.constexpr = 2 * TN
    NA: tl.constexpr = 4 * TN               # accumulators per row block
    e = tl.arange(0, BLOCK)
    warp = e // 32
    lane = e % 32
    g = lane // 4
    c = lane % 4
    cols = (pid_n * (16 * TN) + g * NC)[:, None] + tl.arange(0, NC)[None, :]
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
    TILE_SCALES: tl.constexpr = GROUP_SLOTS == 8
    # a warp's tiles past t_end (the program's tile count need not divide by NW) load the last tile again and
    # multiply it by zero activations
    t_warp = t_begin + warp
    if PREFETCH >= 1:
        nxt = _load_tile(qw_ptr, s_ptr, z_ptr, tl.minimum(t_warp, t_last), wrow, cols, col_ok, N, G, GROUP, NC,
                         SYMMETRIC, BITS, IS_BF16, TILE_SCALES)
    if PREFETCH >= 2:
        nxt2 = _load_tile(qw_ptr, s_ptr, z_ptr, tl.minimum(t_warp + NW, t_last), wrow, cols, col_ok, N, G, GROUP,
                          NC, SYMMETRIC, BITS, IS_BF16, TILE_SCALES)
    FOLD_SLOTS: tl.constexpr = GROUP_SLOTS if GROUP_SLOTS != 0 else 8
    if GROUP_SLOTS == 0:
        if SYMMETRIC:
            zc = cols * 0
        else:
            zc = tl.load(z_ptr + cols, mask=col_ok, other=0).to(tl.int32)
        z_pc = _columns(_zero_offset(zc, SYMMETRIC, BITS, IS_BF16), NC)
    for t0 in range(t_begin, t_end, NW):
        t = t0 + warp
        live = (t < t_end)[:, None]
        tc = tl.minimum(t, t_last)
        if PREFETCH >= 2:
            cur = nxt
            nxt = nxt2
            nxt2 = _load_tile(qw_ptr, s_ptr, z_ptr, tl.minimum(t + 2 * NW, t_last), wrow, cols, col_ok, N, G, GROUP,
                              NC, SYMMETRIC, BITS, IS_BF16, TILE_SCALES)
        elif PREFETCH >= 1:
            cur = nxt
            nxt = _load_tile(qw_ptr, s_ptr, z_ptr, tl.minimum(t + NW, t_last), wrow, cols, col_ok, N, G, GROUP,
                             NC, SYMMETRIC, BITS, IS_BF16, TILE_SCALES)
        else:
            cur = _load_tile(qw_ptr, s_ptr, z_ptr, tc, wrow, cols, col_ok, N, G, GROUP, NC, SYMMETRIC, BITS, IS_BF16,
                             TILE_SCALES)
        w = cur
        p = ()
        for j in tl.static_range(TN):
            p = p + (_pairs((w[8 * j], w[8 * j + 1], w[8 * j + 2], w[8 * j + 3],
                             w[8 * j + 4], w[8 * j + 5], w[8 * j + 6], w[8 * j + 7]), ASM),)
        for gi in tl.static_range(8 // FOLD_SLOTS):
            if TILE_SCALES:
                sc = ()
                zo = ()
                for q in tl.static_range(NC):
                    sc = sc + (cur[4 * NC + q],)
                    zo = zo + (cur[5 * NC + q],)
            elif GROUP_SLOTS != 0:
                sc, zo = _tile_scales(s_ptr, z_ptr, (tc * 128 + gi * 16 * GROUP_SLOTS) // GROUP, cols, col_ok, N, G,
                                      NC, SYMMETRIC, BITS, IS_BF16)
            else:
                zo = z_pc
            part = ()
            for a in tl.static_range(NA * MT):
                part = part + (tl.zeros((BLOCK,), dtype=tl.float32),)
            for si in tl.static_range(FOLD_SLOTS):
                kw = (tc * 64 + (gi * FOLD_SLOTS + si) * 8)[:, None]
                b = ()
                for m in tl.static_range(MT):
                    x_ok = ((g + 8 * m) < M)[:, None] & live
                    if not EVEN_K:
                        x_ok = x_ok & ((kw + pair) < KW)
                    xv = tl.load(xw_ptr + (g + 8 * m)[:, None] * stride_xw + kw + pair, mask=x_ok, other=0)
                    b = b + tl.split(xv)
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
                    new = new + (_slot_mma(p[j], b, zo[2 * j], zo[2 * j + 1], ccj, gi * FOLD_SLOTS + si, IS_BF16, ASM,
                                           NW, MT),)
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
                        folded = folded + _fold4(acc, part, sc[2 * j], sc[2 * j + 1], m * NA + 4 * j)
                acc = folded
    # the NW warps' sums -> one warp's worth ([32] per accumulator: lane (g, c) of the program)
    if NW > 1:
        red = ()
        for a in tl.static_range(NA * MT):
            red = red + (tl.sum(tl.reshape(acc[a], (NW, 32)), axis=0),)
        acc = red
    ln = tl.arange(0, 32)
    g32 = ln // 4
    c32 = ln % 4
    cols32 = (pid_n * (16 * TN) + g32 * NC)[:, None] + tl.arange(0, NC)[None, :]
    if GROUP_SLOTS == 0:
        sc = _columns(tl.load(s_ptr + cols32, mask=cols32 < N, other=0).to(tl.float32), NC)
        scaled = ()
        for m in tl.static_range(MT):
            for j in tl.static_range(TN):
                scaled = scaled + _scale4(acc, sc[2 * j], sc[2 * j + 1], m * NA + 4 * j)
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
