"""The front of an MoE layer in one kernel: router logits, routing and the alignment's chunk counts.

Logits: ``x [T, H]`` (fp16/bf16/fp32) times the fp32 router weight ``[E, H]``, products and sums in fp32 (as
``F.linear(x.float(), W)``, the reference models' formula; from 16 tokens the products come from tensor cores
in 3xTF32, within 2**-21 of fp32 each), without materializing ``x.float()``. The K range is split over
programs so a few tokens still fill the GPU; each split writes its own fp32 plane of ``parts [S, T, E]``
(plain stores, no atomics, no zero fill).

Routing: the programs of a token block count their arrivals on that block's int32 counter (a barrier so
every thread's plane stores come first, then one ``atomic_add`` with acquire-release semantics); the last
to arrive sums the block's planes in plane order (loads that bypass L1), routes the block
(:func:`triton_marlin.kernels.moe_align._route_tile`: ids and weights, shared slots appended), writes the
block's row of chunk counts for the alignment (:mod:`triton_marlin.kernels.moe_align`: the slots per expert
and each slot's rank, so the alignment needs no counting launch) and sets the counter back to 0 for the next
launch. Which program arrives last varies; what it computes does not (the same loads, summed in the same
order), so the outputs are the same bit for bit on every run.

The counters live in one zeroed buffer per device, allocated on first use and never freed (a CUDA graph
captured later keeps its address); each launch leaves them zero. Launches that overlap on one device (two
streams at once) would share them: don't. Against ``torch`` (an fp32 cast kernel, an SGEMM, a split-K
reduction: 12.5 us of a 256-token GLM-4.7-Flash layer on the H200) plus a routing launch this is one launch.
The sums run in another order than cuBLAS's, so logits may differ in the last bits.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .moe_align import _route_chunk_counts, _route_tile, check_num_valid, route_constexprs


@triton.jit(do_not_specialize=["T"])  # one token: T == 1 must stay a runtime value (``T.to`` below)
def _router_route_kernel(x_ptr, stride_x, w_ptr, parts_ptr, counter_ptr, bias_ptr, ids_ptr, wts_ptr, nvalid_ptr,
                         counts_ptr, T, E, H, K_PER_SPLIT,
                         BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
                         NUM_SPLITS: tl.constexpr,
                         TOP_K: tl.constexpr, K_TOTAL: tl.constexpr, N_SHARED: tl.constexpr,
                         SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, N_GROUP: tl.constexpr,
                         TOPK_GROUP: tl.constexpr, GROUP_SIZE: tl.constexpr, NORM: tl.constexpr,
                         SCALE: tl.constexpr, HAS_NVALID: tl.constexpr, BLOCK_ER: tl.constexpr,
                         BLOCK_KR: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_SH: tl.constexpr):
    """Grid (T blocks, E blocks, NUM_SPLITS). x [T, H] (row stride ``stride_x``), w fp32 [E, H] contiguous,
    parts fp32 [NUM_SPLITS, T, E] (scratch), counter int32 [>= T blocks] (zero on entry, zero on exit),
    ids int32 / weights fp32 [T, K_TOTAL], counts int32 [T blocks, E + N_SHARED + BLOCK_T * K_TOTAL].

    ``parts[s, t, e] = sum over k of split s of x[t, k] * w[e, k]`` in fp32: for a few tokens a
    ``[BLOCK_T, BLOCK_E, BLOCK_K]`` product reduced over k each step on CUDA cores; from 16 tokens tensor cores
    with 3xTF32 (``tl.dot(input_precision="tf32x3")``: fp16 and bf16 activations are exact in TF32 and W is
    carried as a high and a low TF32 part, so each product is within 2**-21 of fp32's; at 256 GLM tokens on
    the H200 the broadcast form took 39 us and an IEEE fp32 ``tl.dot`` 13 us). Then the last program of the
    token block to arrive routes it (module docstring)."""
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
    plane = T.to(tl.int64) * E
    tl.store(parts_ptr + pid_s * plane + offs_t[:, None] * E + offs_e[None, :], acc,
             mask=t_ok[:, None] & e_ok[None, :])

    # arrival count of the token block: every thread's stores above precede the release of the atomic
    tl.debug_barrier()
    arrived = tl.atomic_add(counter_ptr + pid_t, 1, sem="acq_rel", scope="gpu")
    if arrived == tl.num_programs(1) * NUM_SPLITS - 1:  # the last program of this token block
        er = tl.arange(0, BLOCK_ER)
        part = parts_ptr + offs_t[:, None] * E + er[None, :]
        m = t_ok[:, None] & (er < E)[None, :]
        x = tl.load(part, mask=m, other=0.0, cache_modifier=".cg")
        for p in tl.static_range(1, NUM_SPLITS):  # plane order, as the other splits wrote them (via L2)
            x += tl.load(part + p * plane, mask=m, other=0.0, cache_modifier=".cg")
        ids, weights, chosen, valid = _route_tile(
            x, offs_t, t_ok, bias_ptr, nvalid_ptr, E, TOP_K, K_TOTAL, N_SHARED, SIGMOID, HAS_BIAS, N_GROUP,
            TOPK_GROUP, GROUP_SIZE, NORM, SCALE, HAS_NVALID, BLOCK_ER, BLOCK_KR, BLOCK_G)
        k_idx = tl.arange(0, BLOCK_KR)[None, :]
        out_mask = t_ok[:, None] & (k_idx < K_TOTAL)
        tl.store(ids_ptr + offs_t[:, None] * K_TOTAL + k_idx, ids, mask=out_mask)
        tl.store(wts_ptr + offs_t[:, None] * K_TOTAL + k_idx, weights, mask=out_mask)
        _route_chunk_counts(counts_ptr, pid_t, ids, chosen, valid, E, E + N_SHARED + BLOCK_T * K_TOTAL,
                            TOP_K, K_TOTAL, N_SHARED, BLOCK_ER, BLOCK_KR, BLOCK_SH)
        tl.store(counter_ptr + pid_t, 0)  # ready for the next launch (kernel boundaries order the two)


def router_splits(T: int, E: int, H: int, block_t: int, block_e: int, min_k: int, target_programs: int = 264) -> int:
    """K splits: enough programs for about two per SM of a 132-SM part, at least ``min_k`` k per split."""
    tiles = max(1, triton.cdiv(T, block_t) * triton.cdiv(E, block_e))
    return max(1, min(triton.cdiv(target_programs, tiles), H // min_k))


def router_blocks(T: int, E: int) -> tuple[int, int, int, int]:
    """(BLOCK_T, BLOCK_E, BLOCK_K, min k per split) of the logits part of the kernel. Below 16 tokens the kernel
    runs one warp per program: the last program's routing of a few tokens is a chain of reductions over the
    experts, each crossing warps (shared memory and a barrier) when four warps share a row (1 token, H200:
    6.95 us for the fused kernel with four warps against 5.11 us for the logits and routing kernels apart)."""
    if T >= 16:  # short splits (128 k, two steps of 64): at 256 GLM tokens 32 k steps per split took 5.6 us
        return 16, min(64, max(16, triton.next_power_of_2(E))), 64, 128
    block_t = triton.next_power_of_2(T)
    return block_t, (16 if block_t >= 8 else 8), (32 if block_t >= 8 else 64), 256


_MAX_COUNTERS = 1 << 16  # token blocks per launch: 1M tokens at 16 a block (256 KB per device)
_COUNTERS: dict[torch.device, torch.Tensor] = {}


def _counters(device: torch.device) -> torch.Tensor:
    """The device's arrival counters (zero between launches), allocated once: a buffer that a CUDA graph
    captured later may keep using must never be freed or replaced."""
    key = torch.device(device.type, device.index if device.index is not None or device.type != "cuda"
                       else torch.cuda.current_device())
    buf = _COUNTERS.get(key)
    if buf is None:
        if key.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("the router's arrival counters are allocated on the first launch on a device; "
                               "run the layer once before capturing it into a CUDA graph")
        buf = _COUNTERS[key] = torch.zeros(_MAX_COUNTERS, dtype=torch.int32, device=key)
    return buf


class RouterOutput(NamedTuple):
    """What :func:`router_route` returns."""
    ids: torch.Tensor            # int32 [T, top_k + num_shared]: routed experts, then the shared ones
    weights: torch.Tensor        # fp32 [T, top_k + num_shared]
    chunk_counts: torch.Tensor   # int32 [T blocks, E + num_shared + BLOCK_T * (top_k + num_shared)]
    logit_parts: torch.Tensor    # fp32 [S, T, E]: the router logits are their sum over the first dimension


def router_route(x: torch.Tensor, weight: torch.Tensor, config, correction_bias: torch.Tensor | None = None,
                 num_valid_tokens: torch.Tensor | None = None, num_shared: int = 0) -> RouterOutput:
    """Router logits of ``x [T, H]`` against ``weight [E, H]`` (fp32, contiguous), routed with ``config`` (a
    :class:`triton_marlin.moe.routing.RoutingConfig`), in one launch of ``_router_route_kernel``.

    ``num_valid_tokens`` (int32 ``[1]`` on x's device): rows at and beyond it are padding (ids -1, weights 0,
    counted nowhere). The chunk counts describe ``ids`` for
    :func:`triton_marlin.kernels.moe_align.align_triton` (``num_experts = E + num_shared``)."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x must be [T, H] and weight [E, H] with the same H, got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if weight.dtype != torch.float32 or not weight.is_contiguous():
        raise ValueError("the router weight must be contiguous fp32")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x must be fp16, bf16 or fp32, got {x.dtype}")
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device}, the router weight on {weight.device}")
    if weight.shape[0] != config.num_experts:
        raise ValueError(f"the router weight has {weight.shape[0]} rows, the routing {config.num_experts} experts")
    if correction_bias is not None and (correction_bias.shape != (config.num_experts,)
                                        or correction_bias.device != x.device):
        raise ValueError(f"correction_bias must be ({config.num_experts},) on {x.device}")
    check_num_valid(num_valid_tokens, x.device)
    if not isinstance(num_shared, int) or num_shared < 0:
        raise ValueError(f"num_shared must be an int >= 0, got {num_shared!r}")
    T, H = x.shape
    E = weight.shape[0]
    dev = x.device
    k_total = config.top_k + num_shared
    block_t, block_e, block_k, min_k = router_blocks(max(T, 1), E)
    t_blocks = triton.cdiv(T, block_t)
    ids = torch.empty((T, k_total), dtype=torch.int32, device=dev)
    weights = torch.empty((T, k_total), dtype=torch.float32, device=dev)
    counts = torch.empty((t_blocks, E + num_shared + block_t * k_total), dtype=torch.int32, device=dev)
    if T == 0:
        return RouterOutput(ids, weights, counts, torch.zeros((1, 0, E), dtype=torch.float32, device=dev))
    if t_blocks > _MAX_COUNTERS:
        raise ValueError(f"{T} tokens are {t_blocks} token blocks; the router kernel counts at most {_MAX_COUNTERS}")
    if x.stride(1) != 1:
        x = x.contiguous()
    splits = router_splits(T, E, H, block_t, block_e, min_k)
    k_per_split = triton.cdiv(triton.cdiv(H, splits), block_k) * block_k
    splits = triton.cdiv(H, k_per_split)  # no empty splits
    parts = torch.empty((splits, T, E), dtype=torch.float32, device=dev)
    bias = correction_bias.contiguous() if correction_bias is not None else weight
    nvalid = num_valid_tokens if num_valid_tokens is not None else ids
    grid = (t_blocks, triton.cdiv(E, block_e), splits)
    _router_route_kernel[grid](
        x, x.stride(0), weight, parts, _counters(dev), bias, ids, weights, nvalid, counts, T, E, H, k_per_split,
        BLOCK_T=block_t, BLOCK_E=block_e, BLOCK_K=block_k, NUM_SPLITS=splits,
        **{k if k not in ("BLOCK_E", "BLOCK_K") else k + "R": v
           for k, v in route_constexprs(config, E, num_shared, correction_bias is not None,
                                        num_valid_tokens is not None).items()},
        BLOCK_SH=triton.next_power_of_2(max(num_shared, 1)), num_warps=4 if block_t >= 16 else 1)
    return RouterOutput(ids, weights, counts, parts)
