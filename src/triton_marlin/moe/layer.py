"""An MoE layer: router, routing, quantized experts (routed + shared), and a choice of dispatch strategy.

``forward(x)`` routes the tokens (router logits in float32, as the reference models compute them), appends
one slot per shared expert with weight 1, and runs the experts with the chosen strategy
(:mod:`triton_marlin.moe.strategies`). Where Triton runs, the router kernel also hands the strategy the
alignment's per-chunk counts of the slots, so the alignment is one launch. ``forward_static`` is the same computation restricted to what a
CUDA graph can hold (no host syncs, padding rows masked by a device-side token count); see
:mod:`triton_marlin.moe.graph`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..device import triton_enabled_for
from .experts import QuantizedExperts
from .routing import RoutingConfig, check_router_inputs, route_reference
from .strategies import STRATEGIES, MoEStrategy, make_strategy

CAPTURABLE_STRATEGIES = ("fast_uniform", "fast_mixed", "max_bits_padded")


class MoELayer(nn.Module):
    def __init__(self, router_weight: torch.Tensor, routing: RoutingConfig, experts: QuantizedExperts, *,
                 correction_bias: torch.Tensor | None = None, strategy: str = "fast_mixed"):
        super().__init__()
        if not isinstance(routing, RoutingConfig):
            raise TypeError(f"routing must be a RoutingConfig, got {type(routing).__name__}")
        if not isinstance(experts, QuantizedExperts):
            raise TypeError(f"experts must be QuantizedExperts, got {type(experts).__name__}")
        if routing.num_experts != experts.num_experts:
            raise ValueError(f"routing has {routing.num_experts} experts, the container {experts.num_experts} "
                             f"routed experts")
        want = (experts.num_experts, experts.hidden_size)
        if not isinstance(router_weight, torch.Tensor) or tuple(router_weight.shape) != want:
            raise ValueError(f"router_weight must be {list(want)} (num_experts x hidden_size), got "
                             f"{tuple(router_weight.shape) if isinstance(router_weight, torch.Tensor) else router_weight!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.routing = routing
        self.experts = experts
        self.strategy = strategy
        self.register_buffer("router_weight", router_weight.detach().to(torch.float32).contiguous())
        if correction_bias is not None:
            if correction_bias.shape != (experts.num_experts,):
                raise ValueError(f"correction_bias must be ({experts.num_experts},), got {tuple(correction_bias.shape)}")
            self.register_buffer("correction_bias", correction_bias.detach().to(torch.float32).contiguous())
        else:
            self.correction_bias = None
        self._strategies: dict[str, MoEStrategy] = {}

    @property
    def hidden_size(self) -> int:
        return self.experts.hidden_size

    def get_strategy(self, name: str | None = None) -> MoEStrategy:
        name = name or self.strategy
        if name not in self._strategies:
            self._strategies[name] = make_strategy(name, self.experts)
        return self._strategies[name]

    def router_logits(self, x2: torch.Tensor) -> torch.Tensor:
        """fp32 ``[T, E]`` router logits, the reference models' formula (``F.linear`` on the fp32 cast of x)."""
        return F.linear(x2.to(torch.float32), self.router_weight)

    def route(self, x2: torch.Tensor, *, num_valid: torch.Tensor | None = None, check_finite: bool = True):
        """``(ids int32, weights fp32)``, ``[T, top_k + num_shared]``: routed slots, then the shared ones.

        Where Triton runs, one kernel computes the logits and routes them
        (:func:`triton_marlin.kernels.moe_router.router_route`: fp32 products and sums, split-K planes summed
        by the last program of each token block, which routes the block), else :meth:`router_logits` and
        :func:`~triton_marlin.moe.routing.route_reference`."""
        return self._route(x2, num_valid, check_finite)[:2]

    def _route(self, x2, num_valid, check_finite):
        """:meth:`route` plus the alignment's chunk counts of the ids (None on the torch path)."""
        S = self.experts.num_shared
        if triton_enabled_for(x2.device):
            from .. import dispatch
            from ..kernels.moe_router import router_route

            dispatch.record("moe_router", "triton")
            r = router_route(x2, self.router_weight, self.routing, self.correction_bias, num_valid, num_shared=S)
            # after the launch: the logits exist only as the kernel's split-K planes (their sum: a host sync)
            check_router_inputs(r.logit_parts.sum(0) if check_finite else r.logit_parts[0], self.routing,
                                self.correction_bias, check_finite)
            return r.ids, r.weights, r.chunk_counts
        logits = self.router_logits(x2)
        if num_valid is not None:
            raise ValueError("num_valid needs the Triton routing kernel (CUDA or TRITON_INTERPRET=1)")
        r = route_reference(logits, self.routing, self.correction_bias, check_finite=check_finite)
        ids, w = r.topk_ids, r.topk_weights
        if S:
            T = ids.shape[0]
            shared = torch.arange(self.experts.num_experts, self.experts.num_total, dtype=torch.int32,
                                  device=ids.device).expand(T, S)
            ids = torch.cat([ids, shared], dim=1)
            w = torch.cat([w, torch.ones((T, S), dtype=w.dtype, device=w.device)], dim=1)
        return ids, w, None

    def forward(self, x: torch.Tensor, strategy: str | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be [..., hidden_size={self.hidden_size}], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.hidden_size)
        ids, w, counts = self._route(x2, None, True)
        out = self.get_strategy(strategy)(x2, ids, w, chunk_counts=counts)
        return out.reshape(*lead, self.hidden_size)

    def forward_static(self, x2: torch.Tensor, num_valid: torch.Tensor, strategy: str | None = None) -> torch.Tensor:
        """Capturable forward of ``x2 [T, H]`` whose rows at or beyond ``num_valid`` (int32 ``[1]``) are
        padding: they reach no expert and come out as zeros."""
        name = strategy or self.strategy
        if name not in CAPTURABLE_STRATEGIES:
            raise ValueError(f"strategy {name!r} needs host syncs and cannot run in a CUDA graph; use one of "
                             f"{CAPTURABLE_STRATEGIES}")
        ids, w, counts = self._route(x2, num_valid, False)
        return self.get_strategy(name)(x2, ids, w, chunk_counts=counts)
