"""The register-fragment GEMV (``KernelConfig(family="mma")``, kernels/qgemv_mma.py) against an fp64 product on the
dequantized weights.

Without a GPU the kernel runs its portable emulation under TRITON_INTERPRET=1 (the same operands and fp32 sums
as the PTX path), and the PTX strings' integer and half instructions are simulated on the CPU against the same
operand values; the ``gpu`` test runs the PTX path, inside a CUDA graph too.

Tolerance, from the arithmetic: the A operand is exact (``q - z`` for integers, the raw minifloat value for E2M1
and E4M3),
B is the activations as given, every product is exact in fp32 and the sums are fp32; the scale multiplies an fp32
partial sum; the output is rounded once to the activation dtype. So the relative Frobenius error is the output
rounding plus fp32 summation: fp16 rounds to nearest (<= 2**-11 ~ 4.9e-4 per element), bf16 to nearest on the GPU
(2**-8) and by truncation under the interpreter (< 2**-7 ~ 7.8e-3).
"""
import random
import re

import numpy as np
import pytest
import torch

import triton_marlin as tm
from triton_marlin import dispatch
from triton_marlin.kernels import qgemm as Q
from triton_marlin.kernels import qgemv_mma as qm
from triton_marlin.kernels.qgemv_mma import MMA_FORMATS

from conftest import rel_err

TOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}
F16, BF16 = torch.float16, torch.bfloat16
gpu = pytest.mark.gpu


def _run(fmt, opts, dtype, M, K, N, bn, nw, split, pf, bias, gen, device="cpu", fold=0, x_ahead=0):
    """Quantize a fresh random weight, run the mma family into NaN-poisoned output memory, return (out, ref)."""
    w = torch.randn(N, K, generator=gen)
    qt = tm.quantize(w, fmt, **opts).to(device)
    x = torch.randn(M, K, generator=gen).to(device, dtype)
    b = torch.randn(N, generator=gen).to(device, dtype) if bias else None
    cfg = Q.KernelConfig("mma", block_m=16, block_n=bn, num_warps=nw, split_k=split, prefetch=pf, fold=fold,
                         x_ahead=x_ahead)
    cfg.validate()
    assert Q.mma_unsupported_reason(x, qt) is None
    out = torch.full((M, N), float("nan"), dtype=dtype, device=device)
    Q.launch_fused(x, qt, b, cfg, out=out)
    ref = x.double() @ qt.dequantize(torch.float64).T
    if b is not None:
        ref = ref + b.double()
    return out, ref, (x, qt, b, cfg)


# (format, quantize options, dtype, M, K, N, block_n, num_warps, split_k, prefetch, bias): every group size (one
# scale group per slot pair, per tile and across tiles, per-channel), zero points, both dtypes, every M block
# shape (1, 3, 8: one row block; 11, 16: two), odd K (96: a partial tile, 97: x padded to even K), odd N, every
# block_n, warps splitting K (more warps than tiles too), split-K and the prefetch depths.
INT4 = [
    ("int4", dict(group_size=32), F16, 1, 96, 333, 64, 1, 1, 0, False),
    ("int4", dict(group_size=32, symmetric=False), BF16, 3, 96, 7, 16, 2, 1, 1, True),
    ("int4", dict(group_size=64), F16, 8, 256, 40, 32, 1, 2, 2, False),
    ("int4", dict(group_size=64, symmetric=False), F16, 11, 256, 1, 16, 4, 1, 1, True),
    ("int4", dict(group_size=128), F16, 16, 512, 48, 16, 2, 2, 1, True),
    ("int4", dict(group_size=128, symmetric=False), BF16, 1, 384, 33, 32, 8, 1, 2, False),
    ("int4", dict(group_size=256), BF16, 11, 512, 16, 16, 1, 3, 0, False),
    ("int4", dict(group_size=256, symmetric=False), F16, 3, 768, 24, 16, 2, 3, 2, True),
    ("int4", dict(group_size=-1), F16, 8, 97, 7, 16, 1, 1, 1, True),
    ("int4", dict(group_size=-1, symmetric=False), BF16, 16, 300, 20, 32, 2, 2, 0, False),
    ("int4", dict(group_size=-1), BF16, 1, 97, 1, 64, 4, 1, 2, True),
]
# E2M1: fp4 with fp16 and bf16 scales at every group size, mxfp4 (group 32, E8M0 scales), nvfp4 (group 16, E4M3
# scales times the global scale): the raw code value meets a scale times 2**14
E2M1 = [
    ("fp4", dict(group_size=32), F16, 3, 96, 40, 16, 2, 1, 1, True),
    ("fp4", dict(group_size=64, scale_dtype=BF16), BF16, 11, 256, 7, 32, 1, 2, 0, False),
    ("fp4", dict(group_size=128), F16, 1, 384, 333, 64, 2, 1, 2, False),
    ("fp4", dict(group_size=256), BF16, 16, 512, 24, 16, 4, 3, 1, True),
    ("fp4", dict(group_size=-1, scale_dtype=BF16), F16, 8, 97, 1, 16, 1, 1, 1, False),
    ("mxfp4", dict(group_size=32), F16, 1, 256, 33, 32, 2, 2, 1, False),
    ("mxfp4", dict(group_size=32), BF16, 11, 160, 16, 16, 1, 1, 2, True),
    ("nvfp4", dict(group_size=16), F16, 8, 256, 40, 16, 4, 1, 1, True),
    ("nvfp4", dict(group_size=16), BF16, 3, 96, 7, 64, 1, 2, 0, False),
]
# 2- and 3-bit codes: 256-row tiles of 16 slots, so groups below 256 fold several times a tile and K = 96/97/300
# are partial tiles
LOW_BITS = [
    ("int2", dict(group_size=32), F16, 3, 96, 40, 16, 2, 1, 1, True),
    ("int2", dict(group_size=64, symmetric=False), BF16, 11, 256, 7, 32, 1, 2, 2, False),
    ("int2", dict(group_size=128, symmetric=False), F16, 16, 512, 24, 16, 2, 2, 1, False),
    ("int2", dict(group_size=256), BF16, 1, 768, 33, 64, 1, 3, 2, True),
    ("int2", dict(group_size=-1), F16, 8, 97, 1, 16, 4, 1, 0, False),
    ("int3", dict(group_size=32, symmetric=False), F16, 1, 96, 333, 64, 1, 1, 1, False),
    ("int3", dict(group_size=64), BF16, 8, 256, 40, 16, 2, 1, 2, True),
    ("int3", dict(group_size=128), F16, 11, 512, 16, 16, 2, 2, 1, True),
    ("int3", dict(group_size=256, symmetric=False), F16, 3, 512, 7, 32, 1, 1, 0, False),
    ("int3", dict(group_size=-1, symmetric=False), BF16, 16, 300, 9, 16, 4, 3, 1, False),
]
# 8-bit codes (uint8 [K, N], no packing): a thread's 4 k rows x NC columns per slot, as whole words where N allows
# (N = 40, 24, 16: 16- and 32-bit loads), else byte loads (N = 333, 7)
BYTES = [
    ("int8", dict(group_size=32), F16, 3, 96, 40, 16, 2, 1, 1, True),
    ("int8", dict(group_size=64, symmetric=False), BF16, 8, 256, 24, 64, 1, 2, 2, False),
    ("int8", dict(group_size=128, symmetric=False), F16, 11, 256, 16, 32, 2, 1, 0, True),
    ("int8", dict(group_size=-1), BF16, 1, 97, 7, 16, 4, 1, 1, False),
    ("fp8", dict(group_size=-1), F16, 16, 300, 40, 32, 2, 3, 1, True),
    ("fp8", dict(group_size=-1), BF16, 3, 96, 7, 64, 1, 1, 2, False),
    ("fp8", dict(group_size=128), F16, 1, 256, 333, 16, 1, 2, 1, False),
]
CASES = INT4 + E2M1 + LOW_BITS + BYTES
# fold=1: integer zero points through the activation sums (operand 16 + q, one all-ones MMA a slot); every group
# kind (several a tile, one, across tiles, per-channel), zero points, both dtypes, both row-block counts, split-K
ZSUM = [
    ("int4", dict(group_size=32, symmetric=False), F16, 3, 96, 40, 16, 2, 1, 1, True),
    ("int4", dict(group_size=128), BF16, 11, 384, 33, 32, 2, 2, 2, False),
    ("int4", dict(group_size=256, symmetric=False), F16, 1, 512, 24, 16, 1, 3, 1, True),
    ("int4", dict(group_size=-1, symmetric=False), F16, 16, 300, 20, 32, 4, 2, 0, False),
    ("int4", dict(group_size=-1), BF16, 8, 97, 7, 16, 1, 1, 1, True),
    ("int2", dict(group_size=64, symmetric=False), F16, 8, 256, 7, 32, 1, 2, 2, False),
    ("int2", dict(group_size=-1), BF16, 1, 300, 16, 16, 2, 1, 1, True),
    ("int3", dict(group_size=128), F16, 11, 512, 16, 16, 2, 2, 1, True),
    ("int3", dict(group_size=32, symmetric=False), BF16, 3, 96, 40, 64, 1, 1, 0, False),
]


def _id(case):
    fmt, opts, dtype, M, K, N, bn, nw, split, pf, bias = case
    g = opts.get("group_size")
    sym = "a" if opts.get("symmetric", True) is False else "s"
    return (f"{fmt}-g{g}{sym}-{'bf16' if dtype == BF16 else 'fp16'}-M{M}-K{K}-N{N}-bn{bn}-w{nw}-sk{split}-pf{pf}"
            f"{'-bias' if bias else ''}")


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_matches_fp64(case, gen):
    out, ref, _ = _run(*case, gen)
    assert not torch.isnan(out).any(), "an output element was not written"
    err = rel_err(out, ref)
    assert err < TOL[case[2]], f"relative error {err:.3e}"


@pytest.mark.parametrize("case", ZSUM, ids=[_id(c) for c in ZSUM])
def test_zero_points_through_activation_sums_match_fp64(case, gen):
    out, ref, _ = _run(*case, gen, fold=1)
    assert not torch.isnan(out).any(), "an output element was not written"
    err = rel_err(out, ref)
    assert err < TOL[case[2]], f"relative error {err:.3e}"


# x_ahead=1: the activations load with the words (0-2 tiles ahead): ragged K (masked activations), warps past the
# last tile (zero activations), both row-block counts, split-K, every code plane, fold, bias
X_AHEAD = [
    ("int4", dict(group_size=32), F16, 3, 96, 40, 16, 2, 1, 1, True, 0),
    ("int4", dict(group_size=128, symmetric=False), BF16, 11, 384, 33, 32, 4, 1, 2, False, 1),
    ("int4", dict(group_size=-1), F16, 16, 300, 20, 32, 2, 2, 0, True, 0),
    ("int4", dict(group_size=64), F16, 1, 640, 48, 64, 8, 1, 1, False, 1),
    ("mxfp4", dict(group_size=32), BF16, 5, 256, 33, 32, 2, 2, 2, True, 0),
    ("int2", dict(group_size=128), F16, 8, 768, 24, 16, 2, 1, 1, False, 1),
    ("int3", dict(group_size=32, symmetric=False), BF16, 13, 96, 40, 64, 1, 1, 0, True, 0),
    ("int8", dict(group_size=128, symmetric=False), F16, 2, 256, 16, 32, 4, 1, 1, True, 0),
    ("fp8", dict(group_size=-1), BF16, 16, 300, 40, 32, 2, 3, 2, False, 0),
]


@pytest.mark.parametrize("case", X_AHEAD, ids=[_id(c[:-1]) + f"-fold{c[-1]}" for c in X_AHEAD])
def test_activations_loaded_with_the_words_match_fp64(case, gen):
    out, ref, _ = _run(*case[:-1], gen, fold=case[-1], x_ahead=1)
    assert not torch.isnan(out).any(), "an output element was not written"
    err = rel_err(out, ref)
    assert err < TOL[case[2]], f"relative error {err:.3e}"


def test_every_listed_format_has_a_case():
    assert set(MMA_FORMATS) == {c[0] for c in CASES}


def test_split_k_tickets_reset_between_calls(gen):
    out, ref, (x, qt, b, cfg) = _run("int4", dict(group_size=32), F16, 3, 480, 40, 16, 1, 3, 1, True, gen)
    # the same launch again: each program's ticket must be back at zero, or no split would write the output
    again = torch.full_like(out, float("nan"))
    Q.launch_fused(x, qt, b, cfg, out=again)
    assert not torch.isnan(again).any()
    assert torch.equal(again, out)
    assert rel_err(out, ref) < TOL[F16]


@pytest.mark.parametrize("kwargs, match", [
    (dict(block_m=32), "at most 16 rows"),
    (dict(block_n=8), "block_n in"),
    (dict(block_n=128), "block_n in"),
    (dict(fold=2), "fold must be 0 or 1"),
    (dict(wide=1), "no wide/swap_ab/oneshot"),
    (dict(swap_ab=1), "no wide/swap_ab/oneshot"),
    (dict(oneshot=1), "no wide/swap_ab/oneshot"),
    (dict(prefetch=3), "prefetch must be"),
    (dict(x_ahead=2), "x_ahead must be 0 or 1"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Q.KernelConfig.from_dict(dict(family="mma", **kwargs))


def test_config_accepts_its_modes():
    for bm in (1, 8, 16):
        for bn in (16, 32, 64):
            Q.KernelConfig.from_dict(dict(family="mma", block_m=bm, block_n=bn, prefetch=2, split_k=3, num_warps=8))


def _warns_and_records(x, qt):
    """An mma configuration the call cannot take: a warning naming why, the path ``qgemm/mma-unsupported``, and
    the default configuration's (correct) result."""
    dispatch.reset()
    dispatch._warned.clear()  # the warning is once per reason and process
    cfg = Q.KernelConfig("mma", block_m=16, block_n=16)
    with pytest.warns(RuntimeWarning, match="mma family cannot run"):
        out = Q.launch(x, qt, None, cfg)
    assert dispatch.counts().get(("qgemm", "mma-unsupported")) == 1
    ref = x.double() @ qt.dequantize(torch.float64).T
    assert rel_err(out, ref) < TOL[x.dtype]


@pytest.mark.parametrize("fmt", MMA_FORMATS)
def test_every_format_and_dtype_is_supported(fmt, gen):
    qt = tm.quantize(torch.randn(24, 64, generator=gen), fmt, group_size=16 if fmt == "nvfp4" else 32)
    for dtype in (F16, BF16):
        assert Q.mma_unsupported_reason(torch.zeros(3, 64, dtype=dtype), qt) is None


def test_too_many_rows_warns_and_records(gen):
    qt = tm.quantize(torch.randn(24, 64, generator=gen), "int4", group_size=32)
    x = torch.randn(17, 64, generator=gen).half()
    assert "17 rows" in Q.mma_unsupported_reason(x, qt)
    _warns_and_records(x, qt)


# --- the PTX strings, simulated on the CPU: each A operand the exact value the emulation uses -------------------
def _f16(bits):
    return float(np.array([bits], dtype=np.uint16).view(np.float16)[0])


def _bf16(bits):
    return float(np.array([bits << 16], dtype=np.uint32).view(np.float32)[0])


def _to_bf16(x):
    u = int(np.array([x], dtype=np.float32).view(np.uint32)[0])
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF


def _simulate(asm, inputs):
    """Registers after the integer/half instructions of ``asm`` (everything before the MMA) on ``inputs``
    ({operand index: uint32})."""
    regs = {f"${i}": v for i, v in inputs.items()}

    def val(tok):
        return regs[tok] if tok in regs else int(tok, 0)
    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in ("{", "}") or line.startswith((".reg", "mma")):
            continue
        op, rest = line.split(None, 1)
        if op == "mov.b32":                                   # {lo, hi} unpack of a register pair
            lo, hi, src = re.match(r"\{(\w+), (\w+)\}, (\S+)", rest).groups()
            regs[lo], regs[hi] = val(src) & 0xFFFF, val(src) >> 16
            continue
        d, *args = [a.strip() for a in rest.split(",")]
        if op == "cvt.f32.f16":
            regs[d] = _f16(regs[args[0]])
            continue
        a = [val(x) for x in args]
        if op == "shl.b32":
            r = (a[0] << a[1]) & 0xFFFFFFFF
        elif op == "shr.u32":
            r = a[0] >> a[1]
        elif op == "and.b32":
            r = a[0] & a[1]
        elif op == "lop3.b32":
            r = sum((((a[3] >> ((((a[0] >> i) & 1) << 2) | (((a[1] >> i) & 1) << 1) | ((a[2] >> i) & 1))) & 1) << i)
                    for i in range(32))
        elif op == "prmt.b32":
            by = [(a[0] >> 8 * i) & 255 for i in range(4)] + [(a[1] >> 8 * i) & 255 for i in range(4)]
            r = sum(by[(a[2] >> 4 * i) & 7] << 8 * i for i in range(4))       # selectors here never set bit 3
        elif op in ("sub.f16x2", "sub.rn.bf16x2"):
            dec, enc = (_f16, lambda x: int(np.array([x], dtype=np.float16).view(np.uint16)[0])) \
                if op == "sub.f16x2" else (_bf16, _to_bf16)
            r = sum(enc(dec((a[0] >> 16 * h) & 0xFFFF) - dec((a[1] >> 16 * h) & 0xFFFF)) << 16 * h for h in range(2))
        elif op == "cvt.rn.bf16x2.f32":
            r = (_to_bf16(a[0]) << 16) | _to_bf16(a[1])
        else:
            raise AssertionError(f"unsimulated PTX {op}")
        regs[d] = r
    return regs


def _raw_value(kind, code):
    """The exact A value of a minifloat code: E2M1 times 2**-14, E4M3 times 2**-8 (S.1111.111 decodes to +-480)."""
    sign = -1.0 if code & (8 if kind == 1 else 128) else 1.0
    if kind == 1:
        return sign * (0, 0.5, 1, 1.5, 2, 3, 4, 6)[code & 7] * 2.0 ** -14
    e, mant = (code >> 3) & 15, code & 7
    return sign * (mant / 8 * 2.0 ** -6 if e == 0 else (1 + mant / 8) * 2.0 ** (e - 7)) * 2.0 ** -8


def test_ptx_ones_operand():
    """The all-ones A of the activation-sum MMA (ZSUM) is 1.0 in both halves, in fp16 and in bf16."""
    for (bf16, mt), asm in qm.ONES_ASM.items():
        one = int(re.search(r"mov.b32 one, (0x[0-9a-f]+)", asm).group(1), 16)
        for h in range(2):
            assert (_bf16 if bf16 else _f16)((one >> 16 * h) & 0xFFFF) == 1.0
        assert asm.count("mma.sync") == mt and asm.count("{one,one,one,one}") == mt


def test_ptx_pair_gathers():
    rng = random.Random(0)
    for _ in range(100):
        w = [rng.getrandbits(32) for _ in range(8)]
        regs = _simulate(qm.PAIRS_ASM.value, {8 + i: w[i] for i in range(8)})
        hi = _simulate(qm.HI_PAIRS_ASM.value, {4 + i: w[i] for i in range(8)})
        for p, (a, b) in enumerate(((0, 1), (4, 5), (2, 3), (6, 7))):
            assert regs[f"${2 * p}"] == (w[a] & 0xFFFF) | ((w[b] & 0xFFFF) << 16)
            assert regs[f"${2 * p + 1}"] == (w[a] >> 16) | ((w[b] >> 16) << 16)
            assert hi[f"${p}"] == (w[a] & 0xFFFF) | ((w[b] & 0xFFFF) << 16)
        for ba in (0, 2):
            regs = _simulate(qm.BYTE_PAIRS_ASM[ba], {4 + i: w[i] for i in range(4)})
            for q in range(4):
                b = ba + q % 2
                got = regs[f"${q}"]
                assert got & 0xFF == (w[q // 2 * 2] >> 8 * b) & 255
                assert (got >> 16) & 0xFF == (w[q // 2 * 2 + 1] >> 8 * b) & 255


@pytest.mark.parametrize("kind, bits", [(0, 4), (1, 4), (0, 2), (0, 3), (0, 8), (2, 8)])
def test_ptx_slot_operands_exact(kind, bits):
    """Every slot's PTX (fp16 and bf16, one and two row blocks) on random pairs: A = q - z, or the raw minifloat."""
    rng = random.Random(bits * 10 + kind)
    plane = 2 if bits == 3 else bits
    for (k, b, slot, bf16, mt, zsum), asm in qm.SLOT_ASM.items():
        if (k, b) != (kind, bits):
            continue
        shift = 0 if bits == 8 else plane * (slot % (16 // plane))
        src0, nb = 4 * mt, 2 * mt
        z0 = src0 + (8 if bits == 3 else 4) + nb
        for _ in range(20):
            src = [rng.getrandbits(32) for _ in range(8)]              # 4 pairs (+ 4 high-bit pairs for int3)
            zs = [rng.randrange(1 << bits) for _ in range(2)]
            inputs = {src0 + r: src[r] for r in range(8 if bits == 3 else 4)}
            for i, z in enumerate(zs):
                h = z | (0x4300 if bf16 and bits < 8 else 0x6400)
                inputs[z0 + i] = h | h << 16
            regs = _simulate(asm, inputs)
            for r in range(4):
                for h in range(2):
                    got = (_bf16 if bf16 else _f16)((regs[f"a{r}"] >> 16 * h) & 0xFFFF)
                    v = src[r] >> 16 * h
                    if kind:
                        want = _raw_value(kind, (v >> shift) & (15 if kind == 1 else 255))
                    else:
                        q = (v >> shift) & ((1 << plane) - 1)
                        if bits == 3:
                            q |= ((src[4 + r] >> (16 * h + slot)) & 1) << 2
                        want = q + qm.ZSUM_BASE.value if zsum else q - zs[r % 2]
                    assert got == want, (kind, bits, slot, bf16, mt, r, h, hex(src[r]), got, want)


# The PTX path on the GPU: a few cases per format at larger shapes, then a CUDA-graph capture and replay.
GPU_CASES = [
    (dict(group_size=128), F16, 1, 4096, 1000, 64, 4, 4, 1),
    (dict(group_size=128, symmetric=False), BF16, 8, 2048, 512, 32, 2, 2, 2),
    (dict(group_size=-1), F16, 16, 1536, 333, 16, 1, 3, 1),
    (dict(group_size=32), F16, 11, 1024, 64, 32, 8, 1, 0),
]


@gpu
@pytest.mark.parametrize("fmt", MMA_FORMATS)
def test_gpu_ptx_path_and_cuda_graph(fmt, gen):
    dev = torch.device("cuda")
    for opts, dtype, M, K, N, bn, nw, split, pf in GPU_CASES:
        if fmt in ("mxfp4", "nvfp4"):
            opts = dict(group_size=32 if fmt == "mxfp4" else 16)
        elif not fmt.startswith("int"):
            opts = {k: v for k, v in opts.items() if k != "symmetric"}
        out, ref, _ = _run(fmt, opts, dtype, M, K, N, bn, nw, split, pf, True, gen, device=dev)
        assert rel_err(out, ref) < TOL[dtype], (fmt, opts, dtype, M, K, N)
    # capture: the launch (split-K with tickets) replays against new activations
    opts = dict(group_size=16 if fmt == "nvfp4" else 32 if fmt == "mxfp4" else 128)
    qt = tm.quantize(torch.randn(2048, 4096, generator=gen), fmt, **opts).to(dev)
    cfg = Q.KernelConfig("mma", block_m=8, block_n=32, num_warps=2, split_k=4, prefetch=1)
    x = torch.randn(4, 4096, generator=gen).half().to(dev)
    out = torch.empty(4, 2048, dtype=F16, device=dev)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        Q.launch_fused(x, qt, None, cfg, out=out)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        Q.launch_fused(x, qt, None, cfg, out=out)
    w = qt.dequantize(torch.float64)
    for _ in range(3):
        x.copy_(torch.randn(4, 4096, generator=gen).half())
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, x.double() @ w.T) < TOL[F16]


@gpu
def test_gpu_activations_loaded_with_the_words(gen):
    """x_ahead=1 on the PTX path, the interpreter cases."""
    dev = torch.device("cuda")
    for case in X_AHEAD:
        out, ref, _ = _run(*case[:-1], gen, device=dev, fold=case[-1], x_ahead=1)
        assert not torch.isnan(out).any(), case
        assert rel_err(out, ref) < TOL[case[2]], case


@gpu
@pytest.mark.parametrize("fmt", ["int4", "int2", "int3"])
def test_gpu_zero_points_through_activation_sums(fmt, gen):
    """fold=1 (operand 16 + q, the zero point through the activation sums) on the PTX path, as GPU_CASES."""
    dev = torch.device("cuda")
    for opts, dtype, M, K, N, bn, nw, split, pf in GPU_CASES:
        out, ref, _ = _run(fmt, opts, dtype, M, K, N, bn, nw, split, pf, True, gen, device=dev, fold=1)
        assert rel_err(out, ref) < TOL[dtype], (fmt, opts, dtype, M, K, N)
