"""Randomized block Hadamard transform of activations (Triton), and its torch reference.

``rotate(x, s, b)`` = ``x @ V.T`` and ``unrotate(y, s, b)`` = ``y @ V`` on the last dimension, with
``V = blockdiag(H_b) diag(s)`` (the convention of :mod:`triton_marlin.formats.hadamard`).

The kernel works in fp32 registers with no tensor cores and no matrix in memory: the Sylvester
matrix factors as a Kronecker product, ``H_b = H_f1 (x) H_f2`` (index ``k = a*f2 + c`` splits into
bits), so a ``[R, b]`` row block viewed as ``[R, f1, f2]`` is transformed by two small +-1 products
along its axes (``f1 + f2`` adds per element, 24 for b = 128, every entry generated from bit parity).
The result is exact up to fp32 rounding for every input dtype. Blocks of more than
``REGISTER_MAX_ROWS`` rows instead multiply by the +-1 matrix on tensor cores (products exact in
the input's dtype, fp32 sums; fp32 input as two tf32 passes).

``unrotate`` also takes split-K partial sums ``[S, R, D]`` (fp32) from the trellis kernels and adds
them before the transform (the transform is linear), adds an optional bias and writes the output
dtype: the whole epilogue of a trellis GEMM in one launch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats import hadamard as ref

# Rows up to which the register transform runs (a few us at M <= 4 on an H200, but per-program
# latency made 128 rows cost ~50 us there); more rows use the tensor-core product.
REGISTER_MAX_ROWS = 4
# b -> (f1, f2) with f1 * f2 = b, both <= 16 (intermediates [R, f1, f2, f] stay small)
_FACTORS = {16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16)}


@triton.jit
def _sylvester_pm1(F: tl.constexpr):
    """The +-1 Sylvester matrix of order F (<= 16) as fp32: entry (o, i) = (-1)^popcount(o & i)."""
    v = tl.arange(0, F)[:, None] & tl.arange(0, F)[None, :]
    parity = (v ^ (v >> 1) ^ (v >> 2) ^ (v >> 3)) & 1
    return (1 - 2 * parity).to(tl.float32)


@triton.jit
def _sylvester_full(HB: tl.constexpr, dtype: tl.constexpr):
    """The +-1 Sylvester matrix of order HB (<= 128) in ``dtype``, from the parity of o & i."""
    v = tl.arange(0, HB)[:, None] & tl.arange(0, HB)[None, :]
    v = v ^ (v >> 4)
    v = v ^ (v >> 2)
    v = v ^ (v >> 1)
    return (1 - 2 * (v & 1)).to(dtype)


@triton.jit
def _block_fwht(x, BLOCK_R: tl.constexpr, F1: tl.constexpr, F2: tl.constexpr):
    """Unnormalized Walsh-Hadamard transform of each F1*F2-wide row of x [BLOCK_R, F1*F2] (fp32)."""
    x3 = tl.reshape(x, (BLOCK_R, F1, F2))
    h2 = _sylvester_pm1(F2)
    x3 = tl.sum(x3[:, :, None, :] * h2[None, None, :, :], axis=3)          # along the F2 axis
    h1 = _sylvester_pm1(F1)
    x3 = tl.sum(x3[:, None, :, :] * h1[None, :, :, None], axis=2)          # along the F1 axis
    return tl.reshape(x3, (BLOCK_R, F1 * F2))


@triton.jit
def _hadamard_kernel(x_ptr, s_ptr, bias_ptr, out_ptr, R, stride_xs, stride_xr, stride_or, n_parts, scale,
                     HB: tl.constexpr, F1: tl.constexpr, F2: tl.constexpr, BLOCK_R: tl.constexpr,
                     SIGN_BEFORE: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr = 0):
    """x: [n_parts, R, D] (part stride stride_xs, row stride stride_xr, unit column stride), summed
    over parts; s: [D] int8; bias: [D] (added after the transform when HAS_BIAS); out: [R, D].
    DOT (many rows): 0 = the register transform; 1 = a tensor-core product with the +-1 matrix in
    fp16 (fp16 input: exact products, fp32 sums); 2 = tf32 operands (bf16 input: exact in tf32);
    3 = fp32 input split into a tf32-exact high part and the rest, two tf32 passes (~2^-21 relative). Grid: (cdiv(R, BLOCK_R), D // HB)."""
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_c * HB + tl.arange(0, HB)
    rmask = rows[:, None] < R
    ptrs = x_ptr + rows[:, None] * stride_xr + cols[None, :]
    x = tl.load(ptrs, mask=rmask, other=0.0).to(tl.float32)
    for p in range(1, n_parts):
        x += tl.load(ptrs + p * stride_xs, mask=rmask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + cols).to(tl.float32)
    if SIGN_BEFORE:
        x = x * s[None, :]
    if DOT == 0:
        y = _block_fwht(x, BLOCK_R, F1, F2) * scale
    elif DOT == 1:
        y = tl.dot(x.to(tl.float16), _sylvester_full(HB, tl.float16)) * scale
    elif DOT == 2:     # bf16 values are exact in tf32: one tf32 pass multiplies them exactly
        y = tl.dot(x, _sylvester_full(HB, tl.float32), input_precision="tf32") * scale
    else:              # fp32: x = hi + lo, hi = x with its mantissa cut to tf32's 10 bits (exact)
        hi = (x.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
        h = _sylvester_full(HB, tl.float32)
        y = tl.dot(hi, h, input_precision="tf32")
        y = tl.dot(x - hi, h, y, input_precision="tf32") * scale      # lo: ~2^-21 of x lost
    if not SIGN_BEFORE:
        y = y * s[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + cols).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * stride_or + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=rmask)


def hadamard_transform(x: torch.Tensor, signs: torch.Tensor, block: int, *, sign_before: bool,
                       out_dtype: torch.dtype | None = None, bias: torch.Tensor | None = None,
                       parts: bool = False) -> torch.Tensor:
    """Triton launcher: ``rotate`` (``sign_before=True``) or ``unrotate`` on the last dimension,
    optionally adding ``bias`` ([D]) to the result. ``parts=True``: ``x`` is ``[S, R, D]`` and the
    transform applies to the sum over its first dimension (split-K partial results)."""
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x must be a float16/bfloat16/float32 tensor, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if parts and x.dim() != 3:
        raise ValueError(f"parts=True needs x of shape [S, R, D], got {tuple(x.shape)}")
    D = x.shape[-1]
    if not isinstance(signs, torch.Tensor) or signs.shape != (D,) or signs.dtype != torch.int8:
        raise ValueError(f"signs must be an int8 tensor of shape ({D},), got "
                         f"{getattr(signs, 'dtype', None)} {tuple(getattr(signs, 'shape', ()))}")
    if block not in _FACTORS or D % block:
        raise ValueError(f"block must be 16, 32, 64 or 128 and divide {D}, got {block}")
    if signs.device != x.device:
        raise ValueError(f"signs are on {signs.device}, x on {x.device}")
    if bias is not None and (bias.shape != (D,) or bias.device != x.device):
        raise ValueError(f"bias must be a ({D},) tensor on {x.device}, got {tuple(bias.shape)} on {bias.device}")
    out_dtype = out_dtype or x.dtype
    lead = x.shape[1:-1] if parts else x.shape[:-1]
    x3 = x.reshape(x.shape[0], -1, D) if parts else x.reshape(1, -1, D)
    if x3.stride(-1) != 1 or (x3.shape[0] > 1 and x3.stride(0) != x3.shape[1] * x3.stride(1)):
        x3 = x3.contiguous()
    S, R = x3.shape[0], x3.shape[1]
    out = torch.empty((R, D), dtype=out_dtype, device=x.device)
    if R == 0:
        return out.reshape(*lead, D)
    f1, f2 = _FACTORS[block]
    if R <= REGISTER_MAX_ROWS:
        # [BLOCK_R, f1, f2, f] intermediates: keep them near 16 fp32 registers a thread (4 warps)
        BLOCK_R, dot = max(1, min(triton.next_power_of_2(R), 2048 // (block * max(f1, f2)))), 0
    else:
        # many rows: one [BLOCK_R, b] x [b, b] tensor-core product per program; operands in x's dtype
        # (the matrix is +-1, so only fp32 input needs a split: two tf32 passes)
        BLOCK_R = 16 if R <= 16 else 64
        dot = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3}[x.dtype]
    # the tensor-core path holds the [b, b] matrix in registers on its way to shared memory:
    # 8 warps keep a 128-block free of spills
    warps = 8 if dot and block == 128 else 4
    grid = (triton.cdiv(R, BLOCK_R), D // block)
    _hadamard_kernel[grid](x3, signs, bias if bias is not None else signs, out, R, x3.stride(0), x3.stride(1),
                           out.stride(0), S, 1.0 / block ** 0.5, HB=block, F1=f1, F2=f2, BLOCK_R=BLOCK_R,
                           SIGN_BEFORE=sign_before, HAS_BIAS=bias is not None, DOT=dot, num_warps=warps)
    return out.reshape(*lead, D)


def rotate(x: torch.Tensor, signs: torch.Tensor, block: int, out_dtype=None) -> torch.Tensor:
    """``x @ V.T`` (Triton)."""
    return hadamard_transform(x, signs, block, sign_before=True, out_dtype=out_dtype)


def unrotate(y: torch.Tensor, signs: torch.Tensor, block: int, out_dtype=None, bias=None) -> torch.Tensor:
    """``y @ V (+ bias)`` (Triton)."""
    return hadamard_transform(y, signs, block, sign_before=False, out_dtype=out_dtype, bias=bias)


def unrotate_parts(parts: torch.Tensor, signs: torch.Tensor, block: int, out_dtype=None, bias=None) -> torch.Tensor:
    """``(sum_s parts[s]) @ V (+ bias)`` for split-K partial results ``[S, R, D]`` (Triton, one launch)."""
    return hadamard_transform(parts, signs, block, sign_before=False, out_dtype=out_dtype, bias=bias, parts=True)


def rotate_reference(x, signs, block, out_dtype=None):
    return ref.rotate(x, signs, block).to(out_dtype or x.dtype)


def unrotate_reference(y, signs, block, out_dtype=None):
    return ref.unrotate(y, signs, block).to(out_dtype or y.dtype)
