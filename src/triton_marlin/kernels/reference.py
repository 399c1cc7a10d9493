"""Torch reference of the quantized matmul: what the CPU/MPS path runs and what kernels must equal."""
from __future__ import annotations

import torch

from ..formats import QuantizedTensor


def qmatmul_reference(x: torch.Tensor, qweight: QuantizedTensor, bias: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """``x[..., K] @ W.T (+ bias)`` with W dequantized exactly; fp32 accumulation, output in x.dtype."""
    w = qweight.dequantize(torch.float32)
    out = x.to(torch.float32) @ w.t()
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(x.dtype)
