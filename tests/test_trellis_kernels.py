"""Fused trellis decode GEMV/GEMM (Triton; the CPU interpreter at small sizes, larger on the GPU)."""
import pytest
import torch

from triton_marlin.formats import QuantizedTensor
from triton_marlin.formats import hadamard
from triton_marlin.formats import trellis as tf

from conftest import rel_err

pytest.importorskip("triton")
from triton_marlin.kernels import trellis_gemm as tg  # noqa: E402


def random_trellis(N, K, bits, code, group_size, gen, device="cpu", scale_dtype=torch.float16):
    """A trellis weight with random streams: every bit pattern is a valid tail-biting stream."""
    W = tf.words_per_tile(bits)
    words = torch.randint(-2 ** 31, 2 ** 31, (K // 16, W, N // 16), generator=gen, dtype=torch.int64)
    G = 1 if group_size == -1 else K // group_size
    tensors = {
        "qweight": words.to(torch.int32),
        "scales": (torch.rand(G, N, generator=gen) * 0.02 + 0.005).to(scale_dtype),
        "su": hadamard.random_signs(N, gen), "sv": hadamard.random_signs(K, gen),
    }
    if code == "hyb":
        tensors["lut"] = torch.randn(256, generator=gen).to(torch.float16)
    meta = tf.make_meta(bits, code, N, K, scale_dtype, method="random")
    qt = QuantizedTensor(f"trellis{bits}", (N, K), group_size, tensors, meta)
    return qt.to(device)


CASES = [  # (N, K, bits, code, group_size)
    (16, 48, 2, "3inst", -1),
    (48, 64, 3, "1mad", 32),
    (32, 96, 4, "hyb", -1),
    (80, 32, 3, "3inst", 32),
    (16, 256, 4, "1mad", 128),
    (64, 64, 2, "hyb", 32),          # even: no masked element (BLOCK_N | N, BLOCK_K | K)
    (128, 96, 3, "3inst", -1),       # even; static GEMV (16*8 | N, 32 | K)
    (128, 64, 4, "1mad", 32),        # static GEMV, grouped scales
    (256, 32, 2, "hyb", -1),         # static GEMV
    (128, 96, 3, "1mad2", 32),       # pair code (two weights per state): static GEMV, grouped
    (48, 64, 4, "1mad2", -1),        # pair code, generic kernels
    (256, 32, 2, "1mad2", -1),       # pair code, static GEMV
    (128, 96, 3, "1mad2r", 32),      # pair code with one LCG (rotated word): static GEMV, grouped
    (48, 64, 4, "1mad2r", -1),       # 1mad2r, generic kernels
]


@pytest.mark.parametrize("N,K,bits,code,group", CASES)
@pytest.mark.parametrize("M", [1, 3, 5, 17])
def test_rotated_kernel_matches_decoded_weight(N, K, bits, code, group, M, gen):
    qt = random_trellis(N, K, bits, code, group, gen)
    wt = qt.fmt.rotated_weight(qt).double()
    xr = torch.randn(M, K, generator=gen)
    for gemv in ("auto", "generic"):
        out = torch.full((M, N), float("nan"))
        tg.trellis_matmul_rotated(xr, qt, split_k=1, out=out, gemv=gemv)  # every element written
        assert rel_err(out, xr.double() @ wt.t()) < 1e-5
    if M <= tg.GEMV_MAX_M and K >= 64:                         # split-K with atomics
        out2 = tg.trellis_matmul_rotated(xr, qt, split_k=2)
        assert rel_err(out2, xr.double() @ wt.t()) < 1e-5


@pytest.mark.parametrize("bits,code,group", [(2, "1mad", -1), (3, "3inst", 32), (4, "hyb", -1), (3, "1mad2", -1),
                                             (2, "1mad2r", -1)])
@pytest.mark.parametrize("M", [1, 2, 3, 4])
def test_static_gemv_split_parts_and_rows(bits, code, group, M, gen):
    # what qmatmul runs: one partial result per K split ([S, M, N], nothing zeroed), up to 4 rows of x
    # per program (one decode for all of them), with and without the prefetch of the next words
    N, K = 128, 192
    qt = random_trellis(N, K, bits, code, group, gen)
    wt = qt.fmt.rotated_weight(qt).double()
    xr = torch.randn(M, K, generator=gen)
    ref = xr.double() @ wt.t()
    for prefetch in (False, True):
        parts = tg.trellis_matmul_rotated(xr, qt, gemv="static", split_k=3, parts=True, prefetch=prefetch,
                                          block_tk=2 if bits == 3 else 1)
        assert parts.shape == (3, M, N)
        assert rel_err(parts.sum(0), ref) < 1e-5
    with pytest.raises(ValueError, match="parts=True"):
        tg.trellis_matmul_rotated(xr, qt, parts=True, out=torch.empty(M, N))


@pytest.mark.parametrize("N,K,bits,code,group", CASES[:3])
@pytest.mark.parametrize("M,dtype", [(1, torch.float16), (2, torch.float32), (18, torch.float16)])
def test_trellis_qgemm_end_to_end(N, K, bits, code, group, M, dtype, gen):
    qt = random_trellis(N, K, bits, code, group, gen)
    x = torch.randn(M, K, generator=gen).to(dtype)
    bias = torch.randn(N, generator=gen).to(dtype)
    y = tg.trellis_qgemm(x, qt, bias)
    assert y.dtype == dtype and y.shape == (M, N)
    ref = x.double() @ qt.dequantize(torch.float64).t() + bias.double()
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    assert rel_err(y, ref) < tol
    assert rel_err(tg.trellis_qgemm_reference(x, qt, bias), ref) < tol


def test_static_gemv_refuses_partial_blocks(gen):
    qt = random_trellis(48, 64, 3, "3inst", -1, gen)
    with pytest.raises(ValueError, match="static GEMV"):
        tg.trellis_matmul_rotated(torch.randn(1, 64), qt, gemv="static")
    with pytest.raises(ValueError, match="gemv must be"):
        tg.trellis_matmul_rotated(torch.randn(1, 64), qt, gemv="fast")


def test_unsupported_reason_and_errors(gen):
    qt = random_trellis(16, 32, 2, "3inst", -1, gen)
    assert tg.unsupported_reason(torch.randn(1, 32), qt) is None
    assert "dtype" in tg.unsupported_reason(torch.randn(1, 32).double(), qt)
    with pytest.raises(ValueError, match="out must be"):
        tg.trellis_matmul_rotated(torch.randn(1, 32), qt, out=torch.empty(1, 8))
    from triton_marlin import quantize
    int_qt = quantize(torch.randn(16, 32), "int4", group_size=32)
    assert "not a trellis" in tg.unsupported_reason(torch.randn(1, 32), int_qt)


@pytest.mark.gpu
@pytest.mark.parametrize("bits,code", [(2, "3inst"), (3, "1mad"), (4, "hyb")])
@pytest.mark.parametrize("M", [1, 3, 333])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_trellis_qgemm(bits, code, M, dtype, gen):
    N, K = 1024, 2048
    qt = random_trellis(N, K, bits, code, -1, gen, device="cuda")
    x = torch.randn(M, K, generator=gen).to(dtype).cuda()
    y = tg.trellis_qgemm(x, qt)
    ref = x.double() @ qt.dequantize(torch.float64).t()
    assert rel_err(y, ref) < (1e-3 if dtype == torch.float16 else 8e-3)


@pytest.mark.gpu
def test_gpu_viterbi_encode_matches_cpu_quality(gen):
    import triton_marlin as tm
    w = torch.randn(32, 64, generator=gen)
    gpu = tm.quantize(w.cuda(), "trellis3", method="viterbi")
    cpu = tm.quantize(w, "trellis3", method="viterbi")
    mse_gpu = ((gpu.dequantize(torch.float64).cpu() - w.double()) ** 2).mean().item()
    mse_cpu = ((cpu.dequantize(torch.float64) - w.double()) ** 2).mean().item()
    assert mse_gpu == pytest.approx(mse_cpu, rel=0.02)
    assert mse_gpu < 0.019


def test_custom_op_matches_eager(gen):
    qt = random_trellis(32, 64, 3, "hyb", 32, gen)
    x = torch.randn(2, 64, generator=gen)
    t = qt.tensors
    y_op = torch.ops.triton_marlin.trellis_qgemm(
        x, t["qweight"], t["scales"], t["su"], t["sv"], t["lut"], None, 3, "hyb", 32, 64, 32,
        qt.meta["had_block_in"], qt.meta["had_block_out"])
    assert torch.equal(y_op, tg.trellis_qgemm(x, qt))
    assert tg.trellis_qgemm(x[:0], qt).shape == (0, 32)
    with pytest.raises(ValueError, match="bias"):
        tg.trellis_qgemm(x, qt, torch.zeros(31))


@pytest.mark.gpu
def test_gpu_trellis_qgemm_under_torch_compile(gen):
    qt = random_trellis(256, 512, 4, "3inst", -1, gen, device="cuda")
    x = torch.randn(1, 512, generator=gen).half().cuda()
    fn = torch.compile(lambda a: tg.trellis_qgemm(a, qt), fullgraph=True)
    assert rel_err(fn(x), tg.trellis_qgemm(x, qt)) < 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("bits,code", [(2, "1mad"), (3, "3inst"), (4, "3inst"), (3, "1mad"), (2, "1mad2"),
                                       (3, "1mad2"), (4, "1mad2"), (2, "1mad2r"), (3, "1mad2r"), (4, "1mad2r")])
@pytest.mark.parametrize("no_asm", ["0", "1"])
def test_gpu_static_gemv_asm_and_portable_agree(bits, code, no_asm, gen, monkeypatch):
    # the inline-PTX decode and the portable decode must both equal the reference exactly (fp32 FMA)
    monkeypatch.setenv("TRITON_MARLIN_NO_ASM", no_asm)
    qt = random_trellis(512, 1024, bits, code, -1, gen, device="cuda")
    xr = torch.randn(1, 1024, generator=gen).cuda()
    out = torch.full((1, 512), float("nan"), device="cuda")
    tg.trellis_matmul_rotated(xr, qt, split_k=1, out=out, gemv="static")
    wt = qt.fmt.rotated_weight(qt).double()
    assert rel_err(out, xr.double() @ wt.t()) < 1e-5


@pytest.mark.parametrize("M,dtype", [(1, torch.float16), (3, torch.float32), (16, torch.float16)])
@pytest.mark.parametrize("bits,code,group", [(2, "3inst", -1), (3, "hyb", 32), (4, "1mad", -1), (2, "1mad2", 32),
                                             (4, "1mad2r", -1)])
def test_tensor_core_gemv(M, dtype, bits, code, group, gen):
    qt = random_trellis(128, 64, bits, code, group, gen)
    wt = qt.fmt.rotated_weight(qt).double()
    xr = torch.randn(M, 64, generator=gen).to(dtype)
    for split in (1, 2):
        out = torch.full((M, 128), float("nan"))
        if split == 2:
            out.zero_()        # split-K zeroes it anyway; the poison checks the unsplit store
        tg.trellis_matmul_rotated(xr, qt, gemv="mma", split_k=split, out=out)
        # fp16 x and fp16 code values multiply exactly; grouped scales are folded into the fp16
        # operand (one fp16 rounding per weight, ~2^-12 relative)
        tol = 1e-5 if dtype == torch.float32 or group == -1 else 1e-3
        assert rel_err(out, xr.double() @ wt.t()) < tol
    with pytest.raises(ValueError, match="tensor-core GEMV"):
        tg.trellis_matmul_rotated(torch.randn(17, 64), qt, gemv="mma")


def test_static_gemv_compiles_for_sm90_with_few_instructions_per_weight():
    # compiled (not interpreted) for Hopper with Triton's bundled ptxas: catches what the interpreter
    # cannot (lowering, inline PTX) and guards the decode's instruction budget
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "_trellis_sass.py"), "--bits", "3",
                           "--code", "3inst", "--asm", "1"], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr:
        pytest.skip("this Triton has no bundled ptxas")
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["instr_per_weight"] < 12, r
    assert r["opcodes"].get("LDG", 0) / r["weights_per_thread"] < 0.5      # words loaded once per group
    # the pair code: one state (window, two LCGs) per two weights; one dp4a, FADD and FFMA per weight
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "_trellis_sass.py"), "--bits", "2",
                           "--code", "1mad2", "--asm", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    wpt = r["weights_per_thread"]
    assert r["opcodes"].get("IDP", 0) == wpt and r["opcodes"].get("FFMA", 0) == wpt, r
    assert r["instr_per_weight"] < 6.5, r          # 5.8 with Triton 3.6 and 3.9 (1mad: 6.8)
    # 1mad2r: one LCG multiply per state (half an IMAD per weight) and its rotation as one funnel shift
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "_trellis_sass.py"), "--bits", "2",
                           "--code", "1mad2r", "--asm", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r2 = json.loads(proc.stdout.strip().splitlines()[-1])
    ops2, wpt = r2["opcodes"], r2["weights_per_thread"]
    assert ops2.get("IDP", 0) == wpt and ops2.get("FFMA", 0) == wpt, r2
    assert ops2.get("IMAD", 0) <= r["opcodes"]["IMAD"] - wpt // 2 + wpt // 8, r2   # + moves on IMAD
    assert ops2.get("SHF", 0) >= r["opcodes"].get("SHF", 0) + wpt // 2, r2
    assert r2["instr_per_weight"] < 6.5, r2        # 5.8 with Triton 3.6


def test_split_k_fills_whole_waves(monkeypatch):
    # the K split of the static GEMV: about GEMV_DEFAULTS["programs_per_sm"] programs per SM, every
    # split non-empty, and no worse a last-wave tail than the plain target (N=28672: 224 blocks)
    monkeypatch.setattr(tg, "_sm_count", lambda device: 132)
    cuda = torch.device("cuda")
    for n_blocks, k_iters in ((224, 256), (64, 256), (64, 512), (1000, 4), (7, 3)):
        split = tg._split_k(n_blocks, k_iters, cuda)
        iters = -(-k_iters // split)
        assert 1 <= split <= k_iters and -(-k_iters // iters) == split          # no empty split
        want = max(1, min(k_iters, -(-8 * 132 // n_blocks)))
        def eff(s):
            waves = n_blocks * s / 132
            return waves / -(-waves // 1)
        assert eff(split) >= eff(-(-k_iters // -(-k_iters // want))) - 1e-9
        assert split >= min(want, k_iters) // 2
    assert tg._split_k(64, 3, torch.device("cpu")) == 1 and tg._split_k(64, 8, torch.device("cpu")) == 2


@pytest.mark.parametrize("bits,code,group,M", [(3, "3inst", -1, 1), (2, "1mad", 32, 3), (4, "hyb", -1, 2),
                                              (4, "1mad2", -1, 1)])
def test_input_transform_inside_the_gemv(bits, code, group, M, gen):
    # the decode GEMV applying the input Hadamard transform itself (each program rotates its own K
    # range) equals the separate launch, for every K split
    N, K = 128, 512
    qt = random_trellis(N, K, bits, code, group, gen)
    x = torch.randn(M, K, generator=gen).half()
    assert tg.fused_input_ok(M, qt)
    ref = x.double() @ qt.dequantize(torch.float64).t()
    for split in (1, 3):
        parts = tg.trellis_matmul_rotated(x, qt, parts=True, split_k=split, rotate_signs=qt.tensors["sv"])
        y = hadamard.unrotate(parts.double().sum(0), qt.tensors["su"], qt.meta["had_block_out"])
        assert rel_err(y, ref) < 1e-5
    y = tg._trellis_qgemm_impl(x, qt, None, fuse_input=True)
    assert y.dtype == torch.float16 and rel_err(y, ref) < 1e-3
    with pytest.raises(ValueError, match="rotate_signs"):
        tg.trellis_matmul_rotated(torch.randn(5, K).half(), qt, rotate_signs=qt.tensors["sv"])


@pytest.mark.gpu
@pytest.mark.parametrize("bits,code,M", [(2, "1mad", 1), (3, "3inst", 1), (4, "hyb", 4)])
def test_gpu_input_transform_inside_the_gemv(bits, code, M, gen):
    # compiled: each program's rotated K range is written, then read back by the same program after a
    # barrier; every split and the separate-launch path must agree
    N, K = 1024, 2048
    qt = random_trellis(N, K, bits, code, -1, gen, device="cuda")
    x = torch.randn(M, K, generator=gen).half().cuda()
    ref = x.double() @ qt.dequantize(torch.float64).t()
    for fuse in (False, True):
        y = tg._trellis_qgemm_impl(x, qt, None, fuse_input=fuse)
        assert rel_err(y, ref) < 1e-3
    for split in (1, 4, 16):
        parts = tg.trellis_matmul_rotated(x, qt, parts=True, split_k=split, rotate_signs=qt.tensors["sv"])
        y = hadamard.unrotate(parts.double().sum(0).cpu(), qt.tensors["su"].cpu(), qt.meta["had_block_out"])
        assert rel_err(y, ref.cpu()) < 1e-5


# --- tensor-core GEMV (mma.sync over hand-placed fragments; the interpreter runs its portable emulation) ---
TC_CASES = [  # (N, K, bits, code, tn, num_warps)
    (256, 64, 2, "1mad2", 2, 1),
    (256, 48, 3, "1mad2", 2, 1),     # K: 3 tile rows (odd number of K steps)
    (512, 32, 4, "1mad2", 2, 1),
    (128, 64, 4, "1mad2", 1, 2),     # two warps: tile rows of a K step split over warps, summed at the end
    (256, 64, 3, "1mad", 1, 1),
    (256, 128, 2, "1mad", 2, 4),
    (128, 48, 3, "1mad2r", 1, 1),    # one LCG and its rotated word; 3 tile rows
    (256, 64, 4, "1mad2r", 2, 2),
]


@pytest.mark.parametrize("N,K,bits,code,tn,nw", TC_CASES)
@pytest.mark.parametrize("M", [1, 2, 4])
def test_tc_gemv_matches_decoded_weight(N, K, bits, code, tn, nw, M, gen):
    qt = random_trellis(N, K, bits, code, -1, gen)
    wt = qt.fmt.rotated_weight(qt).double()
    xr = torch.randn(M, K, generator=gen)
    ref = xr.double() @ wt.t()
    kw = dict(gemv="tc", block_tn_tc=tn, num_warps=nw)
    out = torch.full((M, N), float("nan"))
    tg.trellis_matmul_rotated(xr, qt, split_k=1, out=out, **kw)        # poisoned: every element written
    # B = fp16(x) + fp16 residue: x is represented to ~2^-22 relative, code values are exact, sums in
    # fp32 (K <= 128 terms): ~1e-7 relative; 1e-6 leaves a 10x margin and fails on any wrong weight
    assert rel_err(out, ref) < 1e-6
    if K // (16 * nw) >= 2:
        out2 = torch.full((M, N), float("nan"))
        tg.trellis_matmul_rotated(xr, qt, split_k=2, out=out2, **kw)    # atomics into the zeroed out
        assert rel_err(out2, ref) < 1e-6
        parts = tg.trellis_matmul_rotated(xr, qt, split_k=2, parts=True, **kw)
        assert parts.shape == (2, M, N)
        assert rel_err(parts.sum(0), ref) < 1e-6


def test_tc_gemv_fp16_activations_and_rows_past_m(gen):
    # fp16 x' is read as fp32 (its residue is 0); M = 3 leaves D columns 6, 7 unused: never stored
    qt = random_trellis(256, 64, 2, "1mad2", -1, gen)
    xr = torch.randn(3, 64, generator=gen).half()
    out = torch.full((3, 256), float("nan"))
    tg.trellis_matmul_rotated(xr, qt, split_k=1, out=out, gemv="tc")
    assert rel_err(out, xr.double() @ qt.fmt.rotated_weight(qt).double().t()) < 1e-6


def test_tc_gemv_dispatch_and_refusals(gen, monkeypatch):
    from triton_marlin import dispatch
    qt = random_trellis(256, 64, 2, "1mad2", -1, gen)
    xr = torch.randn(1, 64, generator=gen)
    dispatch.reset()
    y = tg.trellis_matmul_rotated(xr, qt, split_k=1)
    assert dispatch.counts() == {("trellis_gemv", "tc"): 1}            # on by default for 1mad2 at M=1
    assert rel_err(y, xr.double() @ qt.fmt.rotated_weight(qt).double().t()) < 1e-6
    for kw in ({"gemv": "static"}, {"prefetch": False}, {"block_tk": 2}):   # FMA GEMV asked for
        dispatch.reset()
        tg.trellis_matmul_rotated(xr, qt, split_k=1, **kw)
        assert dispatch.counts() == {("trellis_gemv", "static"): 1}, kw
    monkeypatch.setattr(tg, "TC_GEMV", False)
    dispatch.reset()
    tg.trellis_matmul_rotated(xr, qt, split_k=1)
    assert dispatch.counts() == {("trellis_gemv", "static"): 1}         # the switch turns it off
    monkeypatch.setattr(tg, "TC_GEMV", True)
    for other in (random_trellis(256, 64, 2, "3inst", -1, gen), random_trellis(256, 64, 2, "1mad2", 32, gen),
                  random_trellis(128, 48, 2, "1mad2", -1, gen),           # code, grouped scales, 1 tile a thread
                  random_trellis(256, 64, 2, "1mad2r", -1, gen)):
        dispatch.reset()
        tg.trellis_matmul_rotated(xr[:, :other.shape[1]], other, split_k=1)
        expect = "tc" if other.meta["code"] in ("1mad2", "1mad2r") and other.group_size == -1 else "static"
        assert dispatch.counts() == {("trellis_gemv", expect): 1}
    for other in (random_trellis(256, 64, 2, "3inst", -1, gen), random_trellis(256, 64, 2, "1mad2", 32, gen)):
        with pytest.raises(ValueError, match="tensor-core GEMV cannot run"):
            tg.trellis_matmul_rotated(xr, other, gemv="tc")
    with pytest.raises(ValueError, match="tensor-core GEMV cannot run"):      # 2 tiles a thread: 256 | N
        tg.trellis_matmul_rotated(xr, random_trellis(128, 64, 2, "1mad2", -1, gen), gemv="tc", block_tn_tc=2)
    with pytest.raises(ValueError, match="M=5"):
        tg.trellis_matmul_rotated(torch.randn(5, 64), qt, gemv="tc")


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("N", [8192, 28672])
@pytest.mark.parametrize("M", [1, 2, 4])
def test_tc_gemv_auto_rule_follows_the_h200_sweep(bits, N, M):
    # what gemv="auto" picks (no kernel runs): the tensor-core GEMV up to M = 4 for every width on both measured
    # shapes (second H200 sweep); tiles per thread, resident-wave split and prefetch as measured best; 1mad2r
    # its own configs at 2 and 4 bits (its sweep, docs/perf/data/2026-11-26-h200-trellis-rot/), 1mad2's at 3
    gen = torch.Generator().manual_seed(0)
    qt = random_trellis(N, 64, bits, "1mad2", -1, gen)
    wide = N >= tg.TC_WIDE_N
    assert tg.tc_gemv_auto(M, qt)
    assert not tg.tc_gemv_auto(5, qt)
    cfg = tg.tc_config(qt)
    assert (cfg["tn"], cfg["programs_per_sm"], cfg["num_warps"]) == ((2 if wide and bits == 4 else 1), 32, 1)
    assert cfg.get("resident_split", False) == (wide or bits == 2)
    assert cfg.get("prefetch", False) == (wide or bits < 4)
    assert not tg.tc_gemv_auto(M, random_trellis(N, 64, bits, "1mad", -1, gen))     # 1mad: not timed with tc
    rot = random_trellis(N, 64, bits, "1mad2r", -1, gen)
    assert tg.tc_gemv_auto(M, rot)
    rcfg = tg.tc_config(rot)
    if bits == 3:
        assert rcfg == cfg                                                           # 1mad2's config
    else:   # (tn, programs per SM, resident split, prefetch, activations prefetched), one warp a program
        expect = {(2, False): (2, 16, True, True, False), (4, False): (1, 16, False, False, False),
                  (2, True): (2, 32, True, True, True), (4, True): (2, 32, True, True, True)}[(bits, wide)]
        assert (rcfg["tn"], rcfg["programs_per_sm"], rcfg.get("resident_split", False),
                bool(rcfg.get("prefetch", False)), rcfg.get("prefetch_x", False)) == expect
        assert rcfg["num_warps"] == 1 and rcfg["auto"]
    assert tg.GEMV_DEFAULTS["m1"][("1mad2r", bits)] == tg.GEMV_DEFAULTS["m1"][("1mad2", bits)]
    assert tg.GEMV_DEFAULTS["m1"][("1mad2", bits)] == (2, bits == 3)                  # FMA: prefetch at 3 bits


@pytest.mark.parametrize("bits,wide", [(2, False), (4, False), (2, True), (4, True)])
def test_tc_gemv_auto_1mad2r_configs_compute_the_product(gen, monkeypatch, bits, wide):
    # gemv="auto" with each of 1mad2r's own TC_CODE_CONFIGS (the wide class by a lowered TC_WIDE_N): tensor-core
    # GEMV, the config's knobs as launched (tn 2, resident split, words and activations prefetched), right product
    from triton_marlin import dispatch
    monkeypatch.setattr(tg, "TC_WIDE_N", 256 if wide else tg.TC_WIDE_N)
    qt = random_trellis(256, 64, bits, "1mad2r", -1, gen)
    assert tg.tc_config(qt) == tg.TC_CODE_CONFIGS["1mad2r"][(bits, wide)]
    xr = torch.randn(1, 64, generator=gen)
    dispatch.reset()
    y = tg.trellis_matmul_rotated(xr, qt, parts=True).sum(0)
    assert dispatch.counts() == {("trellis_gemv", "tc"): 1}
    assert rel_err(y, xr.double() @ qt.fmt.rotated_weight(qt).double().t()) < 1e-6


def test_tc_gemv_prefetch_and_resident_split_match(gen, monkeypatch):
    # the two untimed knobs compute the same product: prefetched words (K = 3 steps: the last step reloads
    # a valid row) and the resident-wave split (its arithmetic on a simulated 132-SM grid)
    qt = random_trellis(256, 48, 3, "1mad2", -1, gen)
    xr = torch.randn(2, 48, generator=gen)
    ref = xr.double() @ qt.fmt.rotated_weight(qt).double().t()
    for split in (1, 2, 3):
        out = tg.trellis_matmul_rotated(xr, qt, gemv="tc", prefetch=True, parts=True, split_k=split).sum(0)
        assert rel_err(out, ref) < 1e-6, split
    cuda = torch.device("cuda")
    assert tg._split_k(224, 512, cuda, 32, resident=1, sms=132) == 20       # 4480 programs: 1.06 waves of 32
    assert tg._split_k(224, 512, cuda, 32, resident=32, sms=132) == 37      # 8288: 1.96 waves of 32 a SM


@pytest.mark.parametrize("prefetch,prefetch_x", [(0, False), (1, True), (2, False), (2, True)])
def test_tc_gemv_deeper_prefetch_matches(gen, prefetch, prefetch_x):
    # words two K steps ahead and/or the activations one step ahead (the sweep's new knobs): same product at
    # 1..4 steps a program (the clamped reloads near the end read a valid row, unused) and M = 1 / 3
    qt = random_trellis(256, 64, 2, "1mad2", -1, gen)
    ref_w = qt.fmt.rotated_weight(qt).double().t()
    for M in (1, 3):
        xr = torch.randn(M, 64, generator=gen)
        ref = xr.double() @ ref_w
        for split in (1, 2, 4):
            out = tg.trellis_matmul_rotated(xr, qt, gemv="tc", prefetch=prefetch, tc_prefetch_x=prefetch_x,
                                            parts=True, split_k=split).sum(0)
            assert rel_err(out, ref) < 1e-6, (M, split)
    with pytest.raises(ValueError, match="prefetch"):
        tg.trellis_matmul_rotated(torch.randn(1, 64, generator=gen), qt, gemv="tc", prefetch=3)


def test_bench_gemm_trellis_runs_the_tc_path_on_cpu(tmp_path):
    # the benchmark's per-case tensor-core columns (trellis_full_tc / trellis_kernel_tc / trellis_kernel_fma)
    # at a tiny size under the interpreter: the first GPU run lost them to a NameError in _full_tc, which
    # the quick CI run (3inst only) never reached
    import importlib.util
    import json
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bench_gemm_trellis", root / "benchmarks" / "bench_gemm_trellis.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.jsonl"
    bench.main(["--device", "cpu", "--quick", "--shapes", "256x64", "--m", "1,2", "--formats", "trellis2",
                "--codes", "1mad2", "--no-int4", "--no-graph", "--repeats", "2", "--warmup", "0", "-o", str(out)])
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    got = {(r["case"]["impl"], r["case"]["M"], r["metric"]) for r in recs}
    for M in (1, 2):
        for impl in ("trellis_full_tc", "trellis_kernel_tc", "trellis_kernel_fma"):
            assert (impl, M, "time_launch") in got, (impl, M)
        assert ("trellis_full_tc", M, "rel_err_vs_fp64") in got
    errs = [r["value"] for r in recs if r["metric"] == "rel_err_vs_fp64" and "tc" in r["case"]["impl"]]
    assert errs and max(errs) < 1e-3
    paths = {r["case"]["M"]: r["case"]["path"] for r in recs if r["case"]["impl"] == "trellis_kernel"}
    assert paths == {1: "tc", 2: "tc"}  # the default path up to M = 4 (TC_GEMV_MAX_M)


def test_tc_gemv_compiles_for_sm90_in_registers():
    # the inline PTX assumes one element of every [32 * warps] tensor per thread (element e = lane e % 32):
    # the compiled kernel's inline-asm operands must have exactly that layout, nothing staged in shared
    # memory, and the loop must hold the decode budget (no FFMA/FADD per weight; 3.6 SASS per weight
    # with Triton 3.6 and 3.9 at 2 bits, against 5.8 for the FMA GEMV)
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root / "src"), env.get("PYTHONPATH")]))
    for nw in (1, 4):
        proc = subprocess.run([sys.executable, str(root / "benchmarks" / "_trellis_sass.py"), "--kernel", "tc",
                               "--bits", "2", "--code", "1mad2", "--num-warps", str(nw)],
                              env=env, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr:
            pytest.skip("this Triton has no bundled ptxas")
        assert proc.returncode == 0, proc.stderr[-2000:]
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        assert r["num_warps"] == nw
        assert r["asm_layouts"] == [f"#ttg.blocked<{{sizePerThread = [1], threadsPerWarp = [32], "
                                    f"warpsPerCTA = [{nw}], order = [0]}}>"], r
        assert r["local_alloc"] == 0, r
        ops, wpt = r["opcodes"], r["weights_per_thread"]
        assert ops.get("HMMA", 0) * 4 == wpt and ops.get("IDP", 0) == wpt, r     # 4 weights a thread per HMMA
        assert ops.get("FFMA", 0) + ops.get("FADD", 0) < 0.1 * wpt, r
        assert not any(k in ops for k in ("LDS", "STS", "BAR")), r
        assert r["instr_per_weight"] < 4.0, r
        if nw == 1:
            a = r
    # 1mad2r (one warp, against 1mad2's a): half the LCG multiplies (32 of 64 a thread and K step), the other
    # word a funnel shift; both dp4a kinds (the odd row's signed); 255 SASS in the loop vs 254 with Triton 3.6
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "_trellis_sass.py"), "--kernel", "tc",
                           "--bits", "2", "--code", "1mad2r", "--num-warps", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    b = json.loads(proc.stdout.strip().splitlines()[-1])
    wpt = b["weights_per_thread"]
    assert b["opcodes"].get("IDP", 0) == wpt and b["opcodes"].get("HMMA", 0) * 4 == wpt, b
    assert b["opcodes"].get("IMAD", 0) <= a["opcodes"]["IMAD"] - wpt // 2 + wpt // 8, (a, b)   # + moves on IMAD
    assert b["opcodes"].get("SHF", 0) >= a["opcodes"].get("SHF", 0) + wpt // 2, (a, b)
    assert b["local_alloc"] == 0 and b["instr_per_weight"] < 4.0 and b["spill_store_bytes"] == 0, b


@pytest.mark.gpu
@pytest.mark.parametrize("bits,code", [(2, "1mad2"), (3, "1mad2"), (4, "1mad2"), (3, "1mad"), (2, "1mad2r"),
                                       (3, "1mad2r"), (4, "1mad2r")])
@pytest.mark.parametrize("M", [1, 4])
def test_gpu_tc_gemv_kernel_matches(bits, code, M, gen):
    # the PTX path (dp4a onto 0xE5FE6400, mma.sync fragments) against the fp64 product; the HMMA's fp32
    # sums truncate: at most ~K/8 MMA steps x 2^-23 of the running sum, ~6e-5 fully biased at K = 4096
    N, K = 2048, 4096
    qt = random_trellis(N, K, bits, code, -1, gen, device="cuda")
    xr = torch.randn(M, K, generator=gen).cuda()
    ref = xr.double() @ qt.fmt.rotated_weight(qt).double().t()
    for kw in ({}, {"block_tn_tc": 1}, {"num_warps": 4}, {"split_k": 1}):
        out = tg.trellis_matmul_rotated(xr, qt, gemv="tc", parts=True, **kw).sum(0)
        assert rel_err(out, ref) < 1e-4, kw
