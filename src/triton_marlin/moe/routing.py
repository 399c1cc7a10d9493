"""Top-k expert routing: softmax top-k (Mixtral/Qwen style) and sigmoid + correction bias (noaux_tc,
DeepSeek-V3 / GLM-4.5 / GLM-4.7-Flash style), with group-limited selection, renormalization and the
routed scaling factor.

``route_reference`` is the torch reference (what the CPU path runs and what the Triton routing kernel in
:mod:`triton_marlin.kernels.moe_align` must equal). Routing math runs in float32 whatever the logits'
dtype, as the reference models do.

noaux_tc in one paragraph: ``scores = sigmoid(logits)``; the expert *choice* uses ``scores + bias``
(the correction bias balances load without an auxiliary loss), but the routing *weights* are the
un-biased ``scores`` of the chosen experts. With ``n_group > 1`` the experts are split into groups, each
group is ranked by the sum of its two best biased scores, and only experts of the best ``topk_group``
groups can be chosen (masked experts get ``-inf``, so they are never chosen even when the biased scores
are negative).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

SCORING_FUNCS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class RoutingConfig:
    """How tokens pick experts.

    Args:
        num_experts: routed experts E.
        top_k: experts per token.
        scoring: ``"softmax"`` or ``"sigmoid"``.
        n_group, topk_group: group-limited selection (``n_group`` groups of ``E / n_group`` experts, the
            best ``topk_group`` groups eligible). ``1, 1`` disables it.
        norm_topk_prob: renormalize the chosen weights to sum to 1 (before the scaling factor).
        routed_scaling_factor: multiplies the routed weights (GLM-4.7-Flash: 1.8).
    """

    num_experts: int
    top_k: int
    scoring: str = "softmax"
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0

    def __post_init__(self):
        for name in ("num_experts", "top_k", "n_group", "topk_group"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if self.scoring not in SCORING_FUNCS:
            raise ValueError(f"scoring must be one of {SCORING_FUNCS}, got {self.scoring!r}")
        if self.num_experts % self.n_group:
            raise ValueError(f"num_experts={self.num_experts} is not divisible by n_group={self.n_group}")
        if self.topk_group > self.n_group:
            raise ValueError(f"topk_group={self.topk_group} exceeds n_group={self.n_group}")
        per_group = self.num_experts // self.n_group
        if self.n_group > 1 and per_group < 2:
            raise ValueError(f"group-limited routing ranks groups by their two best experts; "
                             f"{per_group} expert(s) per group is too few")
        if self.top_k > self.topk_group * per_group:
            raise ValueError(f"top_k={self.top_k} exceeds the {self.topk_group * per_group} experts of "
                             f"the {self.topk_group} eligible group(s)")
        if not (self.routed_scaling_factor > 0):
            raise ValueError(f"routed_scaling_factor must be > 0, got {self.routed_scaling_factor}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RoutingResult:
    """``topk_ids int32 [T, top_k]`` (expert index, or -1 for a slot routed to no active expert) and
    ``topk_weights float32 [T, top_k]`` (0 where the id is -1)."""

    topk_ids: torch.Tensor
    topk_weights: torch.Tensor


def check_router_inputs(router_logits: torch.Tensor, config: RoutingConfig,
                        correction_bias: torch.Tensor | None, check_finite: bool = True) -> None:
    if not isinstance(config, RoutingConfig):
        raise TypeError(f"config must be a RoutingConfig, got {type(config).__name__}")
    if not isinstance(router_logits, torch.Tensor):
        raise TypeError(f"router_logits must be a torch.Tensor, got {type(router_logits).__name__}")
    if router_logits.dim() != 2 or router_logits.shape[1] != config.num_experts:
        raise ValueError(f"router_logits must be [num_tokens, num_experts={config.num_experts}], got shape "
                         f"{tuple(router_logits.shape)}")
    if not router_logits.is_floating_point():
        raise TypeError(f"router_logits must be a float tensor, got {router_logits.dtype}")
    if correction_bias is not None:
        if not isinstance(correction_bias, torch.Tensor):
            raise TypeError(f"correction_bias must be a torch.Tensor, got {type(correction_bias).__name__}")
        if correction_bias.shape != (config.num_experts,):
            raise ValueError(f"correction_bias must have shape ({config.num_experts},), got "
                             f"{tuple(correction_bias.shape)}")
        if correction_bias.device != router_logits.device:
            raise ValueError(f"correction_bias is on {correction_bias.device}, router_logits on "
                             f"{router_logits.device}")
        if config.scoring != "sigmoid":
            raise ValueError("correction_bias (noaux_tc) applies to sigmoid scoring only; "
                             f"config.scoring is {config.scoring!r}")
    if check_finite and router_logits.numel() and not torch.isfinite(router_logits).all():
        bad = (~torch.isfinite(router_logits)).sum().item()
        raise ValueError(f"router_logits contain {bad} NaN/inf values")


def route_reference(router_logits: torch.Tensor, config: RoutingConfig,
                    correction_bias: torch.Tensor | None = None, *, check_finite: bool = True
                    ) -> RoutingResult:
    """Torch reference of the routing. ``router_logits [T, E]`` -> ids and weights ``[T, top_k]``.

    Among equal scores the lower expert index wins (the Triton kernel picks the same way).
    """
    check_router_inputs(router_logits, config, correction_bias, check_finite)
    T, E = router_logits.shape
    logits = router_logits.to(torch.float32)
    if config.scoring == "softmax":
        scores = torch.softmax(logits, dim=-1)
    else:
        scores = torch.sigmoid(logits)
    choice = scores if correction_bias is None else scores + correction_bias.to(torch.float32)
    if config.n_group > 1:
        grouped = choice.view(T, config.n_group, E // config.n_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # [T, n_group]
        group_idx = _stable_topk(group_scores, config.topk_group)
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool)
        group_mask.scatter_(1, group_idx, True)
        expert_mask = group_mask.repeat_interleave(E // config.n_group, dim=1)
        choice = choice.masked_fill(~expert_mask, float("-inf"))
    ids = _stable_topk(choice, config.top_k)
    weights = scores.gather(1, ids)
    if config.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    weights = weights * config.routed_scaling_factor
    return RoutingResult(ids.to(torch.int32), weights.to(torch.float32))


def _stable_topk(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest values per row, ties broken toward the lower index."""
    # a stable descending sort keeps equal values in index order
    return torch.sort(values, dim=-1, descending=True, stable=True).indices[:, :k]


def route(router_logits: torch.Tensor, config: RoutingConfig, correction_bias: torch.Tensor | None = None,
          *, backend: str = "auto", num_valid_tokens: torch.Tensor | None = None,
          check_finite: bool = True) -> RoutingResult:
    """Route tokens: the Triton routing kernel where Triton runs, else :func:`route_reference`.

    ``num_valid_tokens`` (int32 device tensor ``[1]``, kernel path only) marks rows at and beyond it as
    padding: their ids are -1 and weights 0 (how a CUDA-graph bucket ignores its unused rows without a
    host sync). ``check_finite=False`` skips the NaN check (needed under CUDA-graph capture, where a
    host sync is not allowed).
    """
    from .. import dispatch
    from ..device import triton_enabled_for

    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    check_router_inputs(router_logits, config, correction_bias, check_finite)
    use_triton = backend == "triton" or (backend == "auto" and triton_enabled_for(router_logits.device))
    if use_triton:
        from ..kernels import moe_align

        dispatch.record("moe_route", "triton")
        ids, weights = moe_align.route_triton(router_logits, config, correction_bias, num_valid_tokens)
        return RoutingResult(ids, weights)
    if num_valid_tokens is not None:
        raise ValueError("num_valid_tokens is supported by the Triton routing kernel only")
    dispatch.record("moe_route", "torch")
    return route_reference(router_logits, config, correction_bias, check_finite=False)
