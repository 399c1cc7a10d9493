"""The MoE layer (router + routed and shared experts), the GLM-4.7-Flash configuration, and the CUDA-graph
replay (GPU)."""
import warnings

import pytest
import torch

from triton_marlin import dispatch
from triton_marlin.kernels.moe_gemm import fused_moe_reference
from triton_marlin.models.glm4_moe_lite import (Glm4MoeLiteConfig, build_glm4_moe_lite_layer, glm4_mixed_recipe)
from triton_marlin.moe.layer import MoELayer
from triton_marlin.moe.routing import route_reference


def rel_err(out, ref):
    out = out.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref.double()).norm() / ref.double().norm()).item()


def test_glm4_config_values():
    c = Glm4MoeLiteConfig()
    assert (c.hidden_size, c.moe_intermediate_size, c.n_routed_experts, c.num_experts_per_tok,
            c.n_shared_experts) == (2048, 1536, 64, 4, 1)
    r = c.routing()
    assert (r.scoring, r.n_group, r.topk_group, r.norm_topk_prob, r.routed_scaling_factor) == \
        ("sigmoid", 1, 1, True, 1.8)


def test_glm4_recipe_counts():
    tuples = [glm4_mixed_recipe(e) for e in range(64)]
    assert tuples.count(("int4", "int4", "int4")) == 44
    assert tuples.count(("int2", "int2", "int3")) == 8
    assert tuples.count(("int3", "int3", "int4")) == 8
    assert tuples.count(("int8", "int8", "int8")) == 4


@pytest.fixture
def small_layer():
    cfg = Glm4MoeLiteConfig().scaled(64, 96, 16)
    return build_glm4_moe_lite_layer(cfg, "glm4", group_size=32, seed=1)


def test_layer_forward_matches_reference(small_layer, gen):
    layer = small_layer
    assert layer.experts.num_shared == 1 and layer.correction_bias is not None
    x = torch.randn(2, 64, generator=gen).half()
    ids, w = layer.route(x)
    assert ids.shape == (2, 5) and (ids[:, 4] == 16).all() and (w[:, 4] == 1).all()
    ref_route = route_reference(layer.router_logits(x), layer.routing, layer.correction_bias)
    assert torch.equal(ids[:, :4], ref_route.topk_ids)
    ref = fused_moe_reference(x, ids, w, layer.experts)
    for name in ("slow_path", "fast_mixed"):  # every strategy: test_moe_strategies.py
        assert rel_err(layer(x, name), ref) < 1.5e-3, name


def test_forward_static_masks_padding_rows(small_layer, gen):
    x = torch.randn(3, 64, generator=gen).half()
    out = small_layer.forward_static(x, torch.tensor([2], dtype=torch.int32))
    assert (out[2:] == 0).all()
    ids, w = small_layer.route(x[:2])
    assert rel_err(out[:2], fused_moe_reference(x[:2], ids, w, small_layer.experts)) < 1.5e-3
    with pytest.raises(ValueError, match="cannot run in a CUDA graph"):
        small_layer.forward_static(x, torch.tensor([2], dtype=torch.int32), "hybrid")


@pytest.mark.parametrize("strategy,align", [("fast_mixed", "triton-routed"), ("max_bits_padded", "triton-routed"),
                                            ("hybrid", "triton-fused")])
def test_router_counts_reach_the_alignment(small_layer, strategy, align, gen):
    """20 tokens (16-row blocks, so the alignment runs): one router launch routes and counts, the alignment
    is the scatter launch alone on those counts (hybrid filters the ids, so its alignment counts them
    itself); the output matches the reference, padding rows are zero."""
    layer = small_layer
    x = torch.randn(20, 64, generator=gen).half()
    dispatch.reset()
    out = layer.forward_static(x, torch.tensor([18], dtype=torch.int32), strategy) if strategy != "hybrid" \
        else layer(x[:18], strategy)
    c = dispatch.counts()
    assert c[("moe_router", "triton")] == 1
    assert c[("moe_align", align)] == 1 and sum(v for (op, _), v in c.items() if op == "moe_align") == 1
    ids, w = layer.route(x[:18])
    assert rel_err(out[:18], fused_moe_reference(x[:18], ids, w, layer.experts)) < 1.5e-3
    assert (out[18:] == 0).all()


def test_layer_bad_input(small_layer):
    with pytest.raises(ValueError, match="hidden_size=64"):
        small_layer(torch.randn(2, 65).half())
    bad = torch.randn(2, 64).half()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        small_layer(bad)
    with pytest.raises(ValueError, match="router_weight must be"):
        MoELayer(torch.zeros(15, 64), small_layer.routing, small_layer.experts)
    with pytest.raises(ValueError, match="strategy must be one of"):
        MoELayer(small_layer.router_weight, small_layer.routing, small_layer.experts, strategy="fast")


@pytest.mark.gpu
def test_graph_replay_matches_eager_and_recaptures():
    from triton_marlin.moe.graph import GraphedMoE

    cfg = Glm4MoeLiteConfig().scaled(256, 192, 16)
    layer = build_glm4_moe_lite_layer(cfg, "glm4", group_size=64, device="cuda")
    graphed = GraphedMoE(layer, buckets=(1, 4, 8))

    def reference(x):
        ids, w = layer.route(x)
        return fused_moe_reference(x, ids, w, layer.experts)

    for T, captures in ((1, 1), (3, 2), (4, 2), (2, 2), (7, 3)):
        x = torch.randn(T, 256, device="cuda").half()
        out = graphed(x)
        assert graphed.captures == captures
        assert out.shape == (T, 256)
        assert rel_err(out, reference(x)) < 1.5e-3, T
    # bucket 4's static input still holds 4 rows from before; a 2-row call must not see rows 2..3
    x = torch.randn(2, 256, device="cuda").half()
    assert rel_err(graphed(x), reference(x)) < 1.5e-3
    assert (graphed.captured[4].static_out[2:] == 0).all()
    dispatch.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        big = torch.randn(9, 256, device="cuda").half()
        out = graphed(big)
    assert any("exceeds the largest captured bucket" in str(w.message) for w in caught)
    assert dispatch.counts().get(("moe_graph", "eager")) == 1
    assert rel_err(out, reference(big)) < 1.5e-3
    with pytest.raises(TypeError, match="built for torch.float16"):
        graphed(big.float())


@pytest.mark.gpu
def test_graph_layer_glm4_one_token():
    """The real GLM-4.7-Flash dimensions, one token, int4 experts: graph replay equals slow_path."""
    from triton_marlin.moe.graph import GraphedMoE

    layer = build_glm4_moe_lite_layer(device="cuda")
    x = torch.randn(1, 2048, device="cuda").half()
    out = GraphedMoE(layer, buckets=(1,))(x)
    assert rel_err(out, layer(x, "slow_path")) < 3e-3
