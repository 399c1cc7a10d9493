"""Fused MoE kernels (Triton; on CPU through the interpreter at small sizes) against a float64 reference on
the exactly dequantized weights.

Tolerance, from the arithmetic: the kernels round each decoded weight, the SwiGLU intermediate and the
output to the activation type once each (relative error at most u = 2**-11 for fp16, 2**-8 for bf16;
about u/sqrt(3) rms for each), so the relative Frobenius error sits near 2 * u/sqrt(3) ~ 6e-4 (fp16).
The bound is the worst case of three roundings, 3u = 1.5e-3 (fp16); bf16 adds the rounding of the fp16
scale to bf16: 4u = 1.6e-2. NaN never passes (the output accumulator is poisoned with NaN
before launch, so a row the kernel forgets to zero fails)."""
import pytest
import torch

import triton_marlin
from triton_marlin.moe.align import align_tokens
from triton_marlin.moe.experts import QuantizedExperts

pytest.importorskip("triton")
from triton_marlin.kernels.moe_gemm import (MoEGemmConfig, candidate_configs, default_config,  # noqa: E402
                                            direct_ids, fused_moe_reference, moe_gemm_launch, swap_mode)

TOL = {torch.float16: 1.5e-3, torch.bfloat16: 1.6e-2}


def rel_err(out, ref):
    out = out.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref.double()).norm() / ref.double().norm()).item()


def make_experts(recipe, E, H, I, gen, **options):
    g = torch.randn(E, I, H, generator=gen) * 0.05
    u = torch.randn(E, I, H, generator=gen) * 0.05
    d = torch.randn(E, H, I, generator=gen) * 0.05
    return QuantizedExperts.from_float(g, u, d, recipe, **options)


def run_fused(x, ids, w, ex, config, uniform=False):
    al = align_tokens(ids, ex.num_total, config.block_m, backend="triton")
    out = torch.full((x.shape[0], ex.hidden_size), float("nan"))
    return moe_gemm_launch(x, w, al.sorted_ids, al.expert_ids, al.num_tokens_post_pad, ex.flat("gate"),
                           ex.flat("up"), ex.flat("down"), config=config, uniform=uniform, out=out)


def mixed_case(recipe, gen):
    """Four experts of ``recipe`` with H = 256 (gate_up: K a multiple of every tile, N of the blocks: the EVEN
    paths) and I = 96 (down: a partial tile), 5 tokens routed to 2 of them, token 0 to none; returns
    ``(x, ids, weights, experts, float64 reference)``."""
    E, H, I, T, k = 4, 256, 96, 5, 2
    ex = make_experts(recipe, E, H, I, gen)
    x = torch.randn(T, H, generator=gen).half()
    ids, w = routing(T, E, k, gen, drop=True)
    return x, ids, w, ex, fused_moe_reference(x, ids, w, ex)


def routing(T, E, k, gen, drop=False):
    ids = torch.stack([torch.randperm(E, generator=gen)[:k] for _ in range(T)]).int()
    if drop:
        ids[0, :] = -1  # a token routed to no active expert
    return ids, torch.rand(T, k, generator=gen) + 0.1


DECODE = MoEGemmConfig(1, 32, 4, 32, 2, 4, up_split_k=3)  # split-K gate_up: SwiGLU formed by the down kernel
DECODE_H = MoEGemmConfig(1, 16, 2, 32, 1, 2)               # gate_up writes h itself
TILED = MoEGemmConfig(16, 64, 4, 32, 3, 4)
TILED_SPLIT = MoEGemmConfig(16, 32, 4, 32, 2, 4)  # tensor cores, down K range split over 2 programs
SWAP = MoEGemmConfig(16, 64, 4, 32, 3, 4, swap_ab=1)        # weights the left MMA operand, tokens its N
SWAP_SPLIT = MoEGemmConfig(32, 32, 4, 64, 2, 4, swap_ab=1)  # 32-row blocks, down K range split
# one tl.dot per scale group / 8 slots, scales a tile ahead; gate and up in one K loop
SWAP_DOT = MoEGemmConfig(16, 64, 4, 32, 3, 4, swap_ab=1, dot_k=128, prefetch=1)
SWAP_FUSED = MoEGemmConfig(16, 32, 4, 64, 2, 4, swap_ab=1, dot_k=128, fuse_gu=1)
SWAP_FUSED_PRE = MoEGemmConfig(32, 64, 4, 32, 1, 4, swap_ab=1, fuse_gu=1, prefetch=1)
# swapped tiles over the EVEN paths (K = 256, N a multiple of the block) and a partial down tile, 16/32-row blocks
SWAPPED_EVEN = [MoEGemmConfig(16, 64, 4, 32, 3, 4, swap_ab=1),
                MoEGemmConfig(32, 32, 4, 64, 2, 4, swap_ab=1, dot_k=128),
                MoEGemmConfig(16, 32, 4, 64, 2, 4, swap_ab=1, dot_k=128, fuse_gu=1),
                MoEGemmConfig(32, 64, 4, 32, 1, 4, swap_ab=1, dot_k=128, fuse_gu=1, prefetch=1)]


@pytest.mark.parametrize("fmt", ["int2", "int3", "int4", "int8", "fp4", "mxfp4", "nvfp4", "fp8"])
def test_each_format(fmt, gen):
    E, H, I, T, k = 3, 64, 64, 3, 2
    gs = None if fmt in ("mxfp4", "nvfp4", "fp8") else 32
    ex = make_experts((fmt, gs), E, H, I, gen)
    x = torch.randn(T, H, generator=gen).half()
    ids, w = routing(T, E, k, gen)
    ref = fused_moe_reference(x, ids, w, ex)
    for cfg in (DECODE, TILED, SWAP, SWAP_DOT, SWAP_FUSED):
        out = run_fused(x, ids, w, ex, cfg)
        assert rel_err(out, ref) < TOL[torch.float16], (fmt, cfg)


def test_mixed_widths_one_launch_each(gen):
    """Experts of eight different (gate, up, down) format tuples, odd dims (K=80 per-channel down rows)."""
    recipe = [(("int4", 32), ("int2", 32), ("int8", -1)), ("mxfp4", "nvfp4", ("int3", -1)),
              (("fp4", 32), "fp8", ("int4", -1)), ("nvfp4", ("int2", 32), "fp8"),
              (("int3", 32), ("int8", 32), ("int2", -1))]
    E, H, I, T, k = 5, 96, 80, 4, 2
    ex = make_experts(recipe, E, H, I, gen)
    assert len({tuple(ex.flat(p).kinds[e] for p in ("gate", "up", "down")) for e in range(E)}) == 5
    x = torch.randn(T, H, generator=gen).half()
    ids, w = routing(T, E, k, gen, drop=True)
    ref = fused_moe_reference(x, ids, w, ex)
    assert ref[0].abs().max() == 0
    for cfg in (DECODE, DECODE_H, TILED, TILED_SPLIT, SWAP, SWAP_SPLIT, SWAP_DOT, SWAP_FUSED):
        out = run_fused(x, ids, w, ex, cfg)
        assert rel_err(out, ref) < TOL[torch.float16]
        assert (out[0] == 0).all()


def test_direct_slots_equal_aligned(gen):
    """One slot per program without alignment: the same sums in the same order as the aligned launch (bit for
    bit), slots of no expert (-1, or an id past the table) contribute nothing."""
    recipe = [("int4", 32), ("int2", 32), ("int8", 32), ("int3", 32)]
    E, H, I, T, k = 4, 64, 96, 5, 2
    ex = make_experts(recipe, E, H, I, gen)
    x = torch.randn(T, H, generator=gen).half()
    ids, w = routing(T, E, k, gen, drop=True)
    ids[1, 1] = E  # past the table: belongs to no expert, like -1
    ref = fused_moe_reference(x, ids, w, ex)
    for cfg in (DECODE, DECODE_H):
        aligned = run_fused(x, ids, w, ex, cfg)
        direct = torch.full_like(aligned, float("nan"))
        moe_gemm_launch(x, w, None, direct_ids(ids), None, ex.flat("gate"), ex.flat("up"), ex.flat("down"),
                        config=cfg, uniform=False, out=direct)
        assert rel_err(direct, ref) < TOL[torch.float16]
        assert torch.equal(direct, aligned)
        assert (direct[0] == 0).all()
    with pytest.raises(ValueError, match="block_m == 1"):
        moe_gemm_launch(x, w, None, direct_ids(ids), None, ex.flat("gate"), ex.flat("up"), ex.flat("down"),
                        config=TILED, uniform=False)
    with pytest.raises(ValueError, match="int32 expert ids"):
        moe_gemm_launch(x, w, None, ids.reshape(-1).long(), None, ex.flat("gate"), ex.flat("up"), ex.flat("down"),
                        config=DECODE, uniform=False)


def test_asymmetric(gen):
    E, H, I, T, k = 3, 64, 64, 3, 2
    ex = make_experts(("int4", 32), E, H, I, gen, symmetric=False)
    assert all(kind == 2 + 8 for kind in ex.flat("gate").kinds)
    ids, w = routing(T, E, k, gen)
    x = torch.randn(T, H, generator=gen).half()
    ref = fused_moe_reference(x, ids, w, ex)
    for cfg in (DECODE, TILED, SWAP, SWAP_DOT, SWAP_FUSED_PRE):
        assert rel_err(run_fused(x, ids, w, ex, cfg), ref) < TOL[torch.float16], cfg


def test_fused_gate_up_same_and_different_kinds(gen):
    """``fuse_gu``: one K loop for gate and up where an expert's two share a kind (int4/int4, asymmetric
    int3/int3, fp8/fp8), the two loops where they differ (int2/int4), in one mixed launch; and the uniform
    compile. K = 256 and N a multiple of the block (no masks: EVEN_K / EVEN_N) for gate_up, a partial tile for
    down (K = 96)."""
    x, ids, w, ex, ref = mixed_case([(("int4", 32), ("int4", 32), ("int2", 32)),
                                     (("int2", 32), ("int4", 32), ("int4", 32)),
                                     ("fp8", "fp8", ("int4", 32)), (("int4", 32), ("int4", 32), ("int8", 32))], gen)
    for cfg in (SWAP_FUSED, SWAP_FUSED_PRE, MoEGemmConfig(16, 32, 4, 32, 1, 4, swap_ab=1, fuse_gu=1)):
        out = run_fused(x, ids, w, ex, cfg)
        assert rel_err(out, ref) < TOL[torch.float16], cfg
        assert (out[0] == 0).all()
    asym = make_experts(("int3", 32), 2, ex.hidden_size, ex.intermediate_size, gen, symmetric=False)
    ids2, w2 = routing(x.shape[0], 2, 1, gen)
    ref2 = fused_moe_reference(x, ids2, w2, asym)
    for uniform in (False, True):
        assert rel_err(run_fused(x, ids2, w2, asym, SWAP_FUSED, uniform=uniform), ref2) < TOL[torch.float16]


@pytest.mark.parametrize("cfg", SWAPPED_EVEN, ids=lambda c: f"bm{c.block_m}_dk{c.dot_k}_f{c.fuse_gu}_p{c.prefetch}")
def test_swapped_tiles_even_paths(cfg, gen):
    """Swapped tiles give the reference: mixed kinds (fused and separate gate/up loops, int8 codes loaded per
    slot), K = 256 with N a multiple of the block (the EVEN paths: no k or column masks) and a partial down tile
    (K = 96); blocks of 16 and 32 rows with 1-3 slots per expert, so most rows are padding (masked)."""
    x, ids, w, ex, ref = mixed_case([(("int4", 32), ("int4", 32), ("int2", 32)),
                                     (("int2", 32), ("int4", 32), ("int4", 32)),
                                     ("fp8", "fp8", ("int4", 32)), (("int4", 32), ("int8", 32), ("int3", 32))], gen)
    out = run_fused(x, ids, w, ex, cfg)
    assert rel_err(out, ref) < TOL[torch.float16], cfg
    assert (out[0] == 0).all()
    if cfg.fuse_gu:
        return
    # int4 group 128 (GLM's format: one scale group per tile, the fold path), uniform compile
    ex2 = make_experts(("int4", 128), 3, 256, 128, gen)
    ids2, w2 = routing(x.shape[0], 3, 2, gen)
    ref2 = fused_moe_reference(x, ids2, w2, ex2)
    assert rel_err(run_fused(x, ids2, w2, ex2, cfg, uniform=True), ref2) < TOL[torch.float16], cfg


def test_swap_mode_bits():
    """The SWAP constexpr of the swapped tiles for the GLM shapes (gate_up K 2048 x N 1536, down 1536 x 2048)."""
    base = dict(block_m=32, up_block_n=64, up_warps=4, down_block_n=64, down_split_k=1, down_warps=4, swap_ab=1)
    for extra, bits in ((dict(), 13), (dict(dot_k=128), 15), (dict(prefetch=1), 29),
                        (dict(dot_k=128, prefetch=1, fuse_gu=1), 31)):
        cfg = MoEGemmConfig(**base, **extra)
        assert swap_mode(cfg, 2048, 1536, 64) == bits and swap_mode(cfg, 1536, 2048, 64) == bits, extra
    assert swap_mode(MoEGemmConfig(16, 64, 4, 64, 1, 4), 2048, 1536, 64) == 0  # unswapped
    assert swap_mode(MoEGemmConfig(**base), 96, 1536, 64) == 9                  # partial K tile: no EVEN_K


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", [("int4", 32), [("int2", 32), ("int8", 32), ("mxfp4", 32), ("fp8", 32)]])
def test_bf16_on_gpu(recipe, gen):
    """bf16 activations (the CPU interpreter mis-evaluates bf16 arithmetic, so this runs on the GPU only)."""
    E, H, I, T, k = 4, 256, 192, 6, 2
    ex = make_experts(recipe, E, H, I, gen).to("cuda")
    ids, w = routing(T, E, k, gen)
    x = torch.randn(T, H, generator=gen).bfloat16().cuda()
    ref = fused_moe_reference(x, ids.cuda(), w.cuda(), ex)
    for cfg in (DECODE, TILED, SWAP, SWAP_DOT, SWAP_FUSED):
        al = align_tokens(ids.cuda(), E, cfg.block_m)
        out = torch.full((T, H), float("nan"), device="cuda")
        moe_gemm_launch(x, w.cuda(), al.sorted_ids, al.expert_ids, al.num_tokens_post_pad, ex.flat("gate"),
                        ex.flat("up"), ex.flat("down"), config=cfg, uniform=False, out=out)
        assert rel_err(out.cpu(), ref.cpu()) < TOL[torch.bfloat16], cfg


def test_uniform_compile_equals_table_dispatch(gen):
    E, H, I, T, k = 4, 64, 64, 3, 2
    ex = make_experts((("int4", 32), ("int4", 32), ("int2", 32)), E, H, I, gen)
    x = torch.randn(T, H, generator=gen).half()
    ids, w = routing(T, E, k, gen)
    a = run_fused(x, ids, w, ex, DECODE, uniform=True)
    b = run_fused(x, ids, w, ex, DECODE, uniform=False)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # same math, fp32 atomics in another order
    with pytest.raises(ValueError, match="one format per projection"):
        run_fused(x, ids, w, make_experts([("int4", 32), ("int2", 32)], 2, H, I, gen), DECODE, uniform=True)


def test_config_validation():
    with pytest.raises(ValueError, match="block_m"):
        MoEGemmConfig(8, 64, 4, 64, 1, 4)
    with pytest.raises(ValueError, match="up_split_k > 1 needs block_m == 1"):
        MoEGemmConfig(16, 64, 4, 64, 1, 4, up_split_k=2)
    with pytest.raises(ValueError, match="stages"):
        MoEGemmConfig(16, 64, 4, 64, 1, 4, stages=-1)
    with pytest.raises(ValueError, match="power of two"):
        MoEGemmConfig(1, 48, 4, 64, 1, 4)
    with pytest.raises(ValueError, match="swap_ab needs tensor-core blocks"):
        MoEGemmConfig(1, 32, 4, 32, 1, 4, swap_ab=1)
    with pytest.raises(ValueError, match="dot_k must be 16"):
        MoEGemmConfig(16, 64, 4, 64, 1, 4, swap_ab=1, dot_k=64)
    with pytest.raises(ValueError, match="swapped tiles"):
        MoEGemmConfig(16, 64, 4, 64, 1, 4, fuse_gu=1)
    with pytest.raises(ValueError, match="swap_ab must be 0 or 1"):
        MoEGemmConfig(16, 64, 4, 64, 1, 4, swap_ab=2)
    with pytest.raises(ValueError, match="must be 0 or 1"):
        MoEGemmConfig(16, 64, 4, 64, 1, 4, swap_ab=1, prefetch=2)


def test_configs():
    assert default_config(5, 65).block_m == 1          # decode: a slot per program
    glm = default_config(5, 65, 2048, 1536)            # one GLM-4.7-Flash token: K split 4 (gate_up), 3 (down)
    assert (glm.up_split_k, glm.down_split_k) == (4, 3)
    assert default_config(2, 8, 256, 256).up_split_k == 1  # small K: no split, no memset
    sixteen = default_config(80, 65, 2048, 1536)      # 16 tokens: ~48 experts active, enough tensor-core blocks
    assert (sixteen.block_m, sixteen.swap_ab) == (16, 1)
    assert default_config(1280, 65).block_m == 32     # 256 tokens x 5 slots over 65 experts: ~20 per expert
    assert default_config(5120, 65).block_m == 64
    cands = candidate_configs(5, 65)
    assert cands[0] == default_config(5, 65) and len(set(cands)) == len(cands) > 1


def test_alignment_block_mismatch_is_refused(gen):
    ex = make_experts(("int4", 32), 2, 64, 64, gen)
    x = torch.randn(2, 64, generator=gen).half()
    ids, w = routing(2, 2, 1, gen)
    al = align_tokens(ids, 2, 16, backend="triton")
    with pytest.raises(ValueError, match="block_m"):
        moe_gemm_launch(x, w, al.sorted_ids, al.expert_ids, al.num_tokens_post_pad, ex.flat("gate"), ex.flat("up"),
                        ex.flat("down"), config=DECODE, uniform=False)


def test_reference_agrees_with_qmatmul(gen):
    """The float64 reference itself: per-expert dense math equals the public qmatmul path (torch)."""
    ex = make_experts(("int4", 32), 2, 64, 64, gen)
    x = torch.randn(3, 64, generator=gen)
    ids = torch.tensor([[0], [1], [0]], dtype=torch.int32)
    w = torch.tensor([[0.5], [2.0], [1.0]])
    ref = fused_moe_reference(x, ids, w, ex)
    e0 = ex.experts[0]
    h = torch.nn.functional.silu(triton_marlin.qmatmul(x[2:], e0["gate"], backend="torch")) * \
        triton_marlin.qmatmul(x[2:], e0["up"], backend="torch")
    y = triton_marlin.qmatmul(h, e0["down"], backend="torch")
    torch.testing.assert_close(ref[2].float(), y[0], rtol=1e-4, atol=1e-6)


def test_custom_op_matches_launcher_and_fake(gen):
    """``triton_marlin::moe_experts`` (what torch.compile sees) equals the direct launch; its fake impl
    gives the right shape and dtype; torch.library.opcheck validates schema and fake tensor."""
    from triton_marlin.moe.strategies import fused_experts_op

    ex = make_experts([("int4", 32), ("int2", 32), ("int8", 32)], 3, 64, 64, gen)
    x = torch.randn(2, 64, generator=gen).half()
    ids, w = routing(2, 3, 2, gen)
    out = fused_experts_op(x, ids, w, ex, uniform=False)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert rel_err(out.float(), fused_moe_reference(x, ids, w, ex)) < 1.5e-3
    flats = [ex.flat(p) for p in ("gate", "up", "down")]
    args = (x, ids, w, *[list(f.launch_args()) for f in flats], 64, [f.kinds_mask for f in flats], [-1, -1, -1],
            False, [16, 64, 4, 64, 1, 4, 1, 0], [f.group_k for f in flats])
    torch.library.opcheck(torch.ops.triton_marlin.moe_experts.default, args,
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("fmt", ["int4", "int3", "fp8"])
def test_group_fold_across_tiles(fmt, gen):
    """Group 128 (one scale per int4 tile, two per int3 tile, per-channel fp8) and the down K range split
    over programs: the per-group scaling of the tensor-core path."""
    E, H, I, T, k = 3, 384, 384, 5, 2
    ex = make_experts((fmt, 128 if fmt != "fp8" else -1), E, H, I, gen)
    x = torch.randn(T, H, generator=gen).half()
    ids, w = routing(T, E, k, gen)
    ref = fused_moe_reference(x, ids, w, ex)
    for cfg in (TILED_SPLIT, SWAP_SPLIT, SWAP_FUSED_PRE) if fmt == "int4" else (TILED_SPLIT,):  # int4 g128: GLM
        assert rel_err(run_fused(x, ids, w, ex, cfg), ref) < TOL[torch.float16], cfg
