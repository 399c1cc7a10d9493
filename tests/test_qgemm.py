"""Quantized GEMM Triton kernels (kernels/qgemm.py) against an fp64 reference on the dequantized weights.

Without a GPU the kernels run under TRITON_INTERPRET=1 (conftest sets it) at small odd shapes; the
``gpu`` set repeats the checks at larger shapes on CUDA, plus CUDA-graph replay and torch.compile.

Tolerances: ||out - ref|| against fp64 on the exact dequantized weights, relative to ||(|x| @ |W|^T)||, the
scale of the forward-error bound of a dot product (elementwise rounding of the operands perturbs each
output by at most u * sum_k |x_k| |w_k|; relative to ||ref|| itself a single output that cancels to
nearly zero, as N = 1 can, would have no bound at all):
- fp16: the weight is rounded once to fp16 (dot family; <= 2**-11 relative each), products
  accumulate in fp32, the output is rounded once to fp16 (<= 2**-11): at most 2**-10 ~ 9.8e-4.
- bf16: the same with 8-bit mantissas (<= 2**-8 each, round-to-nearest on GPU; the CPU interpreter
  truncates, <= 2**-7 each): at most 2**-6 ~ 1.6e-2.
"""
import math

import pytest
import torch

import triton_marlin as tm
from triton_marlin import dispatch
from triton_marlin.kernels import qgemm as Q
from triton_marlin.kernels import qgemm_config as C

from conftest import rel_err

TOL = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -6}
FORMATS = ["int2", "int3", "int4", "int8", "fp4", "mxfp4", "nvfp4", "fp8"]
# group size that divides K = 96 for each format (per-channel for fp8, the format's default)
GROUP_96 = {"int2": 32, "int3": 32, "int4": 32, "int8": 32, "fp4": 32, "mxfp4": 32, "nvfp4": 16, "fp8": -1}

gpu = pytest.mark.gpu


def _device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check(x, qt, cfg, bias=None, tol=None):
    """Run ``cfg`` on poisoned output memory and compare with fp64; return the scaled error."""
    w = qt.dequantize(torch.float64)
    ref = x.double() @ w.t()
    magnitude = x.double().abs() @ w.abs().t()
    if bias is not None:
        ref = ref + bias.double()
        magnitude = magnitude + bias.double().abs()
    if cfg is not None and cfg.family != "dequant":
        out = torch.full((x.shape[0], qt.shape[0]), float("nan"), dtype=x.dtype, device=x.device)
        Q.launch_fused(x, qt, bias, cfg, out=out)  # every element must be written
    else:
        out = Q.qgemm(x, qt, bias, config=cfg)
    assert out.shape == (x.shape[0], qt.shape[0]) and out.dtype == x.dtype
    assert not torch.isnan(out).any(), f"{qt.format} {cfg}: NaN (an unwritten element?)"
    err = ((out.double().cpu() - ref.cpu()).norm() / magnitude.cpu().norm()).item()
    assert err < (tol or TOL[x.dtype]), f"{qt.format} {cfg}: error {err:.3e} of the bound's scale"
    return err


def _quant(fmt, N, K, gen, device, **opts):
    w = torch.randn(N, K, generator=gen)
    group = opts.pop("group_size", GROUP_96[fmt] if K % 32 == 0 else -1)
    return tm.quantize(w, fmt, group_size=group, **opts).to(device)


# Every format x both dtypes; the (M, N, family) triple rotates so each family, each odd N and each
# M of the issue (1, 3, 17, 65) appears, at interpreter-friendly sizes (K = 96).
_COMBOS = [
    (1, 333, Q.KernelConfig("gemv", block_m=1, block_n=128)),
    (3, 7, Q.KernelConfig("gemv", block_m=4, block_n=32, split_k=2)),
    (17, 333, Q.KernelConfig("dot", block_m=32, block_n=128, fold=1)),
    (65, 7, Q.KernelConfig("dot", block_m=64, block_n=32, split_k=2, wide=1)),
    (3, 1, Q.KernelConfig("dot", block_m=16, block_n=16)),
    (17, 7, Q.KernelConfig("dequant")),
    (1, 1, Q.KernelConfig("dot", block_m=16, block_n=16, fold=1, split_k=3)),
    (65, 333, Q.KernelConfig("dot", block_m=128, block_n=128, num_warps=8, wide=1)),
]
CASES = [(fmt, dt, *_COMBOS[(i + j * 3) % len(_COMBOS)])
         for i, fmt in enumerate(FORMATS) for j, dt in enumerate((torch.float16, torch.bfloat16))]


@pytest.mark.parametrize("fmt,dtype,M,N,cfg", CASES,
                         ids=[f"{c[0]}-{str(c[1])[6:]}-M{c[2]}-N{c[3]}-{c[4].family}" for c in CASES])
def test_formats_dtypes_odd_shapes(fmt, dtype, M, N, cfg, gen):
    qt = _quant(fmt, N, 96, gen, _device())
    x = torch.randn(M, 96, generator=gen).to(dtype).to(_device())
    _check(x, qt, cfg)


# The swap-AB path (weights the left tensor-core operand, acc [BN, BM] transposed at the end): every
# format x both dtypes, fold and per-weight operands, split-K, scales loaded ahead, odd M and N.
_SWAP_COMBOS = [
    (17, 333, Q.KernelConfig("dot", block_m=32, block_n=128, fold=1, prefetch=1, swap_ab=1)),
    (3, 7, Q.KernelConfig("dot", block_m=16, block_n=64, split_k=2, swap_ab=1)),
    (65, 1, Q.KernelConfig("dot", block_m=64, block_n=16, fold=1, split_k=3, swap_ab=1)),
    (1, 333, Q.KernelConfig("dot", block_m=16, block_n=256, num_warps=8, fold=1, split_k=2, prefetch=1,
                            swap_ab=1)),
]
SWAP_CASES = [(fmt, dt, *_SWAP_COMBOS[(i + j) % len(_SWAP_COMBOS)])
              for i, fmt in enumerate(FORMATS) for j, dt in enumerate((torch.float16, torch.bfloat16))]


@pytest.mark.parametrize("fmt,dtype,M,N,cfg", SWAP_CASES,
                         ids=[f"{c[0]}-{str(c[1])[6:]}-M{c[2]}-N{c[3]}-bm{c[4].block_m}-fold{c[4].fold}"
                              for c in SWAP_CASES])
def test_swap_ab_formats_dtypes_odd_shapes(fmt, dtype, M, N, cfg, gen):
    qt = _quant(fmt, N, 96, gen, _device())
    x = torch.randn(M, 96, generator=gen).to(dtype).to(_device())
    _check(x, qt, cfg)


@pytest.mark.parametrize("fmt,opts,K", [
    ("int4", {"symmetric": False, "group_size": 128}, 896),  # 1 group per tile, 7 tiles
    ("int3", {"symmetric": False, "group_size": 64}, 1408),   # 4 groups per 256-row tile, 5.5 tiles
    ("int8", {"symmetric": False, "group_size": -1}, 200),    # per-channel, a ragged 8-bit tile
    ("nvfp4", {"group_size": 16}, 656),                       # 8 groups per tile
])
@pytest.mark.parametrize("fold", [0, 1])
def test_swap_ab_groups_zero_points_splits(fmt, opts, K, fold, gen):
    """Swap-AB with asymmetric codes, groups spanning several tiles or part of one, per-channel scales,
    a last tile cut by K, scales loaded ahead across 3 splits."""
    qt = _quant(fmt, 40, K, gen, _device(), **opts)
    x = torch.randn(5, K, generator=gen).half().to(_device())
    _check(x, qt, Q.KernelConfig("dot", block_m=16, block_n=32, split_k=3, fold=fold, prefetch=1, swap_ab=1))


# One tl.dot per several code slots (swap_ab, dot_k > 16): slot operands joined along K in registers; fold
# (capped at the scale group) and per-weight scales, every format x both dtypes, split-K, with and without the
# scales loaded ahead, odd M and N, K = 96 (a ragged tile) and a full 256-row tile below.
_SWAPK_COMBOS = [
    (17, 333, Q.KernelConfig("dot", block_m=32, block_n=128, fold=1, prefetch=1, swap_ab=1, dot_k=128)),
    (3, 7, Q.KernelConfig("dot", block_m=16, block_n=64, split_k=2, prefetch=1, swap_ab=1, dot_k=128)),
    (65, 1, Q.KernelConfig("dot", block_m=64, block_n=16, fold=1, split_k=3, swap_ab=1, dot_k=32)),
    (5, 40, Q.KernelConfig("dot", block_m=16, block_n=32, split_k=2, swap_ab=1, dot_k=256)),
]
SWAPK_CASES = [(fmt, dt, *_SWAPK_COMBOS[(i + j) % len(_SWAPK_COMBOS)])
               for i, fmt in enumerate(FORMATS) for j, dt in enumerate((torch.float16, torch.bfloat16))]


@pytest.mark.parametrize("fmt,dtype,M,N,cfg", SWAPK_CASES,
                         ids=[f"{c[0]}-{str(c[1])[6:]}-M{c[2]}-N{c[3]}-k{c[4].dot_k}-fold{c[4].fold}"
                              for c in SWAPK_CASES])
def test_swap_dot_k_formats_dtypes_odd_shapes(fmt, dtype, M, N, cfg, gen):
    qt = _quant(fmt, N, 96, gen, _device())
    x = torch.randn(M, 96, generator=gen).to(dtype).to(_device())
    _check(x, qt, cfg)


@pytest.mark.parametrize("fmt,opts,K", [
    ("int4", {"symmetric": False, "group_size": 128}, 384),  # 1 group per tile, 3 tiles
    ("int3", {"symmetric": False, "group_size": 64}, 704),    # 4 groups per 256-row tile, 2.75 tiles
    ("int8", {"symmetric": False, "group_size": -1}, 200),    # per-channel, a ragged 8-bit tile
    ("nvfp4", {"group_size": 16}, 272),                       # 8 groups per tile (scales loaded per slot)
])
@pytest.mark.parametrize("fold", [0, 1])
def test_swap_dot_k_groups_zero_points_splits(fmt, opts, K, fold, gen):
    """dot_k=128 with asymmetric codes, several groups per dot (per-weight scales) or a dot cut to the group
    (fold), per-channel scales, a last tile cut by K, 3 splits."""
    qt = _quant(fmt, 40, K, gen, _device(), **opts)
    x = torch.randn(5, K, generator=gen).half().to(_device())
    for prefetch in (0, 1):
        _check(x, qt, Q.KernelConfig("dot", block_m=16, block_n=32, split_k=3, fold=fold, prefetch=prefetch,
                                     swap_ab=1, dot_k=128))


# The one-shot gemv (oneshot=1: the K loop unrolled, every load issued before the first decode): every format x
# both dtypes, odd N, M up to 4 rows per program, split-K with a short last split, one block of word rows or two
# (8 + 4 tiles), a ragged last tile.
_ONESHOT_COMBOS = [
    (1, 333, 96, Q.KernelConfig("gemv", block_m=1, block_n=32, oneshot=1)),
    (3, 7, 96, Q.KernelConfig("gemv", block_m=4, block_n=16, num_warps=2, split_k=2, oneshot=1)),
    (2, 40, 1536, Q.KernelConfig("gemv", block_m=2, block_n=16, num_warps=2, oneshot=1)),
    (1, 17, 1472, Q.KernelConfig("gemv", block_m=1, block_n=64, num_warps=8, split_k=3, oneshot=1)),
    (1, 21, 512, Q.KernelConfig("gemv", block_m=1, block_n=8, num_warps=4, oneshot=1)),
]
ONESHOT_CASES = [(fmt, dt, *_ONESHOT_COMBOS[(i + j) % len(_ONESHOT_COMBOS)])
                 for i, fmt in enumerate(FORMATS) for j, dt in enumerate((torch.float16, torch.bfloat16))]


@pytest.mark.parametrize("fmt,dtype,M,N,K,cfg", ONESHOT_CASES,
                         ids=[f"{c[0]}-{str(c[1])[6:]}-M{c[2]}-N{c[3]}-K{c[4]}-bm{c[5].block_m}-sk{c[5].split_k}"
                              for c in ONESHOT_CASES])
def test_oneshot_formats_dtypes_odd_shapes(fmt, dtype, M, N, K, cfg, gen):
    qt = _quant(fmt, N, K, gen, _device(), group_size=GROUP_96[fmt])
    x = torch.randn(M, K, generator=gen).to(dtype).to(_device())
    _check(x, qt, cfg)


@pytest.mark.parametrize("fmt,opts,K", [
    ("int4", {"symmetric": False, "group_size": 128}, 1536),  # 12 tiles: blocks of 8 + 4
    ("int3", {"symmetric": False, "group_size": 64}, 1408),   # 4 groups per 256-row tile, 5.5 tiles
    ("int8", {"symmetric": False, "group_size": -1}, 200),    # per-channel, a ragged 8-bit tile
    ("nvfp4", {"group_size": 16}, 656),                       # 8 groups per tile
])
@pytest.mark.parametrize("split_k", [1, 2, 5])
def test_oneshot_groups_zero_points_splits(fmt, opts, K, split_k, gen):
    """oneshot with asymmetric codes, groups spanning tiles or part of one, per-channel scales, a ragged last
    tile, uneven splits (5 tiles per split of 12 tiles: 4 + 1 blocks; the last split short)."""
    qt = _quant(fmt, 40, K, gen, _device(), **opts)
    x = torch.randn(3, K, generator=gen).half().to(_device())
    _check(x, qt, Q.KernelConfig("gemv", block_m=4, block_n=16, num_warps=2, split_k=split_k, oneshot=1))


def test_oneshot_blocks_and_config():
    assert Q.oneshot_blocks(16) == (16, 0)
    assert Q.oneshot_blocks(12) == (8, 4)
    assert Q.oneshot_blocks(7) == (4, 4)
    assert Q.oneshot_blocks(1) == (1, 0)
    cfg = Q.KernelConfig("gemv", block_m=1, block_n=32, oneshot=1)
    assert Q.KernelConfig.from_dict(cfg.as_dict()) == cfg
    assert Q._path_name(cfg, Q.format_spec(_quant("int4", 8, 128, torch.Generator().manual_seed(0),
                                                   torch.device("cpu"))), torch.float16) == "gemv-oneshot"
    with pytest.raises(ValueError, match="oneshot"):
        Q.KernelConfig("dot", block_m=16, oneshot=1).validate()
    with pytest.raises(ValueError, match="oneshot"):
        Q.KernelConfig("gemv", block_m=1, oneshot=2).validate()


def test_oneshot_long_k_splits_to_the_cap(gen):
    """A oneshot entry met on a K longer than MAX_ONESHOT_TILES tiles (a table entry reused for another shape)
    splits K so no program unrolls more than the cap."""
    K = 128 * (Q.MAX_ONESHOT_TILES + 3)
    qt = _quant("int4", 16, K, gen, _device(), group_size=128)
    x = torch.randn(1, K, generator=gen).half().to(_device())
    _check(x, qt, Q.KernelConfig("gemv", block_m=1, block_n=16, num_warps=2, oneshot=1))


def test_swap_dot_slots():
    """Slots per tl.dot: dot_k / 16, capped at the tile (8 or 16 slots) and, with fold, at the scale group."""
    spec = Q.FormatSpec(kind=0, bits=4, symmetric=True, scale_kind=0, group=128, slots=8)
    g32 = Q.FormatSpec(kind=0, bits=4, symmetric=True, scale_kind=0, group=32, slots=8)
    int2 = Q.FormatSpec(kind=0, bits=2, symmetric=True, scale_kind=0, group=128, slots=16)
    KC = Q.KernelConfig
    assert Q.dot_slots_of(KC("dot", swap_ab=1, dot_k=128), spec, True) == 8
    assert Q.dot_slots_of(KC("dot", swap_ab=1, dot_k=256), spec, False) == 8
    assert Q.dot_slots_of(KC("dot", swap_ab=1, dot_k=256), int2, False) == 16
    assert Q.dot_slots_of(KC("dot", swap_ab=1, dot_k=128), g32, True) == 2
    assert Q.dot_slots_of(KC("dot", swap_ab=1, dot_k=128), g32, False) == 8
    assert Q.dot_slots_of(KC("dot", swap_ab=1), spec, True) == 1
    assert Q.dot_slots_of(KC("dot", fold=1), spec, True) == 1
    with pytest.raises(ValueError, match="dot_k must be one of"):
        KC("dot", swap_ab=1, dot_k=48).validate()
    with pytest.raises(ValueError, match="needs swap_ab"):
        KC("dot", dot_k=128).validate()
    cfg = KC("dot", block_m=64, block_n=256, num_warps=8, swap_ab=1, dot_k=128, prefetch=1)
    assert KC.from_dict(cfg.as_dict()) == cfg == Q._config_from_key(Q._config_key(cfg))
    assert KC.from_dict({"family": "dot", "swap_ab": 1}).dot_k == 16  # tables written before the field


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_fp16_through_each_family(fmt, gen):
    """fp16's tight tolerance (2**-10) on every family for every format: a 1% error in any decoder
    (codes, scales, zero points) fails here."""
    qt = _quant(fmt, 48, 96, gen, _device())
    x = torch.randn(3, 96, generator=gen).half().to(_device())
    for cfg in (Q.KernelConfig("gemv", block_m=4, block_n=32, split_k=2),
                Q.KernelConfig("gemv", block_m=1, block_n=32, split_k=2, prefetch=1),
                Q.KernelConfig("dot", block_m=16, block_n=32, fold=1, split_k=2),
                Q.KernelConfig("dot", block_m=16, block_n=32, fold=1, split_k=2, prefetch=1),
                Q.KernelConfig("dot", block_m=16, block_n=32),
                Q.KernelConfig("dot", block_m=16, block_n=32, wide=1),
                Q.KernelConfig("dot", block_m=16, block_n=32, fold=1, prefetch=1, swap_ab=1),
                Q.KernelConfig("dot", block_m=16, block_n=32, prefetch=1, swap_ab=1, dot_k=128)):
        _check(x, qt, cfg)


@pytest.mark.parametrize("fmt,opts", [
    ("int4", {"symmetric": False, "group_size": 128}),
    ("int3", {"symmetric": False, "group_size": 64}),
    ("int2", {"symmetric": False, "group_size": 256}),
    ("int8", {"symmetric": False, "group_size": -1}),
    ("fp4", {"group_size": -1}),
    ("fp8", {"group_size": 128}),
])
@pytest.mark.parametrize("variant", ["gemv", "gemv_ahead", "dot", "fold", "wide"])
def test_group_sizes_and_zero_points(fmt, opts, variant, gen):
    """Asymmetric codes, groups spanning several tiles or part of one, per-channel scales, K > one
    tile, split-K (each split owning several tiles)."""
    K = 384 if opts["group_size"] != 256 else 512
    qt = _quant(fmt, 40, K, gen, _device(), **opts)
    x = torch.randn(5, K, generator=gen).half().to(_device())
    cfg = {"gemv": Q.KernelConfig("gemv", block_m=4, block_n=32, split_k=3),
           "gemv_ahead": Q.KernelConfig("gemv", block_m=2, block_n=32, split_k=3, prefetch=1),
           "dot": Q.KernelConfig("dot", block_m=16, block_n=32, split_k=2),
           "fold": Q.KernelConfig("dot", block_m=16, block_n=32, split_k=2, fold=1, prefetch=1),
           "wide": Q.KernelConfig("dot", block_m=16, block_n=32, wide=1)}[variant]
    _check(x, qt, cfg)


@pytest.mark.parametrize("fmt,opts,K", [
    ("int4", {"symmetric": False, "group_size": 128}, 896),  # 1 group per tile, 7 tiles
    ("int3", {"symmetric": False, "group_size": 128}, 1408),  # 2 groups per 256-row tile, 5.5 tiles
    ("mxfp4", {"group_size": 32}, 800),                      # 4 groups per tile, 6.25 tiles
    ("nvfp4", {"group_size": 16}, 656),                      # 8 groups per tile, 5.1 tiles
])
@pytest.mark.parametrize("split_k,fold", [(1, 1), (3, 1), (7, 0)])
def test_scales_loaded_ahead_across_splits(fmt, opts, K, split_k, fold, gen):
    """The dot and gemv kernels load the scales (and zero points) of tile t + 1 while tile t computes:
    splits of 1, 2 and 3 tiles, a last tile cut by K, 1 to 8 scale groups per tile (more than 2: loaded in
    the tile, as without prefetch), zero points."""
    qt = _quant(fmt, 40, K, gen, _device(), **opts)
    x = torch.randn(3, K, generator=gen).half().to(_device())
    _check(x, qt, Q.KernelConfig("dot", block_m=16, block_n=32, split_k=split_k, fold=fold, prefetch=1))
    if fold:  # the gemv has no operand modes: once per split
        _check(x, qt, Q.KernelConfig("gemv", block_m=4, block_n=32, split_k=split_k, prefetch=1))


def test_split_k_tickets_reset_between_calls(gen):
    """Split-K's last-arriving split reduces and re-zeroes its tile counter: repeated calls (and a
    different grid next) must all be right."""
    qt = _quant("int4", 64, 512, gen, _device(), group_size=128)
    for cfg in (Q.KernelConfig("dot", block_m=16, block_n=32, split_k=4, fold=1),
                Q.KernelConfig("gemv", block_m=1, block_n=32, split_k=4),
                Q.KernelConfig("dot", block_m=16, block_n=64, split_k=2)):
        for _ in range(2):
            x = torch.randn(3, 512, generator=gen).half().to(_device())
            _check(x, qt, cfg)
    assert all(int(buf.abs().sum()) == 0 for buf in Q._counters.values())


def test_bias_strided_x_and_scale_dtype(gen):
    qt = _quant("int4", 24, 128, gen, _device(), group_size=64, scale_dtype=torch.bfloat16)
    base = torch.randn(128, 6, generator=gen).half().to(_device())
    x = base.t()  # [6, 128] with stride (1, 6): the kernels read strides, no copy
    assert not x.is_contiguous()
    bias = torch.randn(24, generator=gen).half().to(_device())
    for cfg in (Q.KernelConfig("gemv", block_m=2, block_n=32),
                Q.KernelConfig("gemv", block_m=2, block_n=32, split_k=2),
                Q.KernelConfig("dot", block_m=16, block_n=32, split_k=1)):
        _check(x, qt, cfg, bias=bias)


def test_qmatmul_routes_to_triton_and_keeps_shape(gen):
    qt = _quant("int4", 20, 96, gen, _device())
    x = torch.randn(2, 3, 96, generator=gen).half().to(_device())
    dispatch.reset()
    out = tm.qmatmul(x, qt, backend="triton")
    counts = dispatch.counts()
    assert counts.pop(("qmatmul", "triton")) == 1
    # and which kernel path of qgemm ran (gemv / dot / dot-fold / dot-wide / dequant)
    assert len(counts) == 1 and next(iter(counts))[0] == "qgemm"
    ref = x.double() @ qt.dequantize(torch.float64).t()
    assert out.shape == (2, 3, 20) and rel_err(out, ref) < TOL[torch.float16]
    empty = tm.qmatmul(x[:0], qt, backend="triton")
    assert empty.shape == (0, 3, 20)
    assert Q.qgemm(x.reshape(-1, 96)[:0], qt).shape == (0, 20)


def test_bad_input(gen):
    qt = _quant("int4", 16, 96, gen, _device())
    x = torch.randn(2, 96, generator=gen).half().to(_device())
    with pytest.raises(ValueError, match="K=64"):
        Q.qgemm(torch.randn(2, 64).half().to(_device()), qt)
    with pytest.raises(ValueError, match="activation dtype"):
        Q.qgemm(x.float(), qt)
    with pytest.raises(ValueError, match="prefetch"):
        Q.KernelConfig("dot", block_m=16, prefetch=2).validate()
    with pytest.raises(ValueError, match="2-D"):
        Q.qgemm(x[None], qt)
    with pytest.raises(ValueError, match="is on meta"):
        Q.qgemm(torch.randn(2, 96, device="meta", dtype=torch.half), qt)
    with pytest.raises(ValueError, match="bias"):
        Q.qgemm(x, qt, torch.zeros(3, dtype=torch.half, device=x.device))
    with pytest.raises(ValueError, match="block_m"):
        Q.KernelConfig("dot", block_m=8).validate()
    with pytest.raises(ValueError, match="swap_ab must be 0 or 1"):
        Q.KernelConfig("dot", swap_ab=2).validate()
    with pytest.raises(ValueError, match="dot family only"):
        Q.KernelConfig("gemv", block_m=1, swap_ab=1).validate()
    with pytest.raises(ValueError, match="not wide"):
        Q.KernelConfig("dot", wide=1, swap_ab=1).validate()
    cfg = Q.KernelConfig("dot", block_m=64, block_n=128, fold=1, swap_ab=1)
    assert Q.KernelConfig.from_dict(cfg.as_dict()) == cfg == Q._config_from_key(Q._config_key(cfg))
    assert Q.KernelConfig.from_dict({"family": "dot"}).swap_ab == 0  # tables written before the field
    qt4 = Q.format_spec(qt)
    assert Q._path_name(cfg, qt4, torch.float16) == "dot-fold-swapab"
    with pytest.raises(ValueError, match="family"):
        Q.KernelConfig.from_dict({"family": "warp"})
    with pytest.raises(ValueError, match="unknown kernel config keys"):
        Q.KernelConfig.from_dict({"family": "dot", "tile": 3})


def test_selection_table_load_lookup_reset(tmp_path, gen):
    table = {"gpu": "cpu", "entries": {"int4": {
        "4096x4096": {"1": {"family": "gemv", "block_m": 1, "block_n": 128, "split_k": 4,
                            "num_warps": 4, "num_stages": 2, "group_m": 8},
                      "64": {"family": "dot", "block_m": 64, "block_n": 128, "split_k": 1,
                             "num_warps": 4, "num_stages": 3, "group_m": 8}},
        "1024x512": {"16": {"family": "dequant", "block_m": 16, "block_n": 64, "split_k": 1,
                            "num_warps": 4, "num_stages": 2, "group_m": 8}}}}}
    path = tmp_path / "t.json"
    import json
    path.write_text(json.dumps(table))
    try:
        C.load_table("cpu", path)
        cfg, where = C.lookup(C.current_table("cpu"), "int4", 4096, 4096, 1)
        assert cfg.family == "gemv" and cfg.split_k == 4 and where.endswith("M1")
        # M=48 rounds to bucket 64; an unmeasured shape takes the nearest measured one
        assert C.lookup(C.current_table("cpu"), "int4", 4000, 4096, 48)[0].block_m == 64
        assert C.lookup(C.current_table("cpu"), "int4", 1100, 500, 9)[0].family == "dequant"
        # formats without entries borrow int4's
        assert C.lookup(C.current_table("cpu"), "fp4", 4096, 4096, 1)[0].family == "gemv"
        # an mma entry never serves a call that family cannot run (more than MMA_MAX_M rows)
        mma = {"family": "mma", "block_m": 16, "block_n": 32, "num_warps": 4}
        C.set_table("cpu", {"gpu": "cpu", "entries": {"int4": {"4096x4096": {"16": mma, "256": table["entries"][
            "int4"]["4096x4096"]["64"]}}}})
        assert C.lookup(C.current_table("cpu"), "int4", 4096, 4096, 16)[0].family == "mma"
        assert C.lookup(C.current_table("cpu"), "int4", 4096, 4096, 32)[0].family == "dot"
        C.load_table("cpu", path)
        qt = _quant("int4", 16, 96, gen, torch.device("cpu"))
        x = torch.randn(1, 96).half()
        assert C.explain(x, qt).startswith("table:int4/1024x512")
        C.reset("cpu")
        C.set_table("cpu", None)
        assert C.explain(x, qt) == "default"
    finally:
        C.reset()
    bad = dict(table)
    bad["entries"] = {"int4": {"4096x4096": {"1": {"family": "gemv", "block_n": 100}}}}
    with pytest.raises(ValueError, match="power of two"):
        C.validate_table(bad)


def test_default_config_is_sane():
    qt = tm.quantize(torch.randn(64, 256), "int4")
    dev = torch.device("cpu")
    small = C.default_config(1, 64, 256, qt, dev)
    assert small.family == "mma" and small.block_m == 8 and small.prefetch == 1      # int4 up to 8 rows
    assert C.default_config(1, 64, 256, qt, dev, allow_mma=False).family == "dot"   # the mma fallback's rule
    mid = C.default_config(12, 64, 256, qt, dev)
    assert mid.family == "dot" and mid.fold and mid.block_m == 16
    assert C.default_config(40, 64, 256, qt, dev).block_m == 32
    # the mma rule: 32 columns a program when that still gives one per SM, 8 K warps while all fit, no split
    # unless the grid is small (SMs = 132)
    big = C.mma_default(8192, 64, 132)
    assert (big.block_n, big.num_warps, big.split_k, big.maxnreg) == (32, 8, 1, 96)   # 2048 warps fit at 96
    wide = C.mma_default(28672, 64, 132)
    assert (wide.block_n, wide.num_warps, wide.split_k, wide.maxnreg) == (32, 4, 1, 0)  # 3584 do not
    assert C.mma_default(2048, 12, 132).block_n == 16
    assert C.default_config(1024, 64, 256, qt, dev).family == "dequant"
    assert C.m_bucket(1) == 1 and C.m_bucket(3) == 4 and C.m_bucket(5000) == C.MAX_M_BUCKET


def test_register_cap_is_a_config_field(gen):
    # maxnreg: 0 (no cap) or a multiple of 8 in [24, 256]; a table entry without it reads as 0; the interpreter
    # ignores the compile option, so the capped configuration computes the same product here (GPU: GPU_FAMILIES)
    cfg = Q.KernelConfig.from_dict(dict(family="dot", block_m=16, block_n=128, fold=1, swap_ab=1, maxnreg=80))
    assert cfg.maxnreg == 80 and Q.KernelConfig.from_dict(dict(family="mma", block_m=8, block_n=32)).maxnreg == 0
    assert Q._config_from_key(Q._config_key(cfg)) == cfg
    for bad in (20, 81, 264, -8):
        with pytest.raises(ValueError, match="maxnreg"):
            Q.KernelConfig.from_dict(dict(family="dot", maxnreg=bad))
    qt = _quant("int4", 128, 256, gen, torch.device("cpu"))
    x = torch.randn(3, 256, generator=gen).half()
    ref = x.double() @ qt.dequantize(torch.float64).T
    for c in (cfg, Q.KernelConfig("mma", block_m=8, block_n=32, maxnreg=72)):
        assert rel_err(Q.launch(x, qt, None, c), ref) < 2e-3


def test_packaged_tables_are_valid():
    for path in C.TUNED_DIR.glob("*.json"):
        import json
        C.validate_table(json.loads(path.read_text()), str(path))


# ------------------------------------------------------------------------------------------------
# GPU set
# ------------------------------------------------------------------------------------------------
GPU_FAMILIES = [
    Q.KernelConfig("gemv", block_m=1, block_n=64, split_k=4),
    Q.KernelConfig("gemv", block_m=4, block_n=128),
    Q.KernelConfig("dot", block_m=16, block_n=128, split_k=3),
    Q.KernelConfig("dot", block_m=16, block_n=256, split_k=4, fold=1, num_stages=3),  # PTX unpack
    Q.KernelConfig("dot", block_m=16, block_n=128, split_k=5, fold=1, num_stages=3, prefetch=1),
    Q.KernelConfig("dot", block_m=16, block_n=128, split_k=3, fold=1, num_stages=3, prefetch=1, swap_ab=1,
                   maxnreg=80),                                                     # register cap
    Q.KernelConfig("dot", block_m=64, block_n=64, fold=1, num_stages=3),
    Q.KernelConfig("dot", block_m=64, block_n=128, num_stages=3),
    Q.KernelConfig("dot", block_m=128, block_n=128, num_warps=8, wide=1, split_k=2),
    Q.KernelConfig("dot", block_m=64, block_n=128, fold=1, num_stages=3, prefetch=1, split_k=2, swap_ab=1),
    Q.KernelConfig("dot", block_m=16, block_n=256, num_warps=8, num_stages=3, split_k=3, swap_ab=1),
    Q.KernelConfig("dequant"),
]


@gpu
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_every_format_family(fmt, dtype, gen):
    N, K = 333, 1536 + 96  # K: 12.75 tiles of 128 (6.4 of 256): a ragged last tile
    qt = _quant(fmt, N, K, gen, torch.device("cuda"), group_size=GROUP_96[fmt])
    for M in (1, 3, 17, 65, 200):
        x = torch.randn(M, K, generator=gen).to(dtype).cuda()
        for cfg in GPU_FAMILIES:
            _check(x, qt, cfg)
        # and whatever the selection picks
        _check(x, qt, None)


GPU_SWAPK = [
    Q.KernelConfig("dot", block_m=16, block_n=128, split_k=3, fold=1, num_stages=3, prefetch=1, swap_ab=1, dot_k=128),
    Q.KernelConfig("dot", block_m=64, block_n=256, num_warps=8, split_k=2, num_stages=3, prefetch=1, swap_ab=1,
                   dot_k=128),
    Q.KernelConfig("dot", block_m=128, block_n=128, num_stages=3, prefetch=1, swap_ab=1, dot_k=128),
    Q.KernelConfig("dot", block_m=128, block_n=256, num_warps=8, num_stages=3, swap_ab=1, dot_k=128),
    Q.KernelConfig("dot", block_m=64, block_n=128, split_k=2, fold=1, num_stages=3, swap_ab=1, dot_k=32),
]


@gpu
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_swapk_every_format(fmt, dtype, gen):
    """One tl.dot per K tile (swap_ab, dot_k > 16) on CUDA: the PTX unpack with per-weight scales (fp16
    int2/int3/int4) and fold, a ragged last tile, M across one and several token blocks."""
    from triton.runtime.errors import OutOfResources

    N, K = 333, 1536 + 96
    qt = _quant(fmt, N, K, gen, torch.device("cuda"), group_size=GROUP_96[fmt])
    for M in (3, 65, 200):
        x = torch.randn(M, K, generator=gen).to(dtype).cuda()
        for cfg in GPU_SWAPK:
            while True:  # 8-bit codes and int3's two planes overflow shared memory on the widest tiles
                try:
                    _check(x, qt, cfg)
                    break
                except OutOfResources:
                    cfg = Q._smaller(cfg)


@gpu
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_oneshot_every_format(fmt, dtype, gen):
    """The one-shot gemv on CUDA at the GLM-4.7-Flash expert shapes (16 tiles in one block; 12 as 8 + 4) and an
    odd one (ragged tile, odd N), every gemv_oneshot candidate of the benchmarks at M 1..4."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import _gemm_common as G

    for N, K in ((3072, 2048), (2048, 1536), (333, 1536 + 96)):
        qt = _quant(fmt, N, K, gen, torch.device("cuda"), group_size=GROUP_96[fmt])
        for M in (1, 3, 4):
            x = torch.randn(M, K, generator=gen).to(dtype).cuda()
            for cfg in G.oneshot_configs(M):
                _check(x, qt, cfg)


@gpu
def test_gpu_swapk_large_shape(gen):
    """8192x8192 int4 g128 with the dot_k=128 sweep tiles at M 16..256: same answer as cuBLAS."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import _gemm_common as G

    qt = _quant("int4", 8192, 8192, gen, torch.device("cuda"), group_size=128)
    w16 = qt.dequantize(torch.float16)
    for M in (16, 64, 128, 256):
        x = torch.randn(M, 8192, generator=gen).half().cuda()
        ref = (x.float() @ w16.float().t()).double()
        for cfg in G.swapab_k_configs(M):
            assert rel_err(Q.launch(x, qt, None, cfg), ref) < TOL[torch.float16], (M, cfg)


@gpu
def test_gpu_cuda_graph_capture_and_replay(gen):
    qt = _quant("int4", 4096, 4096, gen, torch.device("cuda"), group_size=128)
    x = torch.randn(4, 4096, generator=gen).half().cuda()
    static_out = {}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        tm.qmatmul(x, qt)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out["y"] = tm.qmatmul(x, qt)
    for _ in range(3):
        x.copy_(torch.randn(4, 4096, generator=gen).half())
        static_out["y"].fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        ref = x.double() @ qt.dequantize(torch.float64).t()
        assert rel_err(static_out["y"], ref) < TOL[torch.float16]


@gpu
def test_gpu_torch_compile(gen):
    qt = _quant("fp4", 1024, 2048, gen, torch.device("cuda"), group_size=128)

    def f(x):
        return torch.nn.functional.silu(tm.qmatmul(x, qt)) * 2.0

    compiled = torch.compile(f, fullgraph=True)
    for M in (1, 9):
        x = torch.randn(M, 2048, generator=gen).half().cuda()
        ref = torch.nn.functional.silu(x.double() @ qt.dequantize(torch.float64).t()) * 2.0
        assert rel_err(compiled(x), ref) < 2 * TOL[torch.float16]  # silu output rounded once more


@gpu
def test_gpu_large_shape_against_cublas(gen):
    """8192x8192 int4 at the benchmark's M values: same answer as cuBLAS on the dequantized weight."""
    qt = _quant("int4", 8192, 8192, gen, torch.device("cuda"), group_size=128)
    w16 = qt.dequantize(torch.float16)
    for M in (1, 16, 64, 256, 1024):
        x = torch.randn(M, 8192, generator=gen).half().cuda()
        out = tm.qmatmul(x, qt)
        ref = (x.float() @ w16.float().t()).double()
        assert rel_err(out, ref) < TOL[torch.float16], M
        assert math.isfinite(out.float().sum().item())


def test_config_too_big_steps_down_and_says_so(gen):
    """A configuration known not to fit shared memory is replaced by a smaller one, recorded."""
    qt = _quant("int4", 40, 256, gen, _device(), group_size=128)
    x = torch.randn(3, 256, generator=gen).half().to(_device())
    big = Q.KernelConfig("dot", block_m=16, block_n=64, num_stages=3, fold=1)
    Q._too_big.add((big, 8, torch.float16))
    try:
        dispatch.reset()
        out = Q.launch(x, qt, None, big)
        assert dispatch.counts().get(("qgemm", "smaller-config")) == 1
        ref = x.double() @ qt.dequantize(torch.float64).t()
        assert rel_err(out, ref) < TOL[torch.float16]
    finally:
        Q._too_big.discard((big, 8, torch.float16))


# ------------------------------------------------------------------------------------------------
# Compiles for Hopper (no GPU needed): the PTX unpackers and every family go through Triton's own
# ptxas for sm_90, which the interpreter never does.
# ------------------------------------------------------------------------------------------------
_AOT_SCRIPT = r"""
import json
import re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton_marlin.kernels import qgemm as Q

PTRS = {"x_ptr": "*fp16", "qw_ptr": "*i32", "qh_ptr": "*i16", "s_ptr": "*fp16", "z_ptr": "*u8",
        "gs_ptr": "*fp32", "bias_ptr": "*fp16", "out_ptr": "*fp16", "ws_ptr": "*fp32", "cnt_ptr": "*i32",
        "w_ptr": "*fp16"}

def build(fn, consts, num_warps, num_stages):
    # what the JIT does at launch: unit strides become constants, pointers and N/K/strides divisible by 16
    names = fn.arg_names
    consts = dict(consts)
    if "stride_xk" in names:
        consts["stride_xk"] = 1
    sig = {n: "constexpr" if n in consts else PTRS.get(n, "i32") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if n not in consts and (n in PTRS or n in ("N", "K", "stride_xm", "stride_om"))}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()},
                    attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=num_warps, num_stages=num_stages))
    ptx = k.asm["ptx"]
    return {"shared": k.metadata.shared, "magic_lop3": ptx.count("0x64006400"),
            "mma": ptx.count("mma.sync") + ptx.count("wgmma.mma_async"),
            # wgmma with its A operand a register list (not a shared-memory descriptor)
            "wgmma_reg_a": len(re.findall(r"wgmma\.mma_async[^\n]*?\}, \{", ptx)),
            "ldmatrix": ptx.count("ldmatrix"), "wait0": ptx.count("wgmma.wait_group.sync.aligned 0;")}

def fmt(kind, bits, slots, gs, scale_kind=0, sym=True):
    return dict(KIND=kind, BITS=bits, SYMMETRIC=sym, SCALE_KIND=scale_kind, GROUP=128, GROUP_SLOTS=gs,
                SLOTS=slots, EVEN_K=True, EVEN_N=True)

dot = dict(IS_BF16=False, DOT_FP32=False, GROUP_M=8, HAS_BIAS=False, PREFETCH=True, DOT_SLOTS=1)
out = {}
for name, f in (("int4", fmt(0, 4, 8, 8)), ("int2", fmt(0, 2, 16, 8)), ("int3", fmt(0, 3, 16, 8, sym=False)),
                ("fp4", fmt(1, 4, 8, 8))):
    out[f"fold_asm_{name}"] = build(Q._qgemm_dot_kernel, dict(f, **dot, FOLD=True, WIDE=False, ASM=True,
                                    SPLIT=True, BLOCK_M=16, BLOCK_N=128, SWAP=False), 4, 3)
out["fold_asm_int4_g32"] = build(Q._qgemm_dot_kernel, dict(fmt(0, 4, 8, 2), GROUP=32, **dot, FOLD=True,
                                 WIDE=False, ASM=True, SPLIT=True, BLOCK_M=16, BLOCK_N=128, SWAP=False), 4, 3)
for name, bm, warps in (("swap_fold_asm_int4_bm64", 64, 4), ("swap_fold_asm_int4_bm16", 16, 4)):
    out[name] = build(Q._qgemm_dot_kernel, dict(fmt(0, 4, 8, 8), **dot, FOLD=True, WIDE=False, ASM=True,
                      SPLIT=True, BLOCK_M=bm, BLOCK_N=128, SWAP=True), warps, 3)
for name, fold, bm, bn, warps in (("swapk_scaled_int4_bm64", False, 64, 256, 8), ("swapk_fold_int4_bm16", True, 16, 128, 4)):
    out[name] = build(Q._qgemm_dot_kernel, dict(fmt(0, 4, 8, 8), **dict(dot, DOT_SLOTS=8), FOLD=fold, WIDE=False,
                      ASM=True, SPLIT=True, BLOCK_M=bm, BLOCK_N=bn, SWAP=True), warps, 3)
out["wide_int4"] = build(Q._qgemm_dot_kernel, dict(fmt(0, 4, 8, 8), **dot, FOLD=False, WIDE=True, ASM=False,
                         SPLIT=False, BLOCK_M=128, BLOCK_N=128, SWAP=False), 8, 3)
out["gemv_int8"] = build(Q._qgemv_kernel, dict(fmt(0, 8, 8, 8), HAS_BIAS=True, SPLIT=True, BLOCK_M=4,
                         BLOCK_N=256, PREFETCH=False), 4, 2)
out["gemv_int4_ahead"] = build(Q._qgemv_kernel, dict(fmt(0, 4, 8, 8), HAS_BIAS=False, SPLIT=True, BLOCK_M=1,
                               BLOCK_N=64, PREFETCH=True), 4, 2)
out["dequant_nvfp4"] = build(Q._dequant_kernel, dict(fmt(1, 4, 8, 1, scale_kind=2), IS_BF16=False,
                             BLOCK_N=128), 4, 2)
print(json.dumps(out))
"""


def test_kernels_compile_for_hopper():
    """Every family compiles for sm_90 with Triton's ptxas (the PTX unpackers included: ptxas checks
    the inline assembly), fits an H100/H200's 227 KiB of shared memory, and the fold variants carry
    the pair unpack (one ``0x64006400`` LOP3 per code slot) and tensor-core instructions."""
    import json
    import os
    import subprocess
    import sys
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        pytest.skip("Triton's NVIDIA backend is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, meta in info.items():
        assert 0 <= meta["shared"] <= 227 * 1024, (name, meta)
    for name, slots in (("fold_asm_int4", 8), ("fold_asm_int2", 16), ("fold_asm_int3", 16),
                        ("fold_asm_int4_g32", 8)):
        assert info[name]["magic_lop3"] >= slots, (name, info[name])
        assert info[name]["mma"] > 0, (name, info[name])
    assert info["wide_int4"]["mma"] > 0
    # swap AB: the weights reach wgmma from registers (no ldmatrix of a staged weight tile)
    for name in ("swap_fold_asm_int4_bm64", "swap_fold_asm_int4_bm16"):
        assert info[name]["magic_lop3"] >= 8 and info[name]["ldmatrix"] == 0, (name, info[name])
        assert info[name]["wgmma_reg_a"] > 0 and info[name]["wgmma_reg_a"] == info[name]["mma"], (name, info[name])
    # one dot per K tile: weights still from registers, and the tensor cores are drained once per kernel
    # (per-weight scales: after the K loop) or once per tile (fold), not after every 16-row slot (8 per tile)
    for name in ("swapk_scaled_int4_bm64", "swapk_fold_int4_bm16"):
        assert info[name]["magic_lop3"] >= 8 and info[name]["ldmatrix"] == 0, (name, info[name])
        assert info[name]["wgmma_reg_a"] > 0 and info[name]["wgmma_reg_a"] == info[name]["mma"], (name, info[name])
    assert info["swapk_scaled_int4_bm64"]["wait0"] == 1, info["swapk_scaled_int4_bm64"]
    assert info["swapk_fold_int4_bm16"]["wait0"] <= 2, info["swapk_fold_int4_bm16"]
