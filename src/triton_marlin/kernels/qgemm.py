"""Quantized GEMM: ``out[M, N] = x[M, K] @ W[N, K].T (+ bias)`` with W packed (formats/packing.py).

Three kernel families, chosen per call by :mod:`triton_marlin.kernels.qgemm_config` (a measured
table per GPU, or a default):

- ``gemv``: CUDA-core dot products for small M (1-8). Codes decode to exact fp32 values
  (``(q | 0x4B000000)`` read as fp32 is ``2**23 + q``), one FMA per weight and row, and the group
  scale is applied once per group and column to a partial sum instead of once per weight.
- ``dot``: tensor-core tiles. Slot ``i`` of 16 word rows is a ``[16, BLOCK_N]`` operand for
  ``tl.dot`` against ``x[:, k0 + 16 i : k0 + 16 i + 16]``; weights dequantize in registers
  (:mod:`.decode`) and never touch device memory as fp16.
- ``dequant``: dequantize to a ``[K, N]`` fp16/bf16 buffer with a Triton kernel, then cuBLAS
  (``torch.matmul``). For large M, where fp16 is compute-bound and the fused kernels lose.

``gemv`` and ``dot`` take a split-K factor: with ``SPLIT_K > 1`` each program adds its fp32 partial
into a zeroed fp32 buffer with atomics, cast to the output dtype afterwards (partials land in any
order, so such results vary in the last bits between runs).

The op is registered as the torch custom op ``triton_marlin::qgemm`` with a fake implementation, so it
runs under ``torch.compile`` and inside CUDA graphs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..formats import QuantizedTensor
from ..formats.packing import code_tile_k
from . import decode as D
from .decode import dequant, decode_scale, int_magic_fp32, e2m1_raw_fp16, e4m3_raw_fp16, unpack_codes

SUPPORTED_FORMATS = ("int2", "int3", "int4", "int8", "fp4", "mxfp4", "nvfp4", "fp8")
ACTIVATION_DTYPES = (torch.float16, torch.bfloat16)
FAMILIES = ("gemv", "dot", "dequant")


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
                SLOT: tl.constexpr, BITS: tl.constexpr, TILE_K: tl.constexpr):
    """Codes ``[16, BLOCK_N]`` (int32) of k = t*TILE_K + 16*SLOT + rows."""
    if BITS == 8:
        k = t * TILE_K + SLOT * 16 + rows
        ptrs = qw_ptr + k[:, None] * N + offs_n[None, :]
        return tl.load(ptrs, mask=(k < K)[:, None] & mask_n[None, :], other=0).to(tl.int32)
    else:
        return unpack_codes(words, words_hi, SLOT, BITS)


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
    """Exact fp32 value of codes, up to the constant factor the scale absorbs (see _RAW_FACTOR)."""
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
def _raw_factor(KIND: tl.constexpr):
    if KIND == 1:
        return 16384.0
    elif KIND == 2:
        return 256.0
    else:
        return 1.0


@triton.jit
def _gemv_row(acc, part, x_row, k, kmask, v, GROUP_SLOTS: tl.constexpr):
    """One activation row's share of a slot: ``acc/part[16, BN] += x[k, None] * v`` (fp32)."""
    xs = tl.load(x_row + k, mask=kmask, other=0.0).to(tl.float32)
    if GROUP_SLOTS != 0:
        part += xs[:, None] * v
    else:
        acc += xs[:, None] * v
    return acc, part


@triton.jit
def _qgemv_kernel(
        x_ptr, qw_ptr, qh_ptr, s_ptr, z_ptr, gs_ptr, bias_ptr, out_ptr,
        M, N, K, G, TILES, TILES_PER_SPLIT,
        stride_xm, stride_xk, stride_om,
        KIND: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr, SCALE_KIND: tl.constexpr,
        GROUP: tl.constexpr, GROUP_SLOTS: tl.constexpr, SLOTS: tl.constexpr, HAS_BIAS: tl.constexpr,
        SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """CUDA-core quantized GEMV for M <= 4 rows per program (BLOCK_M in 1, 2, 4).

    x ``[M, K]`` (strides ``stride_xm, stride_xk``); qw packed words ``[TILES*16, N]`` (int32) or bytes
    ``[K, N]`` (8-bit); qh the int16 high-bit plane of int3; scales/zeros ``[G, N]``; out ``[M, N]``
    (row stride ``stride_om``), fp32 partial sums when SPLIT_K > 1. Grid: (N blocks, SPLIT_K, M blocks).
    Each row keeps its own ``[16, BN]`` fp32 accumulator (same layout as the weight tile, so the
    activations broadcast along N without layout shuffles); rows reduce once, after the K loop.
    """
    TILE_K: tl.constexpr = 16 * SLOTS
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
    for t in range(t_begin, t_end):
        if BITS != 8:
            w_ptrs = qw_ptr + (t * 16 + rows)[:, None] * N + offs_n[None, :]
            words = tl.load(w_ptrs, mask=mask_n[None, :], other=0)
            if BITS == 3:
                words_hi = tl.load(qh_ptr + (t * 16 + rows)[:, None] * N + offs_n[None, :],
                                   mask=mask_n[None, :], other=0)
            else:
                words_hi = words
        else:
            words = 0
            words_hi = 0
        for i in tl.static_range(SLOTS):
            if GROUP_SLOTS != 0:
                if i % GROUP_SLOTS == 0:
                    g = (t * TILE_K + i * 16) // GROUP
                    s, z = _load_group(s_ptr, z_ptr, gs_ptr, g, offs_n, mask_n, N, G, SCALE_KIND,
                                       SYMMETRIC)
                    part0 = zero
                    part1 = zero
                    part2 = zero
                    part3 = zero
            else:
                part0 = zero
                part1 = zero
                part2 = zero
                part3 = zero
            codes = _load_codes(qw_ptr, words, words_hi, t, rows, offs_n, mask_n, N, K, i, BITS, TILE_K)
            v = _raw_fp32(codes, z[None, :], KIND, BITS, SYMMETRIC)
            k = (t * TILE_K + i * 16 + rows) * stride_xk
            kmask = (t * TILE_K + i * 16 + rows) < K
            acc0, part0 = _gemv_row(acc0, part0, x0, k, kmask & ((rows * 0 + m0) < M), v, GROUP_SLOTS)
            if BLOCK_M > 1:
                acc1, part1 = _gemv_row(acc1, part1, x1, k, kmask & ((rows * 0 + m0 + 1) < M), v, GROUP_SLOTS)
            if BLOCK_M > 2:
                acc2, part2 = _gemv_row(acc2, part2, x2, k, kmask & ((rows * 0 + m0 + 2) < M), v, GROUP_SLOTS)
                acc3, part3 = _gemv_row(acc3, part3, x3, k, kmask & ((rows * 0 + m0 + 3) < M), v, GROUP_SLOTS)
            if GROUP_SLOTS != 0:
                if i % GROUP_SLOTS == GROUP_SLOTS - 1:
                    acc0 += part0 * s[None, :]
                    if BLOCK_M > 1:
                        acc1 += part1 * s[None, :]
                    if BLOCK_M > 2:
                        acc2 += part2 * s[None, :]
                        acc3 += part3 * s[None, :]
    factor = _raw_factor(KIND)
    if GROUP_SLOTS == 0:
        col_scale = s_pc * factor
    else:
        col_scale = tl.full((BLOCK_N,), factor, tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros((BLOCK_N,), dtype=tl.float32)
    _gemv_store(out_ptr + m0 * stride_om, acc0, col_scale, bias, offs_n, mask_n & ((offs_n * 0 + m0) < M), SPLIT_K)
    if BLOCK_M > 1:
        _gemv_store(out_ptr + (m0 + 1) * stride_om, acc1, col_scale, bias, offs_n,
                    mask_n & ((offs_n * 0 + m0 + 1) < M), SPLIT_K)
    if BLOCK_M > 2:
        _gemv_store(out_ptr + (m0 + 2) * stride_om, acc2, col_scale, bias, offs_n,
                    mask_n & ((offs_n * 0 + m0 + 2) < M), SPLIT_K)
        _gemv_store(out_ptr + (m0 + 3) * stride_om, acc3, col_scale, bias, offs_n,
                    mask_n & ((offs_n * 0 + m0 + 3) < M), SPLIT_K)


@triton.jit
def _gemv_store(out_row, acc, col_scale, bias, offs_n, mask, SPLIT_K: tl.constexpr):
    res = tl.sum(acc, axis=0) * col_scale
    if SPLIT_K == 1:
        tl.store(out_row + offs_n, (res + bias).to(out_row.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(out_row + offs_n, res, mask=mask, sem="relaxed")


@triton.jit
def _qgemm_dot_kernel(
        x_ptr, qw_ptr, qh_ptr, s_ptr, z_ptr, gs_ptr, bias_ptr, out_ptr,
        M, N, K, G, TILES, TILES_PER_SPLIT,
        stride_xm, stride_xk, stride_om,
        KIND: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr, SCALE_KIND: tl.constexpr,
        GROUP: tl.constexpr, GROUP_SLOTS: tl.constexpr, SLOTS: tl.constexpr, HAS_BIAS: tl.constexpr,
        IS_BF16: tl.constexpr, DOT_FP32: tl.constexpr, SPLIT_K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Tensor-core quantized GEMM (BLOCK_M >= 16).

    Same operands as :func:`_qgemv_kernel`. Grid: (M blocks * N blocks, SPLIT_K); program ids are
    swizzled in groups of GROUP_M row blocks so neighbouring programs share weight tiles in L2.
    Per-channel scales (GROUP_SLOTS == 0) are applied to the accumulator once at the end.
    DOT_FP32 widens the operands to fp32 before ``tl.dot`` (same products, exact): only for bf16
    under the CPU interpreter, whose bf16 ``tl.dot`` is wrong.
    """
    TILE_K: tl.constexpr = 16 * SLOTS
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
    for t in range(t_begin, t_end):
        if BITS != 8:
            w_ptrs = qw_ptr + (t * 16 + rows)[:, None] * N + offs_n[None, :]
            words = tl.load(w_ptrs, mask=mask_n[None, :], other=0)
            if BITS == 3:
                words_hi = tl.load(qh_ptr + (t * 16 + rows)[:, None] * N + offs_n[None, :],
                                   mask=mask_n[None, :], other=0)
            else:
                words_hi = words
        else:
            words = 0
            words_hi = 0
        for i in tl.static_range(SLOTS):
            if GROUP_SLOTS != 0:
                if i % GROUP_SLOTS == 0:
                    g = (t * TILE_K + i * 16) // GROUP
                    s, z = _load_group(s_ptr, z_ptr, gs_ptr, g, offs_n, mask_n, N, G, SCALE_KIND,
                                       SYMMETRIC)
                scale = s
            else:
                scale = unit
            codes = _load_codes(qw_ptr, words, words_hi, t, rows, offs_n, mask_n, N, K, i, BITS, TILE_K)
            w = dequant(codes, scale[None, :], z[None, :], KIND, BITS, SYMMETRIC, IS_BF16)
            k = t * TILE_K + i * 16 + rows
            a = tl.load(x_row + k[None, :] * stride_xk, mask=mask_m[:, None] & (k < K)[None, :],
                        other=0.0)
            if DOT_FP32:
                acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc)
            else:
                acc = tl.dot(a, w, acc)
    if GROUP_SLOTS == 0:
        acc = acc * s_pc[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(out_ptrs, acc, mask=mask, sem="relaxed")


@triton.jit
def _dequant_kernel(
        qw_ptr, qh_ptr, s_ptr, z_ptr, gs_ptr, w_ptr, N, K, G,
        KIND: tl.constexpr, BITS: tl.constexpr, SYMMETRIC: tl.constexpr, SCALE_KIND: tl.constexpr,
        GROUP: tl.constexpr, GROUP_SLOTS: tl.constexpr, SLOTS: tl.constexpr, IS_BF16: tl.constexpr,
        BLOCK_N: tl.constexpr):
    """Dequantize one K tile x BLOCK_N columns into ``w [K, N]`` (fp16/bf16). Grid: (N blocks, tiles)."""
    TILE_K: tl.constexpr = 16 * SLOTS
    pid_n = tl.program_id(0)
    t = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = tl.arange(0, 16)
    if BITS != 8:
        w_ptrs = qw_ptr + (t * 16 + rows)[:, None] * N + offs_n[None, :]
        words = tl.load(w_ptrs, mask=mask_n[None, :], other=0)
        if BITS == 3:
            words_hi = tl.load(qh_ptr + (t * 16 + rows)[:, None] * N + offs_n[None, :],
                               mask=mask_n[None, :], other=0)
        else:
            words_hi = words
    else:
        words = 0
        words_hi = 0
    if GROUP_SLOTS == 0:
        s, z = _load_group(s_ptr, z_ptr, gs_ptr, 0, offs_n, mask_n, N, G, SCALE_KIND, SYMMETRIC)
    for i in tl.static_range(SLOTS):
        if GROUP_SLOTS != 0:
            if i % GROUP_SLOTS == 0:
                g = (t * TILE_K + i * 16) // GROUP
                s, z = _load_group(s_ptr, z_ptr, gs_ptr, g, offs_n, mask_n, N, G, SCALE_KIND, SYMMETRIC)
        codes = _load_codes(qw_ptr, words, words_hi, t, rows, offs_n, mask_n, N, K, i, BITS, TILE_K)
        w = dequant(codes, s[None, :], z[None, :], KIND, BITS, SYMMETRIC, IS_BF16)
        k = t * TILE_K + i * 16 + rows
        tl.store(w_ptr + k[:, None] * N + offs_n[None, :], w, mask=(k < K)[:, None] & mask_n[None, :])


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelConfig:
    """One launch configuration. ``family`` is gemv, dot or dequant."""
    family: str
    block_m: int = 16
    block_n: int = 64
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2
    group_m: int = 8

    def as_dict(self) -> dict:
        return {"family": self.family, "block_m": self.block_m, "block_n": self.block_n,
                "split_k": self.split_k, "num_warps": self.num_warps, "num_stages": self.num_stages,
                "group_m": self.group_m}

    @classmethod
    def from_dict(cls, d: dict) -> "KernelConfig":
        unknown = set(d) - {"family", "block_m", "block_n", "split_k", "num_warps", "num_stages", "group_m"}
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
        if not isinstance(self.split_k, int) or self.split_k < 1:
            raise ValueError(f"split_k must be a positive int, got {self.split_k!r}")


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


def _tiles(spec: FormatSpec, K: int) -> int:
    return triton.cdiv(K, spec.tile_k)


def launch_fused(x: torch.Tensor, qt: QuantizedTensor, bias: torch.Tensor | None,
                 cfg: KernelConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    """Run the gemv or dot family on ``x [M, K]`` (any strides) into ``out [M, N]`` (allocated if None)."""
    spec = format_spec(qt)
    M, K = x.shape
    N = qt.shape[0]
    if out is None:
        out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    qw, qh, s, z, gs = _operands(qt)
    G = s.shape[0]
    tiles = _tiles(spec, K)
    split = max(1, min(cfg.split_k, tiles))
    per_split = triton.cdiv(tiles, split)
    split = triton.cdiv(tiles, per_split)  # no empty splits
    dest = out if split == 1 else torch.zeros((M, N), dtype=torch.float32, device=x.device)
    has_bias = bias is not None and split == 1
    bias_arg = bias if bias is not None else s
    common = (x, qw, qh, s, z, gs, bias_arg, dest, M, N, K, G, tiles, per_split,
              x.stride(0), x.stride(1), dest.stride(0))
    if cfg.family == "gemv":
        grid = (triton.cdiv(N, cfg.block_n), split, triton.cdiv(M, cfg.block_m))
        _qgemv_kernel[grid](*common, **_meta(spec), HAS_BIAS=has_bias, SPLIT_K=split,
                            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    elif cfg.family == "dot":
        grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(N, cfg.block_n), split)
        _qgemm_dot_kernel[grid](*common, **_meta(spec), HAS_BIAS=has_bias,
                                IS_BF16=x.dtype == torch.bfloat16,
                                DOT_FP32=x.dtype == torch.bfloat16 and x.device.type == "cpu",
                                SPLIT_K=split,
                                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, GROUP_M=cfg.group_m,
                                num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    else:
        raise ValueError(f"launch_fused runs the gemv or dot family, got {cfg.family!r}")
    if split > 1:
        if bias is not None:
            dest += bias.to(torch.float32)
        out.copy_(dest)
    return out


def dequantize_kn(qt: QuantizedTensor, dtype: torch.dtype, block_n: int = 128,
                  num_warps: int = 4) -> torch.Tensor:
    """The weight transposed, ``W.T [K, N]`` in ``dtype``, dequantized by the Triton kernel."""
    spec = format_spec(qt)
    N, K = qt.shape
    qw, qh, s, z, gs = _operands(qt)
    w = torch.empty((K, N), dtype=dtype, device=qw.device)
    grid = (triton.cdiv(N, block_n), _tiles(spec, K))
    _dequant_kernel[grid](qw, qh, s, z, gs, w, N, K, s.shape[0], **_meta(spec),
                          IS_BF16=dtype == torch.bfloat16, BLOCK_N=block_n, num_warps=num_warps)
    return w


def launch(x: torch.Tensor, qt: QuantizedTensor, bias: torch.Tensor | None, cfg: KernelConfig
           ) -> torch.Tensor:
    """Run configuration ``cfg`` (any family) on ``x [M, K]``."""
    if cfg.family == "dequant":
        w = dequantize_kn(qt, x.dtype)
        out = torch.matmul(x, w)
        if bias is not None:
            out += bias.to(out.dtype)
        return out
    return launch_fused(x, qt, bias, cfg)


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
    return None


def qgemm(x2d: torch.Tensor, qt: QuantizedTensor, bias: torch.Tensor | None = None,
          config: KernelConfig | None = None) -> torch.Tensor:
    """``x2d [M, K] @ W.T (+ bias)`` through the custom op; ``config`` overrides the selection table."""
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
