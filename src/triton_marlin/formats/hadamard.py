"""Randomized Hadamard transforms (incoherence processing): the reference math formats need.

Convention (see docs/formats-trellis.md). For a dimension ``D`` split into blocks of ``b`` (a power
of two, at most 128), with a random sign vector ``s`` (``int8`` +-1, length ``D``):

    V = blockdiag(H_b) @ diag(s),     H_b = Sylvester Hadamard / sqrt(b)   (symmetric, orthonormal)

``rotate(x, s)`` computes ``x @ V.T`` on the last dimension (multiply by the signs, then the
normalized block Walsh-Hadamard transform) and ``unrotate(y, s)`` computes ``y @ V`` (transform, then
signs). They are inverses. A weight ``W [N, K]`` rotated on its input side is ``W @ V.T``
(``rotate(W, s)``); activations then see ``x @ V.T`` (``rotate(x, s)``) and ``x @ W.T`` is unchanged.
"""
from __future__ import annotations

import functools

import torch

MAX_BLOCK = 128


def hadamard_block_size(dim: int, max_block: int = MAX_BLOCK) -> int:
    """The largest power of two ``<= max_block`` that divides ``dim``."""
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    b = 1
    while b * 2 <= max_block and dim % (b * 2) == 0:
        b *= 2
    return b


@functools.lru_cache(maxsize=16)
def _sylvester_cpu(block: int) -> torch.Tensor:
    if block & (block - 1):
        raise ValueError(f"Hadamard block must be a power of two, got {block}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < block:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def sylvester(block: int, dtype: torch.dtype = torch.float32, device="cpu") -> torch.Tensor:
    """The unnormalized +-1 Sylvester Hadamard matrix of order ``block``."""
    return _sylvester_cpu(block).to(device=device, dtype=dtype)


def random_signs(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` random +-1 values as int8 (the sign vector stored with a rotated weight)."""
    bits = torch.randint(0, 2, (n,), generator=generator, dtype=torch.int8)
    return (1 - 2 * bits).to(torch.int8)


def _check(x: torch.Tensor, signs: torch.Tensor, block: int) -> int:
    D = x.shape[-1]
    if signs.shape != (D,):
        raise ValueError(f"signs must have shape ({D},) to match the last dimension of x, got "
                         f"{tuple(signs.shape)}")
    if block <= 0 or block & (block - 1) or D % block:
        raise ValueError(f"Hadamard block {block} must be a power of two dividing {D}")
    return D


def fwht(x: torch.Tensor, block: int) -> torch.Tensor:
    """Normalized block Walsh-Hadamard transform on the last dimension, computed in float64."""
    D = x.shape[-1]
    h = sylvester(block, torch.float64, x.device) / block ** 0.5
    xb = x.to(torch.float64).reshape(*x.shape[:-1], D // block, block)
    return (xb @ h).reshape(x.shape)


def rotate(x: torch.Tensor, signs: torch.Tensor, block: int) -> torch.Tensor:
    """``x @ V.T`` on the last dimension (float64 result)."""
    _check(x, signs, block)
    return fwht(x.to(torch.float64) * signs.to(device=x.device, dtype=torch.float64), block)


def unrotate(y: torch.Tensor, signs: torch.Tensor, block: int) -> torch.Tensor:
    """``y @ V`` on the last dimension, the inverse of :func:`rotate` (float64 result)."""
    _check(y, signs, block)
    return fwht(y, block) * signs.to(device=y.device, dtype=torch.float64)


def rotate_hessian(H: torch.Tensor, signs: torch.Tensor, block: int) -> torch.Tensor:
    """``V H V.T``: the Hessian ``X.T X`` of the rotated activations ``X V.T``."""
    A = rotate(H, signs, block)              # H V^T (rows rotated)
    return rotate(A.transpose(0, 1).contiguous(), signs, block).transpose(0, 1).contiguous()
