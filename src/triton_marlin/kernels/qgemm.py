"""Quantized GEMM/GEMV Triton kernels (placeholder until the kernels land)."""
from __future__ import annotations


def unsupported_reason(x, qweight) -> str | None:
    return "the quantized GEMM kernels are not implemented yet"


def qgemm(x2d, qweight, bias=None):
    raise NotImplementedError("quantized GEMM Triton kernels are not implemented yet")
