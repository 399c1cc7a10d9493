"""Fused grouped expert GEMMs for Mixture-of-Experts layers, mixed bit widths in one launch.

Two kernels, one launch each per MoE forward:

- ``_moe_gate_up_kernel``: for every block of ``BLOCK_M`` aligned token slots (all of one expert, see
  :mod:`triton_marlin.moe.align`) and ``BLOCK_N`` intermediate columns: ``h = silu(x @ gate_e.T) * (x @ up_e.T)``
  (SwiGLU fused), written at the slot's sorted row. It also zeroes the fp32 output accumulator the down
  kernel adds into (one launch fewer than a separate memset).
- ``_moe_down_kernel``: ``out[token] += w_slot * (h @ down_e.T)``: routing weight and scatter-add fused
  (fp32 atomics, so the k experts of a token add up in any order).

Weights come flattened per projection (:class:`triton_marlin.moe.experts.FlatProjection`): every expert's
codes in one buffer per word type, with a table of (kind, offsets, group size) per expert. Packed words and
8-bit codes are interleaved by K tile (each column's 16 word rows, or 16 bytes of k, contiguous: 16-byte
loads and copies), and every offset is a multiple of 16 (``_known16`` lets the compiler see it). A program reads
its expert's kind from the table and branches to a K loop specialized for that kind; only the kinds present
(``KINDS`` bit mask, compile time) are compiled in. With ``UNIFORM >= 0`` the kind is a compile-time
constant and the table's kind column is not read (the uniform-width strategy).

K loop of one kind: a tile of ``SLOTS * 16`` contiguous k is 16 word rows (sub-byte codes, see
formats/packing.py) shifted by ``BITS * slot`` into a ``[SLOTS, 16, BLOCK_N]`` code block, or 128 rows of
bytes (8-bit codes) viewed the same way; one scale (and zero point) row per slot of 16 k (groups are
multiples of 16). Two paths:

- ``BLOCK_M >= 16`` (prefill, batches): one k=16 ``tl.dot`` per code slot (slot ``i`` of the 16 word rows is
  the ``[16, BLOCK_N]`` operand of 16 contiguous k). Where the group spans whole slots (``GK``, the group size
  the experts of a projection share) the operand is the exact unscaled code value (``q - z``, or the minifloat
  over a power of two) and the group scale multiplies a per-group partial accumulator; on CUDA with fp16 the
  PTX pair unpackers of :mod:`triton_marlin.kernels.decode` make the operands (``ASM``). Otherwise each slot
  is dequantized with its scale.
- ``BLOCK_M == 1`` (decode: about one slot per active expert): CUDA cores, exact fp32 decode, the gate_up
  K range split over programs (``SPLIT_K``), each storing its fp32 ``[gate | up]`` partials in its own plane
  (no zero-fill, no atomics); the down kernel sums the planes and forms ``silu(gate) * up`` as it loads them
  (``A_SWIGLU``) and splits its own K range too. On sm_90 the two launch with programmatic dependent launch
  (``PDL``, :mod:`triton_marlin.kernels.pdl`).

Operands: ``x [T, H]`` (fp16/bf16, row stride ``stride_x``), gate/up ``[I, H]``, down ``[H, I]`` per expert,
intermediate ``h [capacity, I]`` in x's dtype (row = sorted position; ``[capacity, 2 I]`` fp32 with split-K
gate_up), output accumulator ``[T, H]`` fp32.
The torch reference these kernels must equal is :func:`fused_moe_reference`.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .decode import (decode_scale, dequant, e2m1_raw_fp16, e4m3_raw_fp16, int_magic_fp16, int_magic_fp32,
                     raw_factor, unpack_slots_fp16_asm)
from .pdl import pdl_supported, pdl_sync
from .qgemm import join_k

# Kind codes: the format kinds of triton_marlin.moe.experts.KIND_CODES, asymmetric integers + 8; the table
# columns are those of triton_marlin.moe.experts (T_KIND ... T_GROUP, 8 per expert).
NUM_KINDS = 12


@triton.jit
def _known16(off):
    """``off``, a multiple of 16 by construction (every part of a flat buffer starts at one, see
    :mod:`triton_marlin.moe.experts`),
    rebuilt as ``(off >> 4) << 4`` so the compiler can prove it and vectorize the loads at that offset.
    ``tl.multiple_of`` cannot: it annotates the op that made the value, and a table offset reaches the loops
    as a function argument (the hint was silently dropped; every word copy went out as 4 bytes)."""
    return (off >> 4) << 4


@triton.jit
def _table_row(table, e):
    """``(code_off, hi_off, scale_off, zero_off, group)`` of expert ``e`` (table columns 1-5), the offsets through
    :func:`_known16` (a symmetric expert's zero-point offset, -1, comes out as -16 and is never read)."""
    row = table + e * 8
    return (_known16(tl.load(row + 1)), _known16(tl.load(row + 2)), _known16(tl.load(row + 3)),
            _known16(tl.load(row + 4)), tl.load(row + 5))


@triton.jit
def _codes_and_scales(words, hi, k0, sl, K, k_lim, N, codes8, scales16, scales8, zeros8, gscale, code_off,
                      scale_off, zero_off, group, offs_n, n_ok,
                      BITS: tl.constexpr, LO_BITS: tl.constexpr, SCALE_KIND: tl.constexpr, SYM: tl.constexpr):
    """Codes ``[len(sl), 16, BN]`` (int32) of slots ``sl`` of the tile starting at ``k0`` (k = k0 + 16 i + w),
    their scales ``[len(sl), BN]`` (fp32) and zero points (int32, asymmetric integers; else 0).
    ``words``/``hi``: the tile's 16 word rows of the packed planes (unused for 8-bit codes)."""
    i3 = sl[:, None, None]
    if BITS == 8:
        kidx = k0 + i3 * 16 + tl.arange(0, 16)[None, :, None]
        # 8-bit codes interleaved by 16 k (see _swap_words): (k, n) at (k // 16) * 16 N + 16 n + k % 16
        q = tl.load(codes8 + code_off + (kidx // 16) * (16 * N) + offs_n[None, None, :] * 16 + kidx % 16,
                    mask=(kidx < k_lim) & n_ok[None, None, :], other=0).to(tl.int32)
    else:
        q = (words[None, :, :] >> (i3 * LO_BITS)) & ((1 << LO_BITS) - 1)
        if BITS == 3:
            q = q | (((hi[None, :, :] >> i3) & 1) << 2)
    kslot = k0 + sl * 16
    srow = kslot // group
    smask = (kslot < k_lim)[:, None] & n_ok[None, :]
    soffs = srow[:, None] * N + offs_n[None, :]
    if SCALE_KIND == 0:
        raw = tl.load(scales16 + scale_off + soffs, mask=smask, other=0.0)
    else:
        raw = tl.load(scales8 + scale_off + soffs, mask=smask, other=0)
    s = decode_scale(raw, gscale, SCALE_KIND)
    if SYM:
        z = 0
    else:
        z = tl.load(zeros8 + zero_off + soffs, mask=smask, other=0).to(tl.int32)
    return q, s, z


@triton.jit
def _fold_operand(q, z, DKIND: tl.constexpr, BITS: tl.constexpr, IS_BF16: tl.constexpr):
    """The exact unscaled value of codes ``q`` as a tensor-core operand: integers ``q - z`` (exact in fp16,
    and in bf16 for |q - z| < 256), minifloats ``value / factor`` (see :func:`decode.raw_factor`)."""
    if DKIND == 0:
        if IS_BF16:
            w = (int_magic_fp32(q) - int_magic_fp32(z)).to(tl.bfloat16)
        else:
            w = int_magic_fp16(q) - int_magic_fp16(z)
    else:
        if DKIND == 1:
            raw = e2m1_raw_fp16(q)
        else:
            raw = e4m3_raw_fp16(q)
        if IS_BF16:
            w = raw.to(tl.bfloat16)
        else:
            w = raw
    return w


@triton.jit
def _swap_scales(scales16, scales8, zeros8, gscale, scale_off, zero_off, srow, N, offs_n, n_ok, kpos, klim,
                 BITS: tl.constexpr, SCALE_KIND: tl.constexpr, SYM: tl.constexpr, MASKED: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """Scales (fp32 ``[BN]``) and zero points (int32 ``[BN]``) of scale row ``srow`` of columns ``offs_n``.
    ``MASKED``: mask by ``n_ok`` and ``kpos < klim`` (a slot past K); else no mask at all."""
    p = scale_off + srow * N + offs_n
    if MASKED:
        smask = n_ok & ((kpos + offs_n * 0) < klim)
        if SCALE_KIND == 0:
            raw_s = tl.load(scales16 + p, mask=smask, other=0.0)
        else:
            raw_s = tl.load(scales8 + p, mask=smask, other=0)
    else:
        if SCALE_KIND == 0:
            raw_s = tl.load(scales16 + p)
        else:
            raw_s = tl.load(scales8 + p)
    s = decode_scale(raw_s, gscale, SCALE_KIND)
    if SYM:
        z = tl.zeros([BLOCK_N], tl.int32) + (1 << (BITS - 1))
    else:
        zp = zero_off + srow * N + offs_n
        if MASKED:
            z = tl.load(zeros8 + zp, mask=smask, other=0).to(tl.int32)
        else:
            z = tl.load(zeros8 + zp).to(tl.int32)
    return s, z


@triton.jit
def _swap_tile(acc_t, bs, words, hi, kt, k_lim, N, codes8, scales16, scales8, zeros8, gscale, code_off,
               scale_off, zero_off, group, offs_n, n_ok, s_pre, z_pre,
               BITS: tl.constexpr, LO_BITS: tl.constexpr, SLOTS: tl.constexpr, DKIND: tl.constexpr,
               SCALE_KIND: tl.constexpr, SYM: tl.constexpr, IS_BF16: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, GK: tl.constexpr, ASM: tl.constexpr, DS: tl.constexpr,
               EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, PRE: tl.constexpr):
    """One K tile (``SLOTS`` code slots of 16 k) of one projection, swapped: ``acc_t [BN, BM] += W.T @ A.T``.
    ``bs``: the tile's activation blocks, one ``[16 * DS, BM]`` per ``tl.dot`` (``DS`` slots joined along K in
    registers, :func:`.qgemm.join_k`), loaded by the caller (the fused gate+up loop shares them); ``words``/``hi``: the
    tile's packed word rows (:func:`_swap_words`, loaded by the caller too, so it picks the order of the two
    loads). ``PRE``: the tile is one scale group whose scales ``s_pre``/``z_pre`` the caller loaded a tile ahead."""
    TILE: tl.constexpr = SLOTS * 16
    FOLD: tl.constexpr = GK > 0 and GK % 16 == 0 and (GK % TILE == 0 or TILE % GK == 0)
    GS: tl.constexpr = (GK // 16 if GK < TILE else SLOTS) if FOLD else 1
    # the PTX unpack makes the exact unscaled operand: fold only (per-weight scales take Triton's unpack)
    USE_ASM: tl.constexpr = ASM and FOLD and DKIND != 2 and BITS != 8
    wc = tl.arange(0, 16)
    nT = offs_n[:, None]
    nT_ok = n_ok[:, None]
    k0 = kt * TILE
    if USE_ASM:
        raws = unpack_slots_fp16_asm(words, hi, BITS, DKIND == 0)
    s = s_pre
    z = z_pre
    part = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for j in tl.static_range(SLOTS // DS):
        ws = ()
        for u in tl.static_range(DS):
            ks = k0 + (j * DS + u) * 16
            if (j * DS + u) % GS == 0:
                if not PRE:
                    if FOLD:
                        srow = ks // GK
                    else:
                        srow = ks // group
                    s, z = _swap_scales(scales16, scales8, zeros8, gscale, scale_off, zero_off, srow, N, offs_n,
                                        n_ok, ks, k_lim, BITS, SCALE_KIND, SYM, not (EVEN_K and EVEN_N), BLOCK_N)
            if USE_ASM:
                if DKIND == 0:
                    if SYM:  # a constant: Triton keeps the unpack in the MMA operand layout
                        w = raws[j * DS + u] - tl.full([BLOCK_N, 1], 1024.0 + (1 << (BITS - 1)), tl.float16)
                    else:
                        w = raws[j * DS + u] - int_magic_fp16(z)[:, None]  # (1024 + q) - (1024 + z): exact q - z
                else:
                    w = raws[j * DS + u]
            else:
                if BITS == 8:
                    kk = ks + wc
                    qp = code_off + (ks // 16) * (16 * N) + nT * 16 + wc[None, :]  # interleaved: see _swap_words
                    if EVEN_K and EVEN_N:
                        q = tl.load(codes8 + qp).to(tl.int32)
                    else:
                        q = tl.load(codes8 + qp, mask=(kk < k_lim)[None, :] & nT_ok, other=0).to(tl.int32)
                elif BITS == 3:
                    q = ((words >> ((j * DS + u) * 2)) & 3) | (((hi.to(tl.int32) >> (j * DS + u)) & 1) << 2)
                else:
                    q = (words >> ((j * DS + u) * LO_BITS)) & ((1 << LO_BITS) - 1)
                if FOLD:
                    w = _fold_operand(q, z[:, None], DKIND, BITS, IS_BF16)
                else:
                    w = dequant(q, s[:, None], z[:, None], DKIND, BITS, False, IS_BF16)
            ws = ws + (w,)
        w_k = join_k(ws, BLOCK_N)
        if FOLD:
            if (j * DS) % GS == 0:
                part = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
            part = tl.dot(w_k, bs[j], part)
            if ((j + 1) * DS) % GS == 0:
                acc_t += part * (s * raw_factor(DKIND))[:, None]
        else:
            acc_t = tl.dot(w_k, bs[j], acc_t)
    return acc_t


@triton.jit
def _swap_words(codes32, codes16, code_off, hi_off, kt, N, offs_n, n_ok, BITS: tl.constexpr, EVEN_N: tl.constexpr):
    """The packed word rows of K tile ``kt``, transposed: ``words [BN, 16]`` (int32) and, for int3, the high-bit
    plane ``hi [BN, 16]`` (int16); 0 placeholders for 8-bit codes (loaded per slot by :func:`_swap_tile`)."""
    words = 0
    hi = 0
    if BITS != 8:
        tile = kt * (16 * N) + offs_n[:, None] * 16 + tl.arange(0, 16)[None, :]  # interleaved: see _word_rows
        wp = code_off + tile
        if EVEN_N:
            words = tl.load(codes32 + wp)
        else:
            words = tl.load(codes32 + wp, mask=n_ok[:, None], other=0)
        if BITS == 3:
            hp = hi_off + tile
            if EVEN_N:
                hi = tl.load(codes16 + hp)
            else:
                hi = tl.load(codes16 + hp, mask=n_ok[:, None], other=0)
    return words, hi


@triton.jit
def _swap_activations(a_rows, a_ok, kt, k_lim, SLOTS: tl.constexpr, DS: tl.constexpr, EVEN_K: tl.constexpr):
    """The activation blocks of K tile ``kt``: one ``[16 * DS, BM]`` per ``tl.dot`` (a tuple). Padding rows
    (``a_ok`` False) are masked: zero-filled, no global read (44% of the rows of a 256-token GLM layer and 87%
    at 16 tokens are padding; reading them cost 16-45 us on the H200). A partial last tile (``EVEN_K`` False)
    masks by k too."""
    bs = ()
    for j in tl.static_range(SLOTS // DS):
        kk = kt * (SLOTS * 16) + j * (16 * DS) + tl.arange(0, 16 * DS)
        if EVEN_K:
            b = tl.load(a_rows[None, :] + kk[:, None], mask=a_ok[None, :], other=0.0)
        else:
            b = tl.load(a_rows[None, :] + kk[:, None], mask=a_ok[None, :] & (kk < k_lim)[:, None], other=0.0)
        bs = bs + (b,)
    return bs


@triton.jit
def _swap_prefetch(scales16, scales8, zeros8, gscale, scale_off, zero_off, kt, N, offs_n, n_ok, kt_end,
                   BITS: tl.constexpr, SLOTS: tl.constexpr, SCALE_KIND: tl.constexpr, SYM: tl.constexpr,
                   GK: tl.constexpr, PRE: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr):
    """The scales of K tile ``kt`` when it is one scale group (``PRE``), else unit placeholders."""
    if PRE:
        s, z = _swap_scales(scales16, scales8, zeros8, gscale, scale_off, zero_off, (kt * (SLOTS * 16)) // GK, N,
                            offs_n, n_ok, kt, kt_end, BITS, SCALE_KIND, SYM, MASKED, BLOCK_N)
    else:
        s = tl.full([BLOCK_N], 1.0, tl.float32)
        z = tl.zeros([BLOCK_N], tl.int32)
    return s, z



@triton.jit
def _dot_loop_swap(acc, a_rows, a_ok, N, codes32, codes16, codes8, scales16, scales8, zeros8, gscale, code_off,
                   hi_off, scale_off, zero_off, group, offs_n, n_ok, kt_begin, kt_end, k_lim,
                   BITS: tl.constexpr, LO_BITS: tl.constexpr, SLOTS: tl.constexpr, DKIND: tl.constexpr,
                   SCALE_KIND: tl.constexpr, SYM: tl.constexpr, IS_BF16: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, GK: tl.constexpr, ASM: tl.constexpr, SWAP: tl.constexpr):
    """The tensor-core K loop with the operands swapped (``SWAP``): ``acc_t [BN, BM] += W.T [BN, 16 DS] @ A.T
    [16 DS, BM]``, the weights the LEFT operand and the block's token rows the MMA's N. On sm_90 that is
    ``wgmma`` with its left operand in registers: the unpacked weights go straight from the PTX unpackers
    into the MMA (no shared-memory round trip of the dequantized operand), and 16 token rows still fill an
    ``m64n16k16``. The word rows load transposed (``[BN, 16]``), scales and zero points broadcast along dim 0;
    ``acc`` and the result are ``[BN, BM]`` (the epilogues work transposed). Same operand modes as the unswapped
    loop (fold with the group scale on a per-group partial, PTX unpack, or per-weight dequantization).

    ``SWAP`` bits (see :func:`swap_mode`): 1 swapped; 2 one ``tl.dot`` per scale group (fold) or per 8 slots
    (``dot_k=128``: the slot operands joined along K in registers, so Triton waits on the tensor cores once
    per group instead of once per slot); 4 ``EVEN_K`` (no partial tile: no k masks); 8 ``EVEN_N`` (no column
    masks); 16 scales loaded a tile ahead where a tile is one scale group (``prefetch``). Per K tile: the
    activation blocks, the next tile's scales, then the word rows (16-byte copies: the flat buffers interleave
    each column's 16 word rows, see :mod:`triton_marlin.moe.experts`)."""
    TILE: tl.constexpr = SLOTS * 16
    FOLD: tl.constexpr = GK > 0 and GK % 16 == 0 and (GK % TILE == 0 or TILE % GK == 0)
    GS: tl.constexpr = (GK // 16 if GK < TILE else SLOTS) if FOLD else 1
    DOT_SPAN: tl.constexpr = GS if FOLD else SLOTS
    DS: tl.constexpr = (8 if DOT_SPAN > 8 else DOT_SPAN) if (SWAP // 2) % 2 == 1 else 1
    EVEN_K: tl.constexpr = (SWAP // 4) % 2 == 1
    EVEN_N: tl.constexpr = (SWAP // 8) % 2 == 1
    PRE: tl.constexpr = FOLD and GS == SLOTS and (SWAP // 16) % 2 == 1
    s_n, z_n = _swap_prefetch(scales16, scales8, zeros8, gscale, scale_off, zero_off, kt_begin, N, offs_n, n_ok,
                              kt_end, BITS, SLOTS, SCALE_KIND, SYM, GK, PRE, True, BLOCK_N)
    acc_t = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for kt in range(kt_begin, kt_end):
        bs = _swap_activations(a_rows, a_ok, kt, k_lim, SLOTS, DS, EVEN_K)
        s_c = s_n
        z_c = z_n
        if PRE:
            s_n, z_n = _swap_prefetch(scales16, scales8, zeros8, gscale, scale_off, zero_off,
                                      tl.minimum(kt + 1, kt_end - 1), N, offs_n, n_ok, kt_end, BITS, SLOTS, SCALE_KIND,
                                      SYM, GK, PRE, not EVEN_N, BLOCK_N)
        words, hi = _swap_words(codes32, codes16, code_off, hi_off, kt, N, offs_n, n_ok, BITS, EVEN_N)
        acc_t = _swap_tile(acc_t, bs, words, hi, kt, k_lim, N, codes8, scales16, scales8, zeros8, gscale,
                           code_off, scale_off, zero_off, group, offs_n, n_ok, s_c, z_c, BITS, LO_BITS, SLOTS,
                           DKIND, SCALE_KIND, SYM, IS_BF16, BLOCK_M, BLOCK_N, GK, ASM, DS, EVEN_K, EVEN_N, PRE)
    return acc + acc_t


@triton.jit
def _dot_loop_swap2(a_rows, a_ok, N, gc32, gc16, gc8, gs16, gs8, gz8, g_gscale, g_code_off, g_hi_off, g_scale_off,
                    g_zero_off, g_group, uc32, uc16, uc8, us16, us8, uz8, u_gscale, u_code_off, u_hi_off, u_scale_off,
                    u_zero_off, u_group, offs_n, n_ok, kt_begin, kt_end, k_lim,
                    BITS: tl.constexpr, LO_BITS: tl.constexpr, SLOTS: tl.constexpr, DKIND: tl.constexpr,
                    SCALE_KIND: tl.constexpr, SYM: tl.constexpr, IS_BF16: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, G_GK: tl.constexpr, U_GK: tl.constexpr, ASM: tl.constexpr,
                    SWAP: tl.constexpr):
    """Gate and up of one kind in ONE swapped K loop (``fuse_gu``): each tile's activation blocks are loaded
    once for both, and the two projections' MMA chains are independent. As :func:`_dot_loop_swap`, twice;
    the dots span the smaller of the two projections' spans. Returns ``(gate_t, up_t)``, ``[BN, BM]`` each."""
    TILE: tl.constexpr = SLOTS * 16
    G_FOLD: tl.constexpr = G_GK > 0 and G_GK % 16 == 0 and (G_GK % TILE == 0 or TILE % G_GK == 0)
    U_FOLD: tl.constexpr = U_GK > 0 and U_GK % 16 == 0 and (U_GK % TILE == 0 or TILE % U_GK == 0)
    G_GS: tl.constexpr = (G_GK // 16 if G_GK < TILE else SLOTS) if G_FOLD else 1
    U_GS: tl.constexpr = (U_GK // 16 if U_GK < TILE else SLOTS) if U_FOLD else 1
    G_SPAN: tl.constexpr = G_GS if G_FOLD else SLOTS
    U_SPAN: tl.constexpr = U_GS if U_FOLD else SLOTS
    SPAN: tl.constexpr = G_SPAN if G_SPAN < U_SPAN else U_SPAN
    DS: tl.constexpr = (8 if SPAN > 8 else SPAN) if (SWAP // 2) % 2 == 1 else 1
    EVEN_K: tl.constexpr = (SWAP // 4) % 2 == 1
    EVEN_N: tl.constexpr = (SWAP // 8) % 2 == 1
    G_PRE: tl.constexpr = G_FOLD and G_GS == SLOTS and (SWAP // 16) % 2 == 1
    U_PRE: tl.constexpr = U_FOLD and U_GS == SLOTS and (SWAP // 16) % 2 == 1
    gs_n, gz_n = _swap_prefetch(gs16, gs8, gz8, g_gscale, g_scale_off, g_zero_off, kt_begin, N, offs_n, n_ok,
                                kt_end, BITS, SLOTS, SCALE_KIND, SYM, G_GK, G_PRE, True, BLOCK_N)
    us_n, uz_n = _swap_prefetch(us16, us8, uz8, u_gscale, u_scale_off, u_zero_off, kt_begin, N, offs_n, n_ok,
                                kt_end, BITS, SLOTS, SCALE_KIND, SYM, U_GK, U_PRE, True, BLOCK_N)
    g_t = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    u_t = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for kt in range(kt_begin, kt_end):
        bs = _swap_activations(a_rows, a_ok, kt, k_lim, SLOTS, DS, EVEN_K)
        gs_c = gs_n
        gz_c = gz_n
        us_c = us_n
        uz_c = uz_n
        ktn = tl.minimum(kt + 1, kt_end - 1)
        if G_PRE:
            gs_n, gz_n = _swap_prefetch(gs16, gs8, gz8, g_gscale, g_scale_off, g_zero_off, ktn, N, offs_n, n_ok, kt_end,
                                        BITS, SLOTS, SCALE_KIND, SYM, G_GK, G_PRE, not EVEN_N, BLOCK_N)
        if U_PRE:
            us_n, uz_n = _swap_prefetch(us16, us8, uz8, u_gscale, u_scale_off, u_zero_off, ktn, N, offs_n, n_ok, kt_end,
                                        BITS, SLOTS, SCALE_KIND, SYM, U_GK, U_PRE, not EVEN_N, BLOCK_N)
        g_words, g_hi = _swap_words(gc32, gc16, g_code_off, g_hi_off, kt, N, offs_n, n_ok, BITS, EVEN_N)
        g_t = _swap_tile(g_t, bs, g_words, g_hi, kt, k_lim, N, gc8, gs16, gs8, gz8, g_gscale, g_code_off,
                         g_scale_off, g_zero_off, g_group, offs_n, n_ok, gs_c, gz_c, BITS, LO_BITS, SLOTS, DKIND,
                         SCALE_KIND, SYM, IS_BF16, BLOCK_M, BLOCK_N, G_GK, ASM, DS, EVEN_K, EVEN_N, G_PRE)
        u_words, u_hi = _swap_words(uc32, uc16, u_code_off, u_hi_off, kt, N, offs_n, n_ok, BITS, EVEN_N)
        u_t = _swap_tile(u_t, bs, u_words, u_hi, kt, k_lim, N, uc8, us16, us8, uz8, u_gscale, u_code_off,
                         u_scale_off, u_zero_off, u_group, offs_n, n_ok, us_c, uz_c, BITS, LO_BITS, SLOTS, DKIND,
                         SCALE_KIND, SYM, IS_BF16, BLOCK_M, BLOCK_N, U_GK, ASM, DS, EVEN_K, EVEN_N, U_PRE)
    return g_t, u_t


@triton.jit
def _tile_loop(acc, a_rows, a_ok, K, N, codes32, codes16, codes8, scales16, scales8, zeros8, gscale,
               code_off, hi_off, scale_off, zero_off, group, offs_n, n_ok, pid_k,
               BITS: tl.constexpr, LO_BITS: tl.constexpr, SLOTS: tl.constexpr, DKIND: tl.constexpr,
               SCALE_KIND: tl.constexpr, SYM: tl.constexpr, IS_BF16: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr, A_SWIGLU: tl.constexpr,
               UNROLL: tl.constexpr, GK: tl.constexpr, ASM: tl.constexpr, A_SPLITS: tl.constexpr,
               SWAP: tl.constexpr, a_split_stride):
    """acc [BM, BN] += A[rows, k-range] @ W[k-range, offs_n] for one expert of one kind. ``a_rows``: pointers
    to the rows of A (unit stride along K); W codes ``[rows, N]`` at ``code_off`` of its buffer. A tile is
    ``SLOTS * 16`` k; the tiles are split in ``SPLIT_K`` contiguous ranges and this program does range
    ``pid_k``.

    ``BLOCK_M == 1`` (one token slot per program, decode) runs on CUDA cores in fp32: codes decode exactly
    (``q - z`` through the 2**23 magic, minifloats as a power-of-two multiple of their value), one multiply
    by the scale and one FMA per weight into a [16, BLOCK_N] accumulator that is reduced once after the
    loop (columns across lanes, nothing crosses threads inside the loop). A tile is done 8 slots at a time
    (fewer live registers for 2- and 3-bit tiles), ``UNROLL`` tiles per iteration keep several weight loads
    in flight. ``A_SWIGLU`` (decode only): A holds fp32 ``[gate | up]`` rows (``up`` at column offset K) and
    the operand is ``silu(gate) * up``, formed as it is loaded.
    Otherwise (``BLOCK_M >= 16``) the tile dequantizes to fp16/bf16 and goes through one ``tl.dot``."""
    n_tiles = tl.cdiv(K, SLOTS * 16)
    per_split = tl.cdiv(n_tiles, SPLIT_K)
    kt_begin = pid_k * per_split
    kt_end = tl.minimum(kt_begin + per_split, n_tiles)
    k_lim = tl.minimum(K, kt_end * (SLOTS * 16))  # k at or past this belongs to another split (or is padding)
    row_lim = kt_end * 16                          # word rows likewise
    wr = tl.arange(0, 16)
    n2 = offs_n[None, :]
    if BLOCK_M == 1:
        acc2 = tl.zeros([16, BLOCK_N], dtype=tl.float32)  # per-row partial sums
        for kt0 in range(kt_begin, kt_end, UNROLL):
            for u in tl.static_range(UNROLL):  # independent tiles: their loads are in flight together
                kt = kt0 + u  # may pass kt_end on the last iteration: masked by k_lim / row_lim
                k0 = kt * (SLOTS * 16)
                rows = kt * 16 + wr
                wmask = (rows < row_lim)[:, None] & n_ok[None, :]
                words = 0
                hi = 0
                if BITS != 8:
                    tile = kt * (16 * N) + n2 * 16 + wr[:, None]  # interleaved words: see _swap_words
                    words = tl.load(codes32 + code_off + tile, mask=wmask, other=0)
                    if BITS == 3:
                        hi = tl.load(codes16 + hi_off + tile, mask=wmask, other=0).to(tl.int32)
                for h in tl.static_range(SLOTS // 8):
                    sl = h * 8 + tl.arange(0, 8)
                    q, s, z = _codes_and_scales(words, hi, k0, sl, K, k_lim, N, codes8, scales16, scales8, zeros8,
                                                gscale, code_off, scale_off, zero_off, group, offs_n, n_ok,
                                                BITS, LO_BITS, SCALE_KIND, SYM)
                    ka = k0 + h * 128 + tl.arange(0, 128)
                    amask = (ka < k_lim) & a_ok
                    a = tl.load(a_rows + ka, mask=amask, other=0.0).to(tl.float32)
                    if A_SWIGLU:
                        up = tl.load(a_rows + K + ka, mask=amask, other=0.0)
                        for sp in tl.static_range(1, A_SPLITS):
                            a += tl.load(a_rows + sp * a_split_stride + ka, mask=amask, other=0.0)
                            up += tl.load(a_rows + sp * a_split_stride + K + ka, mask=amask, other=0.0)
                        a = a / (1.0 + tl.exp(-a)) * up
                    a3 = tl.reshape(a, (8, 16))[:, :, None]  # k = k0 + 16 (8 h + i) + w
                    if DKIND == 0 and (BITS == 2 or BITS == 4):
                        # decode in place: code bits masked where they sit, OR-ed under the 2**23 exponent,
                        # read as fp32 = 2**23 + q * 2**pos (exact while pos + BITS <= 23; the high slots are
                        # shifted down 12 first); 2**-pos goes into the scale. One LOP3-type op per weight
                        # fewer than shift + mask + or.
                        i3 = sl[:, None, None]
                        shift3 = tl.where(i3 * BITS + BITS > 23, 12, 0)
                        pos3 = i3 * BITS - shift3
                        mant = ((words[None, :, :] >> shift3) & (((1 << BITS) - 1) << pos3)) | 0x4B000000
                        unit = ((pos3 + 127) << 23).to(tl.float32, bitcast=True)      # 2**pos
                        inv_unit = ((127 - pos3) << 23).to(tl.float32, bitcast=True)  # 2**-pos
                        if SYM:
                            base = 8388608.0 + (1 << (BITS - 1)) * unit
                        else:
                            base = 8388608.0 + z.to(tl.float32)[:, None, :] * unit
                        qf = mant.to(tl.float32, bitcast=True) - base  # (q - z) * 2**pos, exact
                        w = qf * (s[:, None, :] * inv_unit)
                    elif DKIND == 0:
                        if SYM:
                            qf = int_magic_fp32(q) - (8388608.0 + (1 << (BITS - 1)))  # q - z, exact
                        else:
                            qf = int_magic_fp32(q) - (8388608.0 + z.to(tl.float32))[:, None, :]
                        w = qf * s[:, None, :]
                    elif DKIND == 1:
                        w = e2m1_raw_fp16(q).to(tl.float32) * (s * 16384.0)[:, None, :]
                    else:
                        w = e4m3_raw_fp16(q).to(tl.float32) * (s * 256.0)[:, None, :]
                    acc2 += tl.sum(w * a3, axis=0)  # sum over the 8 slots: in registers
        acc += tl.sum(acc2, axis=0)[None, :]
    elif SWAP:
        acc = _dot_loop_swap(acc, a_rows, a_ok, N, codes32, codes16, codes8, scales16, scales8, zeros8, gscale,
                             code_off, hi_off, scale_off, zero_off, group, offs_n, n_ok, kt_begin, kt_end, k_lim,
                             BITS, LO_BITS, SLOTS, DKIND, SCALE_KIND, SYM, IS_BF16, BLOCK_M, BLOCK_N, GK, ASM, SWAP)
    else:
        # tensor cores, one k=16 tl.dot per code slot: slot i of the tile's 16 word rows is already the
        # [16, BLOCK_N] operand of k0 + 16 i .. k0 + 16 i + 15 (no reshape, no layout shuffle of a whole tile).
        # FOLD (the group spans whole slots): the operand is the code's exact unscaled value (q - z, or the
        # minifloat times a power of two) and the group scale multiplies a per-group partial accumulator,
        # not every weight. ASM (CUDA, fp16): the PTX pair unpackers of kernels/decode.py give every slot's
        # 1024 + q (or raw E2M1) two weights per instruction.
        TILE: tl.constexpr = SLOTS * 16
        FOLD: tl.constexpr = GK > 0 and GK % 16 == 0 and (GK % TILE == 0 or TILE % GK == 0)
        GS: tl.constexpr = (GK // 16 if GK < TILE else SLOTS) if FOLD else 1
        # the PTX unpack gives the unscaled fold operand; per-weight scales (groups that differ) take Triton's
        USE_ASM: tl.constexpr = ASM and FOLD and DKIND != 2 and BITS != 8
        for kt in range(kt_begin, kt_end):
            k0 = kt * TILE
            words = 0
            hi = 0
            if BITS != 8:
                tile = kt * (16 * N) + n2 * 16 + wr[:, None]  # interleaved words: see _swap_words
                words = tl.load(codes32 + code_off + tile, mask=n_ok[None, :], other=0)
                if BITS == 3:
                    hi = tl.load(codes16 + hi_off + tile, mask=n_ok[None, :], other=0)
            if USE_ASM:
                raws = unpack_slots_fp16_asm(words, hi, BITS, DKIND == 0)
            for i in tl.static_range(SLOTS):
                ks = k0 + i * 16
                if i % GS == 0:
                    srow = ks // group
                    smask = n_ok & ((ks + offs_n * 0) < k_lim)
                    if SCALE_KIND == 0:
                        raw_s = tl.load(scales16 + scale_off + srow * N + offs_n, mask=smask, other=0.0)
                    else:
                        raw_s = tl.load(scales8 + scale_off + srow * N + offs_n, mask=smask, other=0)
                    s = decode_scale(raw_s, gscale, SCALE_KIND)
                    if SYM:
                        z = tl.zeros([BLOCK_N], tl.int32) + (1 << (BITS - 1))
                    else:
                        z = tl.load(zeros8 + zero_off + srow * N + offs_n, mask=smask, other=0).to(tl.int32)
                    part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
                kk = ks + wr
                if USE_ASM:
                    if DKIND == 0:
                        if SYM:  # a constant operand: Triton keeps the unpack in the mma operand layout
                            w = raws[i] - tl.full([1, BLOCK_N], 1024.0 + (1 << (BITS - 1)), tl.float16)
                        else:
                            w = raws[i] - int_magic_fp16(z)[None, :]  # (1024 + q) - (1024 + z): exact q - z
                    else:
                        w = raws[i]
                else:
                    if BITS == 8:
                        q = tl.load(codes8 + code_off + (ks // 16) * (16 * N) + n2 * 16 + wr[:, None],
                                    mask=(kk < k_lim)[:, None] & n_ok[None, :], other=0).to(tl.int32)
                    elif BITS == 3:
                        q = ((words >> (i * 2)) & 3) | (((hi.to(tl.int32) >> i) & 1) << 2)
                    else:
                        q = (words >> (i * LO_BITS)) & ((1 << LO_BITS) - 1)
                    if FOLD:
                        w = _fold_operand(q, z[None, :], DKIND, BITS, IS_BF16)
                    else:
                        w = dequant(q, s[None, :], z[None, :], DKIND, BITS, False, IS_BF16)
                a = tl.load(a_rows[:, None] + kk[None, :], mask=a_ok[:, None] & (kk < k_lim)[None, :], other=0.0)
                if FOLD:
                    part = tl.dot(a, w, part)
                    if i % GS == GS - 1:
                        acc += part * (s * raw_factor(DKIND))[None, :]
                else:
                    acc = tl.dot(a, w, acc)
    return acc


@triton.jit
def _kind_loop(acc, a_rows, a_ok, K, N, c32, c16, c8, s16, s8, z8, gscale, code_off, hi_off, scale_off,
               zero_off, group, offs_n, n_ok, pid_k, KIND: tl.constexpr, IS_BF16: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr, A_SWIGLU: tl.constexpr,
               UNROLL: tl.constexpr, GK: tl.constexpr, ASM: tl.constexpr, A_SPLITS: tl.constexpr, SWAP: tl.constexpr,
               a_split_stride):
    """The K loop of one kind (compile-time ``KIND``; asymmetric integers are ``base + 8``): its bits
    (BITS, LO_BITS of the packed plane, SLOTS of 16 k per tile), decode (DKIND: integer, E2M1, E4M3) and
    scale type (SCALE_KIND: fp16/bf16, E8M0, E4M3 x global)."""
    # Literal arguments (not tuple assignments): the compiler only treats them as constexpr this way.
    # Positional tail of _tile_loop: BITS, LO_BITS, SLOTS, DKIND, SCALE_KIND, SYM, IS_BF16, BM, BN, SPLIT_K, SWIGLU,
    # UNROLL, GK, ASM, A_SPLITS, SWAP, a_split_stride
    if KIND % 8 == 0:    # int2
        acc = _tile_loop(acc, a_rows, a_ok, K, N, c32, c16, c8, s16, s8, z8, gscale, code_off, hi_off, scale_off,
                         zero_off, group, offs_n, n_ok, pid_k,
                         2, 2, 16, 0, 0, KIND < 8, IS_BF16, BLOCK_M, BLOCK_N, SPLIT_K, A_SWIGLU, UNROLL,
                         GK, ASM, A_SPLITS, SWAP, a_split_stride)
    elif KIND % 8 == 1:  # int3: 2-bit plane + 1-bit plane
        acc = _tile_loop(acc, a_rows, a_ok, K, N, c32, c16, c8, s16, s8, z8, gscale, code_off, hi_off, scale_off,
                         zero_off, group, offs_n, n_ok, pid_k,
                         3, 2, 16, 0, 0, KIND < 8, IS_BF16, BLOCK_M, BLOCK_N, SPLIT_K, A_SWIGLU, UNROLL,
                         GK, ASM, A_SPLITS, SWAP, a_split_stride)
    elif KIND % 8 == 2:  # int4
        acc = _tile_loop(acc, a_rows, a_ok, K, N, c32, c16, c8, s16, s8, z8, gscale, code_off, hi_off, scale_off,
                         zero_off, group, offs_n, n_ok, pid_k,
                         4, 4, 8, 0, 0, KIND < 8, IS_BF16, BLOCK_M, BLOCK_N, SPLIT_K, A_SWIGLU, UNROLL,
                         GK, ASM, A_SPLITS, SWAP, a_split_stride)
    elif KIND % 8 == 3:  # int8
        acc = _tile_loop(acc, a_rows, a_ok, K, N, c32, c16, c8, s16, s8, z8, gscale, code_off, hi_off, scale_off,
                         zero_off, group, offs_n, n_ok, pid_k,
                         8, 8, 8, 0, 0, KIND < 8, IS_BF16, BLOCK_M, BLOCK_N, SPLIT_K, A_SWIGLU, UNROLL,
                         GK, ASM, A_SPLITS, SWAP, a_split_stride)
    elif KIND % 8 == 4:  # fp4, fp16/bf16 scales
        acc = _tile_loop(acc, a_rows, a_ok, K, N, c32, c16, c8, s16, s8, z8, gscale, code_off, hi_off, scale_off,
                         zero_off, group, offs_n, n_ok, pid_k,
                         4, 4, 8, 1, 0, True, IS_BF16, BLOCK_M, BLOCK_N, SPLIT_K, A_SWIGLU, UNROLL,
                         GK, ASM, A_SPLITS, SWAP, a_split_stride)
    elif KIND % 8 == 5:  # mxfp4, E8M0 scales
        acc = _tile_loop(acc, a_rows, a_ok, K, N, c32, c16, c8, s16, s8, z8, gscale, code_off, hi_off, scale_off,
                         zero_off, group, offs_n, n_ok, pid_k,
                         4, 4, 8, 1, 1, True, IS_BF16, BLOCK_M, BLOCK_N, SPLIT_K, A_SWIGLU, UNROLL,
                         GK, ASM, A_SPLITS, SWAP, a_split_stride)
    elif KIND % 8 == 6:  # nvfp4, E4M3 scales x global scale
        acc = _tile_loop(acc, a_rows, a_ok, K, N, c32, c16, c8, s16, s8, z8, gscale, code_off, hi_off, scale_off,
                         zero_off, group, offs_n, n_ok, pid_k,
                         4, 4, 8, 1, 2, True, IS_BF16, BLOCK_M, BLOCK_N, SPLIT_K, A_SWIGLU, UNROLL,
                         GK, ASM, A_SPLITS, SWAP, a_split_stride)
    else:                # fp8 E4M3FN
        acc = _tile_loop(acc, a_rows, a_ok, K, N, c32, c16, c8, s16, s8, z8, gscale, code_off, hi_off, scale_off,
                         zero_off, group, offs_n, n_ok, pid_k,
                         8, 8, 8, 2, 0, True, IS_BF16, BLOCK_M, BLOCK_N, SPLIT_K, A_SWIGLU, UNROLL,
                         GK, ASM, A_SPLITS, SWAP, a_split_stride)
    return acc


@triton.jit
def _proj(a_rows, a_ok, K, N, c32, c16, c8, s16, s8, z8, gs_ptr, table, e, offs_n, n_ok, pid_k,
          KINDS: tl.constexpr, UNIFORM: tl.constexpr, IS_BF16: tl.constexpr, BLOCK_M: tl.constexpr,
          BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr, A_SWIGLU: tl.constexpr, UNROLL: tl.constexpr,
          GK: tl.constexpr, ASM: tl.constexpr, A_SPLITS: tl.constexpr, SWAP: tl.constexpr, a_split_stride):
    """One projection of expert ``e`` for a block of rows: branch on the expert's kind (table column 0)
    over the kinds compiled in, or take the compile-time ``UNIFORM`` kind. Returns ``[BLOCK_M, BLOCK_N]``, or
    its transpose ``[BLOCK_N, BLOCK_M]`` with ``SWAP`` (tensor-core blocks): the epilogues work in that
    layout, no transpose of the accumulators."""
    code_off, hi_off, scale_off, zero_off, group = _table_row(table, e)
    gscale = tl.load(gs_ptr + e)
    if SWAP and BLOCK_M > 1:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)  # transposed: see _dot_loop_swap
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if UNIFORM >= 0:
        acc = _kind_loop(acc, a_rows, a_ok, K, N, c32, c16, c8, s16, s8, z8, gscale, code_off, hi_off,
                         scale_off, zero_off, group, offs_n, n_ok, pid_k, UNIFORM, IS_BF16, BLOCK_M, BLOCK_N,
                         SPLIT_K, A_SWIGLU, UNROLL, GK, ASM, A_SPLITS, SWAP, a_split_stride)
    else:
        kind = tl.load(table + e * 8)
        for kc in tl.static_range(12):
            if (KINDS >> kc) & 1:
                if kind == kc:
                    acc = _kind_loop(acc, a_rows, a_ok, K, N, c32, c16, c8, s16, s8, z8, gscale, code_off,
                                     hi_off, scale_off, zero_off, group, offs_n, n_ok, pid_k, kc, IS_BF16,
                                     BLOCK_M, BLOCK_N, SPLIT_K, A_SWIGLU, UNROLL,
                         GK, ASM, A_SPLITS, SWAP, a_split_stride)
    return acc


@triton.jit
def _kind_loop2(a_rows, a_ok, K, N, gc32, gc16, gc8, gs16, gs8, gz8, g_gscale, g_code_off, g_hi_off, g_scale_off,
                g_zero_off, g_group, uc32, uc16, uc8, us16, us8, uz8, u_gscale, u_code_off, u_hi_off, u_scale_off,
                u_zero_off, u_group, offs_n, n_ok, KIND: tl.constexpr, IS_BF16: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, G_GK: tl.constexpr, U_GK: tl.constexpr, ASM: tl.constexpr, SWAP: tl.constexpr):
    """Gate and up of one compile-time ``KIND`` in one swapped K loop (:func:`_dot_loop_swap2`), the whole K
    range (tensor-core blocks keep gate_up unsplit)."""
    BITS: tl.constexpr = 2 if KIND % 8 == 0 else (3 if KIND % 8 == 1 else (8 if KIND % 8 == 3 or KIND % 8 == 7 else 4))
    LO_BITS: tl.constexpr = 2 if BITS == 3 else BITS
    SLOTS: tl.constexpr = 16 if BITS < 4 else 8
    DKIND: tl.constexpr = 0 if KIND % 8 < 4 else (2 if KIND % 8 == 7 else 1)
    SCALE_KIND: tl.constexpr = 1 if KIND % 8 == 5 else (2 if KIND % 8 == 6 else 0)
    SYM: tl.constexpr = KIND < 8
    n_tiles = tl.cdiv(K, SLOTS * 16)
    return _dot_loop_swap2(a_rows, a_ok, N, gc32, gc16, gc8, gs16, gs8, gz8, g_gscale, g_code_off, g_hi_off,
                           g_scale_off, g_zero_off, g_group, uc32, uc16, uc8, us16, us8, uz8, u_gscale, u_code_off,
                           u_hi_off, u_scale_off, u_zero_off, u_group, offs_n, n_ok, 0, n_tiles, K,
                           BITS, LO_BITS, SLOTS, DKIND, SCALE_KIND, SYM, IS_BF16, BLOCK_M, BLOCK_N, G_GK, U_GK, ASM,
                           SWAP)


@triton.jit
def _proj_gate_up_fused(a_rows, a_ok, K, N, gc32, gc16, gc8, gs16, gs8, gz8, ggs, gtab,
                        uc32, uc16, uc8, us16, us8, uz8, ugs, utab, e, offs_n, n_ok,
                        G_KINDS: tl.constexpr, G_UNIFORM: tl.constexpr, U_KINDS: tl.constexpr,
                        U_UNIFORM: tl.constexpr, IS_BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        G_GK: tl.constexpr, U_GK: tl.constexpr, ASM: tl.constexpr, SWAP: tl.constexpr):
    """Gate and up of expert ``e`` (swapped tiles, ``fuse_gu``): one K loop for both when the expert's gate
    and up share a kind (compile-time in uniform launches; in mixed launches a branch per kind present in
    both projections), else the two loops of :func:`_proj`. Returns ``(gate_t, up_t)``, ``[BN, BM]`` each."""
    if G_UNIFORM >= 0 and G_UNIFORM == U_UNIFORM:
        g_code, g_hi, g_scale, g_zero, g_group = _table_row(gtab, e)
        u_code, u_hi, u_scale, u_zero, u_group = _table_row(utab, e)
        g, u = _kind_loop2(a_rows, a_ok, K, N, gc32, gc16, gc8, gs16, gs8, gz8, tl.load(ggs + e), g_code, g_hi,
                           g_scale, g_zero, g_group, uc32, uc16, uc8, us16, us8, uz8, tl.load(ugs + e), u_code, u_hi,
                           u_scale, u_zero, u_group, offs_n, n_ok, G_UNIFORM, IS_BF16, BLOCK_M, BLOCK_N, G_GK, U_GK,
                           ASM, SWAP)
    elif G_UNIFORM >= 0 and U_UNIFORM >= 0:  # two different compile-time kinds: nothing to share
        g = _proj(a_rows, a_ok, K, N, gc32, gc16, gc8, gs16, gs8, gz8, ggs, gtab, e, offs_n, n_ok, 0,
                  G_KINDS, G_UNIFORM, IS_BF16, BLOCK_M, BLOCK_N, 1, False, 1, G_GK, ASM, 1, SWAP, 0)
        u = _proj(a_rows, a_ok, K, N, uc32, uc16, uc8, us16, us8, uz8, ugs, utab, e, offs_n, n_ok, 0,
                  U_KINDS, U_UNIFORM, IS_BF16, BLOCK_M, BLOCK_N, 1, False, 1, U_GK, ASM, 1, SWAP, 0)
    else:
        if G_UNIFORM >= 0:
            gkind = G_UNIFORM
        else:
            gkind = tl.load(gtab + e * 8)
        if U_UNIFORM >= 0:
            ukind = U_UNIFORM
        else:
            ukind = tl.load(utab + e * 8)
        g = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        u = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        if gkind == ukind:
            for kc in tl.static_range(12):
                if ((G_KINDS >> kc) & 1) and ((U_KINDS >> kc) & 1):
                    if gkind == kc:
                        g_code, g_hi, g_scale, g_zero, g_group = _table_row(gtab, e)
                        u_code, u_hi, u_scale, u_zero, u_group = _table_row(utab, e)
                        g, u = _kind_loop2(a_rows, a_ok, K, N, gc32, gc16, gc8, gs16, gs8, gz8, tl.load(ggs + e),
                                           g_code, g_hi, g_scale, g_zero, g_group, uc32, uc16, uc8, us16, us8, uz8,
                                           tl.load(ugs + e), u_code, u_hi, u_scale, u_zero, u_group, offs_n, n_ok, kc,
                                           IS_BF16, BLOCK_M, BLOCK_N, G_GK, U_GK, ASM, SWAP)
        else:
            g = _proj(a_rows, a_ok, K, N, gc32, gc16, gc8, gs16, gs8, gz8, ggs, gtab, e, offs_n, n_ok, 0,
                      G_KINDS, G_UNIFORM, IS_BF16, BLOCK_M, BLOCK_N, 1, False, 1, G_GK, ASM, 1, SWAP, 0)
            u = _proj(a_rows, a_ok, K, N, uc32, uc16, uc8, us16, us8, uz8, ugs, utab, e, offs_n, n_ok, 0,
                      U_KINDS, U_UNIFORM, IS_BF16, BLOCK_M, BLOCK_N, 1, False, 1, U_GK, ASM, 1, SWAP, 0)
    return g, u


@triton.jit
def _block_rows(sorted_ptr, eids_ptr, npost_ptr, num_experts, BLOCK_M: tl.constexpr, DIRECT: tl.constexpr):
    """``(rows, slots, expert, live)`` of this program's block. Aligned: rows of the sorted slot list, the
    block's expert from the per-block list, live below the padded row count (the three loads are independent:
    one round trip). ``DIRECT`` (one slot per program, no alignment): row = slot = program id, the expert read
    from the flat ``[T * k]`` ids, live when it names an expert of the table (ids of -1 belong to no expert)."""
    pid_m = tl.program_id(0)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if DIRECT:
        e = tl.load(eids_ptr + pid_m)
        slot = offs_m
        live = (e >= 0) & (e < num_experts)
    else:
        npost = tl.load(npost_ptr)
        e = tl.load(eids_ptr + pid_m)
        slot = tl.load(sorted_ptr + offs_m)
        live = pid_m * BLOCK_M < npost
    return offs_m, slot, e, live


@triton.jit
def _moe_gate_up_kernel(x_ptr, stride_x, sorted_ptr, eids_ptr, npost_ptr, inter_ptr, zero_ptr, zero_numel,
                        gc32, gc16, gc8, gs16, gs8, gz8, ggs, gtab,
                        uc32, uc16, uc8, us16, us8, uz8, ugs, utab,
                        num_slots, num_experts, H, I, split_stride,
                        SLOTS_PER_TOKEN: tl.constexpr, G_KINDS: tl.constexpr, G_UNIFORM: tl.constexpr,
                        U_KINDS: tl.constexpr, U_UNIFORM: tl.constexpr, IS_BF16: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr,
                        ZERO_BLOCK: tl.constexpr, UNROLL: tl.constexpr, G_GK: tl.constexpr, U_GK: tl.constexpr,
                        ASM: tl.constexpr, DIRECT: tl.constexpr, SWAP: tl.constexpr = 0,
                        FUSE_GU: tl.constexpr = 0, PDL: tl.constexpr = False):
    """``SPLIT_K == 1``: ``inter [capacity, I]`` (x's dtype) gets ``silu(gate) * up`` of each row.
    ``SPLIT_K > 1``: the K range is split over programs; split ``p`` stores its fp32 partials of gate and up
    in ``inter [SPLIT_K, capacity, 2 I]`` (plain stores: no zero-fill, no atomics, a fixed summation order)
    and the down kernel sums the partials and applies SwiGLU as it loads them."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    if PDL:  # programmatic dependent launch (kernels/pdl.py)
        pdl_sync()
    if ZERO_BLOCK > 0:
        # zero the down kernel's fp32 accumulator: the programs of block row 0 (first K split) share it
        if pid_m == 0:
            if pid_k == 0:
                chunk = tl.cdiv(tl.cdiv(zero_numel, tl.num_programs(1)), ZERO_BLOCK) * ZERO_BLOCK
                zr = tl.arange(0, ZERO_BLOCK)
                for z0 in range(0, chunk, ZERO_BLOCK):
                    offs = pid_n * chunk + z0 + zr
                    tl.store(zero_ptr + offs, tl.zeros([ZERO_BLOCK], tl.float32), mask=offs < zero_numel)
    offs_m, slot, e, live = _block_rows(sorted_ptr, eids_ptr, npost_ptr, num_experts, BLOCK_M, DIRECT)
    if not live:
        return
    row_ok = slot < num_slots
    token = tl.where(row_ok, slot // SLOTS_PER_TOKEN, 0)  # padding rows: a valid address, loads masked
    a_rows = x_ptr + token.to(tl.int64) * stride_x
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < I
    if FUSE_GU and SWAP and BLOCK_M > 1:
        g, u = _proj_gate_up_fused(a_rows, row_ok, H, I, gc32, gc16, gc8, gs16, gs8, gz8, ggs, gtab,
                                   uc32, uc16, uc8, us16, us8, uz8, ugs, utab, e, offs_n, n_ok, G_KINDS, G_UNIFORM,
                                   U_KINDS, U_UNIFORM, IS_BF16, BLOCK_M, BLOCK_N, G_GK, U_GK, ASM, SWAP)
    else:
        g = _proj(a_rows, row_ok, H, I, gc32, gc16, gc8, gs16, gs8, gz8, ggs, gtab, e, offs_n, n_ok, pid_k,
                  G_KINDS, G_UNIFORM, IS_BF16, BLOCK_M, BLOCK_N, SPLIT_K, False, UNROLL, G_GK, ASM, 1, SWAP, 0)
        u = _proj(a_rows, row_ok, H, I, uc32, uc16, uc8, us16, us8, uz8, ugs, utab, e, offs_n, n_ok, pid_k,
                  U_KINDS, U_UNIFORM, IS_BF16, BLOCK_M, BLOCK_N, SPLIT_K, False, UNROLL, U_GK, ASM, 1, SWAP, 0)
    if SWAP and BLOCK_M > 1:  # g, u are [BLOCK_N, BLOCK_M] (SPLIT_K == 1: tensor-core blocks keep gate_up whole)
        h = g / (1.0 + tl.exp(-g)) * u
        tl.store(inter_ptr + offs_m.to(tl.int64)[None, :] * I + offs_n[:, None], h.to(inter_ptr.dtype.element_ty),
                 mask=row_ok[None, :] & n_ok[:, None])
    elif SPLIT_K > 1:
        out_mask = row_ok[:, None] & n_ok[None, :]
        base = (inter_ptr + pid_k.to(tl.int64) * split_stride + offs_m.to(tl.int64)[:, None] * (2 * I)
                + offs_n[None, :])
        tl.store(base, g, mask=out_mask)
        tl.store(base + I, u, mask=out_mask)
    else:
        h = g / (1.0 + tl.exp(-g)) * u
        tl.store(inter_ptr + offs_m.to(tl.int64)[:, None] * I + offs_n[None, :], h.to(inter_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _moe_down_kernel(inter_ptr, sorted_ptr, eids_ptr, npost_ptr, w_ptr, out_ptr,
                     dc32, dc16, dc8, ds16, ds8, dz8, dgs, dtab,
                     num_slots, num_experts, I, H, split_stride,
                     SLOTS_PER_TOKEN: tl.constexpr, D_KINDS: tl.constexpr, D_UNIFORM: tl.constexpr,
                     IS_BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr,
                     A_SWIGLU: tl.constexpr, UNROLL: tl.constexpr, D_GK: tl.constexpr, ASM: tl.constexpr,
                     A_SPLITS: tl.constexpr, DIRECT: tl.constexpr, SWAP: tl.constexpr = 0,
                     PDL: tl.constexpr = False):
    """``out[token] += w_slot * (h_row @ down_e.T)`` with fp32 atomics; ``A_SWIGLU``: ``inter`` holds the
    gate_up kernel's ``A_SPLITS`` split-K ``[gate | up]`` fp32 partial rows and ``h = silu(gate) * up`` is
    formed on load from their sums."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    if PDL:
        pdl_sync()
    offs_m, slot, e, live = _block_rows(sorted_ptr, eids_ptr, npost_ptr, num_experts, BLOCK_M, DIRECT)
    if not live:
        return
    wt = tl.load(w_ptr + slot, mask=slot < num_slots, other=0.0)
    row_ok = slot < num_slots
    token = slot // SLOTS_PER_TOKEN
    if A_SWIGLU:
        a_rows = inter_ptr + offs_m.to(tl.int64) * (2 * I)
    else:
        a_rows = inter_ptr + offs_m.to(tl.int64) * I
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < H
    acc = _proj(a_rows, row_ok, I, H, dc32, dc16, dc8, ds16, ds8, dz8, dgs, dtab, e, offs_n, n_ok, pid_k,
                D_KINDS, D_UNIFORM, IS_BF16, BLOCK_M, BLOCK_N, SPLIT_K, A_SWIGLU, UNROLL, D_GK, ASM, A_SPLITS,
                SWAP, split_stride)
    if SWAP and BLOCK_M > 1:  # acc is [BLOCK_N, BLOCK_M]
        tl.atomic_add(out_ptr + token.to(tl.int64)[None, :] * H + offs_n[:, None], acc * wt[None, :],
                      mask=row_ok[None, :] & n_ok[:, None], sem="relaxed")
    else:
        tl.atomic_add(out_ptr + token.to(tl.int64)[:, None] * H + offs_n[None, :], acc * wt[:, None],
                      mask=row_ok[:, None] & n_ok[None, :], sem="relaxed")


@dataclass(frozen=True)
class MoEGemmConfig:
    """Launch configuration of the two kernels. ``block_m == 1``: one token slot per program (decode,
    CUDA-core products); ``>= 16``: tensor-core tiles. ``up_split_k > 1`` (decode only) splits the gate_up K
    range over programs (fp32 partials, summed and SwiGLU-ed by the down kernel); ``down_split_k`` the down kernel's
    (its atomics add the parts). ``stages``: Triton's software-pipelining depth (0: Triton's default).
    ``swap_ab`` (tensor-core blocks only): the weights are the left MMA operand and the block's token rows its
    N (``acc_t [BN, BM] += W.T @ A.T``, see :func:`_dot_loop_swap`): ``wgmma`` with the unpacked weights in
    registers on sm_90. Swapped tiles only: ``dot_k=128`` joins up to 8 slot operands (one scale group with fold)
    along K into one ``tl.dot`` (Triton then waits on the tensor cores once per group, not once per slot);
    ``prefetch`` loads a tile's scales one tile ahead (tiles of one scale group); ``fuse_gu`` runs gate and up
    in one K loop where an expert's gate and up share a kind (the activation tile loaded once, two
    independent MMA chains). Swapped tiles mask their padding rows (no global read)."""

    block_m: int
    up_block_n: int
    up_warps: int
    down_block_n: int
    down_split_k: int
    down_warps: int
    up_split_k: int = 1
    stages: int = 0
    swap_ab: int = 0
    dot_k: int = 16
    prefetch: int = 0
    fuse_gu: int = 0

    def __post_init__(self):
        if self.block_m < 1 or self.block_m & (self.block_m - 1) or 1 < self.block_m < 16:
            raise ValueError(f"block_m must be 1 or a power of two >= 16, got {self.block_m}")
        if self.up_split_k > 1 and self.block_m != 1:
            # measured slower on the H200 (72-109 us against 31 us for one GLM token) and its pipelined fp32
            # [gate | up] partial loads overflow shared memory: the tensor-core path keeps gate_up whole
            raise ValueError("up_split_k > 1 needs block_m == 1 (the decode path)")
        if self.swap_ab not in (0, 1):
            raise ValueError(f"swap_ab must be 0 or 1, got {self.swap_ab!r}")
        if self.swap_ab and self.block_m == 1:
            raise ValueError("swap_ab needs tensor-core blocks (block_m >= 16)")
        if self.dot_k not in (16, 128):
            raise ValueError(f"dot_k must be 16 (one tl.dot per code slot) or 128, got {self.dot_k!r}")
        if self.prefetch not in (0, 1) or self.fuse_gu not in (0, 1):
            raise ValueError(f"prefetch and fuse_gu must be 0 or 1: {self}")
        if (self.dot_k != 16 or self.prefetch or self.fuse_gu) and not self.swap_ab:
            raise ValueError("dot_k > 16, prefetch and fuse_gu apply to the swapped tiles (swap_ab=1) only")
        if self.stages < 0:
            raise ValueError(f"stages must be >= 0, got {self.stages}")
        for name in ("up_block_n", "down_block_n"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {v}")
        if min(self.up_warps, self.down_warps, self.down_split_k, self.up_split_k) < 1:
            raise ValueError(f"warps and split factors must be >= 1: {self}")


def swap_mode(config: "MoEGemmConfig", K: int, N: int, block_n: int) -> int:
    """The ``SWAP`` constexpr of the kernels for one projection of K x N (bits of :func:`_dot_loop_swap`): 0
    unswapped; else 1 + 2 (``dot_k`` 128) + 4 (K a multiple of 256, the widest tile: no partial tile) + 8 (N a
    multiple of ``block_n``: no column masks) + 16 (``prefetch``)."""
    if not config.swap_ab or config.block_m == 1:
        return 0
    return (1 | (2 if config.dot_k > 16 else 0) | (4 if K % 256 == 0 else 0) | (8 if N % block_n == 0 else 0)
            | (16 if config.prefetch else 0))


def _splits(K: int | None) -> int:
    """K splits for the decode path: about 512 k (4 int4 tiles) per program, at most 4, none when K is
    unknown-small (a split that gets no tile still costs a program, and its partial plane)."""
    if K is None:
        return 4
    return max(1, min(4, K // 512))


@functools.lru_cache(maxsize=1024)
def default_config(num_slots: int, num_experts: int, hidden: int | None = None,
                   intermediate: int | None = None) -> MoEGemmConfig:
    """Heuristic, from the H200 sweeps of docs/perf/moe.md (GLM-4.7-Flash layer, int4):

    - decode (one slot per program, CUDA cores, both K ranges split) while the tensor-core grid would be too
      small to keep memory busy: fewer than ~264 gate_up programs (two per SM of a 132-SM part) of 128
      columns, i.e. about 22 active experts for I = 1536. One token (5 experts): decode 31 us, tensor cores
      72-109 us; 16 tokens (~48 experts): decode 306 us, 16-row swapped tiles 143 us.
    - otherwise swapped tensor-core tiles (weights the left MMA operand, from registers; padding rows masked),
      gate and up in one K loop, one ``tl.dot`` per K tile and the scales a tile ahead: 16-row blocks of 128
      columns up to ~12 slots per expert, 32-row blocks above, 64 columns for gate_up and 128 for down, 64-row
      blocks past ~48 slots per expert. Expert kernels in a CUDA graph, H200, int4 (docs/perf/data/
      2026-11-26-h200-moe-interleave/explore_library.log): 16 tokens 78.9 us (16x64 tiles 81.4, separate gate
      and up loops 98.0, decode 260-337); 256 tokens, ~20 slots per expert, 153.3 us (64-column down 153.9,
      128-column gate_up 157.8, 8-warp down 158.8, separate loops 212.1; 64- and 16-row blocks measured slower
      in earlier sweeps: they decode each expert's weights more often or leave the grid short).
    ``hidden`` is gate_up's K, ``intermediate`` down's (the decode splits; the grid rule)."""
    active = max(1, min(num_experts, num_slots))
    per_expert = num_slots / active
    col_blocks = -(-(intermediate or 1536) // 128)
    if per_expert <= 2 and active * col_blocks < 264:
        return MoEGemmConfig(1, 32, 4, 32, _splits(intermediate), 4, up_split_k=_splits(hidden))
    fused = dict(swap_ab=1, dot_k=128, prefetch=1, fuse_gu=1)
    if per_expert <= 12:
        return MoEGemmConfig(16, 128, 4, 128, 1, 4, **fused)
    return MoEGemmConfig(32 if per_expert <= 48 else 64, 64, 4, 128, 1, 4, **fused)


def candidate_configs(num_slots: int, num_experts: int, hidden: int | None = None,
                      intermediate: int | None = None) -> list[MoEGemmConfig]:
    """What :func:`triton_marlin.moe.strategies.select_config` tries: the default and neighbours of it."""
    base = default_config(num_slots, num_experts, hidden, intermediate)
    out = [base]
    if num_slots / max(1, min(num_experts, num_slots)) <= 2:
        out += [MoEGemmConfig(1, 32, 4, 32, _splits(intermediate), 4, up_split_k=_splits(hidden)),
                MoEGemmConfig(1, 32, 4, 32, 2, 4, up_split_k=2), MoEGemmConfig(1, 64, 4, 64, 4, 4, up_split_k=8),
                MoEGemmConfig(1, 32, 4, 32, 8, 4, up_split_k=8), MoEGemmConfig(1, 16, 2, 16, 4, 2, up_split_k=4),
                MoEGemmConfig(1, 32, 4, 32, 1, 4), MoEGemmConfig(16, 64, 4, 64, 1, 4),
                MoEGemmConfig(16, 128, 4, 128, 1, 4, swap_ab=1)]
    if base.block_m > 1:
        # neighbours of the default (H200 sweeps, docs/perf/moe.md): the fused swapped tiles with other gate_up /
        # down column blocks and warps, and the separate-loop swapped tile; the unswapped tiles and unmasked
        # padding rows measured 10-60% slower and are not retried
        bm = base.block_m
        fused = dict(swap_ab=1, dot_k=128, prefetch=1, fuse_gu=1)
        for up_bn, up_w, down_bn, down_w in ((64, 4, 64, 4), (64, 4, 128, 4), (64, 4, 128, 8), (64, 4, 256, 8),
                                             (128, 4, 128, 4), (128, 8, 128, 8)):
            out.append(MoEGemmConfig(bm, up_bn, up_w, down_bn, 1, down_w, **fused))
        out.append(MoEGemmConfig(bm, 64, 4, 64, 1, 4, swap_ab=1))
    return list(dict.fromkeys(out))


_TUNED: dict[tuple, MoEGemmConfig] = {}


def tuned_configs() -> dict:
    """The configurations measured best in this process (``select_config`` with tuning on), by problem."""
    return dict(_TUNED)


def reset_tuned_configs() -> None:
    _TUNED.clear()


def config_key(x: torch.Tensor, num_slots: int, gate, up, down, uniform: bool) -> tuple:
    t_bucket = 1 << max(0, (x.shape[0] - 1).bit_length())
    return (t_bucket, num_slots // max(1, x.shape[0]), x.shape[1], gate.N, str(x.dtype), uniform,
            gate.kinds_mask, up.kinds_mask, down.kinds_mask, str(x.device))


def use_asm(x: torch.Tensor) -> bool:
    """The PTX pair unpackers of :mod:`.decode` serve the tensor-core path: fp16 activations on CUDA (the CPU
    interpreter cannot run PTX)."""
    return x.device.type == "cuda" and x.dtype == torch.float16 and os.environ.get("TRITON_INTERPRET", "0") != "1"


def use_pdl(x: torch.Tensor, config: "MoEGemmConfig") -> bool:
    """Programmatic dependent launch for the decode kernels (one slot per program: a single wave of short
    programs, where the launch gap between gate_up and down is a large share of the time) on sm_90+ CUDA.
    The tensor-core configurations run several waves: programs of the next kernel waiting resident would take
    slots from the running one, so they launch as usual."""
    return config.block_m == 1 and pdl_supported(x.device)


def _kinds_mask(kinds) -> int:
    m = 0
    for k in kinds:
        m |= 1 << int(k)
    return m


def direct_ids(topk_ids: torch.Tensor) -> torch.Tensor:
    """The flat contiguous int32 expert ids ``[T * k]`` that :func:`moe_gemm_launch` reads in place of an
    alignment when every program serves one slot (``block_m == 1``): with one row per program nothing needs
    sorting, and the alignment kernel (4.3 us of a 41 us GLM layer at one token on the H200) is skipped."""
    ids = topk_ids.reshape(-1)
    if ids.dtype != torch.int32:
        ids = ids.to(torch.int32)
    return ids.contiguous()


def moe_gemm_launch(x: torch.Tensor, topk_weights: torch.Tensor, sorted_ids: torch.Tensor,
                    expert_ids: torch.Tensor, npost: torch.Tensor, gate, up, down, *, config: MoEGemmConfig,
                    uniform: bool, out: torch.Tensor | None = None,
                    uniform_kinds: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Launch the gate_up and down kernels on aligned slots; returns the fp32 accumulator ``[T, H]``.

    The alignment must have been made with ``config.block_m``. ``sorted_ids=None`` (``config.block_m == 1``
    only): no alignment, one program per slot in slot order; ``expert_ids`` is then the flat ``[T * k]``
    int32 expert ids and ``npost`` is not read (one kernel fewer per forward, see :func:`direct_ids`).
    ``gate``/``up``/``down``: :class:`~triton_marlin.moe.experts.FlatProjection`. ``uniform``: compile each
    projection for its single kind (every expert of a projection must share it) instead of reading the kind from
    the table.
    ``uniform_kinds``: the (gate, up, down) kinds to compile for when only the experts the slots reach
    share them (the hybrid strategy: the other experts' slots are -1).
    """
    T, H = x.shape
    I = gate.N
    k_total = topk_weights.shape[1]
    num_slots = T * k_total
    if out is None:
        out = torch.empty((T, H), dtype=torch.float32, device=x.device)
    direct = sorted_ids is None
    if direct:
        if config.block_m != 1:
            raise ValueError(f"unaligned (direct) slots need block_m == 1, config has {config.block_m}")
        if expert_ids.dtype != torch.int32 or expert_ids.numel() != num_slots or not expert_ids.is_contiguous():
            raise ValueError(f"direct slots need the flat contiguous int32 expert ids of all {num_slots} slots")
        sorted_ids = npost = expert_ids  # not read
    capacity = expert_ids.numel() if direct else sorted_ids.numel()
    split_up = config.up_split_k > 1
    if split_up:  # fp32 [gate | up] partial sums, one plane per K split (every row the down kernel reads is written)
        inter = torch.empty((config.up_split_k, capacity, 2 * I), dtype=torch.float32, device=x.device)
    else:
        inter = torch.empty((capacity, I), dtype=x.dtype, device=x.device)
    max_blocks = expert_ids.numel()
    num_experts = gate.launch_args()[-1].shape[0]  # rows of the per-expert table
    if capacity != max_blocks * config.block_m:
        raise ValueError(f"alignment has {capacity} rows in {max_blocks} blocks; config.block_m is {config.block_m}")

    def kinds(flat, forced):
        if forced is not None:
            return 1 << forced, forced
        uk = flat.uniform_kind
        if uniform and uk is None:
            raise ValueError(f"uniform launch needs one format per projection, found kinds {sorted(set(flat.kinds))}")
        return flat.kinds_mask, (uk if uniform else -1)

    forced = uniform_kinds if uniform_kinds is not None else (None, None, None)
    gk, gu = kinds(gate, forced[0])
    uk, uu = kinds(up, forced[1])
    dk, du = kinds(down, forced[2])
    is_bf16 = x.dtype == torch.bfloat16
    unroll = 2 if config.block_m == 1 else 1  # the tensor-core loop is software-pipelined instead
    asm = use_asm(x)
    extra = {"num_stages": config.stages} if config.stages > 0 else {}
    pdl = use_pdl(x, config)
    if pdl:
        extra["launch_pdl"] = True
    split_stride = capacity * 2 * I
    grid_up = (max_blocks, triton.cdiv(I, config.up_block_n), config.up_split_k)
    _moe_gate_up_kernel[grid_up](
        x, x.stride(0), sorted_ids, expert_ids, npost, inter, out, out.numel(),
        *gate.launch_args(), *up.launch_args(), num_slots, num_experts, H, I, split_stride,
        SLOTS_PER_TOKEN=k_total, G_KINDS=gk, G_UNIFORM=gu, U_KINDS=uk, U_UNIFORM=uu, IS_BF16=is_bf16,
        BLOCK_M=config.block_m, BLOCK_N=config.up_block_n, SPLIT_K=config.up_split_k, ZERO_BLOCK=1024,
        UNROLL=unroll, G_GK=gate.group_k, U_GK=up.group_k, ASM=asm, DIRECT=direct,
        SWAP=swap_mode(config, H, I, config.up_block_n), FUSE_GU=config.fuse_gu, PDL=pdl, num_warps=config.up_warps,
        **extra)
    grid_down = (max_blocks, triton.cdiv(H, config.down_block_n), config.down_split_k)
    _moe_down_kernel[grid_down](
        inter, sorted_ids, expert_ids, npost, topk_weights, out, *down.launch_args(), num_slots, num_experts, I, H,
        split_stride,
        SLOTS_PER_TOKEN=k_total, D_KINDS=dk, D_UNIFORM=du, IS_BF16=is_bf16, BLOCK_M=config.block_m,
        BLOCK_N=config.down_block_n, SPLIT_K=config.down_split_k, A_SWIGLU=split_up, UNROLL=unroll,
        D_GK=down.group_k, ASM=asm, A_SPLITS=config.up_split_k, DIRECT=direct,
        SWAP=swap_mode(config, I, H, config.down_block_n), PDL=pdl,
        num_warps=config.down_warps,
        **extra)
    return out


def fused_moe_reference(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, experts,
                        dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``sum_j w[t, j] * down_e(silu(gate_e(x_t)) * up_e(x_t))`` over slots with ``0 <= e < experts.num_total``,
    with exactly dequantized weights, computed in ``dtype`` (float64 by default). Returns ``[T, H]`` in
    ``dtype``."""
    T, H = x.shape
    out = torch.zeros((T, H), dtype=dtype, device=x.device)
    xd = x.to(dtype)
    ids = topk_ids.to(torch.int64)
    for e in torch.unique(ids).tolist():
        if e < 0 or e >= experts.num_total:
            continue
        tok, j = torch.nonzero(ids == e, as_tuple=True)
        ex = experts.experts[e]
        xe = xd[tok]
        g = xe @ ex["gate"].dequantize(torch.float32).to(dtype).t()
        u = xe @ ex["up"].dequantize(torch.float32).to(dtype).t()
        h = torch.nn.functional.silu(g) * u
        y = h @ ex["down"].dequantize(torch.float32).to(dtype).t()
        out.index_add_(0, tok, y * topk_weights[tok, j].to(dtype)[:, None])
    return out


# -- torch custom op (torch.compile / CUDA graphs) ----------------------------------------------------

class _FlatArgs:
    """What :func:`moe_gemm_launch` reads of a flattened projection, rebuilt from the op's tensor list."""

    def __init__(self, tensors, N: int, kinds_mask: int, uniform_kind: int, group_k: int):
        self.tensors = tuple(tensors)
        self.N = N
        self.group_k = group_k
        self.kinds_mask = kinds_mask
        self.uniform_kind = uniform_kind if uniform_kind >= 0 else None
        self.kinds = tuple(k for k in range(NUM_KINDS) if kinds_mask >> k & 1)

    def launch_args(self) -> tuple:
        return self.tensors


@torch.library.custom_op("triton_marlin::moe_experts", mutates_args=())
def moe_experts_op(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, gate: list[torch.Tensor],
                   up: list[torch.Tensor], down: list[torch.Tensor], intermediate: int, kinds_masks: list[int],
                   uniform_kinds: list[int], uniform: bool, config: list[int], group_ks: list[int]) -> torch.Tensor:
    """Alignment + fused gate_up + down for ``x [T, H]``; returns ``[T, H]`` in x's dtype.

    ``gate``/``up``/``down``: a :class:`~triton_marlin.moe.experts.FlatProjection`'s ``launch_args()``
    (8 tensors each); ``kinds_masks``/``uniform_kinds``: per projection (-1: not uniform); ``config``: the
    fields of :class:`MoEGemmConfig` in order; ``group_ks``: per projection, the group size all experts share
    (0: they differ)."""
    from .moe_align import align_triton

    cfg = MoEGemmConfig(*config)
    T, H = x.shape
    if T == 0:
        return x.new_empty((0, H))
    num_experts = gate[7].shape[0]  # table rows
    num_slots = topk_ids.numel()
    # worst-case aligned rows, as triton_marlin.moe.align.align_capacity
    rows = num_slots + min(num_experts, num_slots) * (cfg.block_m - 1)
    blocks = max(1, (rows + cfg.block_m - 1) // cfg.block_m)
    if cfg.block_m == 1:
        sorted_ids, expert_ids, npost = None, direct_ids(topk_ids), None
    else:
        sorted_ids, expert_ids, npost = align_triton(topk_ids, num_experts, cfg.block_m, blocks * cfg.block_m,
                                                     blocks)
    flats = [_FlatArgs(t, n, m, u, g) for t, n, m, u, g in zip((gate, up, down), (intermediate, intermediate, H),
                                                                kinds_masks, uniform_kinds, group_ks)]
    weights = topk_weights.float().contiguous()
    out = moe_gemm_launch(x.contiguous(), weights, sorted_ids, expert_ids, npost, *flats, config=cfg,
                          uniform=uniform)
    return out.to(x.dtype)


@moe_experts_op.register_fake
def _(x, topk_ids, topk_weights, gate, up, down, intermediate, kinds_masks, uniform_kinds, uniform, config, group_ks):
    return x.new_empty(x.shape)
