"""The five strategies compute the same function as slow_path (Triton kernels through the interpreter on
CPU, small sizes), each does what its name says, and bad input is refused.

Tolerance against slow_path: both sides carry their own fp16 roundings (each within 1.5e-3 of the float64
reference, see test_moe_kernels.py), so they agree within 3e-3."""
import pytest
import torch

from triton_marlin import dispatch
from triton_marlin.kernels.moe_gemm import fused_moe_reference
from triton_marlin.moe.experts import QuantizedExperts
from triton_marlin.moe.strategies import STRATEGIES, make_strategy, report

H, I = 64, 96
MIXED = [(("int4", 32),) * 3, (("int4", 32),) * 3, (("int4", 32),) * 3,
         (("int2", 32), ("int2", 32), ("int3", 32)), (("int8", 32), ("int4", 32), ("mxfp4", 32))]


def rel_err(out, ref):
    out = out.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref.double()).norm() / ref.double().norm()).item()


@pytest.fixture
def mixed(gen):
    E = len(MIXED)
    g, u, d = (torch.randn(E, I, H, generator=gen) * 0.05, torch.randn(E, I, H, generator=gen) * 0.05,
               torch.randn(E, H, I, generator=gen) * 0.05)
    shared = (torch.randn(I, H, generator=gen) * 0.05, torch.randn(I, H, generator=gen) * 0.05,
              torch.randn(H, I, generator=gen) * 0.05)
    return QuantizedExperts.from_float(g, u, d, MIXED, shared=shared, shared_recipe=("int8", 32))


def slots(T, ex, gen, k=2):
    ids = torch.stack([torch.randperm(ex.num_experts, generator=gen)[:k] for _ in range(T)])
    ids = torch.cat([ids, torch.full((T, ex.num_shared), ex.num_experts)], dim=1).int()
    w = torch.rand(ids.shape, generator=gen) + 0.1
    w[:, k:] = 1.0
    return ids, w


@pytest.mark.parametrize("T", [1, 5])
def test_all_strategies_agree_with_slow_path(mixed, gen, T):
    x = torch.randn(T, H, generator=gen).half()
    ids, w = slots(T, mixed, gen)
    ref64 = fused_moe_reference(x, ids, w, mixed)
    slow = make_strategy("slow_path", mixed)(x, ids, w)
    assert rel_err(slow, ref64) < 1.5e-3
    for name in ("fast_mixed", "hybrid", "max_bits_padded"):
        out, rep = report(make_strategy(name, mixed), x, ids, w, slow)
        assert out.dtype == x.dtype and out.shape == (T, H)
        assert rep.rel_error_vs_slow_path < 3e-3, name
        assert rel_err(out, ref64) < 1.5e-3, name
        assert rep.weight_bytes > 0


def test_fast_uniform_on_uniform_model(gen):
    E = 4
    ex = QuantizedExperts.from_float(torch.randn(E, I, H, generator=gen) * 0.05,
                                     torch.randn(E, I, H, generator=gen) * 0.05,
                                     torch.randn(E, H, I, generator=gen) * 0.05,
                                     (("int4", 32), ("int4", 32), ("int2", 32)))
    x = torch.randn(2, H, generator=gen).half()
    ids = torch.stack([torch.randperm(E, generator=gen)[:2] for _ in range(2)]).int()
    w = torch.rand(2, 2, generator=gen)
    slow = make_strategy("slow_path", ex)(x, ids, w)
    for name in STRATEGIES[1:]:
        out, rep = report(make_strategy(name, ex), x, ids, w, slow)
        assert rep.rel_error_vs_slow_path < 3e-3, name
        assert rep.extra_memory_bytes == 0


def test_fast_uniform_refuses_mixed(mixed):
    with pytest.raises(ValueError, match="fast_uniform needs one format per projection"):
        make_strategy("fast_uniform", mixed)


def test_hybrid_splits_common_and_rare(mixed, gen):
    h = make_strategy("hybrid", mixed)
    assert h.num_batched == 3                        # the three int4/int4/int4 experts
    assert h.batched_mask == [True, True, True, False, False, False]
    x = torch.randn(4, H, generator=gen).half()
    ids, w = slots(4, mixed, gen)
    dispatch.reset()
    out = h(x, ids, w)
    c = dispatch.counts()
    assert sum(v for (op, _), v in c.items() if op == "moe_align") == 1  # one batched launch sequence
    rare = {e for e in ids.flatten().tolist() if not h.batched_mask[e]}
    assert sum(v for (op, _), v in c.items() if op == "qmatmul") == 3 * len(rare)
    assert rel_err(out, fused_moe_reference(x, ids, w, mixed)) < 1.5e-3


def test_max_bits_padded_reports_extra_memory(mixed, gen):
    s = make_strategy("max_bits_padded", mixed)
    assert s.padded.is_uniform()
    assert s.extra_memory_bytes == s.padded.nbytes - mixed.nbytes > 0
    x = torch.randn(2, H, generator=gen).half()
    ids, w = slots(2, mixed, gen)
    assert s.active_weight_bytes(ids) >= make_strategy("fast_mixed", mixed).active_weight_bytes(ids)


def test_slow_path_runs_each_active_expert_once(mixed, gen):
    x = torch.randn(3, H, generator=gen).half()
    ids, w = slots(3, mixed, gen)
    dispatch.reset()
    make_strategy("slow_path", mixed)(x, ids, w)
    calls = sum(v for (op, _), v in dispatch.counts().items() if op == "qmatmul")
    assert calls == 3 * len(set(ids.flatten().tolist()))


def test_slots_to_no_expert_contribute_nothing(mixed, gen):
    x = torch.randn(3, H, generator=gen).half()
    ids, w = slots(3, mixed, gen)
    ids[1, :] = -1
    for name in ("slow_path", "fast_mixed"):
        out = make_strategy(name, mixed)(x, ids, w)
        assert (out[1] == 0).all() and torch.isfinite(out).all()


def test_bad_input(mixed):
    s = make_strategy("fast_mixed", mixed)
    x = torch.randn(2, H).half()
    ids = torch.zeros(2, 3, dtype=torch.int32)
    w = torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"x must be \[num_tokens, hidden_size=64\]"):
        s(torch.randn(2, H + 1).half(), ids, w)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        s(x.float(), ids, w)
    with pytest.raises(ValueError, match="topk_ids must be"):
        s(x, ids[:1], w)
    with pytest.raises(ValueError, match="topk_weights must have topk_ids' shape"):
        s(x, ids, w[:, :2])
    with pytest.raises(TypeError, match="int32 or int64"):
        s(x, ids.float(), w)
    with pytest.raises(ValueError, match="unknown strategy"):
        make_strategy("fastest", mixed)
    with pytest.raises(TypeError, match="QuantizedExperts"):
        make_strategy("slow_path", [1, 2])


def test_torch_compile_fullgraph(mixed, gen):
    """Under torch.compile the fused strategies go through the custom op: one graph, same result."""
    s = make_strategy("fast_mixed", mixed)
    x = torch.randn(2, H, generator=gen).half()
    ids, w = slots(2, mixed, gen)
    compiled = torch.compile(lambda x, ids, w: s(x, ids, w), backend="eager", fullgraph=True)
    out = compiled(x, ids, w)
    assert rel_err(out, s(x, ids, w)) < 1e-3  # same kernels; fp32 atomics may add in another order
