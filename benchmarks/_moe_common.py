"""Helpers shared by the MoE benchmarks: model construction at real or shrunk dimensions and the active-weight
byte count that is each case's memory floor."""
from __future__ import annotations

import torch

from triton_marlin.device import triton_enabled_for, triton_interpret
from triton_marlin.models.glm4_moe_lite import Glm4MoeLiteConfig, build_glm4_moe_lite_layer
from triton_marlin.moe.experts import QuantizedExperts
from triton_marlin.moe.layer import MoELayer
from triton_marlin.moe.routing import RoutingConfig

GLM = Glm4MoeLiteConfig()


def glm_layer(dev: torch.device, *, shrink: bool, recipe="int4", seed: int = 0, experts: int | None = None) -> MoELayer:
    """A GLM-4.7-Flash MoE layer (generated weights); ``shrink`` for CPU runs: hidden 128, intermediate 128."""
    cfg = GLM.scaled(128, 128, experts or 16) if shrink else (GLM if experts is None else
                                                              GLM.scaled(GLM.hidden_size, GLM.moe_intermediate_size,
                                                                         experts))
    return build_glm4_moe_lite_layer(cfg, recipe, group_size=32 if shrink else 128, seed=seed, device=dev)


def uniform_experts(num_experts: int, hidden: int, inter: int, dev, fmt="int4", group=128, seed=0) -> QuantizedExperts:
    g = torch.Generator(device=dev).manual_seed(seed)
    ex = []
    from triton_marlin import quantize
    for _ in range(num_experts):
        ex.append({"gate": quantize(torch.randn(inter, hidden, generator=g, device=dev) * 0.02, fmt, group),
                   "up": quantize(torch.randn(inter, hidden, generator=g, device=dev) * 0.02, fmt, group),
                   "down": quantize(torch.randn(hidden, inter, generator=g, device=dev) * 0.02, fmt, group)})
    return QuantizedExperts(ex, hidden, inter)


def layer_for(experts: QuantizedExperts, top_k: int, seed: int = 0) -> MoELayer:
    g = torch.Generator(device=experts.device).manual_seed(seed)
    router = torch.randn(experts.num_experts, experts.hidden_size, generator=g, device=experts.device) * 0.02
    return MoELayer(router, RoutingConfig(experts.num_experts, top_k, "softmax"), experts)


def active_bytes(experts: QuantizedExperts, ids: torch.Tensor) -> int:
    """Weight bytes of the experts the slots reach, each once: the least one forward must read."""
    return sum(experts.expert_nbytes(e) for e in torch.unique(ids.cpu()).tolist() if 0 <= e < experts.num_total)


def fused_note(dev: torch.device) -> str | None:
    if dev.type == "cuda":
        return None
    if triton_enabled_for(dev) and triton_interpret():
        return "fused Triton kernels ran in the CPU interpreter: their times are not performance"
    return f"fused Triton kernels need CUDA (or TRITON_INTERPRET=1): not measured on {dev}"


def cap_interpreter_runs(runner, tokens: list[int] | None = None) -> list[int] | None:
    """Under the CPU interpreter a fused forward takes about a second and its time means nothing: keep one
    warmup and two timed calls (and the first token count only), and say so."""
    a = runner.args
    if a.device.type == "cpu" and triton_enabled_for(a.device) and triton_interpret():
        a.warmup, a.repeats = min(a.warmup, 1), min(a.repeats, 2)
        runner.note("Triton CPU interpreter: 1 warmup and 2 timed calls per case, first token count only")
        return tokens[:1] if tokens else tokens
    return tokens
