"""MoE routing and token/expert alignment kernels.

- ``_route_tile``: the routing math on a ``[BLOCK_T, BLOCK_E]`` tile of fp32 router logits (one row per
  token): softmax, or sigmoid with the noaux_tc correction bias, group-limited selection, top-k (ties: lowest
  index), renormalization, scaling, optional shared-expert slots appended (id ``E + s``, weight 1), rows at or
  beyond a device-side token count marked as padding (ids -1, weights 0). Reference:
  :func:`triton_marlin.moe.routing.route_reference`. Two kernels run it: ``_route_kernel`` here (logits in
  memory, one program per block of tokens) and the router's own kernel
  (:func:`triton_marlin.kernels.moe_router.router_route`: logits, routing and the alignment's chunk counts in
  one launch).
- alignment: sort the token slots by expert and pad every expert's run to the GEMM block size, so each
  block of ``BLOCK_M`` sorted rows belongs to exactly one expert. Reference:
  :func:`triton_marlin.moe.align.align_reference`. ``_align_kernel`` does it in one program;
  ``_align_scatter_kernel`` spreads it over programs from per-chunk counts (the **chunk counts**, below),
  which come from the routing kernel of the layer (no extra launch), from ``_align_count_kernel`` (a launch
  of their own), or, for small inputs, from the scatter programs themselves (``FROM_IDS``).
  :func:`align_triton` picks (:func:`align_method`).

All are meant to be launched inside a CUDA graph: every output has a size known from the input shapes
alone (no host sync), and no output depends on the order in which programs run (no atomics).

Chunk counts (int32 ``[chunks, E + chunk]``, one row per chunk of ``chunk`` consecutive slots): columns
``[0, E)`` hold the chunk's slot count per expert, columns ``[E, E + chunk)`` each slot's rank among the
earlier slots of the chunk with the same expert (any value for a slot whose id is outside ``[0, E)``). The
routing kernel's chunks are its token blocks (``BLOCK_T`` tokens x ``top_k + num_shared`` slots).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _route_tile(x, t, t_ok, bias_ptr, nvalid_ptr, E,
                TOP_K: tl.constexpr, K_TOTAL: tl.constexpr, N_SHARED: tl.constexpr, SIGMOID: tl.constexpr,
                HAS_BIAS: tl.constexpr, N_GROUP: tl.constexpr, TOPK_GROUP: tl.constexpr,
                GROUP_SIZE: tl.constexpr, NORM: tl.constexpr, SCALE: tl.constexpr, HAS_NVALID: tl.constexpr,
                BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_G: tl.constexpr):
    """Routing of a token block. ``x`` fp32 ``[BLOCK_T, BLOCK_E]`` logits (columns >= E: anything), ``t``
    ``[BLOCK_T]`` token indices, ``t_ok`` the rows that are tokens at all. Returns ``(ids int32, weights fp32)``
    ``[BLOCK_T, BLOCK_K]`` (columns >= K_TOTAL: -1 / 0), ``chosen`` ``[BLOCK_T, BLOCK_E]`` (the routed experts
    each valid token picked) and ``valid`` ``[BLOCK_T]`` (tokens, below the device-side count if any).
    Every reduction runs along the expert axis, one token per row."""
    e = tl.arange(0, BLOCK_E)
    in_range = (e < E)[None, :]
    if SIGMOID:
        scores = 1.0 / (1.0 + tl.exp(-x))
    else:
        xm = tl.where(in_range, x, float("-inf"))
        p = tl.exp(xm - tl.max(xm, axis=1)[:, None])
        scores = p / tl.sum(p, axis=1)[:, None]
    choice = scores
    if HAS_BIAS:
        choice = choice + tl.load(bias_ptr + e, mask=e < E, other=0.0).to(tl.float32)[None, :]
    choice = tl.where(in_range, choice, float("-inf"))

    if N_GROUP > 1:
        # rank groups by the sum of their two best (biased) scores; keep the best TOPK_GROUP
        g_idx = tl.arange(0, BLOCK_G)[None, :]
        group_of = (e // GROUP_SIZE)[None, :]
        gscore = tl.full([x.shape[0], BLOCK_G], float("-inf"), tl.float32)
        for g in tl.static_range(N_GROUP):
            c = tl.where((group_of == g) & in_range, choice, float("-inf"))
            m1 = tl.max(c, axis=1)
            first = tl.min(tl.where(c == m1[:, None], e[None, :], BLOCK_E), axis=1)
            m2 = tl.max(tl.where(e[None, :] == first[:, None], float("-inf"), c), axis=1)
            gscore = tl.where(g_idx == g, (m1 + m2)[:, None], gscore)
        eligible = tl.zeros([x.shape[0], BLOCK_E], tl.int1)
        for _ in tl.static_range(TOPK_GROUP):
            gm = tl.max(gscore, axis=1)
            gsel = tl.min(tl.where(gscore == gm[:, None], g_idx, BLOCK_G), axis=1)
            eligible = eligible | (group_of == gsel[:, None])
            gscore = tl.where(g_idx == gsel[:, None], float("-inf"), gscore)
        choice = tl.where(eligible, choice, float("-inf"))

    k_idx = tl.arange(0, BLOCK_K)[None, :]
    ids = tl.full([x.shape[0], BLOCK_K], -1, tl.int32)
    weights = tl.zeros([x.shape[0], BLOCK_K], tl.float32)
    chosen = tl.zeros([x.shape[0], BLOCK_E], tl.int1)
    for j in tl.static_range(TOP_K):
        best = tl.max(choice, axis=1)
        pick = tl.min(tl.where(choice == best[:, None], e[None, :], BLOCK_E), axis=1)  # lowest index of ties
        hit = e[None, :] == pick[:, None]
        picked_score = tl.sum(tl.where(hit, scores, 0.0), axis=1)
        ids = tl.where(k_idx == j, tl.where(pick < E, pick, -1)[:, None], ids)  # NaN rows: no expert
        weights = tl.where(k_idx == j, picked_score[:, None], weights)
        chosen = chosen | hit
        choice = tl.where(hit, float("-inf"), choice)
    if NORM:
        weights = weights / (tl.sum(weights, axis=1)[:, None] + 1e-20)
    weights = weights * SCALE
    if N_SHARED > 0:
        is_shared = (k_idx >= TOP_K) & (k_idx < K_TOTAL)
        ids = tl.where(is_shared, E + (k_idx - TOP_K), ids)
        weights = tl.where(is_shared, 1.0, weights)
    valid = t_ok
    if HAS_NVALID:
        valid = valid & (t < tl.load(nvalid_ptr))
    ids = tl.where(valid[:, None], ids, -1)
    weights = tl.where(valid[:, None], weights, 0.0)
    chosen = chosen & valid[:, None]
    return ids, weights, chosen, valid


@triton.jit
def _route_chunk_counts(counts_ptr, row, ids, chosen, valid, E, W,
                        TOP_K: tl.constexpr, K_TOTAL: tl.constexpr, N_SHARED: tl.constexpr,
                        BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_SH: tl.constexpr):
    """Chunk-count row ``row`` (``W = E + N_SHARED + BLOCK_T * K_TOTAL`` int32) of a routed token block, from
    ``_route_tile``'s outputs: the routed experts' counts (column sums of ``chosen``), the shared experts'
    (the valid tokens), then every slot's rank: for a routed slot the valid tokens before it in the block
    that chose the same expert (an exclusive cumsum of ``chosen`` down the tokens, gathered at the slot's
    expert), for a shared slot the valid tokens before it. Plain stores: the row belongs to this program."""
    e = tl.arange(0, BLOCK_E)
    base = counts_ptr + row.to(tl.int64) * W
    ch = chosen.to(tl.int32)
    tl.store(base + e, tl.sum(ch, axis=0), mask=e < E)
    vi = valid.to(tl.int32)
    if N_SHARED > 0:
        sh = tl.arange(0, BLOCK_SH)
        tl.store(base + E + sh, tl.zeros([BLOCK_SH], tl.int32) + tl.sum(vi, axis=0), mask=sh < N_SHARED)
    before = tl.cumsum(ch, axis=0) - ch                       # [BLOCK_T, BLOCK_E]
    k_idx = tl.arange(0, BLOCK_K)[None, :]
    rank = tl.gather(before, tl.where((ids >= 0) & (ids < E), ids, 0), axis=1)  # [BLOCK_T, BLOCK_K]
    if N_SHARED > 0:
        rank = tl.where(k_idx >= TOP_K, (tl.cumsum(vi, axis=0) - vi)[:, None], rank)
    bt = tl.arange(0, ids.shape[0])[:, None]
    tl.store(base + E + N_SHARED + bt * K_TOTAL + k_idx, rank, mask=k_idx < K_TOTAL)


@triton.jit
def _route_kernel(logits_ptr, stride_t, bias_ptr, ids_ptr, w_ptr, nvalid_ptr, T, E,
                  TOP_K: tl.constexpr, K_TOTAL: tl.constexpr, N_SHARED: tl.constexpr,
                  SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, N_GROUP: tl.constexpr,
                  TOPK_GROUP: tl.constexpr, GROUP_SIZE: tl.constexpr, NORM: tl.constexpr,
                  SCALE: tl.constexpr, HAS_NVALID: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                  BLOCK_K: tl.constexpr, BLOCK_G: tl.constexpr):
    """Grid (cdiv(T, BLOCK_T),). logits [T, E] (row stride ``stride_t``, unit column stride); ids int32 /
    weights fp32 [T, K_TOTAL] contiguous, K_TOTAL = TOP_K + N_SHARED."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    e = tl.arange(0, BLOCK_E)
    t_ok = t < T
    x = tl.load(logits_ptr + t.to(tl.int64)[:, None] * stride_t + e[None, :],
                mask=t_ok[:, None] & (e < E)[None, :], other=0.0).to(tl.float32)
    ids, weights, chosen, valid = _route_tile(
        x, t, t_ok, bias_ptr, nvalid_ptr, E, TOP_K, K_TOTAL, N_SHARED, SIGMOID, HAS_BIAS, N_GROUP, TOPK_GROUP,
        GROUP_SIZE, NORM, SCALE, HAS_NVALID, BLOCK_E, BLOCK_K, BLOCK_G)
    k_idx = tl.arange(0, BLOCK_K)[None, :]
    out_mask = t_ok[:, None] & (k_idx < K_TOTAL)
    tl.store(ids_ptr + t[:, None] * K_TOTAL + k_idx, ids, mask=out_mask)
    tl.store(w_ptr + t[:, None] * K_TOTAL + k_idx, weights, mask=out_mask)


def route_constexprs(config, num_experts: int, num_shared: int, has_bias: bool, has_nvalid: bool) -> dict:
    """The routing constexprs of ``_route_tile`` (``config``: a :class:`triton_marlin.moe.routing.RoutingConfig`)."""
    k_total = config.top_k + num_shared
    return dict(TOP_K=config.top_k, K_TOTAL=k_total, N_SHARED=num_shared, SIGMOID=config.scoring == "sigmoid",
                HAS_BIAS=has_bias, N_GROUP=config.n_group, TOPK_GROUP=config.topk_group,
                GROUP_SIZE=num_experts // config.n_group, NORM=config.norm_topk_prob,
                SCALE=float(config.routed_scaling_factor), HAS_NVALID=has_nvalid,
                BLOCK_E=triton.next_power_of_2(num_experts), BLOCK_K=triton.next_power_of_2(k_total),
                BLOCK_G=triton.next_power_of_2(config.n_group))


def route_block_t(T: int, num_experts: int) -> int:
    """Tokens per routing program: up to 16, fewer for many experts (a [BLOCK_T, BLOCK_E] tile of at most 2 K
    elements, 16 per thread of 4 warps)."""
    return max(1, min(16, triton.next_power_of_2(max(T, 1)), 2048 // triton.next_power_of_2(num_experts)))


def check_num_valid(num_valid_tokens, device) -> None:
    if num_valid_tokens is not None and (
            not isinstance(num_valid_tokens, torch.Tensor) or num_valid_tokens.numel() != 1
            or num_valid_tokens.dtype != torch.int32 or num_valid_tokens.device != device):
        raise ValueError("num_valid_tokens must be an int32 tensor of one element on the logits' device")


def route_triton(router_logits: torch.Tensor, config, correction_bias: torch.Tensor | None = None,
                 num_valid_tokens: torch.Tensor | None = None, num_shared: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch ``_route_kernel`` on ``router_logits [T, E]`` (``config``: a
    :class:`triton_marlin.moe.routing.RoutingConfig`). Returns ``(ids int32, weights fp32)``, both
    ``[T, top_k + num_shared]`` (shared slots last). The MoE layer does not come here: its router kernel routes
    as it finishes the logits (:func:`triton_marlin.kernels.moe_router.router_route`)."""
    if router_logits.dim() != 2:
        raise ValueError(f"router_logits must be [T, E], got shape {tuple(router_logits.shape)}")
    T, E = router_logits.shape
    check_num_valid(num_valid_tokens, router_logits.device)
    if not isinstance(num_shared, int) or num_shared < 0:
        raise ValueError(f"num_shared must be an int >= 0, got {num_shared!r}")
    k_total = config.top_k + num_shared
    dev = router_logits.device
    ids = torch.empty((T, k_total), dtype=torch.int32, device=dev)
    weights = torch.empty((T, k_total), dtype=torch.float32, device=dev)
    if T == 0:
        return ids, weights
    logits = router_logits if router_logits.stride(1) == 1 else router_logits.contiguous()
    bias = correction_bias.contiguous() if correction_bias is not None else logits
    nvalid = num_valid_tokens if num_valid_tokens is not None else ids
    block_t = route_block_t(T, E)
    _route_kernel[(triton.cdiv(T, block_t),)](
        logits, logits.stride(0), bias, ids, weights, nvalid, T, E, BLOCK_T=block_t,
        **route_constexprs(config, E, num_shared, correction_bias is not None, num_valid_tokens is not None),
        num_warps=1 if block_t * triton.next_power_of_2(E) <= 256 else 4)
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


# --- multi-program alignment: chunk counts, then scan + scatter --------------------------------------------
#
# The single-program ``_align_kernel`` above walks every chunk of slots twice on one SM (counting, then a
# cumsum of a one-hot [BLOCK_S, BLOCK_E] tile per chunk) and fills all padding rows itself: 47.6 us for
# 256 tokens x 5 slots on an H200. ``_align_scatter_kernel`` spreads the work over programs (grid:
# max(chunks, block tiles)): every program reads all chunks' counts (chunks x E int32, 16 x 65 at 256 GLM
# tokens), forms the per-expert totals, padded counts and run starts (a cumsum over E) and its chunk's
# exclusive prefix over earlier chunks, and stores ``sorted[start[e] + prefix[e] + rank] = slot`` for its
# chunk's slots (``start + prefix`` gathered at each slot's expert); the same program writes the sentinel
# into the padding rows of its tile of BLOCK_B blocks and those blocks' expert ids. Slot rows and padding
# rows are disjoint, so no store order matters and no barrier across programs is needed; nothing is atomic,
# and the output is the same bit for bit on every run.
#
# Where the chunk counts come from (``align_method``):
# - "routed": the MoE layer's router kernel writes them as it routes (one alignment launch);
# - "split": ``_align_count_kernel``, a launch of its own (one program per chunk of 64 slots);
# - "fused": the scatter programs count every chunk themselves and rank their own chunk's slots (one launch;
#   the work grows with the chunks, so only while they are few: ``FUSED_MAX_CHUNKS``).


@triton.jit
def _align_count_kernel(ids_ptr, counts_ptr, num_slots, chunk, E,
                        BLOCK_S: tl.constexpr, BLOCK_E: tl.constexpr):
    """Grid (chunks,). ids int32 [num_slots]; writes row ``pid`` of the chunk counts int32
    ``[chunks, E + chunk]`` (module docstring) for the slots ``[pid * chunk, (pid + 1) * chunk)``."""
    pid = tl.program_id(0)
    i = tl.arange(0, BLOCK_S)
    s = pid * chunk + i
    in_chunk = (i < chunk) & (s < num_slots)
    ids = tl.load(ids_ptr + s, mask=in_chunk, other=-1)
    e = tl.arange(0, BLOCK_E)
    row = counts_ptr + pid.to(tl.int64) * (E + chunk)
    tl.store(row + e, tl.sum((ids[:, None] == e[None, :]).to(tl.int32), axis=0), mask=e < E)
    rank = tl.sum(((ids[None, :] == ids[:, None]) & (i[None, :] < i[:, None])).to(tl.int32), axis=1)
    tl.store(row + E + i, rank, mask=i < chunk)


@triton.jit
def _align_scatter_kernel(ids_ptr, counts_ptr, sorted_ptr, expert_ids_ptr, npost_ptr, num_slots, chunk,
                          num_chunks, E, max_blocks,
                          BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_E: tl.constexpr,
                          BLOCK_C: tl.constexpr, BLOCK_B: tl.constexpr, FROM_IDS: tl.constexpr):
    """Grid (max(num_chunks, cdiv(max_blocks, BLOCK_B)),). ids int32 [num_slots] (flattened [T, k]; ids outside
    [0, E) belong to no expert); chunk counts int32 [num_chunks, E + chunk] (module docstring; unread with
    FROM_IDS: the program counts the chunks of ``ids`` itself). Writes, as ``_align_kernel``: sorted int32
    [max_blocks * BLOCK_M], expert_ids int32 [max_blocks], npost int32 [1].

    Program ``pid`` places the slots of chunk ``pid`` (if any) and fills blocks
    ``[pid * BLOCK_B, (pid + 1) * BLOCK_B)`` (if any)."""
    pid = tl.program_id(0)
    W = E + chunk
    i = tl.arange(0, BLOCK_S)
    s = pid * chunk + i
    in_chunk = (i < chunk) & (s < num_slots)
    ids = tl.load(ids_ptr + s, mask=in_chunk, other=-1)
    ids = tl.where((ids >= 0) & (ids < E), ids, -1)
    e = tl.arange(0, BLOCK_E)
    in_e = e < E
    tot = tl.zeros([BLOCK_E], tl.int32)   # slots per expert
    pre = tl.zeros([BLOCK_E], tl.int32)   # slots per expert in the chunks before this program's
    if FROM_IDS:
        # rank of each slot among the earlier slots of this chunk with the same expert
        rank = tl.sum(((ids[None, :] == ids[:, None]) & (i[None, :] < i[:, None])).to(tl.int32), axis=1)
        for c in range(0, num_chunks):
            cs = c * chunk + i
            cid = tl.load(ids_ptr + cs, mask=(i < chunk) & (cs < num_slots), other=-1)
            h = tl.sum((cid[:, None] == e[None, :]).to(tl.int32), axis=0)
            tot += h
            pre += h * (c < pid).to(tl.int32)
        tot = tl.where(in_e, tot, 0)
        pre = tl.where(in_e, pre, 0)
    else:
        rank = tl.load(counts_ptr + pid.to(tl.int64) * W + E + i, mask=in_chunk, other=0)  # none past the chunks
        c_idx = tl.arange(0, BLOCK_C)
        for c0 in range(0, num_chunks, BLOCK_C):
            c = c0 + c_idx
            h = tl.load(counts_ptr + c.to(tl.int64)[:, None] * W + e[None, :],
                        mask=(c < num_chunks)[:, None] & in_e[None, :], other=0)
            tot += tl.sum(h, axis=0)
            pre += tl.sum(tl.where((c < pid)[:, None], h, 0), axis=0)
    padded = (tot + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    total = tl.sum(padded, axis=0)
    pos = tl.gather(starts + pre, tl.maximum(ids, 0), axis=0) + rank
    tl.store(sorted_ptr + pos, s, mask=ids >= 0)

    b = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_b = b * BLOCK_M                       # first row of each block of this program's tile
    # the expert of the block: the runs ending at or before row_b; it is the last one starting at or before
    # row_b, and its slot rows end last among those (earlier runs end before it starts), so a max finds
    # where its padding begins
    eid = tl.sum(((ends[None, :] <= row_b[:, None]) & in_e[None, :]).to(tl.int32), axis=1)
    fill_end = tl.max(tl.where((starts[None, :] <= row_b[:, None]) & in_e[None, :], (starts + tot)[None, :], 0),
                      axis=1)
    in_b = b < max_blocks
    tl.store(expert_ids_ptr + b, tl.where(row_b < total, eid, -1), mask=in_b)
    rows = row_b[:, None] + tl.arange(0, BLOCK_M)[None, :]
    tl.store(sorted_ptr + rows, tl.full([BLOCK_B, BLOCK_M], 0, tl.int32) + num_slots,
             mask=(rows >= fill_end[:, None]) & in_b[:, None])
    tl.store(npost_ptr, total, mask=pid == 0)


# Up to this many chunks the scatter kernel counts the slots itself (one launch); above, the counts are a
# launch of their own. Each scatter program then recounts every chunk ([BLOCK_S, BLOCK_E] per chunk), which
# at 4 chunks costs about what a second launch does inside a CUDA graph (a ~1 us gap plus the count
# kernel's own load/reduce/store latency), and grows linearly past it. An estimate, not a measurement:
# gpu/moe_align_time.py times the methods at 1-1024 tokens to set it.
FUSED_MAX_CHUNKS = 4
ALIGN_METHODS = ("auto", "single", "fused", "split", "routed")
_CHUNK = 64     # slots per chunk of the "fused"/"split" methods: [64, 64] rank tiles
_BLOCK_B = 32   # blocks per program for the padding fill and expert ids


def _block_e(num_experts: int) -> int:
    return triton.next_power_of_2(max(num_experts, 2))


def align_method(num_slots: int, num_experts: int, have_counts: bool = False) -> str:
    """The method ``align_triton(method="auto")`` runs: ``"routed"`` when chunk counts are given (one launch),
    else ``"fused"`` (one launch) while the slots fill at most ``FUSED_MAX_CHUNKS`` chunks of 64,
    ``"split"`` (count launch + scatter launch) above."""
    if have_counts:
        return "routed"
    return "fused" if triton.cdiv(num_slots, _CHUNK) <= FUSED_MAX_CHUNKS else "split"


def align_triton(topk_ids: torch.Tensor, num_experts: int, block_m: int, capacity: int, max_blocks: int,
                 method: str = "auto", chunk_counts: torch.Tensor | None = None):
    """Launch the alignment; returns ``(sorted_ids, expert_ids, num_tokens_post_pad)``.

    ``capacity``/``max_blocks``: the worst-case sizes of :func:`triton_marlin.moe.align.align_capacity`
    (``capacity == max_blocks * block_m``). ``method``: ``"single"`` (``_align_kernel``, one program),
    ``"fused"`` (the scatter kernel counting the slots itself: one launch, several programs), ``"split"``
    (count kernel, then scatter kernel), ``"routed"`` (the scatter kernel on ``chunk_counts``, int32
    ``[chunks, num_experts + chunk]`` as the module docstring lays out, e.g. from
    :func:`triton_marlin.kernels.moe_router.router_route`; they must describe ``topk_ids``), or ``"auto"``
    (:func:`align_method`). All give the same outputs bit for bit; every size depends on the shapes alone, so
    each is CUDA-graph capturable.
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
    if method == "auto":
        method = align_method(num_slots, num_experts, chunk_counts is not None)
    if (method == "routed") != (chunk_counts is not None):
        raise ValueError("chunk_counts go with method 'routed' (or 'auto'), and only with it")
    sorted_ids = torch.empty(capacity, dtype=torch.int32, device=dev)
    expert_ids = torch.empty(max_blocks, dtype=torch.int32, device=dev)
    npost = torch.empty(1, dtype=torch.int32, device=dev)
    block_e = _block_e(num_experts)
    if method == "single":
        block_s = max(16, min(128, 8192 // block_e))
        _align_kernel[(1,)](ids, sorted_ids, expert_ids, npost, num_slots, num_experts, capacity, max_blocks,
                            BLOCK_M=block_m, BLOCK_S=block_s, BLOCK_E=block_e, BLOCK_B=block_s,
                            num_warps=4)
        return sorted_ids, expert_ids, npost
    if method == "routed":
        if (chunk_counts.dim() != 2 or chunk_counts.dtype != torch.int32 or not chunk_counts.is_contiguous()
                or chunk_counts.device != dev or chunk_counts.shape[1] <= num_experts):
            raise ValueError(f"chunk_counts must be contiguous int32 [chunks, num_experts + chunk] on {dev}, got "
                             f"{chunk_counts.dtype} {tuple(chunk_counts.shape)} on {chunk_counts.device}")
        chunks, chunk = chunk_counts.shape[0], chunk_counts.shape[1] - num_experts
        if triton.cdiv(num_slots, chunk) != chunks:
            raise ValueError(f"chunk_counts has {chunks} rows of {chunk} slots; {num_slots} slots need "
                             f"{triton.cdiv(num_slots, chunk)}")
        counts = chunk_counts
    else:
        chunk = max(1, min(_CHUNK, num_slots))
        chunks = triton.cdiv(num_slots, chunk)
        counts = ids  # not read by "fused"
        if method == "split" and chunks:
            counts = torch.empty((chunks, num_experts + chunk), dtype=torch.int32, device=dev)
            _align_count_kernel[(chunks,)](ids, counts, num_slots, chunk, num_experts,
                                           BLOCK_S=triton.next_power_of_2(chunk), BLOCK_E=block_e, num_warps=4)
    from_ids = method == "fused" or chunks == 0  # no slots: nothing to count
    grid = max(1, chunks, triton.cdiv(max_blocks, _BLOCK_B))
    _align_scatter_kernel[(grid,)](ids, counts, sorted_ids, expert_ids, npost, num_slots, chunk, chunks,
                                   num_experts, max_blocks, BLOCK_M=block_m, BLOCK_S=triton.next_power_of_2(chunk),
                                   BLOCK_E=block_e, BLOCK_C=max(1, min(triton.next_power_of_2(max(chunks, 1)),
                                                                       4096 // block_e)),
                                   BLOCK_B=_BLOCK_B, FROM_IDS=from_ids, num_warps=4)
    return sorted_ids, expert_ids, npost
