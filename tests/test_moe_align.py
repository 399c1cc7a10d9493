"""Token/expert alignment: every Triton method (one program; one launch of several programs; count +
scatter launches; one scatter launch on chunk counts given, as the MoE router kernel writes them) equals the
reference bit for bit, and both satisfy the layout contract, including the edge cases (slots routed to no
active expert, everything on one expert, more experts than slots, ids past E, slot counts that are not a
multiple of the chunk, many chunks, many experts)."""
import types

import pytest
import torch

from triton_marlin import dispatch
from triton_marlin.kernels import moe_align as MA
from triton_marlin.moe.align import align_capacity, align_reference, align_tokens

METHODS = ("single", "fused", "split")
POISON = -777_777


def check_layout(al, ids, num_experts):
    """Every valid slot exactly once, grouped by expert in slot order, runs padded to block_m."""
    flat = ids.reshape(-1).long()
    num_slots = flat.numel()
    bm = al.block_m
    npost = int(al.num_tokens_post_pad.item())
    assert npost % bm == 0 and npost <= al.sorted_ids.numel()
    sorted_ids = al.sorted_ids.long()
    assert (sorted_ids[npost:] == num_slots).all()
    used = sorted_ids[:npost]
    real = used[used < num_slots]
    valid = torch.nonzero((flat >= 0) & (flat < num_experts)).flatten()
    assert torch.equal(torch.sort(real).values, valid)
    for b in range(al.expert_ids.numel()):
        rows = sorted_ids[b * bm:(b + 1) * bm]
        e = int(al.expert_ids[b])
        if b * bm >= npost:
            assert e == -1
            continue
        slots = rows[rows < num_slots]
        assert slots.numel() > 0, "a block inside the used rows holds no slot"
        assert (flat[slots] == e).all()
        assert torch.equal(slots, torch.sort(slots).values)
    expected_rows = sum((int((flat == e).sum()) + bm - 1) // bm * bm for e in range(num_experts))
    assert npost == expected_rows


def _glm(g, T):
    """GLM-4.7-Flash routing: 4 of 64 routed experts per token (distinct) + the shared expert 64."""
    routed = torch.rand(T, 64, generator=g).argsort(dim=1)[:, :4]
    return torch.cat([routed, torch.full((T, 1), 64)], dim=1)


# name: generator -> (ids [T, k], num_experts, block_m)
CASES = {
    "random": lambda g: (torch.randint(0, 6, (9, 3), generator=g), 6, 4),
    "no_active_expert": lambda g: (torch.tensor([[0, 2], [-1, -1], [2, -1], [5, 1]]), 6, 4),
    "all_dropped": lambda g: (torch.full((7, 3), -1), 5, 16),
    "no_slots": lambda g: (torch.zeros((0, 4), dtype=torch.int64), 5, 16),
    "all_one_expert": lambda g: (torch.full((11, 2), 3), 5, 8),
    "all_one_expert_many_chunks": lambda g: (torch.full((100, 3), 6), 8, 32),
    "more_experts_than_slots": lambda g: (torch.tensor([[17, 40]]), 64, 16),
    "out_of_range_ids": lambda g: (torch.tensor([[0, 7], [6, 1]]), 6, 4),
    "block_m_1": lambda g: (torch.randint(-1, 5, (6, 2), generator=g), 5, 1),
    "many_slots": lambda g: (torch.randint(-1, 37, (70, 4), generator=g), 37, 16),
    # one slot past a whole chunk of 64: the last chunk holds a single slot
    "chunk_plus_one": lambda g: (torch.randint(0, 8, (13, 5), generator=g), 8, 16),
    # 1200 slots: 19 chunks, the last one partial; E = 8 (a short expert tile)
    "many_chunks_e8": lambda g: (torch.randint(-1, 9, (400, 3), generator=g), 8, 16),
    "glm_1_token": lambda g: (_glm(g, 1), 65, 16),
    "glm_16_tokens": lambda g: (_glm(g, 16), 65, 16),
    "glm_256_tokens": lambda g: (_glm(g, 256), 65, 16),
    "e65_block_m_32": lambda g: (torch.randint(-1, 70, (40, 5), generator=g), 65, 32),
    # E == the expert tile (128), ids past E
    "e128_block_m_64": lambda g: (torch.randint(-1, 131, (37, 4), generator=g), 128, 64),
    # three expert tiles (128 + 128 + 1), ids past E
    "e257_block_m_16": lambda g: (torch.randint(-2, 270, (45, 9), generator=g), 257, 16),
    "e257_block_m_1": lambda g: (torch.randint(-1, 257, (20, 9), generator=g), 257, 1),
}


def chunk_counts_of(ids, num_experts, chunk):
    """The chunk counts (int32 [chunks, E + chunk]) of ``ids``, in torch: per chunk of ``chunk`` slots the
    slots per expert, then each slot's rank among the chunk's earlier slots of its expert; POISON where the
    kernels must not look (ranks of slots outside [0, E), past the last slot)."""
    flat = ids.reshape(-1).long()
    chunks = -(-flat.numel() // chunk)
    out = torch.full((chunks, num_experts + chunk), POISON, dtype=torch.int32)
    for c in range(chunks):
        part = flat[c * chunk:(c + 1) * chunk]
        for e in range(num_experts):
            out[c, e] = int((part == e).sum())
        for i, v in enumerate(part.tolist()):
            if 0 <= v < num_experts:
                out[c, num_experts + i] = int((part[:i] == v).sum())
    return out


def _poisoned_empty(monkeypatch):
    """Every buffer the launcher allocates (outputs and histogram scratch) starts as POISON, so an element a
    kernel forgets to write (or a histogram column it reads without writing) fails the comparison."""
    def empty(*size, dtype=None, device=None, **kw):
        return torch.full(size[0] if len(size) == 1 and not isinstance(size[0], int) else size, POISON,
                          dtype=dtype, device=device)
    monkeypatch.setattr(MA, "torch", types.SimpleNamespace(**{**vars(torch), "empty": empty}))


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_layout(case, gen):
    ids, E, bm = CASES[case](gen)
    al = align_reference(ids.int(), E, bm)
    check_layout(al, ids, E)
    cap, blocks = align_capacity(ids.numel(), E, bm)
    assert al.sorted_ids.numel() == cap and al.expert_ids.numel() == blocks


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_triton_equals_reference(case, method, gen, monkeypatch):
    ids, E, bm = CASES[case](gen)
    ref = align_reference(ids.int(), E, bm)
    _poisoned_empty(monkeypatch)
    al = align_tokens(ids.int(), E, bm, backend="triton", method=method)
    assert torch.equal(al.sorted_ids, ref.sorted_ids)
    assert torch.equal(al.expert_ids, ref.expert_ids)
    assert torch.equal(al.num_tokens_post_pad, ref.num_tokens_post_pad)
    check_layout(al, ids, E)


@pytest.mark.parametrize("case", sorted(CASES))
def test_routed_counts_equal_reference(case, gen, monkeypatch):
    """method "routed": the scatter launch alone on chunk counts given (chunks of 16 tokens, as the router
    kernel's token blocks: 16 x k slots, not a power of two for k = 3, 5, 9)."""
    ids, E, bm = CASES[case](gen)
    ref = align_reference(ids.int(), E, bm)
    counts = chunk_counts_of(ids, E, 16 * max(1, ids.shape[1]))
    _poisoned_empty(monkeypatch)
    dispatch.reset()
    al = align_tokens(ids.int(), E, bm, backend="triton", chunk_counts=counts)
    assert dispatch.counts() == {("moe_align", "triton-routed"): 1}
    assert torch.equal(al.sorted_ids, ref.sorted_ids)
    assert torch.equal(al.expert_ids, ref.expert_ids)
    assert torch.equal(al.num_tokens_post_pad, ref.num_tokens_post_pad)


@pytest.mark.parametrize("T,valid", [(3, 3), (16, 16), (256, 250)])
def test_router_kernel_counts_align_like_the_reference(T, valid, gen):
    """The GLM front end as the layer runs it: router_route's ids and chunk counts -> the "routed" alignment,
    equal to align_reference on those ids (padding rows included), block_m 16 and 32."""
    from triton_marlin.kernels.moe_router import router_route
    from triton_marlin.moe.routing import RoutingConfig

    cfg = RoutingConfig(64, 4, "sigmoid", routed_scaling_factor=1.8)
    x = torch.randn(T, 256, generator=gen).half()
    w = torch.randn(64, 256, generator=gen) * 0.05
    r = router_route(x, w, cfg, torch.randn(64, generator=gen) * 0.1, torch.tensor([valid], dtype=torch.int32),
                     num_shared=1)
    for bm in (16, 32):
        ref = align_reference(r.ids, 65, bm)
        al = align_tokens(r.ids, 65, bm, backend="triton", chunk_counts=r.chunk_counts)
        assert torch.equal(al.sorted_ids, ref.sorted_ids) and torch.equal(al.expert_ids, ref.expert_ids)
        assert torch.equal(al.num_tokens_post_pad, ref.num_tokens_post_pad)
        check_layout(al, r.ids, 65)


def test_int64_ids_and_block_m_sweep(gen):
    """int64 ids are accepted; every method and block_m 1/16/32/64 on one draw, 65 experts."""
    ids = torch.randint(-1, 66, (50, 5), generator=gen)
    for bm in (1, 16, 32, 64):
        ref = align_reference(ids, 65, bm)
        for method in METHODS:
            al = align_tokens(ids, 65, bm, backend="triton", method=method)
            assert torch.equal(al.sorted_ids, ref.sorted_ids), (bm, method)
            assert torch.equal(al.expert_ids, ref.expert_ids), (bm, method)
            assert torch.equal(al.num_tokens_post_pad, ref.num_tokens_post_pad), (bm, method)


def test_auto_method_by_slot_count_and_recorded(gen):
    """auto: one launch while the slots fill at most FUSED_MAX_CHUNKS chunks, two launches above; the path
    taken is recorded."""
    limit = MA.FUSED_MAX_CHUNKS * 64
    assert MA.align_method(1, 65) == "fused" and MA.align_method(limit, 65) == "fused"
    assert MA.align_method(limit + 1, 65) == "split" and MA.align_method(1280, 65) == "split"
    assert MA.align_method(1, 65, have_counts=True) == "routed" == MA.align_method(1280, 65, have_counts=True)
    for T, expect in ((3, "fused"), (limit // 5 + 1, "split")):
        ids = _glm(gen, T)
        dispatch.reset()
        al = align_tokens(ids.int(), 65, 16, backend="triton")
        assert dispatch.counts() == {("moe_align", f"triton-{expect}"): 1}
        ref = align_reference(ids.int(), 65, 16)
        assert torch.equal(al.sorted_ids, ref.sorted_ids) and torch.equal(al.expert_ids, ref.expert_ids)
    dispatch.reset()
    align_tokens(ids.int(), 65, 16, backend="torch")
    assert dispatch.counts() == {("moe_align", "torch"): 1}


def test_edge_case_facts():
    al = align_reference(torch.tensor([[-1, -1]], dtype=torch.int32), 4, 16)
    assert al.num_tokens_post_pad.item() == 0 and (al.expert_ids == -1).all()
    al = align_reference(torch.full((5, 2), 2, dtype=torch.int32), 4, 4)
    assert al.num_tokens_post_pad.item() == 12 and al.expert_ids.tolist()[:3] == [2, 2, 2]


def test_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        align_reference(torch.zeros(4, dtype=torch.int32), 4, 16)
    with pytest.raises(TypeError, match="int32 or int64"):
        align_reference(torch.zeros(2, 2), 4, 16)
    with pytest.raises(ValueError, match="power of two"):
        align_reference(torch.zeros(2, 2, dtype=torch.int32), 4, 12)
    with pytest.raises(ValueError, match="num_experts"):
        align_reference(torch.zeros(2, 2, dtype=torch.int32), 0, 16)
    with pytest.raises(ValueError, match="method"):
        align_tokens(torch.zeros(2, 2, dtype=torch.int32), 4, 16, backend="triton", method="parallel")
    with pytest.raises(ValueError, match="method"):
        MA.align_triton(torch.zeros(2, 2, dtype=torch.int32), 4, 16, 64, 4, method="one")
    with pytest.raises(ValueError, match="capacity"):
        MA.align_triton(torch.zeros(2, 2, dtype=torch.int32), 4, 16, 60, 4)
    ids = torch.zeros(5, 2, dtype=torch.int32)
    counts = chunk_counts_of(ids, 4, 4)  # 3 chunks of 4 slots
    with pytest.raises(ValueError, match="only with it"):
        MA.align_triton(ids, 4, 16, 64, 4, method="split", chunk_counts=counts)
    with pytest.raises(ValueError, match="only with it"):
        MA.align_triton(ids, 4, 16, 64, 4, method="routed")
    with pytest.raises(ValueError, match="need 2"):
        MA.align_triton(ids, 4, 16, 64, 4, chunk_counts=chunk_counts_of(ids, 4, 8)[:1])
    with pytest.raises(ValueError, match="contiguous int32"):
        MA.align_triton(ids, 4, 16, 64, 4, chunk_counts=counts.long())


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS + ("routed",))
def test_cuda_graph_replay(method, gen):
    """Captured once, replayed on new routings of the same shape: equal to the reference each time."""
    T, E, bm = 256, 65, 16
    ids = _glm(gen, T).int().cuda()
    counts = chunk_counts_of(ids.cpu(), E, 80).cuda() if method == "routed" else None
    cap, blocks = align_capacity(ids.numel(), E, bm)
    MA.align_triton(ids, E, bm, cap, blocks, method=method, chunk_counts=counts)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = MA.align_triton(ids, E, bm, cap, blocks, method=method, chunk_counts=counts)
    for _ in range(3):
        new = _glm(gen, T).int()
        new[:7] = -1  # padding rows of a graph bucket
        ids.copy_(new)
        if counts is not None:
            counts.copy_(chunk_counts_of(new, E, 80))
        graph.replay()
        torch.cuda.synchronize()
        ref = align_reference(new, E, bm)
        assert torch.equal(out[0].cpu(), ref.sorted_ids) and torch.equal(out[1].cpu(), ref.expert_ids)
        assert torch.equal(out[2].cpu(), ref.num_tokens_post_pad)


def test_gpu_timing_script_runs_on_cpu(tmp_path):
    """gpu/moe_align_time.py: checks every method against the reference and writes its records (here under
    the interpreter, host timings)."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "gpu" / "moe_align_time.py"
    spec = importlib.util.spec_from_file_location("moe_align_time", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "align.jsonl"
    mod.main(["--quick", "--device", "cpu", "--tokens", "2", "--warmup", "0", "--repeats", "1", "--output", str(out)])
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["case"]["method"] for r in recs if r["metric"] == "time_launch"} == set(mod.METHODS)
    assert all(r["value"] > 0 for r in recs)
