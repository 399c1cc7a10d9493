"""Public functional ops: argument checks, then the Triton kernel or the torch reference."""
from __future__ import annotations

import torch

from . import dispatch
from .device import triton_enabled_for
from .formats import QuantizedTensor
from .kernels.reference import qmatmul_reference

ACTIVATION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BACKENDS = ("auto", "triton", "torch")


def check_qmatmul_args(x: torch.Tensor, qweight: QuantizedTensor, bias: torch.Tensor | None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(qweight, QuantizedTensor):
        raise TypeError(f"qweight must be a QuantizedTensor, got {type(qweight).__name__}")
    N, K = qweight.shape
    if x.dim() < 1 or x.shape[-1] != K:
        raise ValueError(f"x has shape {tuple(x.shape)}; its last dimension must equal the weight's "
                         f"K={K} (weight shape [N={N}, K={K}])")
    if x.dtype not in ACTIVATION_DTYPES:
        raise TypeError(f"x dtype must be float16, bfloat16 or float32, got {x.dtype}")
    if x.device != qweight.device:
        raise ValueError(f"x is on {x.device} but the weight is on {qweight.device}; move one of them")
    if bias is not None:
        if bias.shape != (N,):
            raise ValueError(f"bias must have shape ({N},), got {tuple(bias.shape)}")
        if bias.device != x.device:
            raise ValueError(f"bias is on {bias.device} but x is on {x.device}")


def _triton_kernel_for(x: torch.Tensor, qweight: QuantizedTensor):
    """The Triton implementation for this weight's format and why it can't run (None when it can)."""
    if qweight.format.startswith("trellis"):
        from .kernels import trellis_gemm  # noqa: PLC0415  (imports triton)

        return trellis_gemm.trellis_qgemm, trellis_gemm.unsupported_reason(x, qweight)
    from .kernels import qgemm  # noqa: PLC0415  (imports triton)

    return qgemm.qgemm, qgemm.unsupported_reason(x, qweight)


def qmatmul(x: torch.Tensor, qweight: QuantizedTensor, bias: torch.Tensor | None = None, *,
            backend: str = "auto") -> torch.Tensor:
    """``x[..., K] @ W.T (+ bias) -> [..., N]`` for a quantized weight ``W [N, K]``.

    ``backend``: ``auto`` runs the Triton kernel where Triton can run (CUDA, or CPU under
    ``TRITON_INTERPRET=1``) and the torch reference elsewhere; ``triton`` or ``torch`` force one.
    The path taken is recorded in :mod:`triton_marlin.dispatch`.
    """
    check_qmatmul_args(x, qweight, bias)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    N, K = qweight.shape
    lead = x.shape[:-1]
    if x.numel() == 0:
        return x.new_empty((*lead, N))
    use_triton = backend == "triton" or (backend == "auto" and triton_enabled_for(x.device))
    if use_triton:
        kernel, reason = _triton_kernel_for(x, qweight)
        if reason is None:
            dispatch.record("qmatmul", "triton")
            out = kernel(x.reshape(-1, K), qweight, bias)
            return out.reshape(*lead, N)
        if backend == "triton":
            raise ValueError(f"qmatmul: the Triton kernel cannot run this call: {reason}")
        if x.device.type == "cuda":
            dispatch.warn_fallback("qmatmul", f"running the torch reference ({reason})")
    dispatch.record("qmatmul", "torch")
    return qmatmul_reference(x, qweight, bias)
