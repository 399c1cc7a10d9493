"""bfloat16 conversions in Triton: fp32 -> bf16, bf16 -> fp32, fp16 -> bf16, bf16 -> fp16.

Numerics (identical in the kernel and the torch reference, bit for bit):

* to bf16: round to nearest, ties to even, on the fp32 bit pattern (``bits + 0x7FFF + lsb`` then keep the
  high half). Overflow rounds to +-inf as IEEE rounding does. A NaN stays NaN: its sign and top mantissa bits
  are kept and the quiet bit is set (``(bits >> 16) | 0x0040``), so no NaN payload can round into infinity.
* bf16 -> fp32: exact (the 16 bits become the high half of the fp32 word).
* fp16 -> bf16 goes through fp32 (exact), then rounds as above; bf16 -> fp16 goes through fp32, then rounds to
  nearest-even in fp16 (overflow to inf, gradual underflow).
* NaN bits are computed with integer operations, never left to a hardware conversion (CPUs and GPUs disagree
  on the NaN they produce): fp16 NaN -> bf16 ``sign | 0x7FC0 | (mantissa >> 3)``; bf16 NaN -> fp16
  ``sign | 0x7E00 | (mantissa << 3)``. The payload's top bits survive and the quiet bit is set.

Layers: ``_convert_kernel`` (Triton), ``convert_triton`` (checks, allocation, launch), the custom op
``triton_marlin::bf16_convert`` (fake impl for torch.compile), and ``convert`` (picks the path, records it in
:mod:`triton_marlin.dispatch`). ``convert_reference`` is the torch path of the same numerics.
"""
from __future__ import annotations

import torch

from .. import dispatch
from ..device import triton_enabled_for

__all__ = ["SUPPORTED", "convert", "convert_reference", "convert_triton", "to_bfloat16", "from_bfloat16",
           "DEFAULT_BLOCK"]

# (source dtype, destination dtype) pairs this module converts.
SUPPORTED = {
    (torch.float32, torch.bfloat16),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.bfloat16),
    (torch.bfloat16, torch.float16),
}
DEFAULT_BLOCK = 4096  # elements per program: 16 KiB of fp32 in flight per program keeps HBM busy


def _check(x: torch.Tensor, dtype: torch.dtype) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype, got {type(dtype).__name__}")
    if (x.dtype, dtype) not in SUPPORTED:
        pairs = ", ".join(sorted(f"{str(a)[6:]}->{str(b)[6:]}" for a, b in SUPPORTED))
        raise TypeError(f"x/dtype: conversion {x.dtype} -> {dtype} is not supported; expected one of {pairs}")


# ----------------------------------------------------------------- torch reference

def _fp32_to_bf16_bits(x32: torch.Tensor) -> torch.Tensor:
    bits = x32.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    lsb = (bits >> 16) & 1
    rounded = (bits + 0x7FFF + lsb) >> 16
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    out = torch.where(is_nan, (bits >> 16) | 0x0040, rounded) & 0xFFFF
    return out.to(torch.int32).to(torch.int16)  # wraps 0x8000.. into the int16 range (same bits)


def convert_reference(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The torch path: same numerics as the kernel, bit for bit (NaN payloads included)."""
    _check(x, dtype)
    flat = x.contiguous().reshape(-1)
    h = flat.view(torch.int16).to(torch.int32) & 0xFFFF if x.element_size() == 2 else None
    if dtype == torch.bfloat16:
        out = _fp32_to_bf16_bits(flat.float()).to(torch.int32) & 0xFFFF
        if x.dtype == torch.float16:
            nan = (h & 0x7FFF) > 0x7C00
            out = torch.where(nan, (h & 0x8000) | 0x7FC0 | ((h & 0x3FF) >> 3), out)
        return out.to(torch.int16).view(torch.bfloat16).reshape(x.shape)
    x32 = (h << 16).view(torch.float32).reshape(x.shape)
    if dtype == torch.float32:
        return x32
    out = x32.to(torch.float16).reshape(-1).view(torch.int16).to(torch.int32) & 0xFFFF
    nan = (h & 0x7FFF) > 0x7F80
    out = torch.where(nan, (h & 0x8000) | 0x7E00 | ((h & 0x7F) << 3), out)
    return out.to(torch.int16).view(torch.float16).reshape(x.shape)


# ----------------------------------------------------------------- Triton kernel

_kernel = None


def _get_kernel():
    global _kernel
    if _kernel is not None:
        return _kernel
    import triton
    import triton.language as tl

    @triton.jit
    def _convert_kernel(x_ptr, y_ptr, n, SRC_BF16: tl.constexpr, SRC_FP16: tl.constexpr, DST_FP16: tl.constexpr,
                        BLOCK: tl.constexpr):
        """y[i] = convert(x[i]) for i < n over flat contiguous buffers; one BLOCK of elements per program.

        SRC_BF16: x holds bf16 -> fp32 exactly (then fp16, RNE, if DST_FP16). Otherwise x holds fp32, or fp16 if
        SRC_FP16, -> bf16 by RNE. NaN bits come from integer operations (see the module docstring).
        """
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        offs = tl.max_contiguous(tl.multiple_of(offs, BLOCK), BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, eviction_policy="evict_first")
        if SRC_BF16:
            h = x.to(tl.uint16, bitcast=True).to(tl.uint32)
            y = (h << 16).to(tl.float32, bitcast=True)
            if DST_FP16:
                y16 = y.to(tl.float16).to(tl.uint16, bitcast=True).to(tl.uint32)
                is_nan = (h & 0x7FFF) > 0x7F80
                nan16 = (h & 0x8000) | 0x7E00 | ((h & 0x7F) << 3)
                y = tl.where(is_nan, nan16, y16).to(tl.uint16).to(tl.float16, bitcast=True)
        else:
            bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
            lsb = (bits >> 16) & 1
            rounded = (bits + 0x7FFF + lsb) >> 16
            if SRC_FP16:
                h = x.to(tl.uint16, bitcast=True).to(tl.uint32)
                is_nan = (h & 0x7FFF) > 0x7C00
                nan_bf16 = (h & 0x8000) | 0x7FC0 | ((h & 0x3FF) >> 3)
            else:
                is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
                nan_bf16 = (bits >> 16) | 0x0040
            y = tl.where(is_nan, nan_bf16, rounded).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        tl.store(y_ptr + offs, y, mask=mask, eviction_policy="evict_first")

    _kernel = _convert_kernel
    return _kernel


def convert_triton(x: torch.Tensor, dtype: torch.dtype, *, block: int = DEFAULT_BLOCK,
                   num_warps: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the Triton conversion kernel. ``x`` must be contiguous (no hidden copy is made)."""
    _check(x, dtype)
    if not x.is_contiguous():
        raise ValueError("x: expected a contiguous tensor (call .contiguous() first; the kernel reads a flat buffer)")
    if block < 128 or block & (block - 1):
        raise ValueError(f"block: expected a power of two >= 128, got {block}")
    if out is None:
        out = torch.empty(x.shape, dtype=dtype, device=x.device)
    elif out.shape != x.shape or out.dtype != dtype or out.device != x.device or not out.is_contiguous():
        raise ValueError(f"out: expected a contiguous {dtype} tensor of shape {tuple(x.shape)} on {x.device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    n = x.numel()
    if n == 0:
        return out
    if num_warps is None:
        num_warps = 8 if block >= 2048 else 4
    grid = (triton_cdiv(n, block),)
    _get_kernel()[grid](x, out, n, SRC_BF16=x.dtype == torch.bfloat16, SRC_FP16=x.dtype == torch.float16,
                        DST_FP16=dtype == torch.float16, BLOCK=block, num_warps=num_warps)
    return out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ----------------------------------------------------------------- custom op and public entry

@torch.library.custom_op("triton_marlin::bf16_convert", mutates_args=())
def _bf16_convert_op(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return convert_triton(x, dtype)


@_bf16_convert_op.register_fake
def _(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(x.shape, dtype=dtype, device=x.device)


def convert(x: torch.Tensor, dtype: torch.dtype, *, backend: str = "auto") -> torch.Tensor:
    """Convert ``x`` to ``dtype`` (one of the :data:`SUPPORTED` pairs) with round-to-nearest-even.

    ``backend``: ``auto`` (Triton where it runs: CUDA, or CPU under TRITON_INTERPRET=1; else the torch
    reference), ``triton`` or ``torch``. The path is recorded in :mod:`triton_marlin.dispatch`.
    """
    _check(x, dtype)
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend: expected 'auto', 'triton' or 'torch', got {backend!r}")
    use_triton = backend == "triton" or (backend == "auto" and triton_enabled_for(x.device))
    if use_triton:
        if not triton_enabled_for(x.device):
            raise ValueError(f"backend='triton': Triton cannot run on {x.device} here "
                             f"(CUDA, or CPU with TRITON_INTERPRET=1)")
        if x.is_contiguous():
            dispatch.record("bf16_convert", "triton")
            return _bf16_convert_op(x, dtype)
        if backend == "triton":
            raise ValueError("x: the Triton kernel needs a contiguous tensor")
        dispatch.warn_fallback("bf16_convert", "non-contiguous input; running the torch reference")
    dispatch.record("bf16_convert", "torch")
    return convert_reference(x, dtype)


def to_bfloat16(x: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """fp32/fp16 -> bf16, round to nearest even, NaN kept."""
    return convert(x, torch.bfloat16, backend=backend)


def from_bfloat16(x: torch.Tensor, dtype: torch.dtype = torch.float32, *, backend: str = "auto") -> torch.Tensor:
    """bf16 -> fp32 (exact) or fp16 (round to nearest even)."""
    return convert(x, dtype, backend=backend)
