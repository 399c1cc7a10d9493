"""MoE routing and token/expert alignment kernels.

- ``_route_kernel``: router logits -> top-k expert ids and weights per token (softmax, or sigmoid with the
  noaux_tc correction bias, group-limited selection, renormalization, scaling), with optional shared-expert
  slots appended (id ``E + s``, weight 1) and rows at or beyond a device-side token count marked as padding.
  Reference: :func:`triton_marlin.moe.routing.route_reference`.
- alignment: sort the token slots by expert and pad every expert's run to the GEMM block size, so each
  block of ``BLOCK_M`` sorted rows belongs to exactly one expert. Reference:
  :func:`triton_marlin.moe.align.align_reference`. ``_align_kernel`` does it in one program;
  ``_align_hist_kernel`` + ``_align_scatter_kernel`` spread it over programs (count per chunk of slots, then
  scan + scatter), and the scatter kernel alone (``FROM_IDS``) serves small inputs in one launch.
  :func:`align_triton` picks (:func:`align_method`).

All are meant to be launched inside a CUDA graph: every output has a size known from the input shapes
alone (no host sync), and no output depends on the order in which programs run (no atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _route_kernel(logits_ptr, stride_t, part_stride, bias_ptr, ids_ptr, w_ptr, nvalid_ptr, E,
                  NUM_PARTS: tl.constexpr, TOP_K: tl.constexpr, K_TOTAL: tl.constexpr, N_SHARED: tl.constexpr,
                  SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, N_GROUP: tl.constexpr,
                  TOPK_GROUP: tl.constexpr, GROUP_SIZE: tl.constexpr, NORM: tl.constexpr,
                  SCALE: tl.constexpr, HAS_NVALID: tl.constexpr, BLOCK_E: tl.constexpr,
                  BLOCK_K: tl.constexpr, BLOCK_G: tl.constexpr):
    """One program per token. logits [T, E] (row stride ``stride_t``), or the sum of ``NUM_PARTS`` planes
    ``part_stride`` apart (split-K partial logits, summed in plane order); ids int32 / weights fp32
    [T, K_TOTAL] contiguous, K_TOTAL = TOP_K + N_SHARED."""
    t = tl.program_id(0)
    e = tl.arange(0, BLOCK_E)
    in_range = e < E
    x = tl.load(logits_ptr + t * stride_t + e, mask=in_range, other=0.0).to(tl.float32)
    for p in tl.static_range(1, NUM_PARTS):
        x += tl.load(logits_ptr + p * part_stride + t * stride_t + e, mask=in_range, other=0.0).to(tl.float32)
    if SIGMOID:
        scores = 1.0 / (1.0 + tl.exp(-x))
    else:
        xm = tl.where(in_range, x, float("-inf"))
        p = tl.exp(xm - tl.max(xm, axis=0))
        scores = p / tl.sum(p, axis=0)
    choice = scores
    if HAS_BIAS:
        choice = choice + tl.load(bias_ptr + e, mask=in_range, other=0.0).to(tl.float32)
    choice = tl.where(in_range, choice, float("-inf"))

    if N_GROUP > 1:
        # rank groups by the sum of their two best (biased) scores; keep the best TOPK_GROUP
        g_idx = tl.arange(0, BLOCK_G)
        group_of = e // GROUP_SIZE
        gscore = tl.full([BLOCK_G], float("-inf"), tl.float32)
        for g in tl.static_range(N_GROUP):
            in_g = (group_of == g) & in_range
            c = tl.where(in_g, choice, float("-inf"))
            m1 = tl.max(c, axis=0)
            first = tl.min(tl.where(c == m1, e, BLOCK_E), axis=0)
            m2 = tl.max(tl.where(e == first, float("-inf"), c), axis=0)
            gscore = tl.where(g_idx == g, m1 + m2, gscore)
        eligible = tl.zeros([BLOCK_E], tl.int1)
        for _ in tl.static_range(TOPK_GROUP):
            gm = tl.max(gscore, axis=0)
            gsel = tl.min(tl.where(gscore == gm, g_idx, BLOCK_G), axis=0)
            eligible = eligible | (group_of == gsel)
            gscore = tl.where(g_idx == gsel, float("-inf"), gscore)
        choice = tl.where(eligible, choice, float("-inf"))

    k_idx = tl.arange(0, BLOCK_K)
    ids = tl.full([BLOCK_K], -1, tl.int32)
    weights = tl.zeros([BLOCK_K], tl.float32)
    for j in tl.static_range(TOP_K):
        best = tl.max(choice, axis=0)
        pick = tl.min(tl.where(choice == best, e, BLOCK_E), axis=0)  # lowest index among ties
        picked_score = tl.sum(tl.where(e == pick, scores, 0.0), axis=0)
        ids = tl.where(k_idx == j, pick, ids)
        weights = tl.where(k_idx == j, picked_score, weights)
        choice = tl.where(e == pick, float("-inf"), choice)
    if NORM:
        weights = weights / (tl.sum(weights, axis=0) + 1e-20)
    weights = weights * SCALE
    if N_SHARED > 0:
        is_shared = (k_idx >= TOP_K) & (k_idx < K_TOTAL)
        ids = tl.where(is_shared, E + (k_idx - TOP_K), ids)
        weights = tl.where(is_shared, 1.0, weights)
    if HAS_NVALID:
        valid = t < tl.load(nvalid_ptr)
        ids = tl.where(valid, ids, -1)
        weights = tl.where(valid, weights, 0.0)
    out_mask = k_idx < K_TOTAL
    tl.store(ids_ptr + t * K_TOTAL + k_idx, ids, mask=out_mask)
    tl.store(w_ptr + t * K_TOTAL + k_idx, weights, mask=out_mask)


def route_triton(router_logits: torch.Tensor, config, correction_bias: torch.Tensor | None = None,
                 num_valid_tokens: torch.Tensor | None = None, num_shared: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch ``_route_kernel`` (``config``: a :class:`triton_marlin.moe.routing.RoutingConfig`).

    ``router_logits``: ``[T, E]``, or ``[S, T, E]`` partial logits whose sum over the first dimension are the
    logits (:func:`triton_marlin.kernels.moe_router.router_logit_parts`).
    Returns ``(ids int32, weights fp32)``, both ``[T, top_k + num_shared]`` (shared slots last).
    """
    if router_logits.dim() == 3:
        parts = router_logits if router_logits.stride(2) == 1 else router_logits.contiguous()
        num_parts = parts.shape[0]
        router_logits = parts[0]
        part_stride = parts.stride(0)
    else:
        num_parts, part_stride = 1, 0
    T, E = router_logits.shape
    if num_valid_tokens is not None:
        if (not isinstance(num_valid_tokens, torch.Tensor) or num_valid_tokens.numel() != 1
                or num_valid_tokens.dtype != torch.int32 or num_valid_tokens.device != router_logits.device):
            raise ValueError("num_valid_tokens must be an int32 tensor of one element on the logits' device")
    if not isinstance(num_shared, int) or num_shared < 0:
        raise ValueError(f"num_shared must be an int >= 0, got {num_shared!r}")
    k_total = config.top_k + num_shared
    dev = router_logits.device
    ids = torch.empty((T, k_total), dtype=torch.int32, device=dev)
    weights = torch.empty((T, k_total), dtype=torch.float32, device=dev)
    if T == 0:
        return ids, weights
    logits = router_logits if router_logits.stride(1) == 1 or num_parts > 1 else router_logits.contiguous()
    bias = correction_bias.contiguous() if correction_bias is not None else logits
    nvalid = num_valid_tokens if num_valid_tokens is not None else ids
    _route_kernel[(T,)](
        logits, logits.stride(0), part_stride, bias, ids, weights, nvalid, E,
        NUM_PARTS=num_parts, TOP_K=config.top_k, K_TOTAL=k_total, N_SHARED=num_shared,
        SIGMOID=config.scoring == "sigmoid", HAS_BIAS=correction_bias is not None,
        N_GROUP=config.n_group, TOPK_GROUP=config.topk_group, GROUP_SIZE=E // config.n_group,
        NORM=config.norm_topk_prob, SCALE=float(config.routed_scaling_factor),
        HAS_NVALID=num_valid_tokens is not None, BLOCK_E=triton.next_power_of_2(E),
        BLOCK_K=triton.next_power_of_2(k_total), BLOCK_G=triton.next_power_of_2(config.n_group),
        num_warps=1 if E <= 128 else 4)
    return ids, weights


@triton.jit
def _align_kernel(ids_ptr, sorted_ptr, expert_ids_ptr, npost_ptr, num_slots, E, capacity, max_blocks,
                  BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_B: tl.constexpr):
    """One program. ids int32 [num_slots] (flattened [T, k]; ids outside [0, E) belong to no expert).
    Writes sorted_ids int32 [capacity] (slot indices grouped by expert in slot order, each expert's run
    padded to a multiple of BLOCK_M with the sentinel ``num_slots``), expert_ids int32 [max_blocks]
    (expert of each BLOCK_M block, -1 past the end) and npost int32 [1] (rows in use)."""
    e_range = tl.arange(0, BLOCK_E)
    s_range = tl.arange(0, BLOCK_S)
    counts = tl.zeros([BLOCK_E], tl.int32)
    for s0 in range(0, num_slots, BLOCK_S):
        s = s0 + s_range
        ids = tl.load(ids_ptr + s, mask=s < num_slots, other=-1)
        counts += tl.sum(((ids[:, None] == e_range[None, :]) & (e_range < E)[None, :]).to(tl.int32), axis=0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    total = tl.sum(padded, axis=0)
    tl.store(npost_ptr, total)
    for c0 in range(0, capacity, BLOCK_S):
        c = c0 + s_range
        tl.store(sorted_ptr + c, tl.full([BLOCK_S], 0, tl.int32) + num_slots, mask=c < capacity)
    b_range = tl.arange(0, BLOCK_B)
    for b0 in range(0, max_blocks, BLOCK_B):
        b = b0 + b_range
        row = b * BLOCK_M
        # the expert whose padded run contains this row: the count of runs ending at or before it
        eid = tl.sum((ends[None, :] <= row[:, None]).to(tl.int32), axis=1)
        eid = tl.where(row < total, eid, -1)
        tl.store(expert_ids_ptr + b, eid, mask=b < max_blocks)
    tl.debug_barrier()  # the sentinel fill above must land before the slot stores below
    running = starts
    for s0 in range(0, num_slots, BLOCK_S):
        s = s0 + s_range
        ids = tl.load(ids_ptr + s, mask=s < num_slots, other=-1)
        onehot = ((ids[:, None] == e_range[None, :]) & (e_range < E)[None, :]).to(tl.int32)
        rank = tl.cumsum(onehot, axis=0) - onehot  # earlier slots of the same expert in this chunk
        pos = tl.sum(onehot * (rank + running[None, :]), axis=1)
        valid = (s < num_slots) & (ids >= 0) & (ids < E)
        tl.store(sorted_ptr + pos, s, mask=valid)
        running += tl.sum(onehot, axis=0)


# --- multi-program alignment: count (one program per chunk of slots), then scan + scatter ---------------
#
# The single-program ``_align_kernel`` above walks every chunk of slots twice on one SM (counting, then a
# cumsum of a one-hot [BLOCK_S, BLOCK_E] tile per chunk) and fills all padding rows itself: 47.6 us for
# 256 tokens x 5 slots on an H200. The kernels below split the same work over programs:
#
# 1. ``_align_hist_kernel`` (grid: chunks of BLOCK_S slots): the chunk's expert histogram -> scratch
#    ``hist[chunk, E_TILES * BLOCK_E]``.
# 2. ``_align_scatter_kernel`` (grid: max(chunks, block tiles)): every program reads all histograms
#    (small: chunks x E int32), forms the per-expert totals, padded counts and run starts (a cumsum over E)
#    and its chunk's exclusive prefix over earlier chunks; ranks each of its slots among the equal ids
#    before it in the chunk (a [BLOCK_S, BLOCK_S] lower-triangle compare) and stores
#    ``sorted[start[e] + prefix[e] + rank] = slot``. The same program writes the sentinel into the padding
#    rows of its tile of BLOCK_B blocks and those blocks' expert ids. Slot rows and padding rows are
#    disjoint, so no store order matters and no barrier across programs is needed; nothing is atomic, and
#    the output is the same bit for bit on every run.
#
# With ``FROM_IDS`` the scatter kernel counts the chunks itself (every program recounts all of them) and
# the histogram launch is skipped: one launch instead of two, worth it while there are few chunks
# (``FUSED_MAX_CHUNKS``). Experts are walked in tiles of at most 128 (``E_TILES``), so a [BLOCK_S, BLOCK_E]
# tile stays at 8 K elements for any E (257 experts: 3 tiles) instead of growing with E.
#
# Cost that grows faster than the slots: every scatter program reads the whole histogram, chunks x E x 4
# bytes (256 tokens x 5 slots, 65 experts: 20 chunks, 10 KB per program, 200 KB in all from L2).


@triton.jit
def _align_hist_kernel(ids_ptr, hist_ptr, num_slots, E,
                       BLOCK_S: tl.constexpr, BLOCK_E: tl.constexpr, E_TILES: tl.constexpr):
    """Grid (chunks,). ids int32 [num_slots]; hist int32 [chunks, E_TILES * BLOCK_E] (row-major, every element
    written: the count of slots of chunk ``pid`` routed to each expert, 0 for columns >= E)."""
    pid = tl.program_id(0)
    s = pid * BLOCK_S + tl.arange(0, BLOCK_S)
    ids = tl.load(ids_ptr + s, mask=s < num_slots, other=-1)
    for t in tl.static_range(E_TILES):
        e = t * BLOCK_E + tl.arange(0, BLOCK_E)
        h = tl.sum((ids[:, None] == e[None, :]).to(tl.int32), axis=0)
        h = tl.where(e < E, h, 0)  # ids in [E, E_TILES * BLOCK_E) belong to no expert
        tl.store(hist_ptr + pid * (E_TILES * BLOCK_E) + e, h)


@triton.jit
def _align_scatter_kernel(ids_ptr, hist_ptr, sorted_ptr, expert_ids_ptr, npost_ptr, num_slots, num_chunks, E,
                          max_blocks,
                          BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_E: tl.constexpr,
                          E_TILES: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_B: tl.constexpr,
                          FROM_IDS: tl.constexpr):
    """Grid (max(chunks, cdiv(max_blocks, BLOCK_B)),). ids int32 [num_slots] (flattened [T, k]; ids outside
    [0, E) belong to no expert); hist int32 [num_chunks, E_TILES * BLOCK_E] from ``_align_hist_kernel``
    (unread with FROM_IDS: the program counts the chunks of ``ids`` itself). Writes, as ``_align_kernel``:
    sorted int32 [max_blocks * BLOCK_M], expert_ids int32 [max_blocks], npost int32 [1].

    Program ``pid`` places the slots of chunk ``pid`` (if any) and fills blocks
    ``[pid * BLOCK_B, (pid + 1) * BLOCK_B)`` (if any)."""
    pid = tl.program_id(0)
    s_idx = tl.arange(0, BLOCK_S)
    s = pid * BLOCK_S + s_idx
    ids = tl.load(ids_ptr + s, mask=s < num_slots, other=-1)
    ids = tl.where((ids >= 0) & (ids < E), ids, -1)
    # rank of each slot among the earlier slots of this chunk with the same expert
    earlier = s_idx[None, :] < s_idx[:, None]
    pos = tl.sum(((ids[None, :] == ids[:, None]) & earlier).to(tl.int32), axis=1)

    b = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_b = b * BLOCK_M                       # first row of each block of this program's tile
    eid = tl.zeros([BLOCK_B], tl.int32)       # runs ending at or before row_b: the expert of the block
    fill_end = tl.zeros([BLOCK_B], tl.int32)  # end of the slot rows of that expert (padding from there)
    c_idx = tl.arange(0, BLOCK_C)
    carry = 0                                 # padded rows of the experts of earlier tiles
    for t in tl.static_range(E_TILES):
        e = t * BLOCK_E + tl.arange(0, BLOCK_E)
        in_e = e < E
        tot = tl.zeros([BLOCK_E], tl.int32)   # slots per expert
        pre = tl.zeros([BLOCK_E], tl.int32)   # slots per expert in the chunks before this program's
        if FROM_IDS:
            for c in range(0, num_chunks):
                cs = c * BLOCK_S + s_idx
                cid = tl.load(ids_ptr + cs, mask=cs < num_slots, other=-1)
                h = tl.sum((cid[:, None] == e[None, :]).to(tl.int32), axis=0)
                tot += h
                pre += h * (c < pid).to(tl.int32)
            tot = tl.where(in_e, tot, 0)
            pre = tl.where(in_e, pre, 0)
        else:
            for c0 in range(0, num_chunks, BLOCK_C):
                c = c0 + c_idx
                h = tl.load(hist_ptr + c[:, None] * (E_TILES * BLOCK_E) + e[None, :],
                            mask=(c < num_chunks)[:, None], other=0)
                tot += tl.sum(h, axis=0)
                pre += tl.sum(tl.where((c < pid)[:, None], h, 0), axis=0)
        padded = (tot + BLOCK_M - 1) // BLOCK_M * BLOCK_M
        ends = tl.cumsum(padded, axis=0) + carry
        starts = ends - padded
        carry = carry + tl.sum(padded, axis=0)
        base = starts + pre
        pos += tl.sum(tl.where(ids[:, None] == e[None, :], base[None, :], 0), axis=1)
        eid += tl.sum(((ends[None, :] <= row_b[:, None]) & in_e[None, :]).to(tl.int32), axis=1)
        # the expert holding row_b is the last one starting at or before it, and its slot rows end last
        # among those (earlier runs end before it starts): a running max finds where its padding begins
        fill = tl.where((starts[None, :] <= row_b[:, None]) & in_e[None, :], (starts + tot)[None, :], 0)
        fill_end = tl.maximum(fill_end, tl.max(fill, axis=1))
    total = carry
    tl.store(sorted_ptr + pos, s, mask=ids >= 0)
    in_b = b < max_blocks
    tl.store(expert_ids_ptr + b, tl.where(row_b < total, eid, -1), mask=in_b)
    rows = row_b[:, None] + tl.arange(0, BLOCK_M)[None, :]
    tl.store(sorted_ptr + rows, tl.full([BLOCK_B, BLOCK_M], 0, tl.int32) + num_slots,
             mask=(rows >= fill_end[:, None]) & in_b[:, None])
    tl.store(npost_ptr, total, mask=pid == 0)


# Up to this many chunks the scatter kernel counts the slots itself (one launch); above, the histogram is
# a launch of its own. Each scatter program then recounts every chunk ([BLOCK_S, BLOCK_E] per chunk), which
# at 4 chunks costs about what a second launch does inside a CUDA graph (a ~1 us gap plus the histogram
# kernel's own load/reduce/store latency), and grows linearly past it. An estimate, not a measurement:
# gpu/moe_align_time.py times all three methods at 1-1024 tokens to set it.
FUSED_MAX_CHUNKS = 4
ALIGN_METHODS = ("auto", "single", "fused", "split")
_BLOCK_S = 64   # slots per chunk: [64, 64] rank and [64, 128] expert tiles, 32-64 values per thread (4 warps)
_BLOCK_B = 32   # blocks per program for the padding fill and expert ids
_BLOCK_C = 32   # histogram rows per load in the scatter kernel


def _chunking(num_slots: int, num_experts: int) -> tuple[int, int, int, int]:
    """(BLOCK_S, chunks, BLOCK_E, E_TILES) of the multi-program kernels."""
    block_s = max(16, min(_BLOCK_S, triton.next_power_of_2(max(num_slots, 1))))
    block_e = min(128, triton.next_power_of_2(max(num_experts, 2)))
    return block_s, triton.cdiv(num_slots, block_s), block_e, triton.cdiv(num_experts, block_e)


def align_method(num_slots: int, num_experts: int) -> str:
    """The method ``align_triton(method="auto")`` runs: ``"fused"`` (one launch) while the slots fill at
    most ``FUSED_MAX_CHUNKS`` chunks, ``"split"`` (histogram launch + scatter launch) above."""
    return "fused" if _chunking(num_slots, num_experts)[1] <= FUSED_MAX_CHUNKS else "split"


def align_triton(topk_ids: torch.Tensor, num_experts: int, block_m: int, capacity: int, max_blocks: int,
                 method: str = "auto"):
    """Launch the alignment; returns ``(sorted_ids, expert_ids, num_tokens_post_pad)``.

    ``capacity``/``max_blocks``: the worst-case sizes of :func:`triton_marlin.moe.align.align_capacity`
    (``capacity == max_blocks * block_m``). ``method``: ``"single"`` (``_align_kernel``, one program),
    ``"fused"`` (the scatter kernel counting the slots itself: one launch, several programs), ``"split"``
    (histogram kernel, then scatter kernel), or ``"auto"`` (:func:`align_method`). All four give the same
    outputs bit for bit; every size depends on the shapes alone, so each is CUDA-graph capturable.
    """
    if method not in ALIGN_METHODS:
        raise ValueError(f"method must be one of {ALIGN_METHODS}, got {method!r}")
    if capacity != max_blocks * block_m:
        raise ValueError(f"capacity must be max_blocks * block_m = {max_blocks * block_m}, got {capacity}")
    ids = topk_ids.reshape(-1)
    if ids.dtype != torch.int32:
        ids = ids.to(torch.int32)
    ids = ids.contiguous()
    num_slots = ids.numel()
    dev = ids.device
    sorted_ids = torch.empty(capacity, dtype=torch.int32, device=dev)
    expert_ids = torch.empty(max_blocks, dtype=torch.int32, device=dev)
    npost = torch.empty(1, dtype=torch.int32, device=dev)
    if method == "auto":
        method = align_method(num_slots, num_experts)
    if method == "single":
        block_e = triton.next_power_of_2(max(num_experts, 2))
        block_s = max(16, min(128, 8192 // block_e))
        _align_kernel[(1,)](ids, sorted_ids, expert_ids, npost, num_slots, num_experts, capacity, max_blocks,
                            BLOCK_M=block_m, BLOCK_S=block_s, BLOCK_E=block_e, BLOCK_B=block_s,
                            num_warps=4)
        return sorted_ids, expert_ids, npost
    block_s, chunks, block_e, e_tiles = _chunking(num_slots, num_experts)
    from_ids = method == "fused" or chunks == 0  # no slots: nothing to count, no histogram launch
    if from_ids:
        hist = ids  # not read
    else:
        hist = torch.empty((chunks, e_tiles * block_e), dtype=torch.int32, device=dev)
        _align_hist_kernel[(chunks,)](ids, hist, num_slots, num_experts,
                                      BLOCK_S=block_s, BLOCK_E=block_e, E_TILES=e_tiles, num_warps=4)
    grid = max(1, chunks, triton.cdiv(max_blocks, _BLOCK_B))
    _align_scatter_kernel[(grid,)](ids, hist, sorted_ids, expert_ids, npost, num_slots, chunks, num_experts,
                                   max_blocks, BLOCK_M=block_m, BLOCK_S=block_s, BLOCK_E=block_e,
                                   E_TILES=e_tiles, BLOCK_C=_BLOCK_C, BLOCK_B=_BLOCK_B, FROM_IDS=from_ids,
                                   num_warps=4)
    return sorted_ids, expert_ids, npost
