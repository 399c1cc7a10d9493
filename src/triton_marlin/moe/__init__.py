"""Mixture-of-Experts: routing, token/expert alignment, quantized experts, the five dispatch strategies,
the MoE layer and its CUDA-graph replay."""
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
