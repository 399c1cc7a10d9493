"""KV cache: layouts, append (prefill, ragged, per token) on both paths, decode attention through every layout."""
import pytest
import torch

from triton_marlin import dispatch
from triton_marlin.kernels import attention as A
from triton_marlin.kvcache import (LAYOUTS, KVCache, LatentKVCache, kv_append, kv_append_reference, logical_view,
                                   storage_shape)

from conftest import rel_err

needs_triton = pytest.mark.skipif(A.unsupported_reason(torch.empty(1, 1, 64, dtype=torch.float16)) is not None,
                                  reason="Triton kernels need CUDA or TRITON_INTERPRET=1")
BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]


@pytest.mark.parametrize("layout,shape", [("BHSD", (2, 3, 5, 8)), ("BSHD", (2, 5, 3, 8)), ("HBSD", (3, 2, 5, 8))])
def test_storage_shape_and_logical_view(layout, shape):
    assert storage_shape(layout, 2, 3, 5, 8) == shape
    storage = torch.arange(2 * 3 * 5 * 8).view(shape)
    view = logical_view(storage, layout)
    assert view.shape == (2, 3, 5, 8)
    assert view.data_ptr() == storage.data_ptr()  # a view, no copy
    # element (b, h, s, d) of the view is the storage element at the layout's index order
    idx = {"BHSD": (1, 2, 4, 7), "BSHD": (1, 4, 2, 7), "HBSD": (2, 1, 4, 7)}[layout]
    assert view[1, 2, 4, 7] == storage[idx]


def _expected_cache(prefill_k, counts, steps_k, capacity):
    """Logical [B, H, capacity, D] contents after a ragged prefill then per-token steps (NaN = never written)."""
    B, H, _, D = prefill_k.shape
    exp = torch.full((B, H, capacity, D), float("nan"), dtype=prefill_k.dtype)
    for b, n in enumerate(counts):
        exp[b, :, :n] = prefill_k[b, :, :n]
        for i, step in enumerate(steps_k):
            exp[b, :, n + i] = step[b, :, 0]
    return exp


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_append_ragged_prefill_then_tokens(layout, backend, gen):
    B, H, D, cap, T = 3, 2, 64, 40, 17
    cache = KVCache(B, H, D, cap, layout=layout, dtype=torch.float16)
    cache.k_storage.fill_(float("nan"))  # anything not written stays NaN: stray or missing writes show
    cache.v_storage.fill_(float("nan"))
    k = torch.randn(B, H, T, D, generator=gen).half()
    v = torch.randn(B, H, T, D, generator=gen).half()
    counts = [17, 5, 0]
    cache.append(k, v, num_new=counts, backend=backend)
    steps_k, steps_v = [], []
    for _ in range(3):
        # per-token K/V arrive as slices of a wider projection output: non-contiguous
        kt = torch.randn(B, 1, H, 2 * D, generator=gen).half()[..., :D].transpose(1, 2)
        vt = torch.randn(B, 1, H, 2 * D, generator=gen).half()[..., D:].transpose(1, 2)
        cache.append(kt, vt, backend=backend)
        steps_k.append(kt)
        steps_v.append(vt)
    assert cache.lengths == [20, 8, 3]
    assert cache.seq_lens.tolist() == [20, 8, 3]
    torch.testing.assert_close(cache.keys(), _expected_cache(k, counts, steps_k, cap), rtol=0, atol=0,
                               equal_nan=True)
    torch.testing.assert_close(cache.values(), _expected_cache(v, counts, steps_v, cap), rtol=0, atol=0,
                               equal_nan=True)


@needs_triton
@pytest.mark.parametrize("layout", LAYOUTS)
def test_triton_append_equals_reference(layout, gen):
    """kv_append on both paths from the same state: identical bytes, including the capacity clamp."""
    B, H, D, cap, T = 2, 3, 64, 24, 9
    k_new = torch.randn(B, H, T, D, generator=gen).half()
    v_new = torch.randn(B, H, T, D, generator=gen).half()
    seq_lens = torch.tensor([4, 20], dtype=torch.int32)   # the second one runs past the capacity: clamped
    num_new = torch.tensor([9, 7], dtype=torch.int32)
    results = []
    for backend in ("torch", "triton"):
        ks = torch.full(storage_shape(layout, B, H, cap, D), float("nan"), dtype=torch.float16)
        vs = torch.full_like(ks, float("nan"))
        kv_append(logical_view(ks, layout), logical_view(vs, layout), k_new, v_new, seq_lens, num_new,
                  backend=backend)
        results.append((ks, vs))
    for a, b in zip(results[0], results[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    written = logical_view(results[1][0], layout)
    assert torch.equal(written[0, :, 4:13], k_new[0])
    assert torch.equal(written[1, :, 20:24], k_new[1, :, :4])
    assert torch.isnan(written[0, :, 13:]).all() and torch.isnan(written[1, :, :20]).all()


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_through_every_layout(dtype, gen):
    """Same contents in three layouts: the decode kernel gives bit-identical outputs, matching fp64."""
    B, Hq, H, D, cap = 3, 6, 2, 64, 70
    lengths = [1, 17, 65]
    T = max(lengths)
    k = torch.randn(B, H, T, D, generator=gen).to(dtype)
    v = torch.randn(B, H, T, D, generator=gen).to(dtype)
    q = torch.randn(B, Hq, D, generator=gen).to(dtype)
    outs = []
    for layout in LAYOUTS:
        cache = KVCache(B, H, D, cap, layout=layout, dtype=dtype)
        cache.append(k, v, num_new=lengths)
        outs.append(cache.attend(q, num_splits=3))
    ref = A.decode_attention_reference(q.double(), k.double(), v.double(), torch.tensor(lengths))
    tol = {torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    assert rel_err(outs[0], ref) < tol
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@needs_triton
@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunked_prefill_through_the_cache(layout, gen):
    """Two prefill chunks (17 then 16 tokens) through the cache equal one causal pass over all 33 tokens."""
    B, Hq, H, D, T = 2, 4, 2, 64, 33
    q = torch.randn(B, Hq, T, D, generator=gen).half()
    k = torch.randn(B, H, T, D, generator=gen).half()
    v = torch.randn(B, H, T, D, generator=gen).half()
    cache = KVCache(B, H, D, 40, layout=layout, dtype=torch.float16)
    cache.append(k[:, :, :17], v[:, :, :17])
    first = cache.attend_prefill(q[:, :, :17])
    cache.append(k[:, :, 17:], v[:, :, 17:])
    second = cache.attend_prefill(q[:, :, 17:])
    ref = A.attention_reference(q.double(), k.double(), v.double(), causal=True)
    assert rel_err(torch.cat([first, second], dim=2), ref) < 1e-3


def test_attend_prefill_needs_equal_lengths(gen):
    cache = KVCache(2, 1, 64, 8, dtype=torch.float16)
    with pytest.raises(ValueError, match="nothing cached"):
        cache.attend_prefill(torch.randn(2, 1, 1, 64).half())
    cache.append(torch.randn(2, 1, 3, 64).half(), torch.randn(2, 1, 3, 64).half(), num_new=[3, 2])
    with pytest.raises(ValueError, match="equal lengths"):
        cache.attend_prefill(torch.randn(2, 1, 1, 64).half())


def test_attend_torch_path(gen):
    cache = KVCache(2, 1, 64, 16, layout="BSHD", dtype=torch.float32)
    k = torch.randn(2, 1, 9, 64, generator=gen)
    cache.append(k, k * 2, num_new=[9, 4])
    q = torch.randn(2, 3, 64, generator=gen)
    dispatch.reset()
    out = cache.attend(q, backend="torch")
    assert dispatch.counts() == {("decode_attention", "torch"): 1}
    ref = A.decode_attention_reference(q.double(), k.double(), 2 * k.double(), torch.tensor([9, 4]))
    assert rel_err(out, ref) < 1e-6


def test_reset_and_nbytes():
    cache = KVCache(2, 4, 64, 32, layout="HBSD", dtype=torch.bfloat16)
    assert cache.nbytes == 2 * 2 * 4 * 64 * 32 * 2
    cache.reset([3, 32])
    assert cache.lengths == [3, 32] and cache.seq_lens.tolist() == [3, 32]
    with pytest.raises(ValueError, match="lengths"):
        cache.reset([3, 33])


@pytest.mark.parametrize("call,exc,msg", [
    (lambda c, k: c.append(k, k, num_new=[5, 6]), ValueError, "num_new"),
    (lambda c, k: c.append(k[:, :1], k[:, :1]), ValueError, "k: expected shape"),
    (lambda c, k: c.append(k, k, num_new=[5]), ValueError, "num_new"),
    (lambda c, k: (c.append(k, k), c.append(k, k), c.append(k, k), c.append(k, k)), ValueError, "overflows"),
    (lambda c, k: c.append(k, k.float()), TypeError, "dtype"),
    (lambda c, k: c.append(k, k, backend="cuda"), ValueError, "backend"),
])
def test_append_bad_input(call, exc, msg, gen):
    cache = KVCache(2, 2, 64, 16, dtype=torch.float16)
    k = torch.randn(2, 2, 5, 64, generator=gen).half()
    with pytest.raises(exc, match=msg):
        call(cache, k)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(layout="BDHS"), "layout"),
    (dict(max_seq_len=0), "max_seq_len"),
    (dict(dtype=torch.int8), "dtype"),
])
def test_cache_bad_construction(kwargs, msg):
    args = dict(batch_size=1, num_kv_heads=1, head_dim=64, max_seq_len=8)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=msg):
        KVCache(**args)


def test_reference_append_drops_past_capacity(gen):
    kc = torch.zeros(1, 1, 4, 8)
    new = torch.randn(1, 1, 3, 8, generator=gen)
    kv_append_reference(kc, kc.clone(), new, new, torch.tensor([2]))
    assert torch.equal(kc[0, 0, 2:], new[0, 0, :2])


# ----------------------------------------------------------------- latent (MLA) cache

@pytest.mark.parametrize("backend", BACKENDS)
def test_latent_cache_append_then_attend(backend, gen):
    """Ragged prefill then two token steps into an MLA cache; contents exact, attention equal to fp64."""
    B, H, R, P, cap = 3, 5, 64, 16, 40
    cache = LatentKVCache(B, R, P, cap, dtype=torch.float16)
    cache.storage.fill_(float("nan"))
    ckv = torch.randn(B, 17, R, generator=gen).half()
    kpe = torch.randn(B, 17, P, generator=gen).half()
    cache.append(ckv, kpe, num_new=[17, 4, 1], backend=backend)
    steps = []
    for _ in range(2):
        row = torch.randn(B, 1, R + P, generator=gen).half()   # one projection output, split by views
        cache.append(row[..., :R], row[..., R:], backend=backend)
        steps.append(row[:, 0])
    assert cache.lengths == [19, 6, 3] == cache.seq_lens.tolist()
    for b, n in enumerate([17, 4, 1]):
        assert torch.equal(cache.latents()[b, :n], ckv[b, :n]) and torch.equal(cache.rope_keys()[b, :n], kpe[b, :n])
        for i, row in enumerate(steps):
            assert torch.equal(cache.storage[b, n + i], row[b])
        assert torch.isnan(cache.storage[b, n + 2:]).all()
    if backend == "torch":
        return  # contents checked; attention through the cache is the Triton case's
    q_nope = torch.randn(B, H, R, generator=gen).half()
    q_rope = torch.randn(B, H, P, generator=gen).half()
    out = cache.attend(q_nope, q_rope, sm_scale=0.1, num_splits=2, backend="triton")
    ref = A.mla_decode_reference(q_nope.double(), q_rope.double(), cache.latents().double(),
                                 cache.rope_keys().double(), cache.seq_lens, 0.1)
    assert rel_err(out, ref) < 1e-3


def test_latent_cache_bad_input(gen):
    cache = LatentKVCache(2, 64, 16, 8, dtype=torch.float16)
    with pytest.raises(ValueError, match="ckv: expected shape"):
        cache.append(torch.randn(2, 3, 32).half(), torch.randn(2, 3, 16).half())
    with pytest.raises(ValueError, match="kpe: expected 3 tokens"):
        cache.append(torch.randn(2, 3, 64).half(), torch.randn(2, 2, 16).half())
    with pytest.raises(ValueError, match="overflows"):
        cache.append(torch.randn(2, 9, 64).half(), torch.randn(2, 9, 16).half())
    with pytest.raises(ValueError, match="kv_lora_rank"):
        LatentKVCache(2, 0, 16, 8)


# ----------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gpu_prefill_decode_loop(layout):
    """A 4-sequence cache: ragged prefill of up to 3000 tokens, 50 decode steps, attention checked each 10."""
    B, Hq, H, D, cap = 4, 20, 2, 128, 4096
    gen = torch.Generator(device="cuda").manual_seed(11)
    cache = KVCache(B, H, D, cap, layout=layout, dtype=torch.float16, device="cuda")
    lengths = [3000, 1, 1234, 2049]
    k = torch.randn(B, H, 3000, D, device="cuda", generator=gen).half()
    v = torch.randn(B, H, 3000, D, device="cuda", generator=gen).half()
    cache.append(k, v, num_new=lengths)
    for step in range(50):
        kt = torch.randn(B, H, 1, D, device="cuda", generator=gen).half()
        cache.append(kt, torch.randn_like(kt))
        if step % 10 == 9:
            q = torch.randn(B, Hq, D, device="cuda", generator=gen).half()
            out = cache.attend(q)
            ref = A.decode_attention_reference(q.float(), cache.keys().float(), cache.values().float(),
                                               cache.seq_lens)
            assert rel_err(out, ref) < 1e-3
    assert cache.seq_lens.tolist() == [n + 50 for n in lengths] == cache.lengths


@pytest.mark.gpu
def test_gpu_latent_cache_glm47_widths():
    """GLM-4.7-Flash MLA cache (512 + 64 per token): ragged prefill, 20 decode steps, attention at the end."""
    B, H, R, P, cap = 4, 20, 512, 64, 6000
    gen = torch.Generator(device="cuda").manual_seed(12)
    cache = LatentKVCache(B, R, P, cap, dtype=torch.bfloat16, device="cuda")
    lengths = [5000, 3, 777, 4096]
    rows = torch.randn(B, 5000, R + P, device="cuda", generator=gen).bfloat16()
    cache.append(rows[..., :R], rows[..., R:], num_new=lengths)
    for _ in range(20):
        row = torch.randn(B, 1, R + P, device="cuda", generator=gen).bfloat16()
        cache.append(row[..., :R], row[..., R:])
    assert cache.seq_lens.tolist() == [n + 20 for n in lengths] == cache.lengths
    q_nope = torch.randn(B, H, R, device="cuda", generator=gen).bfloat16()
    q_rope = torch.randn(B, H, P, device="cuda", generator=gen).bfloat16()
    out = cache.attend(q_nope, q_rope, sm_scale=256 ** -0.5)
    ref = A.mla_decode_reference(q_nope.float(), q_rope.float(), cache.latents().float(), cache.rope_keys().float(),
                                 cache.seq_lens, 256 ** -0.5)
    assert rel_err(out, ref) < 6e-3
