"""Token/expert alignment: the Triton kernel equals the reference bit for bit, and both satisfy the layout
contract, including the edge cases (slots routed to no active expert, everything on one expert, more
experts than slots)."""
import pytest
import torch

from triton_marlin.moe.align import align_capacity, align_reference, align_tokens


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


CASES = {
    "random": lambda g: (torch.randint(0, 6, (9, 3), generator=g), 6, 4),
    "no_active_expert": lambda g: (torch.tensor([[0, 2], [-1, -1], [2, -1], [5, 1]]), 6, 4),
    "all_one_expert": lambda g: (torch.full((11, 2), 3), 5, 8),
    "more_experts_than_slots": lambda g: (torch.tensor([[17, 40]]), 64, 16),
    "out_of_range_ids": lambda g: (torch.tensor([[0, 7], [6, 1]]), 6, 4),
    "block_m_1": lambda g: (torch.randint(-1, 5, (6, 2), generator=g), 5, 1),
    "many_slots": lambda g: (torch.randint(-1, 37, (70, 4), generator=g), 37, 16),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_layout(case, gen):
    ids, E, bm = CASES[case](gen)
    al = align_reference(ids.int(), E, bm)
    check_layout(al, ids, E)
    cap, blocks = align_capacity(ids.numel(), E, bm)
    assert al.sorted_ids.numel() == cap and al.expert_ids.numel() == blocks


@pytest.mark.parametrize("case", sorted(CASES))
def test_triton_equals_reference(case, gen):
    ids, E, bm = CASES[case](gen)
    ref = align_reference(ids.int(), E, bm)
    al = align_tokens(ids.int(), E, bm, backend="triton")
    assert torch.equal(al.sorted_ids, ref.sorted_ids)
    assert torch.equal(al.expert_ids, ref.expert_ids)
    assert torch.equal(al.num_tokens_post_pad, ref.num_tokens_post_pad)
    check_layout(al, ids, E)


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
