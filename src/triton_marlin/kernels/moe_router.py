"""Router logits of an MoE layer in one kernel: ``x [T, H]`` (fp16/bf16/fp32) times the fp32 router weight
``[E, H]``, products and sums in fp32 (as ``F.linear(x.float(), W)``, the reference models' formula; from 16 tokens the
products come from tensor cores in 3xTF32, within 2**-21 of fp32 each), without materializing ``x.float()``.

The K range is split over programs so a few tokens still fill the GPU; each split writes its own fp32 plane
``parts [S, T, E]`` (plain stores, no atomics, no zero fill) and the routing kernel sums the planes in a fixed
order as it loads them (:func:`triton_marlin.kernels.moe_align.route_triton`). Against ``torch`` (an fp32 cast
kernel, an SGEMM and a split-K reduction: 12.5 us of a 256-token GLM-4.7-Flash layer on the H200, 5.6 us at one
token) that is one launch. The sums run in another order than cuBLAS's, so logits may differ in the last bits.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _router_logits_kernel(x_ptr, stride_x, w_ptr, parts_ptr, T, E, H, K_PER_SPLIT,
                          BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr):
    """``parts[s, t, e] = sum over k of split s of x[t, k] * w[e, k]`` in fp32 on CUDA cores: for a few tokens
    a ``[BLOCK_T, BLOCK_E, BLOCK_K]`` product reduced over k each step; from 16 tokens tensor cores with 3xTF32
    (``tl.dot(input_precision="tf32x3")``: fp16 and bf16 activations are exact in TF32 and W is carried as a
    high and a low TF32 part, so each product is within 2**-21 of fp32's; at 256 GLM tokens on the H200 the
    broadcast form took 39 us and an IEEE fp32 ``tl.dot`` 13 us). Grid: (T blocks, E blocks, splits)."""
    pid_t = tl.program_id(0)
    pid_e = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    t_ok = offs_t < T
    e_ok = offs_e < E
    k_begin = pid_s * K_PER_SPLIT
    k_end = tl.minimum(k_begin + K_PER_SPLIT, H)
    x_rows = x_ptr + offs_t.to(tl.int64)[:, None] * stride_x
    w_rows = w_ptr + offs_e.to(tl.int64)[:, None] * H
    acc = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < k_end
        xs = tl.load(x_rows + kk[None, :], mask=t_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        ws = tl.load(w_rows + kk[None, :], mask=e_ok[:, None] & k_ok[None, :], other=0.0)
        if BLOCK_T >= 16:  # tensor cores, 3xTF32: fp16/bf16 x is exact in TF32, W split into two TF32 parts
            acc = tl.dot(xs, tl.trans(ws), acc, input_precision="tf32x3")
        else:
            acc += tl.sum(xs[:, None, :] * ws[None, :, :], axis=2)
    out = parts_ptr + pid_s.to(tl.int64) * T * E + offs_t[:, None] * E + offs_e[None, :]
    tl.store(out, acc, mask=t_ok[:, None] & e_ok[None, :])


def router_splits(T: int, E: int, H: int, block_t: int, block_e: int, min_k: int, target_programs: int = 264) -> int:
    """K splits: enough programs for about two per SM of a 132-SM part, at least ``min_k`` k per split."""
    tiles = max(1, triton.cdiv(T, block_t) * triton.cdiv(E, block_e))
    return max(1, min(triton.cdiv(target_programs, tiles), H // min_k))


def router_logit_parts(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``[S, T, E]`` fp32 partial router logits of ``x [T, H]`` against ``weight [E, H]`` (fp32, contiguous);
    their sum over the first dimension is ``x.float() @ weight.T``."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x must be [T, H] and weight [E, H] with the same H, got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if weight.dtype != torch.float32 or not weight.is_contiguous():
        raise ValueError("the router weight must be contiguous fp32")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x must be fp16, bf16 or fp32, got {x.dtype}")
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device}, the router weight on {weight.device}")
    T, H = x.shape
    E = weight.shape[0]
    if T == 0:
        return torch.zeros((1, 0, E), dtype=torch.float32, device=x.device)
    if x.stride(1) != 1:
        x = x.contiguous()
    if T >= 16:  # short splits (128 k, two steps of 64): at 256 GLM tokens 32 k steps per split took 5.6 us
        block_t, block_e, block_k, min_k = 16, min(64, max(16, triton.next_power_of_2(E))), 64, 128
    else:
        block_t = triton.next_power_of_2(T)
        block_e = 16 if block_t >= 8 else 8
        block_k = 32 if block_t >= 8 else 64
        min_k = 256
    splits = router_splits(T, E, H, block_t, block_e, min_k)
    k_per_split = triton.cdiv(triton.cdiv(H, splits), block_k) * block_k
    splits = triton.cdiv(H, k_per_split)  # no empty splits
    parts = torch.empty((splits, T, E), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(T, block_t), triton.cdiv(E, block_e), splits)
    _router_logits_kernel[grid](x, x.stride(0), weight, parts, T, E, H, k_per_split,
                                BLOCK_T=block_t, BLOCK_E=block_e, BLOCK_K=block_k, num_warps=4)
    return parts
