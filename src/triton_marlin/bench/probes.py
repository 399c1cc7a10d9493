"""Small Triton kernels that probe the memory system (used by benchmarks/bench_memory_access.py).

``strided_copy(src, out, stride)``: ``out[i] = src[i * stride]``. With stride 1 the warp's loads coalesce into
full cache lines; with stride s each 32-byte sector fetched serves 32/(s*itemsize) useful bytes (until a sector
holds a single element), which is the effect the benchmark measures.
"""
from __future__ import annotations

import torch

__all__ = ["strided_copy", "strided_copy_reference"]

_kernel = None


def _get_kernel():
    global _kernel
    if _kernel is None:
        import triton
        import triton.language as tl

        @triton.jit
        def _strided_copy_kernel(src_ptr, out_ptr, n, stride, BLOCK: tl.constexpr):
            """out[i] = src[i * stride] for i < n; src holds at least (n - 1) * stride + 1 elements."""
            offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
            mask = offs < n
            vals = tl.load(src_ptr + offs * stride, mask=mask)
            tl.store(out_ptr + offs, vals, mask=mask)

        _kernel = _strided_copy_kernel
    return _kernel


def strided_copy_reference(src: torch.Tensor, n: int, stride: int) -> torch.Tensor:
    return src[: (n - 1) * stride + 1 : stride].clone()


def strided_copy(src: torch.Tensor, out: torch.Tensor, stride: int, block: int = 1024) -> torch.Tensor:
    """Gather every ``stride``-th element of the flat ``src`` into the contiguous ``out`` (Triton)."""
    if not (src.is_contiguous() and out.is_contiguous()):
        raise ValueError("src/out: expected contiguous tensors")
    if src.dtype != out.dtype or src.device != out.device:
        raise ValueError(f"out: expected dtype {src.dtype} on {src.device}, got {out.dtype} on {out.device}")
    if stride < 1:
        raise ValueError(f"stride: expected >= 1, got {stride}")
    n = out.numel()
    if n and (n - 1) * stride + 1 > src.numel():
        raise ValueError(f"src: {src.numel()} elements cannot feed {n} outputs at stride {stride}")
    if n:
        _get_kernel()[(-(-n // block),)](src, out, n, stride, BLOCK=block)
    return out
