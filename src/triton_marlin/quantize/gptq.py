"""GPTQ for the integer formats (int2/3/4/8), with act-order, damping, and optional Hadamard rotation.

GPTQ quantizes the columns of ``W [N, K]`` one at a time and spreads each column's rounding error
over the columns not yet quantized, weighted by the inverse Hessian ``H = X^T X`` of the layer's
calibration activations. It minimizes the proxy loss ``tr((W - Q) H (W - Q)^T)`` greedily.

``rotate=True`` (MR-GPTQ) quantizes ``W V^T`` with the Hessian ``V H V^T`` instead, ``V`` a random
block Hadamard transform (:mod:`triton_marlin.formats.hadamard`); the sign vector is stored in the
artifact (``had_signs``, meta ``hadamard_block``) so that dequantization gives back ``Q V`` exactly
and activations are rotated by ``x V^T`` at run time.
"""
from __future__ import annotations

import torch

from ..formats import QuantizedTensor, get_format
from ..formats import hadamard
from ..formats.base import check_scale_dtype, check_weight, dtype_name
from ..formats.integer import IntFormat
from ..formats.packing import pack_codes
from . import register_method


def check_hessian(hessian, K: int, device) -> torch.Tensor:
    """Validate ``hessian [K, K]`` and return it as float64 on ``device``."""
    if hessian is None:
        raise ValueError("this method needs hessian=H, a [K, K] matrix X^T X of calibration activations "
                         "(K = in_features)")
    if not isinstance(hessian, torch.Tensor):
        raise TypeError(f"hessian must be a torch.Tensor, got {type(hessian).__name__}")
    if hessian.shape != (K, K):
        raise ValueError(f"hessian must have shape ({K}, {K}) to match the weight's K, got "
                         f"{tuple(hessian.shape)}")
    H = hessian.to(device=device, dtype=torch.float64)
    if not torch.isfinite(H).all():
        raise ValueError("hessian contains NaN/inf values")
    if not torch.allclose(H, H.t(), rtol=1e-5, atol=1e-8 * H.abs().max().item()):
        raise ValueError("hessian must be symmetric (X^T X)")
    return H


def damped_inverse_cholesky(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (upper Cholesky factor of (H + damp * mean(diag H) I)^-1, mask of dead columns).

    Columns with zero Hessian diagonal (inputs never active) get a unit diagonal; their weights are
    irrelevant to the proxy loss.
    """
    if not (isinstance(damp, (int, float)) and 0 <= damp < 1):
        raise ValueError(f"damp must be a float in [0, 1), got {damp!r}")
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    mean_diag = torch.diag(H).mean()
    H.diagonal().add_(damp * mean_diag)
    L, info = torch.linalg.cholesky_ex(H)
    extra = damp
    while info.item() != 0:                     # not positive definite: add damping until it is
        extra = max(extra * 10, 1e-6)
        if extra > 1e3:
            raise ValueError("hessian is not positive semi-definite (Cholesky failed after damping)")
        H.diagonal().add_(extra * mean_diag)
        L, info = torch.linalg.cholesky_ex(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True), dead


def proxy_loss(weight: torch.Tensor, q: torch.Tensor, hessian: torch.Tensor) -> float:
    """``tr((W - Q) H (W - Q)^T)`` in float64."""
    E = weight.to(torch.float64) - q.to(device=weight.device, dtype=torch.float64)
    H = hessian.to(device=weight.device, dtype=torch.float64)
    return float(((E @ H) * E).sum())


class _IntGrid:
    """Scale/zero-point choice and rounding of one integer format, matching its dequantizer."""

    def __init__(self, bits: int, symmetric: bool, scale_dtype: torch.dtype):
        self.bits, self.symmetric, self.scale_dtype = bits, symmetric, scale_dtype
        self.maxq = 2 ** bits - 1

    def params(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero ``[N]`` for the group of columns ``w [N, g]`` (same rule as RTN)."""
        if self.symmetric:
            scale = w.abs().amax(dim=1) / (2 ** (self.bits - 1) - 1)
            scale = scale.to(self.scale_dtype).to(w.dtype)
            zero = torch.full_like(scale, 2 ** (self.bits - 1))
        else:
            lo, hi = w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0)
            scale = ((hi - lo) / self.maxq).to(self.scale_dtype).to(w.dtype)
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            zero = torch.round(-lo / safe).clamp(0, self.maxq)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, zero

    def quantize(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor):
        q = torch.clamp(torch.round(w / scale) + zero, 0, self.maxq)
        return q, (q - zero) * scale


@register_method("gptq")
def quantize_gptq(weight: torch.Tensor, format: str, group_size: int, *, hessian: torch.Tensor = None,
                  symmetric: bool = True, scale_dtype: torch.dtype = torch.float16,
                  act_order: bool = False, damp: float = 0.01, block_size: int = 128,
                  rotate: bool = False, seed: int = 0, device=None) -> QuantizedTensor:
    """GPTQ into an integer format (``int2/3/4/8``, grouped, symmetric or not).

    Options: ``hessian`` ([K, K], required), ``act_order`` (quantize columns in order of decreasing
    Hessian diagonal; group scales are then fixed from the weights up front), ``damp`` (fraction of the
    mean diagonal added to H), ``block_size`` (lazy-update block), ``rotate`` (MR-GPTQ: Hadamard
    rotation first, recorded in the artifact), ``seed`` (rotation signs), ``device``.
    """
    check_weight(weight)
    check_scale_dtype(scale_dtype)
    fmt = get_format(format)
    if not isinstance(fmt, IntFormat):
        raise ValueError(f"method 'gptq' produces the integer formats int2/3/4/8, got format {format!r}")
    N, K = weight.shape
    group = fmt.check_group_size(group_size, K)
    dev = torch.device(device) if device is not None else weight.device
    H = check_hessian(hessian, K, dev)
    W = weight.to(device=dev, dtype=torch.float64)
    signs, block = None, None
    if rotate:
        block = hadamard.hadamard_block_size(K)
        signs = hadamard.random_signs(K, torch.Generator().manual_seed(int(seed))).to(dev)
        W = hadamard.rotate(W, signs, block)
        H = hadamard.rotate_hessian(H, signs, block)
    U, dead = damped_inverse_cholesky(H, damp)
    W = W.clone()
    W[:, dead] = 0.0
    grid = _IntGrid(fmt.bits, symmetric, scale_dtype)
    G = K // group
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        U, _ = damped_inverse_cholesky(H[perm][:, perm], damp)
    else:
        perm = torch.arange(K, device=dev)
    group_of = perm // group                       # original group of each processed column
    scales = torch.zeros(G, N, dtype=torch.float64, device=dev)
    zeros = torch.zeros(G, N, dtype=torch.float64, device=dev)
    have = torch.zeros(G, dtype=torch.bool)
    if act_order:                                  # static groups from the (rotated) weights
        for g in range(G):
            scales[g], zeros[g] = grid.params(W[:, g * group:(g + 1) * group])
        have[:] = True
    Wp = W[:, perm].clone()
    codes = torch.zeros(N, K, dtype=torch.float64, device=dev)
    for b0 in range(0, K, block_size):
        b1 = min(K, b0 + block_size)
        Wb = Wp[:, b0:b1].clone()
        Err = torch.zeros_like(Wb)
        for j in range(b1 - b0):
            col = b0 + j
            g = int(group_of[col])
            if not have[g]:                        # dynamic groups: set when the group starts
                scales[g], zeros[g] = grid.params(torch.cat([Wb[:, j:], Wp[:, b1:]], 1)[:, :group])
                have[g] = True
            q, deq = grid.quantize(Wb[:, j], scales[g], zeros[g])
            codes[:, col] = q
            err = (Wb[:, j] - deq) / U[col, col]
            Wb[:, j:] -= err.unsqueeze(1) * U[col, col:b1].unsqueeze(0)
            Err[:, j] = err
        Wp[:, b1:] -= Err @ U[b0:b1, b1:]
    inv = torch.argsort(perm)
    codes = codes[:, inv].to(torch.uint8)
    tensors = pack_codes(codes, fmt.bits)
    tensors["scales"] = scales.to(scale_dtype).contiguous()
    if not symmetric:
        tensors["zeros"] = zeros.to(torch.uint8).contiguous()
    meta = {"format": fmt.name, "bits": fmt.bits, "symmetric": bool(symmetric),
            "scale_dtype": dtype_name(scale_dtype), "layout": fmt.layout_name(), "method": "gptq",
            "act_order": bool(act_order)}
    if rotate:
        tensors["had_signs"] = signs.to(torch.int8)
        meta["hadamard_block"] = block
    return QuantizedTensor(fmt.name, (N, K), group_size, tensors, meta)
