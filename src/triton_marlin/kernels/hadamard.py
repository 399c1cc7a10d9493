"""Randomized block Hadamard transform of activations (Triton), and its torch reference.

``rotate(x, s, b)`` = ``x @ V.T`` and ``unrotate(y, s, b)`` = ``y @ V`` on the last dimension, with
``V = blockdiag(H_b) diag(s)`` (the convention of :mod:`triton_marlin.formats.hadamard`). One program
transforms ``BLOCK_R`` rows of one ``b``-wide column block as a ``[BLOCK_R, b] @ [b, b]`` product with
the +-1 Sylvester matrix (products exact: fp16 operands for fp16 input, tf32 for bf16 input, IEEE
fp32 for fp32 input; fp32 accumulation), then scales by ``1/sqrt(b)``. For ``b <= 128`` this costs ``b`` MACs per element on tensor
cores, far under the memory time of reading the row, so it is a memory-bound pass.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats import hadamard as ref

_H_CACHE: dict = {}


@triton.jit
def _hadamard_kernel(x_ptr, s_ptr, h_ptr, bias_ptr, out_ptr, R, stride_xr, stride_or, scale,
                     HB: tl.constexpr, BLOCK_R: tl.constexpr, SIGN_BEFORE: tl.constexpr,
                     IEEE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """x: [R, D] (row stride stride_xr, unit column stride); s: [D] int8; h: [HB, HB] +-1 in the dot
    dtype; bias: [D] (added after the transform when HAS_BIAS); out: [R, D] (row stride stride_or).
    Grid: (cdiv(R, BLOCK_R), D // HB)."""
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_c * HB + tl.arange(0, HB)
    rmask = rows[:, None] < R
    x = tl.load(x_ptr + rows[:, None] * stride_xr + cols[None, :], mask=rmask, other=0.0)
    s = tl.load(s_ptr + cols).to(tl.float32)
    hh = tl.load(h_ptr + tl.arange(0, HB)[:, None] * HB + tl.arange(0, HB)[None, :])
    if SIGN_BEFORE:
        x = (x.to(tl.float32) * s[None, :]).to(hh.dtype)
    else:
        x = x.to(hh.dtype)
    if IEEE:
        y = tl.dot(x, hh, input_precision="ieee")
    else:
        y = tl.dot(x, hh)
    y = y * scale
    if not SIGN_BEFORE:
        y = y * s[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + cols).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * stride_or + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=rmask)


def _sylvester(block: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (block, dtype, device)
    if key not in _H_CACHE:
        _H_CACHE[key] = ref.sylvester(block, dtype, device).contiguous()
    return _H_CACHE[key]


def hadamard_transform(x: torch.Tensor, signs: torch.Tensor, block: int, *, sign_before: bool,
                       out_dtype: torch.dtype | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Triton launcher: ``rotate`` (``sign_before=True``) or ``unrotate`` on the last dimension,
    optionally adding ``bias`` ([D]) to the result."""
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x must be a float16/bfloat16/float32 tensor, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    D = x.shape[-1]
    if not isinstance(signs, torch.Tensor) or signs.shape != (D,) or signs.dtype != torch.int8:
        raise ValueError(f"signs must be an int8 tensor of shape ({D},), got "
                         f"{getattr(signs, 'dtype', None)} {tuple(getattr(signs, 'shape', ()))}")
    if block not in (16, 32, 64, 128) or D % block:
        raise ValueError(f"block must be 16, 32, 64 or 128 and divide {D}, got {block}")
    if signs.device != x.device:
        raise ValueError(f"signs are on {signs.device}, x on {x.device}")
    if bias is not None and (bias.shape != (D,) or bias.device != x.device):
        raise ValueError(f"bias must be a ({D},) tensor on {x.device}, got {tuple(bias.shape)} on {bias.device}")
    out_dtype = out_dtype or x.dtype
    x2 = x.reshape(-1, D)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    R = x2.shape[0]
    out = torch.empty((R, D), dtype=out_dtype, device=x.device)
    if R == 0:
        return out.reshape(*x.shape[:-1], D)
    # fp16: fp16 operands; bf16: fp32 operands through tf32, which holds every bf16 value and +-1
    # exactly; fp32: IEEE fp32. All accumulate in fp32.
    dot_dtype = torch.float16 if x.dtype == torch.float16 else torch.float32
    h = _sylvester(block, dot_dtype, x.device)
    BLOCK_R = 16 if R <= 16 else 64
    grid = (triton.cdiv(R, BLOCK_R), D // block)
    _hadamard_kernel[grid](x2, signs, h, bias if bias is not None else signs, out, R, x2.stride(0),
                           out.stride(0), 1.0 / block ** 0.5, HB=block, BLOCK_R=BLOCK_R,
                           SIGN_BEFORE=sign_before, IEEE=x.dtype == torch.float32,
                           HAS_BIAS=bias is not None, num_warps=4)
    return out.reshape(*x.shape[:-1], D)


def rotate(x: torch.Tensor, signs: torch.Tensor, block: int, out_dtype=None) -> torch.Tensor:
    """``x @ V.T`` (Triton)."""
    return hadamard_transform(x, signs, block, sign_before=True, out_dtype=out_dtype)


def unrotate(y: torch.Tensor, signs: torch.Tensor, block: int, out_dtype=None, bias=None) -> torch.Tensor:
    """``y @ V (+ bias)`` (Triton)."""
    return hadamard_transform(y, signs, block, sign_before=False, out_dtype=out_dtype, bias=bias)


def rotate_reference(x, signs, block, out_dtype=None):
    return ref.rotate(x, signs, block).to(out_dtype or x.dtype)


def unrotate_reference(y, signs, block, out_dtype=None):
    return ref.unrotate(y, signs, block).to(out_dtype or y.dtype)
