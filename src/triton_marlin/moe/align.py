"""Token/expert alignment: the layout the fused expert kernels read.

Each token has ``k`` slots (slot ``s = t * k + j`` holds its j-th expert). Alignment sorts the slots by
expert (slot order kept within an expert), pads each expert's run to a multiple of ``block_m`` with the
sentinel ``T * k``, and lists the expert of every ``block_m`` block, so one kernel program (one block of
rows) only ever serves one expert. Slots whose id is outside ``[0, E)`` (``-1``: routed to no active
expert, e.g. a padding row of a CUDA-graph bucket) are dropped.

Sizes depend on the input shape only (worst case, see :func:`align_capacity`), so the buffers can live in a
CUDA graph; rows past ``num_tokens_post_pad`` hold the sentinel and blocks past it have expert id -1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Alignment:
    sorted_ids: torch.Tensor          # int32 [capacity]: slot index, or num_slots for padding
    expert_ids: torch.Tensor          # int32 [max_blocks]: expert of each block, -1 past the end
    num_tokens_post_pad: torch.Tensor  # int32 [1]: rows in use (a multiple of block_m)
    block_m: int
    num_slots: int


def align_capacity(num_slots: int, num_experts: int, block_m: int) -> tuple[int, int]:
    """(rows, blocks) the aligned buffers need in the worst case: every non-empty expert's run padded by
    up to ``block_m - 1`` rows, at most ``min(E, num_slots)`` non-empty experts."""
    rows = num_slots + min(num_experts, num_slots) * (block_m - 1)
    blocks = max(1, (rows + block_m - 1) // block_m)
    return blocks * block_m, blocks


def _check(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> None:
    if not isinstance(topk_ids, torch.Tensor):
        raise TypeError(f"topk_ids must be a torch.Tensor, got {type(topk_ids).__name__}")
    if topk_ids.dim() != 2:
        raise ValueError(f"topk_ids must be 2-D [num_tokens, k], got shape {tuple(topk_ids.shape)}")
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"topk_ids must be int32 or int64, got {topk_ids.dtype}")
    if not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"num_experts must be a positive int, got {num_experts!r}")
    if not isinstance(block_m, int) or block_m < 1 or block_m & (block_m - 1):
        raise ValueError(f"block_m must be a power of two, got {block_m!r}")


def align_reference(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> Alignment:
    """Torch reference of the alignment (what the Triton kernel must equal, bit for bit)."""
    _check(topk_ids, num_experts, block_m)
    ids = topk_ids.reshape(-1).to(torch.int64).cpu()
    num_slots = ids.numel()
    capacity, max_blocks = align_capacity(num_slots, num_experts, block_m)
    sorted_ids = torch.full((capacity,), num_slots, dtype=torch.int32)
    expert_ids = torch.full((max_blocks,), -1, dtype=torch.int32)
    row = 0
    for e in range(num_experts):
        slots = torch.nonzero(ids == e).flatten()
        if slots.numel() == 0:
            continue
        sorted_ids[row:row + slots.numel()] = slots.to(torch.int32)
        padded = (slots.numel() + block_m - 1) // block_m * block_m
        expert_ids[row // block_m:(row + padded) // block_m] = e
        row += padded
    dev = topk_ids.device
    return Alignment(sorted_ids.to(dev), expert_ids.to(dev), torch.tensor([row], dtype=torch.int32, device=dev),
                     block_m, num_slots)


def align_tokens(topk_ids: torch.Tensor, num_experts: int, block_m: int, *, backend: str = "auto",
                 method: str = "auto", chunk_counts: torch.Tensor | None = None) -> Alignment:
    """Align token slots to experts: the Triton kernels where Triton runs, else :func:`align_reference`.

    ``method`` (Triton only): ``"single"`` (one program), ``"fused"`` (one launch, several programs),
    ``"split"`` (count launch + scatter launch), ``"routed"`` (one launch on ``chunk_counts``: the per-chunk
    counts of ``topk_ids`` the MoE router kernel writes, see :mod:`triton_marlin.kernels.moe_align`) or
    ``"auto"`` ("routed" with counts, else by the slot count, see
    :func:`triton_marlin.kernels.moe_align.align_method`); all equal the reference bit for bit. The path
    taken is recorded as ``("moe_align", "triton-<method>")`` or ``("moe_align", "torch")`` (which ignores
    ``chunk_counts``)."""
    from .. import dispatch
    from ..device import triton_enabled_for

    _check(topk_ids, num_experts, block_m)
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if method not in ("auto", "single", "fused", "split", "routed"):
        raise ValueError(f"method must be 'auto', 'single', 'fused', 'split' or 'routed', got {method!r}")
    if backend == "triton" or (backend == "auto" and triton_enabled_for(topk_ids.device)):
        from ..kernels.moe_align import align_method, align_triton

        if method == "auto":
            method = align_method(topk_ids.numel(), num_experts, chunk_counts is not None)
        dispatch.record("moe_align", f"triton-{method}")
        capacity, max_blocks = align_capacity(topk_ids.numel(), num_experts, block_m)
        sorted_ids, expert_ids, npost = align_triton(topk_ids, num_experts, block_m, capacity, max_blocks,
                                                     method=method, chunk_counts=chunk_counts)
        return Alignment(sorted_ids, expert_ids, npost, block_m, topk_ids.numel())
    dispatch.record("moe_align", "torch")
    return align_reference(topk_ids, num_experts, block_m)
