"""Attention kernels (prefill FA2-style and split-K decode) against an fp64 softmax(QK^T)V reference.

Tolerances: operands are fp16/bf16 values, logits and softmax are fp32, P is rounded to the input dtype
before the PV dot and the output is rounded once more. Two roundings of unit u give a relative Frobenius
error of about u (fp16: u = 2^-11 ~ 4.9e-4, measured ~2.5e-4; bf16: u = 2^-8 ~ 3.9e-3, measured ~1.7e-3 on
the GPU's round-to-nearest and ~4.8e-3 under the interpreter, whose bf16 down-conversion truncates). The
bounds below are 1e-3 (fp16) and 1e-2 (bf16); NaN anywhere fails (rel_err returns inf).
"""

import pytest
import torch
import torch.nn.functional as F

from triton_marlin import dispatch
from triton_marlin.kernels import attention as A

from conftest import rel_err

TOL = {torch.float16: 1e-3, torch.bfloat16: 1e-2}
GPU_TOL = {torch.float16: 1e-3, torch.bfloat16: 6e-3}  # round-to-nearest bf16 on the GPU

needs_triton = pytest.mark.skipif(A.unsupported_reason(torch.empty(1, 1, 1, 64, dtype=torch.float16)) is not None,
                                  reason="Triton kernels need CUDA or TRITON_INTERPRET=1")


def _qkv(gen, B, Hq, Hkv, Sq, Sk, D, dtype, device="cpu", q_scale=1.0):
    q = (torch.randn(B, Hq, Sq, D, generator=gen) * q_scale).to(dtype).to(device)
    k = torch.randn(B, Hkv, Sk, D, generator=gen).to(dtype).to(device)
    v = torch.randn(B, Hkv, Sk, D, generator=gen).to(dtype).to(device)
    return q, k, v


def _ref64(q, k, v, causal, sm_scale=None):
    return A.attention_reference(q.double(), k.double(), v.double(), causal, sm_scale)


# ----------------------------------------------------------------- prefill

PREFILL_SHAPES = [
    # B, Hq, Hkv, Sq, Sk, D, causal
    (1, 2, 2, 1, 1, 64, False),
    (2, 4, 2, 17, 17, 64, True),      # GQA 2:1, one partial tile
    (1, 4, 1, 65, 65, 64, True),      # MQA, 65 = 4 tiles of 16 + 1
    (1, 2, 2, 17, 65, 128, True),     # chunked prefill: bottom-right causal, Sq < Sk
    (1, 3, 3, 33, 47, 64, False),     # ragged Sq and Sk
    (1, 5, 1, 1, 65, 128, True),      # one query token, GQA 5:1
    (1, 2, 2, 33, 33, 256, True),     # GLM-4.7-Flash MLA prefill head dim
]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", PREFILL_SHAPES, ids=lambda s: "B{}_H{}-{}_Sq{}_Sk{}_D{}_{}".format(
    *s[:6], "causal" if s[6] else "full"))
def test_prefill_matches_fp64(shape, dtype, gen):
    B, Hq, Hkv, Sq, Sk, D, causal = shape
    q, k, v = _qkv(gen, B, Hq, Hkv, Sq, Sk, D, dtype)
    out = torch.full_like(q, float("nan"))
    A.flash_attention_triton(q, k, v, causal, out=out)
    assert rel_err(out, _ref64(q, k, v, causal)) < TOL[dtype]


@needs_triton
def test_prefill_strided_inputs(gen):
    """q/k/v as [B, S, H, D] storage seen through permuted views: the kernel reads strides, no copies."""
    B, Hq, Hkv, S, D = 2, 4, 2, 33, 64
    q = torch.randn(B, S, Hq, D, generator=gen).half().transpose(1, 2)
    k = torch.randn(B, S, Hkv, D, generator=gen).half().transpose(1, 2)
    v = torch.randn(Hkv, B, S, D, generator=gen).half().permute(1, 0, 2, 3)
    assert not q.is_contiguous() and not v.is_contiguous()
    out = A.attention(q, k, v, causal=True, backend="triton")
    assert rel_err(out, _ref64(q, k, v, True)) < TOL[torch.float16]


@needs_triton
def test_prefill_large_logits_stay_finite(gen):
    """Logits in the hundreds: only the running-max subtraction keeps exp() finite."""
    q, k, v = _qkv(gen, 1, 2, 2, 40, 40, 64, torch.float16, q_scale=40.0)
    out = torch.full_like(q, float("nan"))
    A.flash_attention_triton(q, k, v, True, out=out)
    ref = _ref64(q, k, v, True)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < TOL[torch.float16]


@needs_triton
def test_prefill_sm_scale(gen):
    q, k, v = _qkv(gen, 1, 2, 1, 17, 17, 64, torch.float16)
    out = A.attention(q, k, v, causal=False, sm_scale=0.3, backend="triton")
    assert rel_err(out, _ref64(q, k, v, False, 0.3)) < TOL[torch.float16]
    # a different scale gives a different answer (the argument is not ignored)
    assert rel_err(out, _ref64(q, k, v, False)) > 10 * TOL[torch.float16]


@needs_triton
def test_prefill_config_override(gen):
    q, k, v = _qkv(gen, 1, 2, 2, 33, 33, 64, torch.float16)
    cfg = A.PrefillConfig(block_m=32, block_n=16, num_warps=1, num_stages=1)
    out = A.flash_attention_triton(q, k, v, True, config=cfg)
    assert rel_err(out, _ref64(q, k, v, True)) < TOL[torch.float16]


def test_reference_matches_sdpa(gen):
    """The explicit reference agrees with torch's SDPA (causal, top-left == bottom-right when Sq == Sk)."""
    q, k, v = _qkv(gen, 2, 4, 4, 23, 23, 64, torch.float64)
    for causal in (False, True):
        ref = A.attention_reference(q, k, v, causal)
        assert rel_err(ref, F.scaled_dot_product_attention(q, k, v, is_causal=causal)) < 1e-12


def test_reference_bottom_right_causal():
    """Sq < Sk: the last query row sees every key, the first sees Sk - Sq + 1 of them."""
    q = torch.zeros(1, 1, 2, 64, dtype=torch.float64)       # uniform attention over the visible keys
    v = torch.arange(5, dtype=torch.float64).view(1, 1, 5, 1).expand(1, 1, 5, 64)
    out = A.attention_reference(q, torch.zeros_like(v), v, causal=True)
    assert out[0, 0, 0, 0].item() == pytest.approx(1.5)      # mean of keys 0..3
    assert out[0, 0, 1, 0].item() == pytest.approx(2.0)      # mean of keys 0..4


def test_attention_flops_counts_visible_pairs():
    for sq, sk in ((7, 7), (3, 10), (1, 5)):
        mask = (torch.arange(sk)[None, :] <= torch.arange(sq)[:, None] + (sk - sq))
        assert A.attention_flops(2, 3, sq, sk, 64, True) == 4 * 2 * 3 * 64 * int(mask.sum())
    assert A.attention_flops(1, 1, 4, 6, 128, False) == 4 * 128 * 24


# ----------------------------------------------------------------- decode

DECODE_CASES = [
    # B, Hq, Hkv, S_max, D, lengths, num_splits
    (3, 4, 2, 70, 64, [1, 17, 65], None),
    (2, 5, 1, 40, 128, [40, 0], 3),       # a length-0 sequence -> zeros; MQA 5:1
    (2, 20, 2, 50, 64, [33, 50], 7),      # GQA 10:1 (pads to 16 rows), 7 splits
    (1, 2, 2, 20, 64, [20], 1),           # no split
    (2, 2, 1, 30, 64, [3, 30], 8),        # more splits than a short sequence fills
    (2, 2, 2, 33, 256, [33, 9], 2),
    (1, 2, 1, 1030, 256, [1030], 64),     # 64 splits x 256 dims: the merge runs in two column blocks
]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: f"B{c[0]}_H{c[1]}-{c[2]}_D{c[4]}_L{c[5]}_s{c[6]}")
def test_decode_matches_fp64(case, dtype, gen, monkeypatch):
    monkeypatch.setattr(A, "_POISON_WORKSPACE", True)
    B, Hq, Hkv, S, D, lengths, splits = case
    q = torch.randn(B, Hq, D, generator=gen).to(dtype)
    k = torch.randn(B, Hkv, S, D, generator=gen).to(dtype)
    v = torch.randn(B, Hkv, S, D, generator=gen).to(dtype)
    seq_lens = torch.tensor(lengths, dtype=torch.int32)
    out = torch.full_like(q, float("nan"))
    A.decode_attention_triton(q, k, v, seq_lens, num_splits=splits, out=out)
    ref = A.decode_attention_reference(q.double(), k.double(), v.double(), seq_lens)
    assert rel_err(out, ref) < TOL[dtype]
    for b, n in enumerate(lengths):
        if n == 0:
            assert torch.equal(out[b], torch.zeros_like(out[b]))


@needs_triton
def test_decode_ignores_positions_past_length(gen):
    """Garbage (NaN) beyond each sequence's length must not leak into the output."""
    B, Hq, Hkv, S, D = 2, 4, 2, 48, 64
    lengths = [17, 33]
    k = torch.randn(B, Hkv, S, D, generator=gen).half()
    v = torch.randn(B, Hkv, S, D, generator=gen).half()
    for b, n in enumerate(lengths):
        k[b, :, n:] = float("nan")
        v[b, :, n:] = float("nan")
    q = torch.randn(B, Hq, D, generator=gen).half()
    seq_lens = torch.tensor(lengths, dtype=torch.int32)
    out = A.decode_attention(q, k, v, seq_lens, num_splits=3, backend="triton")
    ref = A.decode_attention_reference(q.double(), k.double(), v.double(), seq_lens)
    assert rel_err(out, ref) < TOL[torch.float16]


@needs_triton
def test_decode_equals_prefill_last_row(gen):
    """Decode of token t == the last row of causal prefill over the same t keys (two different kernels)."""
    B, Hq, Hkv, S, D = 1, 4, 2, 37, 128
    q, k, v = _qkv(gen, B, Hq, Hkv, S, S, D, torch.float16)
    prefill = A.attention(q, k, v, causal=True, backend="triton")[:, :, -1]
    decode = A.decode_attention(q[:, :, -1], k, v, torch.tensor([S], dtype=torch.int32), backend="triton")
    assert rel_err(decode, prefill.double()) < 2 * TOL[torch.float16]


def test_choose_num_splits_bounds():
    cpu = torch.device("cpu")
    assert A.choose_num_splits(1, 1, 10, 16, cpu) == 1                 # one tile: no split
    assert A.choose_num_splits(64, 8, 100000, 64, cpu) == 1           # plenty of programs already
    assert 1 < A.choose_num_splits(1, 2, 100000, 64, cpu) <= 128
    assert A.choose_num_splits(1, 1, 1000, 16, cpu, min_chunk=500) == 2  # chunks no shorter than min_chunk


def test_merge_min_chunk_bounds_partial_traffic():
    for rows, out_dim, kv_per_token, block_n in ((20, 512, 1152, 32), (10, 128, 512, 64), (1, 64, 256, 16)):
        chunk = A.merge_min_chunk(rows, out_dim, kv_per_token, block_n)
        assert chunk % block_n == 0 and chunk >= 2 * block_n
        assert rows * out_dim * 8 <= 0.1 * chunk * kv_per_token            # within the 10% budget
        if chunk > 2 * block_n:                                             # and the shortest such chunk
            assert rows * out_dim * 8 > 0.1 * (chunk - block_n) * kv_per_token


def test_decode_bytes_counts_kv_of_each_sequence():
    # 2 sequences of 10 and 30 tokens, 2 KV heads of 64, fp16: K+V = 2 * 40 * 2 * 64 * 2 bytes
    assert A.decode_bytes([10, 30], 8, 2, 64, 2) == 2 * 40 * 2 * 64 * 2 + 2 * 2 * 8 * 64 * 2


# ----------------------------------------------------------------- MLA decode (absorbed form)

MLA_CASES = [
    # B, H, R (kv_lora_rank), P (rope), S_max, lengths, num_splits
    (2, 5, 64, 16, 40, [33, 0], 3),
    (3, 20, 512, 64, 70, [1, 17, 65], None),   # GLM-4.7-Flash widths: 20 heads, 512 latent, 64 rope
    (1, 3, 64, 16, 20, [20], 1),               # one chunk: written directly
]


def _mla_inputs(gen, B, H, R, P, S, dtype, device="cpu"):
    q_nope = torch.randn(B, H, R, generator=gen).to(dtype).to(device)
    q_rope = torch.randn(B, H, P, generator=gen).to(dtype).to(device)
    cache = torch.randn(B, S, R + P, generator=gen).to(dtype).to(device)  # one row per token: [latent | rope]
    return q_nope, q_rope, cache[..., :R], cache[..., R:]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", MLA_CASES, ids=lambda c: f"B{c[0]}_H{c[1]}_R{c[2]}_P{c[3]}_L{c[5]}_s{c[6]}")
def test_mla_decode_matches_fp64(case, dtype, gen, monkeypatch):
    monkeypatch.setattr(A, "_POISON_WORKSPACE", True)
    B, H, R, P, S, lengths, splits = case
    q_nope, q_rope, ckv, kpe = _mla_inputs(gen, B, H, R, P, S, dtype)
    seq_lens = torch.tensor(lengths, dtype=torch.int32)
    out = torch.full_like(q_nope, float("nan"))
    A.mla_decode_attention_triton(q_nope, q_rope, ckv, kpe, seq_lens, 0.0625, num_splits=splits, out=out)
    ref = A.mla_decode_reference(q_nope.double(), q_rope.double(), ckv.double(), kpe.double(), seq_lens, 0.0625)
    assert rel_err(out, ref) < TOL[dtype]
    for b, n in enumerate(lengths):
        if n == 0:
            assert torch.equal(out[b], torch.zeros_like(out[b]))


def test_mla_reference_is_mqa_over_latent_rows(gen):
    """Absorbed MLA == MQA with keys [latent | rope] and values = latent: check the reference against SDPA."""
    B, H, R, P, S = 2, 4, 32, 16, 9
    q_nope, q_rope, ckv, kpe = _mla_inputs(gen, B, H, R, P, S, torch.float64)
    ref = A.mla_decode_reference(q_nope, q_rope, ckv, kpe, torch.tensor([S, S]), 0.1)
    q = torch.cat([q_nope, q_rope], -1)[:, :, None]                          # [B, H, 1, R + P]
    k = torch.cat([ckv, kpe], -1)[:, None].expand(B, H, S, R + P)
    v = ckv[:, None].expand(B, H, S, R)
    sdpa = F.scaled_dot_product_attention(q, k, v, scale=0.1)[:, :, 0]
    assert rel_err(ref, sdpa) < 1e-12


def test_mla_decode_unsupported_width_falls_back(gen):
    q_nope, q_rope, ckv, kpe = _mla_inputs(gen, 1, 2, 48, 16, 8, torch.float16)
    seq_lens = torch.tensor([8], dtype=torch.int32)
    dispatch.reset()
    with pytest.warns(RuntimeWarning, match="mla_decode_attention"):
        out = A.mla_decode_attention(q_nope, q_rope, ckv, kpe, seq_lens, 0.1)
    assert dispatch.counts() == {("mla_decode_attention", "torch"): 1}
    ref = A.mla_decode_reference(q_nope.double(), q_rope.double(), ckv.double(), kpe.double(), seq_lens, 0.1)
    assert rel_err(out, ref) < TOL[torch.float16]
    with pytest.raises(ValueError, match="q_nope width 48"):
        A.mla_decode_attention(q_nope, q_rope, ckv, kpe, seq_lens, 0.1, backend="triton")


@pytest.mark.parametrize("mutate,exc,msg", [
    (lambda a: dict(a, q_rope=a["q_rope"][:1]), ValueError, "q_rope: expected shape"),
    (lambda a: dict(a, kpe_cache=a["kpe_cache"][:, :4]), ValueError, "kpe_cache: expected shape"),
    (lambda a: dict(a, ckv_cache=a["ckv_cache"].float()), TypeError, "dtype of q_nope"),
    (lambda a: dict(a, seq_lens=a["seq_lens"][:1]), ValueError, "one per sequence"),
    (lambda a: dict(a, sm_scale=0.0), ValueError, "sm_scale"),
    (lambda a: dict(a, sm_scale=None), ValueError, "sm_scale: expected the model's logit scale"),
])
def test_mla_decode_bad_input(mutate, exc, msg, gen):
    q_nope, q_rope, ckv, kpe = _mla_inputs(gen, 2, 2, 64, 16, 8, torch.float16)
    args = dict(q_nope=q_nope, q_rope=q_rope, ckv_cache=ckv, kpe_cache=kpe,
                seq_lens=torch.tensor([3, 8], dtype=torch.int32), sm_scale=0.1)
    with pytest.raises(exc, match=msg):
        A.mla_decode_attention(**mutate(args))


def test_mla_decode_bytes():
    # 2 sequences of 10 and 30 tokens, 20 heads, 512 + 64 fp16: cache rows + q (576) and out (512) per head
    assert A.mla_decode_bytes([10, 30], 20, 512, 64, 2) == (40 * 576 + 2 * 20 * (1024 + 64)) * 2


# ----------------------------------------------------------------- dispatch and bad input

@needs_triton
def test_dispatch_records_path(gen):
    q, k, v = _qkv(gen, 1, 2, 2, 5, 5, 64, torch.float16)
    dispatch.reset()
    A.attention(q, k, v, backend="auto")
    A.attention(q, k, v, backend="torch")
    assert dispatch.counts() == {("attention", "triton"): 1, ("attention", "torch"): 1}


def test_unsupported_head_dim_falls_back_with_warning(gen):
    q, k, v = _qkv(gen, 1, 2, 2, 5, 5, 96, torch.float16)
    dispatch.reset()
    assert 96 not in A.SUPPORTED_HEAD_DIMS
    with pytest.warns(RuntimeWarning, match="attention"):
        out = A.attention(q, k, v, backend="auto")
    assert dispatch.counts() == {("attention", "torch"): 1}
    assert rel_err(out, _ref64(q, k, v, False)) < TOL[torch.float16]
    with pytest.raises(ValueError, match="head_dim 96"):
        A.attention(q, k, v, backend="triton")


@pytest.mark.parametrize("call,exc,msg", [
    (lambda q, k, v: A.attention(q[0], k, v), ValueError, "q: expected 4 dims"),
    (lambda q, k, v: A.attention(q, k.float(), v), TypeError, "dtype of q"),
    (lambda q, k, v: A.attention(q, k[:, :1].expand(1, 1, 9, 64).repeat(1, 3, 1, 1), v), ValueError, "v: expected"),
    (lambda q, k, v: A.attention(q.repeat(1, 2, 1, 1)[:, :3], k, v), ValueError, "must divide"),
    (lambda q, k, v: A.attention(q, k[:, :, :4], v[:, :, :4], causal=True), ValueError, "Sq <= Sk"),
    (lambda q, k, v: A.attention(q, k, v, sm_scale=-1.0), ValueError, "sm_scale"),
    (lambda q, k, v: A.attention(q, k, v, backend="cuda"), ValueError, "backend"),
    (lambda q, k, v: A.attention(q.long(), k, v), TypeError, "floating-point"),
])
def test_attention_bad_input(call, exc, msg, gen):
    q, k, v = _qkv(gen, 1, 2, 2, 9, 9, 64, torch.float16)
    with pytest.raises(exc, match=msg):
        call(q, k, v)


@pytest.mark.parametrize("call,exc,msg", [
    (lambda q, k, v, s: A.decode_attention(q[:, :, None], k, v, s), ValueError, "q: expected 3 dims"),
    (lambda q, k, v, s: A.decode_attention(q, k, v, s.float()), TypeError, "seq_lens"),
    (lambda q, k, v, s: A.decode_attention(q, k, v, s[:1]), ValueError, "one per sequence"),
    (lambda q, k, v, s: A.decode_attention(q, k[:1], v[:1], s), ValueError, "k_cache: expected shape"),
    (lambda q, k, v, s: A.decode_attention(q[:, :3], k, v, s), ValueError, "must divide"),
])
def test_decode_bad_input(call, exc, msg, gen):
    q = torch.randn(2, 4, 64, generator=gen).half()
    k = torch.randn(2, 2, 16, 64, generator=gen).half()
    seq_lens = torch.tensor([3, 16], dtype=torch.int32)
    with pytest.raises(exc, match=msg):
        call(q, k, k.clone(), seq_lens)


def test_prefill_rejects_int32_offset_overflow():
    """A (batch, head) slice whose offsets do not fit int32 is refused, not silently wrapped (meta tensors:
    nothing is allocated)."""
    A._check_int32_span("k", torch.empty(1, 1, 2 ** 24, 64, device="meta"))  # spans 2^30 elements
    # [B, S, H, D] storage seen as [B, H, S, D]: sequence stride 2^17, 2^14 + 1 positions
    big = torch.empty(1, 2 ** 14 + 1, 2 ** 10, 128, device="meta").transpose(1, 2)
    with pytest.raises(ValueError, match="k: one .batch, head. slice spans 2.31"):
        A._check_int32_span("k", big)


@needs_triton
def test_decode_bad_num_splits(gen):
    q = torch.randn(1, 2, 64, generator=gen).half()
    k = torch.randn(1, 2, 16, 64, generator=gen).half()
    with pytest.raises(ValueError, match="num_splits"):
        A.decode_attention_triton(q, k, k, torch.tensor([16], dtype=torch.int32), num_splits=0)


@needs_triton
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_torch_compile_fullgraph_traces_the_custom_ops(gen):
    """Under torch.compile (fullgraph: no graph break allowed) both entry points become custom ops."""
    q, k, v = _qkv(gen, 1, 4, 2, 17, 17, 64, torch.float16)
    compiled = torch.compile(lambda q, k, v: A.attention(q, k, v, causal=True) * 2, fullgraph=True, backend="eager")
    assert rel_err(compiled(q, k, v), 2 * _ref64(q, k, v, True)) < TOL[torch.float16]
    qd = torch.randn(1, 4, 64, generator=gen).half()
    seq_lens = torch.tensor([13], dtype=torch.int32)
    decode = torch.compile(lambda q, k, v, s: A.decode_attention(q, k, v, s, max_seq_len=13) + 1, fullgraph=True,
                           backend="eager")
    ref = A.decode_attention_reference(qd.double(), k.double(), v.double(), seq_lens) + 1
    assert rel_err(decode(qd, k, v, seq_lens), ref) < TOL[torch.float16]


def test_fake_impls_give_output_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        q = torch.empty(2, 4, 9, 64, dtype=torch.float16)
        k = torch.empty(2, 2, 9, 64, dtype=torch.float16)
        assert A._attention_op(q, k, k, True, 0.125).shape == (2, 4, 9, 64)
        qd = torch.empty(2, 4, 64, dtype=torch.float16)
        out = A._decode_attention_op(qd, k, k, torch.empty(2, dtype=torch.int32), 0.125, 9, 0)
        assert out.shape == (2, 4, 64) and out.dtype == torch.float16


# ----------------------------------------------------------------- compiles for Hopper (no GPU needed)

_AOT_SCRIPT = r"""
import json, re, sys
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton_marlin.kernels import attention as A
from triton_marlin import kvcache as KV

def build(fn, ptrs, consts, num_warps, num_stages=1):
    # what the JIT does at launch: unit strides become constants, other ints and pointers get divisibility 16
    names = fn.arg_names
    sig = {n: "constexpr" if n in consts else ptrs.get(n, "i32") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if n not in consts and (n in ptrs or n.startswith("stride"))}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()}, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, num_stages=num_stages))
    return {"shared": k.metadata.shared, "async_copies": len(re.findall("async_copy_global_to_local", k.asm["ttgir"]))}

out = {}
for dt, D, causal in (("fp16", 128, True), ("bf16", 64, False), ("bf16", 256, True)):
    cfg = A.default_prefill_config(D, torch.device("cuda"))
    p = {n: "*" + dt for n in ("Q", "K", "V", "Out")}
    p["qk_scale"] = "fp32"
    c = dict(stride_qd=1, stride_kd=1, stride_vd=1, stride_od=1, GROUP=10, CAUSAL=causal, HEAD_DIM=D,
             BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, DOT_F32=False)
    out[f"prefill_{dt}_{D}"] = build(A._attn_fwd_kernel, p, c, cfg.num_warps, cfg.num_stages)
p = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "SeqLens": "*i32", "PartO": "*fp32", "PartLse": "*fp32",
     "qk_scale": "fp32"}
c = dict(stride_qd=1, stride_kd=1, stride_vd=1, stride_pod=1, GROUP=10, GROUP_PAD=16, HEAD_DIM=128, BLOCK_N=64,
         DOT_F32=False, WRITE_LSE=True)
out["decode_split"] = build(A._decode_split_kernel, p, c, 4, 2)
p["PartO"] = "*bf16"  # one chunk: writes the output directly
out["decode_direct"] = build(A._decode_split_kernel, p, dict(c, WRITE_LSE=False), 4, 2)
out["decode_combine"] = build(A._decode_combine_kernel, {"PartO": "*fp32", "PartLse": "*fp32", "Out": "*bf16"},
                              dict(stride_pod=1, stride_od=1, BLOCK_D=128, SPLITS_PAD=64), 4)
p = {"QN": "*bf16", "QR": "*bf16", "CKV": "*bf16", "KPE": "*bf16", "SeqLens": "*i32", "PartO": "*fp32",
     "PartLse": "*fp32", "qk_scale": "fp32"}
mcfg = A.default_mla_decode_config(512, torch.device("cuda"))
c = dict(stride_qnd=1, stride_qrd=1, stride_cd=1, stride_kd=1, stride_pod=1, HEADS_PAD=32, LATENT=512, ROPE=64,
         BLOCK_N=mcfg.block_n, DOT_F32=False, WRITE_LSE=True)
out["mla_decode"] = build(A._mla_decode_split_kernel, p, c, mcfg.num_warps, mcfg.num_stages)
p = {n: "*fp16" for n in ("KNew", "VNew", "KCache", "VCache")}
p.update(SeqLens="*i32", NumNew="*i32")
out["kv_append"] = build(KV._kv_append_kernel, p, dict(stride_knd=1, stride_vnd=1, stride_kcd=1, stride_vcd=1,
                                                        HAS_NUM_NEW=True, DIM_K=128, DIM_V=128, BLOCK_T=64), 4)
out["latent_append"] = build(KV._kv_append_kernel, p, dict(stride_knd=1, stride_vnd=1, stride_kcd=1, stride_vcd=1,
                                                            HAS_NUM_NEW=False, DIM_K=512, DIM_V=64, BLOCK_T=1), 1)
print(json.dumps(out))
"""


def test_kernels_compile_for_hopper_and_pipeline():
    """Compile every kernel for sm_90 (Triton's own ptxas, no GPU): catches what the interpreter accepts but the
    compiler rejects, checks shared memory fits an H100/H200 (227 KiB) and that the prefill K/V loads are
    software-pipelined (async copies), as its launch config intends."""
    import json
    import os
    import subprocess
    import sys
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        pytest.skip("Triton's NVIDIA backend is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(info) == {"prefill_fp16_128", "prefill_bf16_64", "prefill_bf16_256", "decode_split", "decode_direct",
                         "decode_combine", "mla_decode", "kv_append", "latent_append"}
    for name, meta in info.items():
        assert 0 <= meta["shared"] <= 227 * 1024, (name, meta)
    # Q tile + 3 stages of K and V tiles: 32 + 3 * 32 KiB at D=128
    assert info["prefill_fp16_128"]["shared"] == 128 * 1024
    for name in ("prefill_fp16_128", "prefill_bf16_256", "decode_split", "mla_decode"):
        assert info[name]["async_copies"] > 0, name


# ----------------------------------------------------------------- GPU (larger shapes)

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [
    (2, 20, 2, 1000, 1000, 128, True),      # GLM-4.7-Flash stand-in heads (see docs/perf/attention.md)
    (1, 32, 8, 2047, 2047, 128, False),
    (2, 16, 16, 513, 1537, 64, True),       # chunked prefill
    (1, 8, 2, 1, 4099, 128, True),
    (1, 20, 20, 1500, 1500, 256, True),    # GLM-4.7-Flash MLA prefill (non-absorbed): 20 heads of 256
])
def test_prefill_gpu_matches_fp32_sdpa(shape, dtype):
    B, Hq, Hkv, Sq, Sk, D, causal = shape
    gen = torch.Generator(device="cuda").manual_seed(Sq * 7 + Sk)
    q = torch.randn(B, Hq, Sq, D, device="cuda", generator=gen).to(dtype)
    k = torch.randn(B, Hkv, Sk, D, device="cuda", generator=gen).to(dtype)
    v = torch.randn(B, Hkv, Sk, D, device="cuda", generator=gen).to(dtype)
    out = torch.full_like(q, float("nan"))
    A.flash_attention_triton(q, k, v, causal, out=out)
    ref = A.attention_reference(q.float(), k.float(), v.float(), causal)  # fp32 on the GPU
    assert rel_err(out, ref) < GPU_TOL[dtype]
    if Sq == Sk:  # torch's causal mask is top-left aligned: equal to ours only when Sq == Sk
        sdpa = F.scaled_dot_product_attention(q, k.repeat_interleave(Hq // Hkv, 1),
                                              v.repeat_interleave(Hq // Hkv, 1), is_causal=causal)
        assert rel_err(out, sdpa.float()) < 2 * GPU_TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_gpu_variable_lengths(dtype, monkeypatch):
    monkeypatch.setattr(A, "_POISON_WORKSPACE", True)
    B, Hq, Hkv, S, D = 6, 20, 2, 9000, 128
    gen = torch.Generator(device="cuda").manual_seed(5)
    q = torch.randn(B, Hq, D, device="cuda", generator=gen).to(dtype)
    k = torch.randn(B, Hkv, S, D, device="cuda", generator=gen).to(dtype)
    v = torch.randn(B, Hkv, S, D, device="cuda", generator=gen).to(dtype)
    lengths = [1, 17, 65, 4097, 8999, 9000]
    seq_lens = torch.tensor(lengths, dtype=torch.int32, device="cuda")
    out = torch.full_like(q, float("nan"))
    A.decode_attention_triton(q, k, v, seq_lens, max_seq_len=max(lengths), out=out)
    ref = A.decode_attention_reference(q.float(), k.float(), v.float(), seq_lens)
    assert rel_err(out, ref) < GPU_TOL[dtype]


@pytest.mark.gpu
def test_decode_gpu_cuda_graph_replay():
    """The decode path captures into a CUDA graph (no host sync when max_seq_len is given)."""
    B, Hq, Hkv, S, D = 4, 8, 2, 2048, 128
    q = torch.randn(B, Hq, D, device="cuda", dtype=torch.float16)
    k = torch.randn(B, Hkv, S, D, device="cuda", dtype=torch.float16)
    v = torch.randn(B, Hkv, S, D, device="cuda", dtype=torch.float16)
    seq_lens = torch.tensor([100, 2048, 1, 777], dtype=torch.int32, device="cuda")
    A.decode_attention_triton(q, k, v, seq_lens, max_seq_len=S)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = A.decode_attention_triton(q, k, v, seq_lens, max_seq_len=S)
    q.copy_(torch.randn_like(q))
    graph.replay()
    torch.cuda.synchronize()
    ref = A.decode_attention_reference(q.float(), k.float(), v.float(), seq_lens)
    assert rel_err(out, ref) < GPU_TOL[torch.float16]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mla_decode_gpu_glm47_widths(dtype, monkeypatch):
    """GLM-4.7-Flash decode: 20 heads over 512-wide latents + 64-wide rope keys, ragged long contexts."""
    monkeypatch.setattr(A, "_POISON_WORKSPACE", True)
    cfg = A.MLA_CONFIGS["glm47-flash-mla"]
    B, H, R, P, S = 5, cfg["num_heads"], cfg["kv_lora_rank"], cfg["rope_dim"], 8200
    gen = torch.Generator().manual_seed(3)
    q_nope, q_rope, ckv, kpe = _mla_inputs(gen, B, H, R, P, S, dtype, device="cuda")
    lengths = [1, 100, 4097, 8199, 8200]
    seq_lens = torch.tensor(lengths, dtype=torch.int32, device="cuda")
    out = torch.full_like(q_nope, float("nan"))
    A.mla_decode_attention_triton(q_nope, q_rope, ckv, kpe, seq_lens, cfg["sm_scale"], max_seq_len=S, out=out)
    ref = A.mla_decode_reference(q_nope.float(), q_rope.float(), ckv.float(), kpe.float(), seq_lens, cfg["sm_scale"])
    assert rel_err(out, ref) < GPU_TOL[dtype]


@pytest.mark.gpu
def test_gpu_torch_compile_inductor():
    """torch.compile with inductor (fullgraph) around all three entry points: the custom ops and fake impls."""
    gen = torch.Generator(device="cuda").manual_seed(9)
    q = torch.randn(2, 20, 300, 128, device="cuda", generator=gen).half()
    k = torch.randn(2, 2, 300, 128, device="cuda", generator=gen).half()
    v = torch.randn(2, 2, 300, 128, device="cuda", generator=gen).half()
    seq_lens = torch.tensor([300, 77], dtype=torch.int32, device="cuda")
    qn = torch.randn(2, 20, 512, device="cuda", generator=gen).half()
    qr = torch.randn(2, 20, 64, device="cuda", generator=gen).half()
    cache = torch.randn(2, 300, 576, device="cuda", generator=gen).half()

    def step(q, k, v, seq_lens, qn, qr, cache):
        pre = A.attention(q, k, v, causal=True)
        dec = A.decode_attention(q[:, :, -1], k, v, seq_lens, max_seq_len=300)
        mla = A.mla_decode_attention(qn, qr, cache[..., :512], cache[..., 512:], seq_lens, 0.0625, max_seq_len=300)
        return pre.float().sum(dim=2), dec.float(), mla.float() * 2

    compiled = torch.compile(step, fullgraph=True)
    got = compiled(q, k, v, seq_lens, qn, qr, cache)
    want = (A.attention_reference(q.float(), k.float(), v.float(), True).sum(dim=2),
            A.decode_attention_reference(q[:, :, -1].float(), k.float(), v.float(), seq_lens),
            2 * A.mla_decode_reference(qn.float(), qr.float(), cache[..., :512].float(), cache[..., 512:].float(),
                                       seq_lens, 0.0625))
    for g, w in zip(got, want):
        assert rel_err(g, w) < 2e-3
