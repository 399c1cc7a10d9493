"""Mixture-of-Experts: routing, token/expert alignment, quantized experts, the five dispatch strategies,
the MoE layer and its CUDA-graph replay.

    from triton_marlin.models.glm4_moe_lite import build_glm4_moe_lite_layer
    from triton_marlin.moe import GraphedMoE, make_strategy, report

    layer = build_glm4_moe_lite_layer(recipe="glm4", device="cuda")   # 64 mixed-width experts + shared
    y = layer(x)                                   # route + fused experts (fast_mixed), x: [T, 2048] fp16
    y_ref = layer(x, "slow_path")                  # the per-expert Python loop, same weights
    graphed = GraphedMoE(layer)                    # CUDA graph per batch bucket (1, 2, 4, ... 256 tokens)
    y = graphed(x)
    ids, w = layer.route(x)
    out, facts = report(make_strategy("max_bits_padded", layer.experts), x, ids, w, y_ref)
    # facts: kernel launches, weight bytes, peak memory, extra memory, error against slow_path
"""
from .routing import RoutingConfig, RoutingResult, route, route_reference
from .align import Alignment, align_capacity, align_reference, align_tokens
from .experts import (PROJECTIONS, FlatProjection, QuantizedExperts, normalize_recipe, pad_to_max_bits,
                      repack_lossless)
from .strategies import STRATEGIES, MoEStrategy, StrategyReport, make_strategy, report
from .layer import CAPTURABLE_STRATEGIES, MoELayer
from .graph import DEFAULT_BUCKETS, GraphedMoE

__all__ = [
    "RoutingConfig", "RoutingResult", "route", "route_reference", "Alignment", "align_capacity",
    "align_reference", "align_tokens", "PROJECTIONS", "FlatProjection", "QuantizedExperts", "normalize_recipe",
    "pad_to_max_bits", "repack_lossless", "STRATEGIES", "MoEStrategy", "StrategyReport", "make_strategy", "report",
    "CAPTURABLE_STRATEGIES", "MoELayer", "DEFAULT_BUCKETS", "GraphedMoE",
]
