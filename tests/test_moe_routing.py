"""Routing: the torch reference against a per-token loop written from the model definitions, the Triton
routing kernel and the router kernel (logits + routing + the alignment's chunk counts in one launch) against
the reference, and bad input."""
import math

import pytest
import torch

from triton_marlin.moe.routing import RoutingConfig, route, route_reference


def loop_routing(logits, cfg, bias=None):
    """Token by token, in plain Python floats: what the routing is supposed to do."""
    ids_out, w_out = [], []
    E = cfg.num_experts
    for row in logits.double().tolist():
        if cfg.scoring == "softmax":
            m = max(row)
            ex = [math.exp(v - m) for v in row]
            scores = [v / sum(ex) for v in ex]
        else:
            scores = [1.0 / (1.0 + math.exp(-v)) for v in row]
        choice = [s + (bias[e].item() if bias is not None else 0.0) for e, s in enumerate(scores)]
        eligible = set(range(E))
        if cfg.n_group > 1:
            size = E // cfg.n_group
            gscores = []
            for g in range(cfg.n_group):
                top2 = sorted(choice[g * size:(g + 1) * size], reverse=True)[:2]
                gscores.append((sum(top2), g))
            groups = [g for _, g in sorted(gscores, key=lambda t: (-t[0], t[1]))[:cfg.topk_group]]
            eligible = {e for g in groups for e in range(g * size, (g + 1) * size)}
        order = sorted(eligible, key=lambda e: (-choice[e], e))[:cfg.top_k]
        w = [scores[e] for e in order]
        if cfg.norm_topk_prob:
            total = sum(w)
            w = [v / total for v in w]
        ids_out.append(order)
        w_out.append([v * cfg.routed_scaling_factor for v in w])
    return torch.tensor(ids_out), torch.tensor(w_out, dtype=torch.float64)


CONFIGS = [
    (RoutingConfig(8, 2, "softmax"), False),
    (RoutingConfig(8, 2, "softmax", norm_topk_prob=False), False),
    (RoutingConfig(64, 4, "sigmoid", routed_scaling_factor=1.8), True),      # GLM-4.7-Flash
    (RoutingConfig(16, 4, "sigmoid", n_group=4, topk_group=2, routed_scaling_factor=2.5), True),
    (RoutingConfig(12, 3, "sigmoid", n_group=3, topk_group=1, norm_topk_prob=False), False),
]


@pytest.mark.parametrize("cfg,with_bias", CONFIGS)
def test_reference_matches_loop(cfg, with_bias, gen):
    T = 7
    logits = torch.randn(T, cfg.num_experts, generator=gen) * 2
    bias = (torch.rand(cfg.num_experts, generator=gen) - 0.5) * 0.5 if with_bias else None
    r = route_reference(logits, cfg, bias)
    ids, w = loop_routing(logits, cfg, bias)
    assert r.topk_ids.dtype == torch.int32 and r.topk_weights.dtype == torch.float32
    assert torch.equal(r.topk_ids.long(), ids)
    torch.testing.assert_close(r.topk_weights.double(), w, rtol=1e-6, atol=1e-7)


def test_bias_selects_but_does_not_weight(gen):
    """noaux_tc: a large bias on one expert makes every token choose it, with its unbiased score."""
    cfg = RoutingConfig(8, 2, "sigmoid", norm_topk_prob=False)
    logits = torch.randn(5, 8, generator=gen)
    bias = torch.zeros(8)
    bias[3] = 100.0
    r = route_reference(logits, cfg, bias)
    assert (r.topk_ids == 3).any(dim=1).all()
    picked = r.topk_weights[r.topk_ids == 3]
    torch.testing.assert_close(picked, torch.sigmoid(logits[:, 3]))


@pytest.mark.parametrize("cfg,with_bias", CONFIGS)
def test_triton_kernel_matches_reference(cfg, with_bias, gen):
    from triton_marlin.kernels.moe_align import route_triton

    T = 19  # a block of 16 tokens and a partial one
    logits = torch.randn(T, cfg.num_experts, generator=gen) * 2
    bias = (torch.rand(cfg.num_experts, generator=gen) - 0.5) * 0.5 if with_bias else None
    ref = route_reference(logits, cfg, bias)
    ids, w = route_triton(logits, cfg, bias, num_shared=2)
    assert ids.shape == (T, cfg.top_k + 2)
    assert torch.equal(ids[:, :cfg.top_k], ref.topk_ids)
    torch.testing.assert_close(w[:, :cfg.top_k], ref.topk_weights, rtol=1e-5, atol=1e-6)
    assert torch.equal(ids[:, cfg.top_k:], torch.tensor([cfg.num_experts, cfg.num_experts + 1]).int().expand(T, 2))
    assert torch.equal(w[:, cfg.top_k:], torch.ones(T, 2))


def test_triton_kernel_masks_padding_rows(gen):
    from triton_marlin.kernels.moe_align import route_triton

    cfg = RoutingConfig(16, 4, "sigmoid", routed_scaling_factor=1.8)
    logits = torch.randn(5, 16, generator=gen)
    ids, w = route_triton(logits, cfg, None, torch.tensor([3], dtype=torch.int32), num_shared=1)
    assert (ids[3:] == -1).all() and (w[3:] == 0).all()
    assert (ids[:3] >= 0).all()
    assert torch.equal(ids[:3, :4], route_reference(logits[:3], cfg).topk_ids)


def test_route_dispatch_records_path(gen):
    from triton_marlin import dispatch

    dispatch.reset()
    cfg = RoutingConfig(8, 2)
    r = route(torch.randn(3, 8, generator=gen), cfg, backend="torch")
    assert r.topk_ids.shape == (3, 2)
    assert dispatch.counts() == {("moe_route", "torch"): 1}


def test_bad_input():
    cfg = RoutingConfig(8, 2)
    with pytest.raises(ValueError, match="num_experts=8"):
        route_reference(torch.randn(3, 7), cfg)
    with pytest.raises(ValueError, match=r"\[num_tokens, num_experts"):
        route_reference(torch.randn(3, 2, 8), cfg)
    bad = torch.randn(3, 8)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        route_reference(bad, cfg)
    with pytest.raises(ValueError, match="top_k=9 exceeds num_experts=8"):
        RoutingConfig(8, 9)
    with pytest.raises(ValueError, match="scoring"):
        RoutingConfig(8, 2, "relu")
    with pytest.raises(ValueError, match="divisible by n_group"):
        RoutingConfig(10, 2, "sigmoid", n_group=3)
    with pytest.raises(ValueError, match="correction_bias must have shape"):
        route_reference(torch.randn(3, 8), RoutingConfig(8, 2, "sigmoid"), torch.zeros(7))
    with pytest.raises(ValueError, match="sigmoid scoring only"):
        route_reference(torch.randn(3, 8), cfg, torch.zeros(8))
    with pytest.raises(TypeError, match="float tensor"):
        route_reference(torch.zeros(3, 8, dtype=torch.int64), cfg)


def _planes_sum(parts):
    """The planes summed in plane order, as the kernel does."""
    total = parts[0].clone()
    for p in parts[1:]:
        total = total + p
    return total


def _chunk_counts_of(ids, num_experts, block_t):
    """The chunk counts the alignment reads, from the ids: per block of ``block_t`` tokens, the slots per
    expert, then every slot's rank among the block's earlier slots of its expert (-1 slots: any value)."""
    T, k = ids.shape
    rows = []
    for c in range(0, T, block_t):
        flat = ids[c:c + block_t].reshape(-1).long()
        hist = torch.stack([(flat == e).sum() for e in range(num_experts)])
        rank = torch.tensor([int((flat[:i] == flat[i]).sum()) if flat[i] >= 0 else -1 for i in range(flat.numel())]
                            + [-1] * (block_t * k - flat.numel()), dtype=torch.int64)
        rows.append((hist, rank))
    return rows


@pytest.mark.parametrize("T,E,H", [(1, 64, 2048), (5, 16, 96), (19, 65, 320), (40, 64, 512), (0, 8, 64)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_router_logits_sum_to_the_fp32_product(T, E, H, dtype, gen):
    """The split-K router kernel: its planes sum to x.float() @ W.T within fp32 summation error
    (each of the H products and partial sums rounds once: |error| <= H * 2**-24 * (|x| @ |W|.T), doubled for the
    reduction of the planes) plus, from 16 tokens (3xTF32 tensor cores), at most 2**-20 relative per product
    (W carried as two TF32 parts, the dropped low x low term), x read in its own dtype."""
    from triton_marlin.kernels.moe_router import router_route

    x = torch.randn(T, H, generator=gen).to(dtype)
    w = torch.randn(E, H, generator=gen) * 0.02
    parts = router_route(x, w, RoutingConfig(E, 2)).logit_parts
    assert parts.dim() == 3 and parts.shape[1:] == (T, E)
    ref = x.double() @ w.double().t()
    bound = (2.0 ** -20 + 2 * H * 2.0 ** -24) * (x.double().abs() @ w.double().abs().t())
    assert ((parts.sum(0).double() - ref).abs() <= bound + 1e-30).all()


# (T, H, config, bias, shared, valid): one token (8 E blocks x 8 splits arriving), a partial block, several
# blocks with padding rows, group-limited routing, softmax, no shared expert
ROUTER_CASES = [
    (1, 2048, RoutingConfig(64, 4, "sigmoid", routed_scaling_factor=1.8), True, 1, None),
    (7, 256, RoutingConfig(64, 4, "sigmoid", routed_scaling_factor=1.8), True, 1, 5),
    (37, 512, RoutingConfig(64, 4, "sigmoid", routed_scaling_factor=1.8), True, 1, 30),
    (20, 384, RoutingConfig(16, 4, "sigmoid", n_group=4, topk_group=2, routed_scaling_factor=2.5), True, 2, None),
    (18, 256, RoutingConfig(8, 2, "softmax"), False, 0, 17),
    (3, 320, RoutingConfig(12, 3, "sigmoid", n_group=3, topk_group=1, norm_topk_prob=False), False, 1, None),
]


@pytest.mark.parametrize("case", range(len(ROUTER_CASES)))
def test_router_route_matches_reference(case, gen):
    """router_route: ids equal the reference's on the kernel's own logits (the planes summed in order), weights
    within fp32 rounding of the renormalization's summation order; padding rows -1 / 0; shared slots last;
    the chunk counts are those of the ids; the arrival counters are back at zero; a second launch gives the
    same bits."""
    from triton_marlin.kernels import moe_router as MR

    T, H, cfg, with_bias, S, nv = ROUTER_CASES[case]
    E = cfg.num_experts
    x = torch.randn(T, H, generator=gen).half()
    w = torch.randn(E, H, generator=gen) * 0.05
    bias = (torch.rand(E, generator=gen) - 0.5) * 0.2 if with_bias else None
    num_valid = torch.tensor([nv], dtype=torch.int32) if nv is not None else None
    r = MR.router_route(x, w, cfg, bias, num_valid, num_shared=S)
    n = T if nv is None else nv
    ref = route_reference(_planes_sum(r.logit_parts), cfg, bias)
    k = cfg.top_k
    assert r.ids.shape == (T, k + S) and r.weights.shape == (T, k + S)
    assert torch.equal(r.ids[:n, :k], ref.topk_ids[:n])
    torch.testing.assert_close(r.weights[:n, :k], ref.topk_weights[:n], rtol=4 * 2.0 ** -24 * k, atol=0)
    assert torch.equal(r.ids[:n, k:], torch.arange(E, E + S, dtype=torch.int32).expand(n, S))
    assert torch.equal(r.weights[:n, k:], torch.ones(n, S))
    assert (r.ids[n:] == -1).all() and (r.weights[n:] == 0).all()
    block_t = MR.router_blocks(T, E)[0]
    assert r.chunk_counts.shape == (-(-T // block_t), E + S + block_t * (k + S))
    for c, (hist, rank) in enumerate(_chunk_counts_of(r.ids, E + S, block_t)):
        assert torch.equal(r.chunk_counts[c, :E + S].long(), hist)
        got = r.chunk_counts[c, E + S:].long()
        assert torch.equal(got[rank >= 0], rank[rank >= 0])
    assert (MR._counters(x.device)[:r.chunk_counts.shape[0]] == 0).all()
    again = MR.router_route(x, w, cfg, bias, num_valid, num_shared=S)
    assert torch.equal(again.ids, r.ids) and torch.equal(again.weights, r.weights)
    assert torch.equal(again.logit_parts, r.logit_parts)


def test_router_route_refuses_bad_input(gen):
    from triton_marlin.kernels.moe_router import router_route

    cfg = RoutingConfig(4, 2)
    with pytest.raises(ValueError, match="same H"):
        router_route(torch.randn(2, 8), torch.randn(4, 16), cfg)
    with pytest.raises(ValueError, match="fp32"):
        router_route(torch.randn(2, 8), torch.randn(4, 8).half(), cfg)
    with pytest.raises(TypeError, match="fp16, bf16 or fp32"):
        router_route(torch.randn(2, 8).double(), torch.randn(4, 8), cfg)
    with pytest.raises(ValueError, match="4 experts"):
        router_route(torch.randn(2, 8), torch.randn(5, 8), cfg)
    with pytest.raises(ValueError, match="correction_bias"):
        router_route(torch.randn(2, 8), torch.randn(4, 8), RoutingConfig(4, 2, "sigmoid"), torch.zeros(3))
    with pytest.raises(ValueError, match="num_valid_tokens"):
        router_route(torch.randn(2, 8), torch.randn(4, 8), cfg, None, torch.tensor([1]))
