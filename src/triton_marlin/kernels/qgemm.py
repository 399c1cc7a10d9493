"""Quantized GEMM: ``out[M, N] = x[M, K] @ W[N, K].T (+ bias)`` with W packed (formats/packing.py).

Three kernel families, chosen per call by :mod:`triton_marlin.kernels.qgemm_config` (a measured
table per GPU, or a default):

- ``gemv``: CUDA-core dot products for small M (up to 4 rows per program). Codes decode to exact fp32 values
  (``(q | 0x4B000000)`` read as fp32 is ``2**23 + q``), one FMA per weight and row, and the group
  scale is applied once per group and column to a partial sum instead of once per weight.
- ``dot``: tensor-core tiles. Slot ``i`` of 16 word rows is a ``[16, BLOCK_N]`` operand for
  ``tl.dot`` against ``x[:, k0 + 16 i : k0 + 16 i + 16]``; weights dequantize in registers
  (:mod:`.decode`) and never touch device memory as fp16. Operand modes: per-weight dequant, ``fold``
  (exact unscaled codes, the scale applied per group to the accumulator; on CUDA with fp16 the
  int2/int3/int4/fp4 codes come from PTX pair unpackers) and ``wide`` (one operand per K tile).
- ``dequant``: dequantize to a ``[K, N]`` fp16/bf16 buffer with a Triton kernel, then cuBLAS
  (``torch.matmul``). For large M, where fp16 is compute-bound and the fused kernels lose.

``gemv`` and ``dot`` take a split-K factor: with ``split_k > 1`` the K tiles are shared out among
that many programs per output tile; each stores its fp32 partial, and the last one to finish sums
them in a fixed order and writes the output (see :func:`_splitk_reduce`): one launch, no zero-fill,
deterministic results.

The op is registered as the torch custom op ``triton_marlin::qgemm`` with a fake implementation, so it
runs under ``torch.compile`` and inside CUDA graphs.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from .. import dispatch
from ..device import triton_interpret
from ..formats import QuantizedTensor
from ..formats.packing import code_tile_k
from . import decode as D
from .qgemv_mma import MMA_FORMATS, MMA_MAX_M, _qgemv_mma_kernel, mma_tiles
from .decode import (dequant, decode_scale, e2m1_raw_fp16, e4m3_raw_fp16, int_magic_fp16, int_magic_fp32,
                     raw_factor, unpack_codes, unpack_slots_fp16_asm)

SUPPORTED_FORMATS = ("int2", "int3", "int4", "int8", "fp4", "mxfp4", "nvfp4", "fp8")
ACTIVATION_DTYPES = (torch.float16, torch.bfloat16)
FAMILIES = ("gemv", "dot", "dequant", "mma")


# ----------------------------------------------------------------------------------------------
# Format facts the kernels need (all compile-time constants)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FormatSpec:
    kind: int          # decode.KIND_*
    bits: int
    symmetric: bool
    scale_kind: int    # decode.SCALE_*
    group: int         # weights per scale along K; 0 = one scale per output channel
    slots: int         # 16-row code slots per K tile (tile K = 16 * slots)

    @property
    def tile_k(self) -> int:
        return 16 * self.slots

    @property
    def group_slots(self) -> int:
        """Slots per scale group inside one tile (0: per-channel, scale applied at the end)."""
        if self.group == 0:
            return 0
        return min(self.group // 16, self.slots)


def format_spec(qt: QuantizedTensor) -> FormatSpec:
    fmt = qt.format
    N, K = qt.shape
    group = 0 if qt.group_size == -1 else int(qt.group_size)
    if fmt.startswith("int"):
        bits = int(fmt[3:])
        kind, scale_kind, sym = D.KIND_INT, D.SCALE_FLOAT, bool(qt.meta["symmetric"])
    elif fmt == "fp8":
        bits, kind, scale_kind, sym = 8, D.KIND_E4M3, D.SCALE_FLOAT, True
    else:
        bits, kind, sym = 4, D.KIND_E2M1, True
        scale_kind = {"fp4": D.SCALE_FLOAT, "mxfp4": D.SCALE_E8M0, "nvfp4": D.SCALE_E4M3}[fmt]
    slots = 8 if bits in (4, 8) else 16  # 8-bit codes are unpacked: a 128-row "tile" of bytes
    if bits != 8:
        assert code_tile_k(bits) == 16 * slots
    return FormatSpec(kind, bits, sym, scale_kind, group, slots)


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _load_codes(qw_ptr, words, words_hi, t, rows, offs_n, mask_n, N, K,
                SLOT: tl.constexpr, BITS: tl.constexpr, TILE_K: tl.constexpr, EVEN_K: tl.constexpr,
                EVEN_N: tl.constexpr):
    """Codes ``[16, BLOCK_N]`` (int32) of k = t*TILE_K + 16*SLOT + rows."""
    if BITS == 8:
        k = t * TILE_K + SLOT * 16 + rows
        ptrs = qw_ptr + k[:, None] * N + offs_n[None, :]
        if EVEN_K and EVEN_N:
            return tl.load(ptrs).to(tl.int32)
        else:
            return tl.load(ptrs, mask=(k < K)[:, None] & mask_n[None, :], other=0).to(tl.int32)
    else:
        return unpack_codes(words, words_hi, SLOT, BITS)


@triton.jit
def _load_words(qw_ptr, qh_ptr, t, rows, offs_n, mask_n, N, BITS: tl.constexpr, EVEN_N: tl.constexpr):
    """The 16 word rows of K tile ``t`` (and the int3 high-bit plane); placeholders for 8-bit codes."""
    if BITS != 8:
        offs = (t * 16 + rows)[:, None] * N + offs_n[None, :]
        if EVEN_N:
            words = tl.load(qw_ptr + offs)
        else:
            words = tl.load(qw_ptr + offs, mask=mask_n[None, :], other=0)
        if BITS == 3:
            if EVEN_N:
                words_hi = tl.load(qh_ptr + offs)
            else:
                words_hi = tl.load(qh_ptr + offs, mask=mask_n[None, :], other=0)
        else:
            words_hi = words
    else:
        words = 0
        words_hi = 0
    return words, words_hi


@triton.jit
def _load_group(s_ptr, z_ptr, gs_ptr, g, offs_n, mask_n, N, G,
                SCALE_KIND: tl.constexpr, SYMMETRIC: tl.constexpr):
    """fp32 scales ``[BLOCK_N]`` and int32 zero-point codes of scale row ``g`` (masked past G)."""
    ok = mask_n & ((offs_n * 0 + g) < G)
    raw = tl.load(s_ptr + g * N + offs_n, mask=ok, other=0)
    if SCALE_KIND == 2:
        gscale = tl.load(gs_ptr)
    else:
        gscale = 1.0
    s = decode_scale(raw, gscale, SCALE_KIND)
    if SYMMETRIC:
        z = tl.zeros_like(offs_n)
    else:
        z = tl.load(z_ptr + g * N + offs_n, mask=ok, other=0).to(tl.int32)
    return s, z


@triton.jit
def _raw_fp32(codes, zero, KIND: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr):
    """Exact fp32 value of codes, up to the constant factor the scale absorbs (see decode.raw_factor)."""
    if KIND == 0:
        if SYMMETRIC:
            return int_magic_fp32(codes) - (8388608.0 + (1 << (BITS - 1)))
        else:
            return int_magic_fp32(codes) - int_magic_fp32(zero)
    elif KIND == 1:
        return e2m1_raw_fp16(codes).to(tl.float32)
    else:
        return e4m3_raw_fp16(codes).to(tl.float32)


@triton.jit
def _fold_operand(codes, zero, KIND: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr,
                  IS_BF16: tl.constexpr):
    """Tensor-core operand for FOLD mode: the code's exact value without the scale. Integers ``q - z``
    (exact in fp16, and in bf16 for |q - z| < 256), minifloats ``value * 2**-14 / 2**-8`` (fp16)."""
    if KIND == 0:
        if IS_BF16:
            if SYMMETRIC:
                zf: tl.constexpr = 8388608.0 + (1 << (BITS - 1))
                return (int_magic_fp32(codes) - zf).to(tl.bfloat16)
            else:
                return (int_magic_fp32(codes) - int_magic_fp32(zero)).to(tl.bfloat16)
        else:
            if SYMMETRIC:
                zf16: tl.constexpr = 1024.0 + (1 << (BITS - 1))
                return int_magic_fp16(codes) - zf16
            else:
                return int_magic_fp16(codes) - int_magic_fp16(zero)
    elif KIND == 1:
        return e2m1_raw_fp16(codes)
    else:
        return e4m3_raw_fp16(codes)


@triton.jit
def _fold_offset_fp16(z, BITS: tl.constexpr, SYMMETRIC: tl.constexpr):
    """``1024 + z`` as fp16 (what the PTX unpackers' ``1024 + q`` loses to become ``q - z``)."""
    if SYMMETRIC:
        return tl.full(z.shape, 1024.0 + (1 << (BITS - 1)), tl.float16)
    else:
        return int_magic_fp16(z)


@triton.jit
def _splitk_reduce(res, ws_ptr, cnt_ptr, tile_id, pid_k, M, N, offs_m, offs_n, mask, out_ptrs,
                   bias, HAS_BIAS: tl.constexpr, SPLIT_K):
    """Split-K without atomics on the output: every split stores its fp32 partial ``[BM, BN]`` to the
    workspace ``ws [SPLIT_K, M, N]``, then takes a ticket on the tile's counter; the split that takes
    the last ticket sums the partials in a fixed order, writes the output and resets the counter to 0
    for the next call. Results are deterministic; no zero-fill or extra kernel is needed."""
    wofs = offs_m[:, None] * N + offs_n[None, :]
    tl.store(ws_ptr + pid_k * M * N + wofs, res, mask=mask)
    tl.debug_barrier()
    ticket = tl.atomic_add(cnt_ptr + tile_id, 1, sem="acq_rel")
    if ticket == SPLIT_K - 1:
        total = tl.load(ws_ptr + wofs, mask=mask, other=0.0, cache_modifier=".cg")
        for sk in range(1, SPLIT_K):
            total += tl.load(ws_ptr + sk * M * N + wofs, mask=mask, other=0.0, cache_modifier=".cg")
        if HAS_BIAS:
            total += bias[None, :]
        tl.store(out_ptrs, total.to(out_ptrs.dtype.element_ty), mask=mask)
        tl.atomic_xchg(cnt_ptr + tile_id, 0)


@triton.jit
def _gemv_row(acc, part, x_row, k, kmask, v, GROUP_SLOTS: tl.constexpr, MASKED: tl.constexpr):
    """One activation row's share of a slot: ``acc/part[16, BN] += x[k, None] * v`` (fp32)."""
    if MASKED:
        xs = tl.load(x_row + k, mask=kmask, other=0.0).to(tl.float32)
    else:
        xs = tl.load(x_row + k).to(tl.float32)
    if GROUP_SLOTS != 0:
        part += xs[:, None] * v
    else:
        acc += xs[:, None] * v
    return acc, part


@triton.jit(do_not_specialize=["M", "G", "TILES", "TILES_PER_SPLIT", "SPLIT_K"])
def _qgemv_kernel(
        x_ptr, qw_ptr, qh_ptr, s_ptr, z_ptr, gs_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
        M, N, K, G, TILES, TILES_PER_SPLIT, SPLIT_K,
        stride_xm, stride_xk, stride_om,
        KIND: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr, SCALE_KIND: tl.constexpr,
        GROUP: tl.constexpr, GROUP_SLOTS: tl.constexpr, SLOTS: tl.constexpr, HAS_BIAS: tl.constexpr,
        EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
        SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREFETCH: tl.constexpr):
    """CUDA-core quantized GEMV for M <= 4 rows per program (BLOCK_M in 1, 2, 4).

    x ``[M, K]`` (strides ``stride_xm, stride_xk``); qw packed words ``[TILES*16, N]`` (int32) or bytes
    ``[K, N]`` (8-bit); qh the int16 high-bit plane of int3; scales/zeros ``[G, N]``; out ``[M, N]``
    (row stride ``stride_om``); ws ``[SPLIT_K, M, N]`` fp32 and cnt (int32 tile counters, zero) for
    split-K (SPLIT: SPLIT_K > 1). Grid: (N blocks, SPLIT_K, M blocks). Each row keeps its own
    ``[16, BN]`` fp32 accumulator in the weight tile's layout (activations broadcast along N without
    layout shuffles) and reduces once after the K loop; group scales multiply a partial sum per
    group, not every weight. PREFETCH (one or two scale groups per K tile): the scales and zero points of
    tile t + 1 load while tile t computes, as in the dot kernel (a scale load issued in the tile that uses
    it leaves a memory latency exposed per tile: the word loads are software-pipelined, the scales not).
    """
    TILE_K: tl.constexpr = 16 * SLOTS
    NG: tl.constexpr = SLOTS // (GROUP_SLOTS + (GROUP_SLOTS == 0))  # scale groups per K tile
    LOAD_AHEAD: tl.constexpr = PREFETCH and GROUP_SLOTS != 0 and NG <= 2
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = tl.arange(0, 16)
    m0 = pid_m * BLOCK_M
    x0 = x_ptr + m0 * stride_xm
    x1 = x0 + stride_xm
    x2 = x1 + stride_xm
    x3 = x2 + stride_xm

    zero = tl.zeros((16, BLOCK_N), dtype=tl.float32)
    acc0 = zero
    acc1 = zero
    acc2 = zero
    acc3 = zero
    t_begin = pid_k * TILES_PER_SPLIT
    t_end = tl.minimum(t_begin + TILES_PER_SPLIT, TILES)
    if GROUP_SLOTS == 0:
        s_pc, z = _load_group(s_ptr, z_ptr, gs_ptr, 0, offs_n, mask_n, N, G, SCALE_KIND, SYMMETRIC)
    if LOAD_AHEAD:
        s0, z0, s1, z1 = _load_tile_scales(s_ptr, z_ptr, gs_ptr, t_begin, offs_n, mask_n, N, G, TILE_K, GROUP,
                                           GROUP_SLOTS, NG, SCALE_KIND, SYMMETRIC)
    else:
        s0 = tl.zeros((BLOCK_N,), dtype=tl.float32)
        z0 = tl.zeros((BLOCK_N,), dtype=tl.int32)
        s1 = s0
        z1 = z0
    for t in range(t_begin, t_end):
        words, words_hi = _load_words(qw_ptr, qh_ptr, t, rows, offs_n, mask_n, N, BITS, EVEN_N)
        if LOAD_AHEAD:
            s0n, z0n, s1n, z1n = _load_tile_scales(s_ptr, z_ptr, gs_ptr, t + 1, offs_n, mask_n, N, G, TILE_K,
                                                   GROUP, GROUP_SLOTS, NG, SCALE_KIND, SYMMETRIC)
        for i in tl.static_range(SLOTS):
            if GROUP_SLOTS != 0:
                if i % GROUP_SLOTS == 0:
                    s, z = _slot_scales(i, t, s0, z0, s1, z1, s_ptr, z_ptr, gs_ptr, offs_n, mask_n, N, G, TILE_K,
                                        GROUP, SCALE_KIND, SYMMETRIC, LOAD_AHEAD)
                    part0 = zero
                    part1 = zero
                    part2 = zero
                    part3 = zero
            else:
                part0 = zero
                part1 = zero
                part2 = zero
                part3 = zero
            codes = _load_codes(qw_ptr, words, words_hi, t, rows, offs_n, mask_n, N, K, i, BITS,
                                TILE_K, EVEN_K, EVEN_N)
            v = _raw_fp32(codes, z[None, :], KIND, BITS, SYMMETRIC)
            kk = t * TILE_K + i * 16 + rows
            k = kk * stride_xk
            kmask = kk < K
            acc0, part0 = _gemv_row(acc0, part0, x0, k, kmask, v, GROUP_SLOTS, not EVEN_K)
            if BLOCK_M > 1:
                acc1, part1 = _gemv_row(acc1, part1, x1, k, kmask & ((rows * 0 + m0 + 1) < M), v,
                                        GROUP_SLOTS, True)
            if BLOCK_M > 2:
                acc2, part2 = _gemv_row(acc2, part2, x2, k, kmask & ((rows * 0 + m0 + 2) < M), v,
                                        GROUP_SLOTS, True)
                acc3, part3 = _gemv_row(acc3, part3, x3, k, kmask & ((rows * 0 + m0 + 3) < M), v,
                                        GROUP_SLOTS, True)
            if GROUP_SLOTS != 0:
                if i % GROUP_SLOTS == GROUP_SLOTS - 1:
                    acc0 += part0 * s[None, :]
                    if BLOCK_M > 1:
                        acc1 += part1 * s[None, :]
                    if BLOCK_M > 2:
                        acc2 += part2 * s[None, :]
                        acc3 += part3 * s[None, :]
        if LOAD_AHEAD:
            s0, z0, s1, z1 = s0n, z0n, s1n, z1n
    factor = raw_factor(KIND)
    if GROUP_SLOTS == 0:
        col_scale = s_pc * factor
    else:
        col_scale = tl.full((BLOCK_N,), factor, tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros((BLOCK_N,), dtype=tl.float32)
    # gather the rows into one [BLOCK_M, BN] result (rows are tiny: a select per row)
    r = tl.arange(0, BLOCK_M)[:, None]
    res = tl.where(r == 0, (tl.sum(acc0, axis=0) * col_scale)[None, :], 0.0)
    if BLOCK_M > 1:
        res = tl.where(r == 1, (tl.sum(acc1, axis=0) * col_scale)[None, :], res)
    if BLOCK_M > 2:
        res = tl.where(r == 2, (tl.sum(acc2, axis=0) * col_scale)[None, :], res)
        res = tl.where(r == 3, (tl.sum(acc3, axis=0) * col_scale)[None, :], res)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    mask = (offs_m < M)[:, None] & mask_n[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    if not SPLIT:
        tl.store(out_ptrs, (res + bias[None, :]).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tile_id = pid_m * tl.num_programs(0) + pid_n
        _splitk_reduce(res, ws_ptr, cnt_ptr, tile_id, pid_k, M, N, offs_m, offs_n, mask, out_ptrs,
                       bias, HAS_BIAS, SPLIT_K)


# ----------------------------------------------------------------------------------------------
# One-shot GEMV for small weights: every load of the program issued before the first use
# ----------------------------------------------------------------------------------------------
@triton.jit
def _os_load(x_ptr, qw_ptr, qh_ptr, s_ptr, z_ptr, gs_ptr, t0, t_end, kend, offs_n, mask_n, N, G, M, m0,
             stride_xm, stride_xk, NT: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr,
             SCALE_KIND: tl.constexpr, GROUP: tl.constexpr, GROUP_SLOTS: tl.constexpr, SLOTS: tl.constexpr,
             EVEN_N: tl.constexpr, MASK_K: tl.constexpr, BLOCK_M: tl.constexpr):
    """Every global load of NT K tiles starting at tile ``t0`` (tiles at or past ``t_end`` masked off), as
    one ``[NT*16, BN]`` block of word rows (row r = word row ``t0*16 + r``: tile ``t0 + r // 16``, row
    ``r % 16``). Returns ``(words, words_hi, codes8, scales, zeros, xs)``: for 8-bit codes ``codes8`` holds
    one ``[R, BN]`` byte block per slot (words are placeholders); ``scales``/``zeros`` one ``[R, BN]`` block
    per scale group of a tile (gathered per row: all rows of a tile share it); ``xs`` one ``[R]`` activation
    vector per (row of the M block, slot), ``k = (t0 + r // 16) * TILE_K + 16 * slot + r % 16``."""
    TILE_K: tl.constexpr = 16 * SLOTS
    R: tl.constexpr = NT * 16
    r = tl.arange(0, R)
    t = t0 + r // 16
    row = r % 16
    t_ok = t < t_end
    if MASK_K:
        wmask = t_ok[:, None] & mask_n[None, :]
    else:
        wmask = mask_n[None, :] & (r[:, None] >= 0)
    # words
    if BITS != 8:
        offs = (t0 * 16 + r)[:, None] * N + offs_n[None, :]
        if EVEN_N and not MASK_K:
            words = tl.load(qw_ptr + offs)
        else:
            words = tl.load(qw_ptr + offs, mask=wmask, other=0)
        if BITS == 3:
            if EVEN_N and not MASK_K:
                words_hi = tl.load(qh_ptr + offs)
            else:
                words_hi = tl.load(qh_ptr + offs, mask=wmask, other=0)
        else:
            words_hi = words
        codes8 = ()
    else:
        words = 0
        words_hi = 0
        codes8 = ()
        for i in tl.static_range(SLOTS):
            k = t * TILE_K + 16 * i + row
            ptrs = qw_ptr + k[:, None] * N + offs_n[None, :]
            codes8 = codes8 + (tl.load(ptrs, mask=wmask & (k < kend)[:, None], other=0),)
    # scales and zero points, one block per group of the tile
    scales = ()
    zeros = ()
    if GROUP_SLOTS != 0:
        if SCALE_KIND == 2:
            gscale = tl.load(gs_ptr)
        else:
            gscale = 1.0
        for j in tl.static_range(SLOTS // GROUP_SLOTS):
            g = (t * TILE_K + 16 * GROUP_SLOTS * j) // GROUP
            ok = wmask & (g < G)[:, None]
            sofs = g[:, None] * N + offs_n[None, :]
            scales = scales + (decode_scale(tl.load(s_ptr + sofs, mask=ok, other=0), gscale, SCALE_KIND),)
            if not SYMMETRIC:
                zeros = zeros + (tl.load(z_ptr + sofs, mask=ok, other=0).to(tl.int32),)
    # activations: one vector per (token row, slot)
    xs = ()
    for m in tl.static_range(BLOCK_M):
        for i in tl.static_range(SLOTS):
            k = t * TILE_K + 16 * i + row
            xp = x_ptr + (m0 + m) * stride_xm + k * stride_xk
            if MASK_K:
                if m > 0:
                    xv = tl.load(xp, mask=(k < kend) & ((r * 0 + m0 + m) < M), other=0.0)
                else:
                    xv = tl.load(xp, mask=k < kend, other=0.0)
            else:
                if m > 0:
                    xv = tl.load(xp, mask=(r * 0 + m0 + m) < M, other=0.0)
                else:
                    xv = tl.load(xp)
            xs = xs + (xv,)
    return words, words_hi, codes8, scales, zeros, xs


@triton.jit
def _os_compute(words, words_hi, codes8, scales, zeros, xs, z_pc, R: tl.constexpr, BLOCK_N: tl.constexpr,
                KIND: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr, GROUP_SLOTS: tl.constexpr,
                SLOTS: tl.constexpr, BLOCK_M: tl.constexpr):
    """The products of one :func:`_os_load` block: per token row the ``[BN]`` sum over its R word rows and
    all slots (fp32; group scales applied to each group's partial sums, per-channel scales left to the
    caller). Returns four ``[BN]`` vectors (rows past BLOCK_M are zero)."""
    zero = tl.zeros((R, BLOCK_N), dtype=tl.float32)
    acc0 = zero
    acc1 = zero
    acc2 = zero
    acc3 = zero
    part0 = zero
    part1 = zero
    part2 = zero
    part3 = zero
    z = z_pc[None, :]
    for i in tl.static_range(SLOTS):
        if GROUP_SLOTS != 0:
            if i % GROUP_SLOTS == 0:
                part0 = zero
                part1 = zero
                part2 = zero
                part3 = zero
                if not SYMMETRIC:
                    z = zeros[i // GROUP_SLOTS]
        if BITS == 8:
            codes = codes8[i].to(tl.int32)
        else:
            codes = unpack_codes(words, words_hi, i, BITS)
        v = _raw_fp32(codes, z, KIND, BITS, SYMMETRIC)
        part0 += xs[i].to(tl.float32)[:, None] * v
        if BLOCK_M > 1:
            part1 += xs[SLOTS + i].to(tl.float32)[:, None] * v
        if BLOCK_M > 2:
            part2 += xs[2 * SLOTS + i].to(tl.float32)[:, None] * v
            part3 += xs[3 * SLOTS + i].to(tl.float32)[:, None] * v
        if GROUP_SLOTS == 0 or i % GROUP_SLOTS == GROUP_SLOTS - 1:
            if GROUP_SLOTS != 0:
                s = scales[i // GROUP_SLOTS]
                acc0 += part0 * s
                if BLOCK_M > 1:
                    acc1 += part1 * s
                if BLOCK_M > 2:
                    acc2 += part2 * s
                    acc3 += part3 * s
            else:
                acc0 += part0
                if BLOCK_M > 1:
                    acc1 += part1
                if BLOCK_M > 2:
                    acc2 += part2
                    acc3 += part3
                part0 = zero
                part1 = zero
                part2 = zero
                part3 = zero
    return tl.sum(acc0, axis=0), tl.sum(acc1, axis=0), tl.sum(acc2, axis=0), tl.sum(acc3, axis=0)


@triton.jit(do_not_specialize=["M", "G", "TILES", "SPLIT_K"])
def _qgemv_oneshot_kernel(
        x_ptr, qw_ptr, qh_ptr, s_ptr, z_ptr, gs_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
        M, N, K, G, TILES, SPLIT_K,
        stride_xm, stride_xk, stride_om,
        KIND: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr, SCALE_KIND: tl.constexpr,
        GROUP: tl.constexpr, GROUP_SLOTS: tl.constexpr, SLOTS: tl.constexpr, HAS_BIAS: tl.constexpr,
        EVEN_N: tl.constexpr, MASK_K: tl.constexpr, MASK_B: tl.constexpr, SPLIT: tl.constexpr,
        NA: tl.constexpr, NB: tl.constexpr, TILES_PER_PROGRAM: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The gemv family with the K loop gone (``oneshot=1``): a program's TILES_PER_PROGRAM K tiles (a compile-
    time constant, the whole K without split-K) are read as at most two power-of-two blocks of word rows
    (NA + NB tiles; NB may round the remainder up, masked) and every load of the program (words, scales,
    zero points, activations) is issued before the first decode: one memory latency per program instead of
    one per tile, no software pipeline to fill or drain. Operands, grid and split-K as :func:`_qgemv_kernel`
    (split-K, when asked for, reduces through the same workspace + counter; SPLIT_K = 1 skips it).
    MASK_K / MASK_B: some rows of the first / second block may lie past the program's tiles or past K (masked
    loads, x zero there)."""
    TILE_K: tl.constexpr = 16 * SLOTS
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    m0 = pid_m * BLOCK_M
    t0 = pid_k * TILES_PER_PROGRAM
    t_end = tl.minimum(t0 + TILES_PER_PROGRAM, TILES)
    kend = tl.minimum(t_end * TILE_K, K)
    if GROUP_SLOTS == 0:
        s_pc, z_pc = _load_group(s_ptr, z_ptr, gs_ptr, 0, offs_n, mask_n, N, G, SCALE_KIND, SYMMETRIC)
    else:
        z_pc = tl.zeros_like(offs_n)
    # issue every load (both blocks) before any use
    wa, wha, c8a, sa, za, xa = _os_load(x_ptr, qw_ptr, qh_ptr, s_ptr, z_ptr, gs_ptr, t0, t_end, kend, offs_n,
                                        mask_n, N, G, M, m0, stride_xm, stride_xk, NA, BITS, SYMMETRIC,
                                        SCALE_KIND, GROUP, GROUP_SLOTS, SLOTS, EVEN_N, MASK_K, BLOCK_M)
    if NB > 0:
        wb, whb, c8b, sb, zb, xb = _os_load(x_ptr, qw_ptr, qh_ptr, s_ptr, z_ptr, gs_ptr, t0 + NA, t_end, kend,
                                            offs_n, mask_n, N, G, M, m0, stride_xm, stride_xk, NB, BITS,
                                            SYMMETRIC, SCALE_KIND, GROUP, GROUP_SLOTS, SLOTS, EVEN_N, MASK_B,
                                            BLOCK_M)
    r0, r1, r2, r3 = _os_compute(wa, wha, c8a, sa, za, xa, z_pc, NA * 16, BLOCK_N, KIND, BITS, SYMMETRIC,
                                 GROUP_SLOTS, SLOTS, BLOCK_M)
    if NB > 0:
        q0, q1, q2, q3 = _os_compute(wb, whb, c8b, sb, zb, xb, z_pc, NB * 16, BLOCK_N, KIND, BITS, SYMMETRIC,
                                     GROUP_SLOTS, SLOTS, BLOCK_M)
        r0 += q0
        r1 += q1
        r2 += q2
        r3 += q3
    factor = raw_factor(KIND)
    if GROUP_SLOTS == 0:
        col_scale = s_pc * factor
    else:
        col_scale = tl.full((BLOCK_N,), factor, tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros((BLOCK_N,), dtype=tl.float32)
    rr = tl.arange(0, BLOCK_M)[:, None]
    res = tl.where(rr == 0, (r0 * col_scale)[None, :], 0.0)
    if BLOCK_M > 1:
        res = tl.where(rr == 1, (r1 * col_scale)[None, :], res)
    if BLOCK_M > 2:
        res = tl.where(rr == 2, (r2 * col_scale)[None, :], res)
        res = tl.where(rr == 3, (r3 * col_scale)[None, :], res)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    mask = (offs_m < M)[:, None] & mask_n[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    if not SPLIT:
        tl.store(out_ptrs, (res + bias[None, :]).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tile_id = pid_m * tl.num_programs(0) + pid_n
        _splitk_reduce(res, ws_ptr, cnt_ptr, tile_id, pid_k, M, N, offs_m, offs_n, mask, out_ptrs,
                       bias, HAS_BIAS, SPLIT_K)


@triton.jit
def _load_tile_scales(s_ptr, z_ptr, gs_ptr, t, offs_n, mask_n, N, G, TILE_K: tl.constexpr,
                      GROUP: tl.constexpr, GROUP_SLOTS: tl.constexpr, NG: tl.constexpr,
                      SCALE_KIND: tl.constexpr, SYMMETRIC: tl.constexpr):
    """fp32 scales and int32 zero points ``[BLOCK_N]`` of the (at most two) scale groups of K tile
    ``t``; zeros past the last group, so a load beyond the split's tiles reads nothing. Two separate
    vectors rather than one ``[2, BLOCK_N]`` block: picking a row out of a block costs a cross-thread
    reduction per group."""
    s0, z0 = _load_group(s_ptr, z_ptr, gs_ptr, (t * TILE_K) // GROUP, offs_n, mask_n, N, G, SCALE_KIND,
                         SYMMETRIC)
    if NG == 2:
        s1, z1 = _load_group(s_ptr, z_ptr, gs_ptr, (t * TILE_K + GROUP_SLOTS * 16) // GROUP, offs_n, mask_n,
                             N, G, SCALE_KIND, SYMMETRIC)
    else:
        s1 = s0
        z1 = z0
    return s0, z0, s1, z1


@triton.jit
def _slot_scales(slot: tl.constexpr, t, s0, z0, s1, z1, s_ptr, z_ptr, gs_ptr, offs_n, mask_n, N, G,
                 TILE_K: tl.constexpr, GROUP: tl.constexpr, SCALE_KIND: tl.constexpr, SYMMETRIC: tl.constexpr,
                 AHEAD: tl.constexpr):
    """Scales and zero points of the group starting at code slot ``slot`` of K tile ``t``: with ``AHEAD`` the
    first or second of the tile's groups already loaded (:func:`_load_tile_scales`), else loaded here."""
    if AHEAD:
        if slot == 0:
            s = s0
            z = z0
        else:
            s = s1
            z = z1
    else:
        s, z = _load_group(s_ptr, z_ptr, gs_ptr, (t * TILE_K + slot * 16) // GROUP, offs_n, mask_n, N, G,
                           SCALE_KIND, SYMMETRIC)
    return s, z


@triton.jit
def _dot_tile(acc, words, words_hi, t, x_row, stride_xk, mask_m, offs_n, mask_n, qw_ptr, s_ptr, z_ptr, gs_ptr,
              z_pc, s0, z0, s1, z1, N, K, G,
              KIND: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr, SCALE_KIND: tl.constexpr,
              GROUP: tl.constexpr, GROUP_SLOTS: tl.constexpr, SLOTS: tl.constexpr, NG: tl.constexpr,
              EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, IS_BF16: tl.constexpr, DOT_FP32: tl.constexpr,
              FOLD: tl.constexpr, ASM: tl.constexpr, PREFETCH: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``acc [BM, BN] += x[:, tile t] @ W[tile t, :]``, one k=16 ``tl.dot`` per code slot (the dot
    kernel's per-slot path; see :func:`_qgemm_dot_kernel` for the operand modes). ``words`` are the
    tile's loaded word rows; with PREFETCH ``s0, z0, s1, z1`` hold its (one or two) groups' scales
    and zero points (:func:`_load_tile_scales`, loaded ahead), else each group loads them here;
    ``z_pc`` the per-channel zero points (GROUP_SLOTS == 0)."""
    TILE_K: tl.constexpr = 16 * SLOTS
    rows = tl.arange(0, 16)
    z = z_pc
    unit = tl.full((BLOCK_N,), 1.0, tl.float32)
    zero_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if ASM:
        raws = unpack_slots_fp16_asm(words, words_hi, BITS, KIND == 0)
    for i in tl.static_range(SLOTS):
        if GROUP_SLOTS != 0:
            if i % GROUP_SLOTS == 0:
                s, z = _slot_scales(i, t, s0, z0, s1, z1, s_ptr, z_ptr, gs_ptr, offs_n, mask_n, N, G, TILE_K, GROUP,
                                    SCALE_KIND, SYMMETRIC, PREFETCH)
                if FOLD:
                    part = zero_acc
            scale = s
        else:
            scale = unit
        if not ASM:
            codes = _load_codes(qw_ptr, words, words_hi, t, rows, offs_n, mask_n, N, K, i, BITS, TILE_K,
                                EVEN_K, EVEN_N)
        k = t * TILE_K + i * 16 + rows
        if EVEN_K:
            a = tl.load(x_row + k[None, :] * stride_xk, mask=mask_m[:, None], other=0.0)
        else:
            a = tl.load(x_row + k[None, :] * stride_xk, mask=mask_m[:, None] & (k < K)[None, :], other=0.0)
        if ASM:
            if KIND == 0:
                # exact q - z in fp16 (one packed subtract per two weights)
                w = raws[i] - _fold_offset_fp16(z, BITS, SYMMETRIC)[None, :]
            else:
                w = raws[i]
        elif FOLD:
            w = _fold_operand(codes, z[None, :], KIND, BITS, SYMMETRIC, IS_BF16)
        else:
            w = dequant(codes, scale[None, :], z[None, :], KIND, BITS, SYMMETRIC, IS_BF16)
        if FOLD and GROUP_SLOTS != 0:
            if DOT_FP32:
                part = tl.dot(a.to(tl.float32), w.to(tl.float32), part)
            else:
                part = tl.dot(a, w, part)
            if i % GROUP_SLOTS == GROUP_SLOTS - 1:
                # one scale multiply per group and output instead of per weight
                acc += part * (s * raw_factor(KIND))[None, :]
        else:
            if DOT_FP32:
                acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc)
            else:
                acc = tl.dot(a, w, acc)
    return acc


@triton.jit
def _dot_tile_swap(acc_t, words, words_hi, t, x_col, stride_xk, mask_m, offs_n, mask_n, qw_ptr, s_ptr, z_ptr,
                   gs_ptr, z_pc, s0, z0, s1, z1, N, K, G,
                   KIND: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr, SCALE_KIND: tl.constexpr,
                   GROUP: tl.constexpr, GROUP_SLOTS: tl.constexpr, SLOTS: tl.constexpr, NG: tl.constexpr,
                   EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, IS_BF16: tl.constexpr, DOT_FP32: tl.constexpr,
                   FOLD: tl.constexpr, ASM: tl.constexpr, PREFETCH: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """:func:`_dot_tile` with the operands swapped: ``acc_t [BN, BM] += W[tile t, :].T @ x[:, tile t].T``,
    the weights the LEFT operand of each k=16 ``tl.dot`` (on sm_90 ``wgmma`` reads its left operand from
    registers, so the dequantized weights need not pass through shared memory) and the tokens its N
    dimension. ``words`` are the tile's word rows loaded transposed, ``[BN, 16]``; everything per
    output column (scales, zero points) broadcasts along dim 0."""
    TILE_K: tl.constexpr = 16 * SLOTS
    cols = tl.arange(0, 16)
    z = z_pc
    unit = tl.full((BLOCK_N,), 1.0, tl.float32)
    zero_acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    if ASM:
        raws = unpack_slots_fp16_asm(words, words_hi, BITS, KIND == 0)
    for i in tl.static_range(SLOTS):
        if GROUP_SLOTS != 0:
            if i % GROUP_SLOTS == 0:
                s, z = _slot_scales(i, t, s0, z0, s1, z1, s_ptr, z_ptr, gs_ptr, offs_n, mask_n, N, G, TILE_K, GROUP,
                                    SCALE_KIND, SYMMETRIC, PREFETCH)
                if FOLD:
                    part = zero_acc
            scale = s
        else:
            scale = unit
        k = t * TILE_K + i * 16 + cols
        if not ASM:
            if BITS == 8:
                ptrs = qw_ptr + k[None, :] * N + offs_n[:, None]
                if EVEN_K and EVEN_N:
                    codes = tl.load(ptrs).to(tl.int32)
                else:
                    codes = tl.load(ptrs, mask=(k < K)[None, :] & mask_n[:, None], other=0).to(tl.int32)
            else:
                codes = unpack_codes(words, words_hi, i, BITS)
        if EVEN_K:
            b = tl.load(x_col + k[:, None] * stride_xk, mask=mask_m[None, :], other=0.0)
        else:
            b = tl.load(x_col + k[:, None] * stride_xk, mask=mask_m[None, :] & (k < K)[:, None], other=0.0)
        if ASM:
            if KIND == 0:
                w = raws[i] - _fold_offset_fp16(z, BITS, SYMMETRIC)[:, None]
            else:
                w = raws[i]
        elif FOLD:
            w = _fold_operand(codes, z[:, None], KIND, BITS, SYMMETRIC, IS_BF16)
        else:
            w = dequant(codes, scale[:, None], z[:, None], KIND, BITS, SYMMETRIC, IS_BF16)
        if FOLD and GROUP_SLOTS != 0:
            if DOT_FP32:
                part = tl.dot(w.to(tl.float32), b.to(tl.float32), part)
            else:
                part = tl.dot(w, b, part)
            if i % GROUP_SLOTS == GROUP_SLOTS - 1:
                acc_t += part * (s * raw_factor(KIND))[:, None]
        else:
            if DOT_FP32:
                acc_t = tl.dot(w.to(tl.float32), b.to(tl.float32), acc_t)
            else:
                acc_t = tl.dot(w, b, acc_t)
    return acc_t


@triton.jit
def _cat_k(a, b, ROWS: tl.constexpr, W: tl.constexpr):
    """``[ROWS, W]`` and ``[ROWS, W]`` -> ``[ROWS, 2W]`` (``a`` the first W columns). On sm_90 with both halves in
    the wgmma register-operand layout this is a register renaming (no shared memory): the operand layout of a
    K = 2W tile holds, per thread, the K = W pattern once per k16 chunk."""
    return tl.reshape(tl.permute(tl.join(a, b), (0, 2, 1)), (ROWS, 2 * W))


@triton.jit
def join_k(ws, ROWS: tl.constexpr):
    """The slot operands ``ws`` (a tuple of 1, 2, 4, 8 or 16 ``[ROWS, 16]`` tensors of consecutive k) as one
    ``[ROWS, 16 * len(ws)]`` operand, joined pairwise with :func:`_cat_k`."""
    for lvl in tl.static_range(4):
        if len(ws) > 1:
            halves = ()
            for p in tl.static_range(len(ws) // 2):
                halves = halves + (_cat_k(ws[2 * p], ws[2 * p + 1], ROWS, 16 << lvl),)
            ws = halves
    return ws[0]


@triton.jit
def _swap_slot_operand(raw, words, words_hi, slot: tl.constexpr, t, qw_ptr, offs_n, mask_n, N, K, s, z,
                       KIND: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr, TILE_K: tl.constexpr,
                       EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, IS_BF16: tl.constexpr, FOLD: tl.constexpr,
                       ASM: tl.constexpr, SCALED: tl.constexpr):
    """The swapped weight operand ``[BN, 16]`` of code slot ``slot`` of K tile ``t`` (k = t*TILE_K + 16*slot +
    col): ``raw`` is that slot's PTX-unpacked ``1024 + q`` (ASM) or unused; ``s``/``z`` the scales and zero
    points (per column) of the slot's group. FOLD: the exact unscaled code value; else the dequantized
    weight (with ASM on integer codes: ``(1024 + q - (1024 + z)) * s`` in fp16, ``q - z`` exact, one
    rounding, what :func:`.decode.dequant` computes; SCALED False skips the multiply by a unit scale)."""
    if ASM:
        if KIND == 0:
            w = raw - _fold_offset_fp16(z, BITS, SYMMETRIC)[:, None]
            if not FOLD:
                if SCALED:
                    w = w * s.to(tl.float16)[:, None]
        else:
            tl.static_assert(FOLD, "the PTX minifloat unpack feeds FOLD operands only")
            w = raw
    else:
        cols = tl.arange(0, 16)
        if BITS == 8:
            k = t * TILE_K + slot * 16 + cols
            ptrs = qw_ptr + k[None, :] * N + offs_n[:, None]
            if EVEN_K and EVEN_N:
                codes = tl.load(ptrs).to(tl.int32)
            else:
                codes = tl.load(ptrs, mask=(k < K)[None, :] & mask_n[:, None], other=0).to(tl.int32)
        else:
            codes = unpack_codes(words, words_hi, slot, BITS)
        if FOLD:
            w = _fold_operand(codes, z[:, None], KIND, BITS, SYMMETRIC, IS_BF16)
        else:
            w = dequant(codes, s[:, None], z[:, None], KIND, BITS, SYMMETRIC, IS_BF16)
    return w


@triton.jit
def _dot_tile_swap_k(acc_t, words, words_hi, t, x_col, stride_xk, mask_m, offs_n, mask_n, qw_ptr, s_ptr, z_ptr,
                     gs_ptr, z_pc, s0, z0, s1, z1, N, K, G,
                     KIND: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr, SCALE_KIND: tl.constexpr,
                     GROUP: tl.constexpr, GROUP_SLOTS: tl.constexpr, SLOTS: tl.constexpr, NG: tl.constexpr,
                     EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, IS_BF16: tl.constexpr, DOT_FP32: tl.constexpr,
                     FOLD: tl.constexpr, ASM: tl.constexpr, PREFETCH: tl.constexpr, DOT_SLOTS: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """:func:`_dot_tile_swap` with one ``tl.dot`` per DOT_SLOTS code slots (K = 16 * DOT_SLOTS, up to the whole
    tile): the slots' weight operands are concatenated along K in registers (:func:`_cat_k`) and the activations
    load as one ``[16 * DOT_SLOTS, BM]`` block. Why: Triton 3.6 waits (``wgmma.wait_group 0``) after every
    ``tl.dot`` whose result another op of the same iteration reads, so per-slot dots serialize the tensor
    cores 8 times per tile; one dot per tile whose result only feeds the next iteration stays in flight
    across iterations (only ``wait_group 7`` between its k16 steps), overlapping the next tile's unpacking.
    FOLD keeps a dot inside one scale group (the launcher caps DOT_SLOTS at GROUP_SLOTS) and pays one wait
    per group (the partial is scaled); without FOLD the scale multiplies each weight (ASM integer codes:
    one extra packed multiply per two weights) and nothing waits inside the loop.
    Without PREFETCH, tiles of at most two scale groups load their scales at the tile's start."""
    TILE_K: tl.constexpr = 16 * SLOTS
    DOT_K: tl.constexpr = 16 * DOT_SLOTS
    z = z_pc
    unit = tl.full((BLOCK_N,), 1.0, tl.float32)
    s = unit
    zero_acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    part = zero_acc
    if ASM:
        raws = unpack_slots_fp16_asm(words, words_hi, BITS, KIND == 0)
    if GROUP_SLOTS != 0 and NG <= 2 and not PREFETCH:
        s0, z0, s1, z1 = _load_tile_scales(s_ptr, z_ptr, gs_ptr, t, offs_n, mask_n, N, G, TILE_K, GROUP,
                                           GROUP_SLOTS, NG, SCALE_KIND, SYMMETRIC)
    for j in tl.static_range(SLOTS // DOT_SLOTS):
        ws = ()
        for u in tl.static_range(DOT_SLOTS):
            if GROUP_SLOTS != 0:
                if (j * DOT_SLOTS + u) % GROUP_SLOTS == 0:
                    s, z = _slot_scales(j * DOT_SLOTS + u, t, s0, z0, s1, z1, s_ptr, z_ptr, gs_ptr, offs_n, mask_n,
                                        N, G, TILE_K, GROUP, SCALE_KIND, SYMMETRIC, NG <= 2)
            if ASM:
                raw = raws[j * DOT_SLOTS + u]
            else:
                raw = words
            ws = ws + (_swap_slot_operand(raw, words, words_hi, j * DOT_SLOTS + u, t, qw_ptr, offs_n, mask_n, N, K,
                                          s, z, KIND, BITS, SYMMETRIC, TILE_K, EVEN_K, EVEN_N, IS_BF16, FOLD, ASM,
                                          GROUP_SLOTS != 0),)
        w = join_k(ws, BLOCK_N)
        k = t * TILE_K + j * DOT_K + tl.arange(0, DOT_K)
        if EVEN_K:
            b = tl.load(x_col + k[:, None] * stride_xk, mask=mask_m[None, :], other=0.0)
        else:
            b = tl.load(x_col + k[:, None] * stride_xk, mask=mask_m[None, :] & (k < K)[:, None], other=0.0)
        if DOT_FP32:
            w = w.to(tl.float32)
            b = b.to(tl.float32)
        if FOLD and GROUP_SLOTS != 0:
            if (j * DOT_SLOTS) % GROUP_SLOTS == 0:
                part = zero_acc
            part = tl.dot(w, b, part)
            if ((j + 1) * DOT_SLOTS) % GROUP_SLOTS == 0:
                acc_t += part * (s * raw_factor(KIND))[:, None]
        else:
            acc_t = tl.dot(w, b, acc_t)
    return acc_t


@triton.jit
def _load_words_t(qw_ptr, qh_ptr, t, cols, offs_n, mask_n, N, BITS: tl.constexpr, EVEN_N: tl.constexpr):
    """:func:`_load_words` transposed: the 16 word rows of K tile ``t`` as ``[BLOCK_N, 16]``."""
    if BITS != 8:
        offs = (t * 16 + cols)[None, :] * N + offs_n[:, None]
        if EVEN_N:
            words = tl.load(qw_ptr + offs)
        else:
            words = tl.load(qw_ptr + offs, mask=mask_n[:, None], other=0)
        if BITS == 3:
            if EVEN_N:
                words_hi = tl.load(qh_ptr + offs)
            else:
                words_hi = tl.load(qh_ptr + offs, mask=mask_n[:, None], other=0)
        else:
            words_hi = words
    else:
        words = 0
        words_hi = 0
    return words, words_hi


@triton.jit(do_not_specialize=["M", "G", "TILES", "TILES_PER_SPLIT", "SPLIT_K"])
def _qgemm_dot_kernel(
        x_ptr, qw_ptr, qh_ptr, s_ptr, z_ptr, gs_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
        M, N, K, G, TILES, TILES_PER_SPLIT, SPLIT_K,
        stride_xm, stride_xk, stride_om,
        KIND: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr, SCALE_KIND: tl.constexpr,
        GROUP: tl.constexpr, GROUP_SLOTS: tl.constexpr, SLOTS: tl.constexpr, HAS_BIAS: tl.constexpr,
        EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
        IS_BF16: tl.constexpr, DOT_FP32: tl.constexpr, FOLD: tl.constexpr, WIDE: tl.constexpr,
        ASM: tl.constexpr,
        SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
        PREFETCH: tl.constexpr, SWAP: tl.constexpr, DOT_SLOTS: tl.constexpr):
    """Tensor-core quantized GEMM (BLOCK_M >= 16).

    Same operands as :func:`_qgemv_kernel`. Grid: (M blocks * N blocks, SPLIT_K); program ids are
    swizzled in groups of GROUP_M row blocks so neighbouring programs share weight tiles in L2.

    Three ways to feed the tensor cores:
    - default: each 16-row slot is dequantized (scale, zero point) to fp16/bf16 and multiplied in
      its own k=16 ``tl.dot``;
    - FOLD: the operand is the code's exact unscaled value (integers ``q - z``, minifloats times a
      power of two): no scale multiply per weight; the group scale multiplies the group's partial
      product once per output (exact: the operand is exact and products accumulate in fp32);
    - WIDE: the whole K tile (16*SLOTS rows) is dequantized into one ``[TILE_K, BN]`` operand and
      multiplied in one ``tl.dot`` (fewer, larger tensor-core steps for large M).
    ASM (FOLD with fp16 int2/int4/fp4 on CUDA): the raw operands of all slots come from one PTX block
    per word pair (:func:`.decode.unpack_magic_fp16_asm`), ~1 instruction per weight.
    DOT_FP32 widens the operands to fp32 before ``tl.dot`` (same products, exact): only for bf16
    under the CPU interpreter, whose bf16 ``tl.dot`` is wrong.
    PREFETCH (per-slot modes, one or two scale groups per K tile): the scales and zero points of K
    tile t + 1 load while tile t computes.
    SWAP (per-slot modes): the transposed product ``acc_t [BN, BM] += W_slot.T [BN, 16] @ x_slot.T
    [16, BM]`` (:func:`_dot_tile_swap`), transposed back once before the epilogue: the weights are the
    left tensor-core operand, the tokens the MMA's N dimension. DOT_SLOTS > 1 (SWAP only): one ``tl.dot``
    per DOT_SLOTS slots (:func:`_dot_tile_swap_k`), so the tensor cores are not waited on after every slot.
    """
    TILE_K: tl.constexpr = 16 * SLOTS
    NG: tl.constexpr = SLOTS // (GROUP_SLOTS + (GROUP_SLOTS == 0))  # scale groups per K tile
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * num_n
    group_id = pid // width
    first_m = group_id * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    rows = tl.arange(0, 16)
    x_row = x_ptr + offs_m[:, None] * stride_xm

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    t_begin = pid_k * TILES_PER_SPLIT
    t_end = tl.minimum(t_begin + TILES_PER_SPLIT, TILES)
    if GROUP_SLOTS == 0:
        s_pc, z = _load_group(s_ptr, z_ptr, gs_ptr, 0, offs_n, mask_n, N, G, SCALE_KIND, SYMMETRIC)
        unit = tl.full((BLOCK_N,), 1.0, tl.float32)
        z_pc = z
    else:
        z_pc = tl.zeros_like(offs_n)
    if not WIDE:
        # Scales and zero points of tile t + 1 load while tile t computes: a scale load issued in the
        # tile that uses it left most of its memory latency exposed once per tile (the word and
        # activation loads are software-pipelined by Triton: they feed tl.dot; the scales are not).
        # Two tiles ahead would hide more, but that loop-carried chain turns Triton's pipelining off.
        LOAD_AHEAD: tl.constexpr = PREFETCH and GROUP_SLOTS != 0 and NG <= 2
        if LOAD_AHEAD:
            s0, z0, s1, z1 = _load_tile_scales(s_ptr, z_ptr, gs_ptr, t_begin, offs_n, mask_n, N, G, TILE_K,
                                               GROUP, GROUP_SLOTS, NG, SCALE_KIND, SYMMETRIC)
        else:
            s0 = tl.zeros((BLOCK_N,), dtype=tl.float32)
            z0 = tl.zeros((BLOCK_N,), dtype=tl.int32)
            s1 = s0
            z1 = z0
        if SWAP:
            x_col = x_ptr + offs_m[None, :] * stride_xm
            acc_t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
            for t in range(t_begin, t_end):
                words, words_hi = _load_words_t(qw_ptr, qh_ptr, t, rows, offs_n, mask_n, N, BITS, EVEN_N)
                if LOAD_AHEAD:
                    s0n, z0n, s1n, z1n = _load_tile_scales(s_ptr, z_ptr, gs_ptr, t + 1, offs_n, mask_n, N, G,
                                                           TILE_K, GROUP, GROUP_SLOTS, NG, SCALE_KIND,
                                                           SYMMETRIC)
                if DOT_SLOTS > 1:
                    acc_t = _dot_tile_swap_k(acc_t, words, words_hi, t, x_col, stride_xk, mask_m, offs_n, mask_n,
                                             qw_ptr, s_ptr, z_ptr, gs_ptr, z_pc, s0, z0, s1, z1, N, K, G, KIND, BITS,
                                             SYMMETRIC, SCALE_KIND, GROUP, GROUP_SLOTS, SLOTS, NG, EVEN_K, EVEN_N,
                                             IS_BF16, DOT_FP32, FOLD, ASM, LOAD_AHEAD, DOT_SLOTS, BLOCK_M,
                                             BLOCK_N)
                else:
                    acc_t = _dot_tile_swap(acc_t, words, words_hi, t, x_col, stride_xk, mask_m, offs_n, mask_n,
                                           qw_ptr, s_ptr, z_ptr, gs_ptr, z_pc, s0, z0, s1, z1, N, K, G, KIND, BITS,
                                           SYMMETRIC, SCALE_KIND, GROUP, GROUP_SLOTS, SLOTS, NG, EVEN_K, EVEN_N,
                                           IS_BF16, DOT_FP32, FOLD, ASM, LOAD_AHEAD, BLOCK_M, BLOCK_N)
                if LOAD_AHEAD:
                    s0, z0, s1, z1 = s0n, z0n, s1n, z1n
            acc = tl.trans(acc_t)
        else:
            for t in range(t_begin, t_end):
                words, words_hi = _load_words(qw_ptr, qh_ptr, t, rows, offs_n, mask_n, N, BITS, EVEN_N)
                if LOAD_AHEAD:
                    s0n, z0n, s1n, z1n = _load_tile_scales(s_ptr, z_ptr, gs_ptr, t + 1, offs_n, mask_n, N, G,
                                                           TILE_K, GROUP, GROUP_SLOTS, NG, SCALE_KIND,
                                                           SYMMETRIC)
                acc = _dot_tile(acc, words, words_hi, t, x_row, stride_xk, mask_m, offs_n, mask_n, qw_ptr,
                                s_ptr, z_ptr, gs_ptr, z_pc, s0, z0, s1, z1, N, K, G, KIND, BITS, SYMMETRIC,
                                SCALE_KIND, GROUP, GROUP_SLOTS, SLOTS, NG, EVEN_K, EVEN_N, IS_BF16, DOT_FP32,
                                FOLD, ASM, LOAD_AHEAD, BLOCK_M, BLOCK_N)
                if LOAD_AHEAD:
                    s0, z0, s1, z1 = s0n, z0n, s1n, z1n
    else:
        for t in range(t_begin, t_end):
            words, words_hi = _load_words(qw_ptr, qh_ptr, t, rows, offs_n, mask_n, N, BITS, EVEN_N)
            # [SLOTS, 16, BN] codes of the whole tile -> one [TILE_K, BN] operand (k = 16*slot + row)
            slot3 = tl.arange(0, SLOTS)[:, None, None]
            if BITS == 8:
                k3 = t * TILE_K + slot3 * 16 + rows[None, :, None]
                ptr3 = qw_ptr + k3 * N + offs_n[None, None, :]
                if EVEN_K and EVEN_N:
                    codes3 = tl.load(ptr3).to(tl.int32)
                else:
                    codes3 = tl.load(ptr3, mask=(k3 < K) & mask_n[None, None, :], other=0).to(tl.int32)
            else:
                w3 = words.to(tl.int32).to(tl.uint32, bitcast=True)[None, :, :]
                if BITS == 3:
                    lo = (w3 >> (slot3 * 2).to(tl.uint32)) & 3
                    h3 = words_hi.to(tl.int32).to(tl.uint32, bitcast=True)[None, :, :]
                    hi = (h3 >> slot3.to(tl.uint32)) & 1
                    codes3 = (lo | (hi << 2)).to(tl.int32, bitcast=True)
                else:
                    codes3 = ((w3 >> (slot3 * BITS).to(tl.uint32)) & ((1 << BITS) - 1)).to(tl.int32, bitcast=True)
            if GROUP_SLOTS != 0:
                g3 = (t * TILE_K + slot3 * 16) // GROUP  # [SLOTS, 1, 1]
                ok3 = mask_n[None, None, :] & (g3 < G)
                raw3 = tl.load(s_ptr + g3 * N + offs_n[None, None, :], mask=ok3, other=0)
                if SCALE_KIND == 2:
                    gscale = tl.load(gs_ptr)
                else:
                    gscale = 1.0
                scale3 = decode_scale(raw3, gscale, SCALE_KIND)
                if SYMMETRIC:
                    z3 = 0
                else:
                    z3 = tl.load(z_ptr + g3 * N + offs_n[None, None, :], mask=ok3, other=0).to(tl.int32)
            else:
                scale3 = unit[None, None, :]
                z3 = z[None, None, :]
            w = tl.reshape(dequant(codes3, scale3, z3, KIND, BITS, SYMMETRIC, IS_BF16), (TILE_K, BLOCK_N))
            kt = t * TILE_K + tl.arange(0, TILE_K)
            if EVEN_K:
                a = tl.load(x_row + kt[None, :] * stride_xk, mask=mask_m[:, None], other=0.0)
            else:
                a = tl.load(x_row + kt[None, :] * stride_xk, mask=mask_m[:, None] & (kt < K)[None, :],
                            other=0.0)
            if DOT_FP32:
                acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc)
            else:
                acc = tl.dot(a, w, acc)
    if GROUP_SLOTS == 0:
        if FOLD:
            acc = acc * (s_pc * raw_factor(KIND))[None, :]
        else:
            acc = acc * s_pc[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if not SPLIT:
        tl.store(out_ptrs, (acc + bias[None, :]).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        _splitk_reduce(acc, ws_ptr, cnt_ptr, pid, pid_k, M, N, offs_m, offs_n, mask, out_ptrs,
                       bias, HAS_BIAS, SPLIT_K)


@triton.jit
def _dequant_kernel(
        qw_ptr, qh_ptr, s_ptr, z_ptr, gs_ptr, w_ptr, N, K, G,
        KIND: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr, SCALE_KIND: tl.constexpr,
        GROUP: tl.constexpr, GROUP_SLOTS: tl.constexpr, SLOTS: tl.constexpr, IS_BF16: tl.constexpr,
        EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, BLOCK_N: tl.constexpr):
    """Dequantize one K tile x BLOCK_N columns into ``w [K, N]`` (fp16/bf16). Grid: (N blocks, tiles)."""
    TILE_K: tl.constexpr = 16 * SLOTS
    pid_n = tl.program_id(0)
    t = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = tl.arange(0, 16)
    words, words_hi = _load_words(qw_ptr, qh_ptr, t, rows, offs_n, mask_n, N, BITS, EVEN_N)
    if GROUP_SLOTS == 0:
        s, z = _load_group(s_ptr, z_ptr, gs_ptr, 0, offs_n, mask_n, N, G, SCALE_KIND, SYMMETRIC)
    for i in tl.static_range(SLOTS):
        if GROUP_SLOTS != 0:
            if i % GROUP_SLOTS == 0:
                g = (t * TILE_K + i * 16) // GROUP
                s, z = _load_group(s_ptr, z_ptr, gs_ptr, g, offs_n, mask_n, N, G, SCALE_KIND, SYMMETRIC)
        codes = _load_codes(qw_ptr, words, words_hi, t, rows, offs_n, mask_n, N, K, i, BITS, TILE_K,
                            EVEN_K, EVEN_N)
        w = dequant(codes, s[None, :], z[None, :], KIND, BITS, SYMMETRIC, IS_BF16)
        k = t * TILE_K + i * 16 + rows
        tl.store(w_ptr + k[:, None] * N + offs_n[None, :], w, mask=(k < K)[:, None] & mask_n[None, :])


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelConfig:
    """One launch configuration. ``family`` is gemv, dot, mma or dequant; ``fold`` and ``wide`` pick the
    dot family's operand mode (for the mma family, ``fold=1`` applies integer zero points through the activation
    sums instead of one subtract per weight pair, see :mod:`.qgemv_mma`) (see :func:`_qgemm_dot_kernel`; fold applies where the format and
    dtype allow it, see :func:`fold_supported`); ``prefetch`` loads a K tile's scales one tile ahead
    (gemv, and the dot family's per-slot modes); ``swap_ab`` computes the transposed product with the weights as the
    left tensor-core operand (dot family, per-slot modes; see :func:`_dot_tile_swap`); ``dot_k`` (swap_ab only)
    is the K of each ``tl.dot``: 16 = one per code slot, up to the whole K tile (:func:`_dot_tile_swap_k`;
    capped at the tile, and at the scale group with fold); ``oneshot`` (gemv only) unrolls the K loop: each program's
    K tiles (all of K with ``split_k=1``; at most :data:`MAX_ONESHOT_TILES`, more split K) are a compile-time
    constant and every load is issued before the first decode (:func:`_qgemv_oneshot_kernel`; small weights);
    ``maxnreg`` is the register budget a thread of the compiled kernel gets (0: the compiler's choice): above that
    choice, room for ptxas to issue the next tile's loads earlier (the mma family on grids that leave registers
    free); below it, more programs an SM. ``x_ahead`` (mma only) loads a K tile's activations with its words, as
    far ahead as ``prefetch`` says, instead of at each code slot (small weights: one memory round trip a warp)."""
    family: str
    block_m: int = 16
    block_n: int = 64
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2
    group_m: int = 8
    fold: int = 0
    wide: int = 0
    prefetch: int = 0
    swap_ab: int = 0
    dot_k: int = 16
    oneshot: int = 0
    maxnreg: int = 0
    x_ahead: int = 0

    _KEYS = ("family", "block_m", "block_n", "split_k", "num_warps", "num_stages", "group_m", "fold", "wide",
             "prefetch", "swap_ab", "dot_k", "oneshot", "maxnreg", "x_ahead")

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self._KEYS}

    @classmethod
    def from_dict(cls, d: dict) -> "KernelConfig":
        unknown = set(d) - set(cls._KEYS)
        if unknown:
            raise ValueError(f"unknown kernel config keys {sorted(unknown)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"kernel family must be one of {FAMILIES}, got {self.family!r}")
        for name in ("block_m", "block_n", "num_warps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1 or v & (v - 1):
                raise ValueError(f"{name} must be a positive power of two, got {v!r}")
        if self.family == "gemv" and self.block_m > 4:
            raise ValueError(f"the gemv family takes block_m in (1, 2, 4), got {self.block_m}")
        if self.family == "dot" and self.block_m < 16:
            raise ValueError(f"the dot family needs block_m >= 16, got {self.block_m}")
        if self.family == "mma":
            if self.block_m > MMA_MAX_M:
                raise ValueError(f"the mma family takes at most {MMA_MAX_M} rows (block_m), got {self.block_m}")
            mma_tiles(self.block_n)
            if self.wide or self.swap_ab or self.oneshot:
                raise ValueError("the mma family has no wide/swap_ab/oneshot modes")
            if self.fold not in (0, 1):
                raise ValueError(f"fold must be 0 or 1, got {self.fold!r}")
        if self.maxnreg and not (isinstance(self.maxnreg, int) and 24 <= self.maxnreg <= 256 and self.maxnreg % 8 == 0):
            raise ValueError(f"maxnreg must be 0 (no cap) or a multiple of 8 in [24, 256], got {self.maxnreg!r}")
        if not isinstance(self.split_k, int) or self.split_k < 1:
            raise ValueError(f"split_k must be a positive int, got {self.split_k!r}")
        if self.fold and self.wide:
            raise ValueError("fold and wide are exclusive operand modes")
        if self.prefetch not in (0, 1) and not (self.family == "mma" and self.prefetch == 2):
            raise ValueError(f"prefetch must be 0 or 1 (mma family: up to 2 tiles ahead), got {self.prefetch!r}")
        if self.swap_ab not in (0, 1):
            raise ValueError(f"swap_ab must be 0 or 1, got {self.swap_ab!r}")
        if self.swap_ab and self.family != "dot":
            raise ValueError(f"swap_ab applies to the dot family only, got family {self.family!r}")
        if self.swap_ab and self.wide:
            raise ValueError("swap_ab takes the per-slot operand modes (default or fold), not wide")
        if self.swap_ab and self.block_n < 16:
            raise ValueError(f"swap_ab needs block_n >= 16 (the MMA's M dimension), got {self.block_n}")
        if self.dot_k not in (16, 32, 64, 128, 256):
            raise ValueError(f"dot_k must be one of 16, 32, 64, 128, 256, got {self.dot_k!r}")
        if self.oneshot not in (0, 1):
            raise ValueError(f"oneshot must be 0 or 1, got {self.oneshot!r}")
        if self.oneshot and self.family != "gemv":
            raise ValueError(f"oneshot applies to the gemv family only, got family {self.family!r}")
        if self.x_ahead not in (0, 1):
            raise ValueError(f"x_ahead must be 0 or 1, got {self.x_ahead!r}")
        if self.x_ahead and self.family != "mma":
            raise ValueError(f"x_ahead applies to the mma family only, got family {self.family!r}")
        if self.dot_k != 16 and not self.swap_ab:
            raise ValueError(f"dot_k > 16 (one tl.dot over several code slots) needs swap_ab=1, got dot_k={self.dot_k}")


MAX_ONESHOT_TILES = 16  # K tiles one oneshot program unrolls (K = 2048 for 4-bit codes); more splits K


def oneshot_blocks(tiles: int) -> tuple[int, int]:
    """The two power-of-two blocks (NA, NB) of K tiles a oneshot program reads for ``tiles`` tiles: NA the
    largest power of two <= tiles, NB the rest rounded up to a power of two (0 when none; the rounding is
    masked): 12 -> (8, 4), 16 -> (16, 0), 7 -> (4, 4)."""
    na = 1 << (tiles.bit_length() - 1)
    rest = tiles - na
    nb = 0 if rest == 0 else 1 << (rest - 1).bit_length()
    return na, nb


def fold_supported(spec: FormatSpec, dtype: torch.dtype) -> bool:
    """FOLD needs the raw code value exact in the operand dtype: integers 1024 + q (fp16) or 128 + q
    (bf16, codes below 128); E2M1/E4M3 raw values exist in fp16 only."""
    if spec.kind == D.KIND_INT:
        return dtype == torch.float16 or spec.bits <= 7
    return dtype == torch.float16


def asm_supported(spec: FormatSpec, x: torch.Tensor) -> bool:
    """The PTX unpackers: fp16 activations on CUDA, 2/3/4-bit integer codes or E2M1 codes."""
    if x.device.type != "cuda" or x.dtype != torch.float16:
        return False
    return (spec.kind == D.KIND_INT and spec.bits in (2, 3, 4)) or spec.kind == D.KIND_E2M1


def dot_slots_of(cfg: KernelConfig, spec: FormatSpec, fold: bool) -> int:
    """Code slots per ``tl.dot`` of a swap-AB launch: ``dot_k / 16``, capped at the K tile's slots and, when
    fold applies (``fold``: the format and dtype allow it), at the slots of one scale group (fold scales
    each group's partial product)."""
    if not cfg.swap_ab:
        return 1
    slots = min(cfg.dot_k // 16, spec.slots)
    if fold and spec.group_slots:
        slots = min(slots, spec.group_slots)
    return slots


def _operands(qt: QuantizedTensor):
    t = qt.tensors
    qw = t["qweight"]
    qh = t.get("qweight_hi", qw)
    s = t["scales"]
    z = t.get("zeros", s)
    gs = t.get("global_scale", s)
    return qw, qh, s, z, gs


def _meta(spec: FormatSpec) -> dict:
    return dict(KIND=spec.kind, BITS=spec.bits, SYMMETRIC=spec.symmetric, SCALE_KIND=spec.scale_kind,
                GROUP=max(spec.group, 1), GROUP_SLOTS=spec.group_slots, SLOTS=spec.slots)


def _cdiv(a: int, b: int) -> int:
    # plain integer math: triton.cdiv is a jit function, costly to call from the host per launch
    return -(-a // b)


def _tiles(spec: FormatSpec, K: int) -> int:
    return _cdiv(K, spec.tile_k)


def _raw_stream(index: int) -> int:
    # the raw handle of the current stream without building a torch.cuda.Stream object (~10x cheaper
    # on the host; what Triton's own launcher reads)
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is not None:
        return raw(index)
    return torch.cuda.current_stream(index).cuda_stream


_counter_lock = threading.Lock()
_counters: dict = {}


def _tile_counters(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 split-K tickets, one buffer per (device, stream): kernels leave them at zero."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        key = (index, _raw_stream(index))
    else:
        key = (str(device), 0)
    buf = _counters.get(key)
    if buf is None or buf.numel() < n:
        with _counter_lock:
            buf = _counters.get(key)
            if buf is None or buf.numel() < n:
                buf = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
                _counters[key] = buf
    return buf


def launch_fused(x: torch.Tensor, qt: QuantizedTensor, bias: torch.Tensor | None,
                 cfg: KernelConfig, out: torch.Tensor | None = None,
                 spec: FormatSpec | None = None) -> torch.Tensor:
    """Run the gemv or dot family on ``x [M, K]`` (any strides) into ``out [M, N]`` (allocated if None)."""
    if spec is None:
        spec = format_spec(qt)
    M, K = x.shape
    N = qt.shape[0]
    if out is None:
        out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    qw, qh, s, z, gs = _operands(qt)
    G = s.shape[0]
    tiles = _tiles(spec, K)
    split = max(1, min(cfg.split_k, tiles))
    if cfg.oneshot:
        split = max(split, _cdiv(tiles, MAX_ONESHOT_TILES))
    per_split = _cdiv(tiles, split)
    split = _cdiv(tiles, per_split)  # no empty splits
    even_n = N % cfg.block_n == 0
    even_k = K % spec.tile_k == 0
    bias_arg = bias if bias is not None else s
    if cfg.family == "gemv":
        grid = (_cdiv(N, cfg.block_n), split, _cdiv(M, cfg.block_m))
    elif cfg.family == "mma":
        grid = (_cdiv(N, cfg.block_n), split)
    elif cfg.family == "dot":
        grid = (_cdiv(M, cfg.block_m) * _cdiv(N, cfg.block_n), split)
    else:
        raise ValueError(f"launch_fused runs the gemv, mma or dot family, got {cfg.family!r}")
    if split > 1:
        ws = torch.empty((split, M, N), dtype=torch.float32, device=x.device)
        cnt = _tile_counters(x.device, grid[0] * (grid[2] if len(grid) == 3 else 1))
    else:
        ws, cnt = s, s
    common = (x, qw, qh, s, z, gs, bias_arg, out, ws, cnt, M, N, K, G, tiles, per_split, split,
              x.stride(0), x.stride(1), out.stride(0))
    flags = dict(_meta(spec), HAS_BIAS=bias is not None, EVEN_K=even_k, EVEN_N=even_n, SPLIT=split > 1,
                 BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n)
    regs = {"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}
    if cfg.family == "mma":
        xw = _int32_pairs(x)
        _qgemv_mma_kernel[grid](xw, qw, qh, s, z, gs, bias_arg, out, ws, cnt, M, N, K, G, tiles, per_split, split,
                                xw.stride(0), out.stride(0), KIND=spec.kind, BITS=spec.bits,
                                SYMMETRIC=spec.symmetric, SCALE_KIND=spec.scale_kind, SLOTS=spec.slots,
                                GROUP=max(spec.group, 1), GROUP_SLOTS=spec.group_slots, HAS_BIAS=bias is not None,
                                SPLIT=split > 1, SPLIT_P2=1 << (split - 1).bit_length(),
                                IS_BF16=x.dtype == torch.bfloat16, ASM=x.device.type == "cuda", EVEN_K=even_k,
                                TN=mma_tiles(cfg.block_n),
                                NW=cfg.num_warps, MT=1 if M <= 8 else 2, PREFETCH=cfg.prefetch,
                                ALIGNED=spec.bits == 8 and N % min(cfg.block_n // 8, 4) == 0 and qw.data_ptr() % 4 == 0,
                                ZSUM=bool(cfg.fold) and spec.kind == D.KIND_INT and spec.bits <= 4,
                                XA=bool(cfg.x_ahead), num_warps=cfg.num_warps, num_stages=1, **regs)
    elif cfg.family == "gemv" and cfg.oneshot:
        na, nb = oneshot_blocks(per_split)
        rest = per_split - na
        flags.pop("EVEN_K")
        _qgemv_oneshot_kernel[grid](*common[:15], split, *common[17:], **flags,
                                    MASK_K=not even_k or tiles % per_split != 0,
                                    MASK_B=not even_k or tiles % per_split != 0 or nb != rest,
                                    NA=na, NB=nb, TILES_PER_PROGRAM=per_split, num_warps=cfg.num_warps,
                                    num_stages=1, **regs)
    elif cfg.family == "gemv":
        _qgemv_kernel[grid](*common, **flags, PREFETCH=bool(cfg.prefetch), num_warps=cfg.num_warps,
                            num_stages=cfg.num_stages, **regs)
    else:
        is_bf16 = x.dtype == torch.bfloat16
        fold = bool(cfg.fold) and fold_supported(spec, x.dtype)
        dot_slots = dot_slots_of(cfg, spec, fold)
        # the PTX unpack feeds fold operands; with one dot over several slots (swap_ab) also the per-weight
        # integer dequantization ((1024 + q) - (1024 + z), then the scale, in fp16)
        asm = asm_supported(spec, x) and (bool(cfg.fold) or (dot_slots > 1 and spec.kind == D.KIND_INT))
        _qgemm_dot_kernel[grid](*common, **flags, IS_BF16=is_bf16,
                                DOT_FP32=is_bf16 and x.device.type == "cpu",
                                FOLD=fold, WIDE=bool(cfg.wide), ASM=asm,
                                GROUP_M=cfg.group_m, PREFETCH=bool(cfg.prefetch), SWAP=bool(cfg.swap_ab),
                                DOT_SLOTS=dot_slots, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **regs)
    return out


def _int32_pairs(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 ``x [M, K]`` as int32 pairs ``[M, ceil(K/2)]`` (a view when the rows are 4-byte aligned and
    contiguous along K; else a copy, zero-padded to even K)."""
    M, K = x.shape
    if x.stride(1) == 1 and K % 2 == 0 and x.stride(0) % 2 == 0 and x.data_ptr() % 4 == 0:
        return x.view(torch.int32)
    xp = x.new_zeros((M, K + K % 2))
    xp[:, :K] = x
    return xp.view(torch.int32)


def mma_unsupported_reason(x: torch.Tensor, qt: QuantizedTensor) -> str | None:
    """Why the mma family cannot run ``x @ qt``, or None."""
    if qt.format not in MMA_FORMATS:
        return f"format {qt.format!r} (the mma family reads {MMA_FORMATS})"
    if x.shape[0] > MMA_MAX_M:
        return f"{x.shape[0]} rows (at most {MMA_MAX_M})"
    if x.device.type != "cuda" and not triton_interpret():
        return f"device {x.device.type!r} (CUDA, or the CPU interpreter)"
    return None


def dequantize_kn(qt: QuantizedTensor, dtype: torch.dtype, block_n: int = 128,
                  num_warps: int = 4) -> torch.Tensor:
    """The weight transposed, ``W.T [K, N]`` in ``dtype``, dequantized by the Triton kernel."""
    spec = format_spec(qt)
    N, K = qt.shape
    qw, qh, s, z, gs = _operands(qt)
    w = torch.empty((K, N), dtype=dtype, device=qw.device)
    grid = (_cdiv(N, block_n), _tiles(spec, K))
    _dequant_kernel[grid](qw, qh, s, z, gs, w, N, K, s.shape[0], **_meta(spec),
                          IS_BF16=dtype == torch.bfloat16, EVEN_K=K % spec.tile_k == 0,
                          EVEN_N=N % block_n == 0, BLOCK_N=block_n, num_warps=num_warps)
    return w


_too_big: set = set()  # (config, slots, dtype) that exceeded this GPU's shared memory


def _smaller(cfg: KernelConfig) -> KernelConfig:
    """A configuration that needs less shared memory: fewer pipeline stages, then narrower tiles."""
    if cfg.num_stages > 2:
        return replace(cfg, num_stages=cfg.num_stages - 1)
    if cfg.block_n > 32:
        return replace(cfg, block_n=cfg.block_n // 2)
    if cfg.family == "dot" and cfg.block_m > 16:
        return replace(cfg, block_m=cfg.block_m // 2)
    return KernelConfig("dequant")


def _path_name(cfg: KernelConfig, spec: FormatSpec, dtype: torch.dtype) -> str:
    """The path a fused launch took, as recorded in :mod:`triton_marlin.dispatch` (op ``qgemm``;
    ``dequant`` is Triton dequantize + cuBLAS)."""
    if cfg.family == "dot":
        swap = "-swapab" if cfg.swap_ab else ""
        if cfg.fold and fold_supported(spec, dtype):
            return "dot-fold" + swap
        return "dot-wide" if cfg.wide else "dot" + swap
    if cfg.family == "gemv" and cfg.oneshot:
        return "gemv-oneshot"
    return cfg.family


def launch(x: torch.Tensor, qt: QuantizedTensor, bias: torch.Tensor | None, cfg: KernelConfig
           ) -> torch.Tensor:
    """Run configuration ``cfg`` (any family) on ``x [M, K]``.

    The mma family runs the formats of ``MMA_FORMATS`` with up to MMA_MAX_M rows on CUDA or the interpreter;
    another call given an mma configuration warns and takes the default rule's configuration without the mma
    family (path ``qgemm/mma-unsupported``).

    A configuration chosen for one format can need more shared memory for another (int2/int3 tiles
    hold 16 code slots, int4's 8): such a launch steps down (:func:`_smaller`), warns once and
    records the path ``qgemm/smaller-config`` in :mod:`triton_marlin.dispatch`.
    """
    if cfg.family == "dequant":
        dispatch.record("qgemm", "dequant")
        w = dequantize_kn(qt, x.dtype)
        if bias is not None:
            return torch.addmm(bias.to(x.dtype), x, w)
        return torch.matmul(x, w)
    spec = format_spec(qt)
    if cfg.family == "mma" and (reason := mma_unsupported_reason(x, qt)) is not None:
        from .qgemm_config import default_config  # noqa: PLC0415

        fallback = default_config(x.shape[0], qt.shape[0], qt.shape[1], qt, x.device, allow_mma=False)
        dispatch.warn_fallback("qgemm", f"the mma family cannot run this call ({reason}); running "
                                        f"{_config_key(fallback)}")
        dispatch.record("qgemm", "mma-unsupported")
        return launch(x, qt, bias, fallback)
    key = (cfg, spec.slots, x.dtype)
    while key in _too_big:
        cfg = _smaller(cfg)
        key = (cfg, spec.slots, x.dtype)
        dispatch.record("qgemm", "smaller-config")
        if cfg.family == "dequant":
            return launch(x, qt, bias, cfg)
    try:
        out = launch_fused(x, qt, bias, cfg, spec=spec)
        dispatch.record("qgemm", _path_name(cfg, spec, x.dtype))
        return out
    except OutOfResources as e:
        _too_big.add(key)
        dispatch.warn_fallback("qgemm", f"{_config_key(cfg)} does not fit this GPU for {qt.format} "
                                        f"({e}); stepping down to {_config_key(_smaller(cfg))}")
        return launch(x, qt, bias, cfg)


# ----------------------------------------------------------------------------------------------
# Public interface used by ops.qmatmul
# ----------------------------------------------------------------------------------------------
def unsupported_reason(x: torch.Tensor, qt: QuantizedTensor) -> str | None:
    """Why the Triton kernels cannot run this call, or None when they can."""
    if qt.format not in SUPPORTED_FORMATS:
        return f"format {qt.format!r} has no Triton GEMM kernel (supported: {SUPPORTED_FORMATS})"
    if x.dtype not in ACTIVATION_DTYPES:
        return f"activation dtype {x.dtype} (the kernels take float16 or bfloat16)"
    if qt.meta.get("layout") not in ("k16_interleaved", "kn_uint8"):
        return f"weight layout {qt.meta.get('layout')!r} is not one the kernels read"
    if x.device.type not in ("cuda", "cpu"):
        return f"device {x.device.type!r} cannot run Triton kernels"
    if qt.meta.get("hadamard_block"):
        return "the weight is stored in a Hadamard-rotated basis (MR-GPTQ); the kernels do not rotate x"
    return None


def qgemm(x2d: torch.Tensor, qt: QuantizedTensor, bias: torch.Tensor | None = None,
          config: KernelConfig | None = None) -> torch.Tensor:
    """``x2d [M, K] @ W.T (+ bias)``; ``config`` overrides the selection table.

    Inside a ``torch.compile`` trace the call goes through the custom op ``triton_marlin::qgemm``
    (opaque to the compiler, with a fake implementation); in eager mode the same implementation runs
    directly, without the dispatcher's per-call cost.
    """
    if x2d.dim() != 2:
        raise ValueError(f"x2d must be 2-D [M, K], got shape {tuple(x2d.shape)}")
    N, K = qt.shape
    if x2d.shape[1] != K:
        raise ValueError(f"x2d has K={x2d.shape[1]}, the weight has K={K}")
    if x2d.device != qt.device:
        raise ValueError(f"x is on {x2d.device} but the weight is on {qt.device}")
    reason = unsupported_reason(x2d, qt)
    if reason is not None:
        raise ValueError(f"qgemm cannot run this call: {reason}")
    if bias is not None and (bias.shape != (N,) or bias.device != x2d.device):
        raise ValueError(f"bias must be a ({N},) tensor on {x2d.device}, got {tuple(bias.shape)} on "
                         f"{bias.device}")
    if not torch.compiler.is_compiling():
        if x2d.shape[0] == 0:
            return x2d.new_empty((0, N))
        if config is None:
            from .qgemm_config import select_config  # noqa: PLC0415

            config = select_config(x2d, qt)
        return launch(x2d, qt, bias, config)
    qw, qh, s, z, gs = _operands(qt)
    cfg_key = "" if config is None else _config_key(config)
    return torch.ops.triton_marlin.qgemm(
        x2d, qw, qt.tensors.get("qweight_hi"), s, qt.tensors.get("zeros"),
        qt.tensors.get("global_scale"), bias, qt.format, N, K, qt.group_size,
        bool(qt.meta.get("symmetric", True)), str(qt.meta.get("layout")), cfg_key)


def _config_key(cfg: KernelConfig) -> str:
    return ",".join(f"{k}={v}" for k, v in cfg.as_dict().items())


def _config_from_key(key: str) -> KernelConfig:
    d = {}
    for part in key.split(","):
        k, v = part.split("=")
        d[k] = v if k == "family" else int(v)
    return KernelConfig.from_dict(d)


def _rebuild(fmt, N, K, group_size, symmetric, layout, qw, qh, s, z, gs) -> QuantizedTensor:
    tensors = {"qweight": qw, "scales": s}
    if qh is not None:
        tensors["qweight_hi"] = qh
    if z is not None:
        tensors["zeros"] = z
    if gs is not None:
        tensors["global_scale"] = gs
    meta = {"format": fmt, "symmetric": symmetric, "layout": layout}
    return QuantizedTensor(fmt, (N, K), group_size, tensors, meta)


@torch.library.custom_op("triton_marlin::qgemm", mutates_args=())
def _qgemm_op(x: torch.Tensor, qweight: torch.Tensor, qweight_hi: torch.Tensor | None,
              scales: torch.Tensor, zeros: torch.Tensor | None, global_scale: torch.Tensor | None,
              bias: torch.Tensor | None, format: str, N: int, K: int, group_size: int,
              symmetric: bool, layout: str, config: str) -> torch.Tensor:
    from .qgemm_config import select_config  # noqa: PLC0415

    qt = _rebuild(format, N, K, group_size, symmetric, layout, qweight, qweight_hi, scales, zeros,
                  global_scale)
    M = x.shape[0]
    if M == 0:
        return x.new_empty((0, N))
    cfg = _config_from_key(config) if config else select_config(x, qt)
    return launch(x, qt, bias, cfg)


@_qgemm_op.register_fake
def _(x, qweight, qweight_hi, scales, zeros, global_scale, bias, format, N, K, group_size, symmetric,
      layout, config):
    return x.new_empty((x.shape[0], N))
