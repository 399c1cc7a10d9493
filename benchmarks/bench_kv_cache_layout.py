#!/usr/bin/env python
"""KV cache memory layouts (BHSD, BSHD, HBSD): append cost and decode-attention time per layout.

Per layout, batch size and head configuration, on the same K/V contents:
  * prefill append: the Triton append kernel writing T new tokens per sequence (GB/s of bytes read + written
    against the measured copy bandwidth);
  * token append: one new token per sequence (GPU time by CUDA-graph replay), and a whole
    KVCache.append call with its length bookkeeping (launch-inclusive: what a decode loop pays per step);
  * decode attention: our split-K decode kernel reading the cache through the layout's strides (GPU time,
    GB/s of K/V bytes read).
Layout only changes strides: the same kernels run in all three, so differences are memory-access effects.
"""
from __future__ import annotations

import torch

from triton_marlin.bench import BenchRunner, load_baseline, time_fn
from triton_marlin.kernels.attention import HEAD_CONFIGS, decode_attention_triton, decode_bytes, path_label
from triton_marlin.kvcache import LAYOUTS, KVCache, kv_append_triton

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
SMOKE_HEADS = {"smoke-gqa": {"num_heads": 4, "num_kv_heads": 2, "head_dim": 64}}
ALL_HEADS = {**HEAD_CONFIGS, **SMOKE_HEADS}


def _add_args(p):
    p.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    p.add_argument("--heads", nargs="+", choices=sorted(ALL_HEADS), default=None,
                   help="head configurations (default glm47-flash-gqa-standin and llama3-8b on GPU, smoke-gqa "
                        "elsewhere)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 16 64 on GPU)")
    p.add_argument("--context", type=int, default=None, help="cached tokens per sequence at decode (default 4096)")
    p.add_argument("--warm-cache", action="store_true",
                   help="GPU timings: back-to-back calls instead of one call after an L2 flush")
    p.add_argument("--prefill", type=int, default=None, help="tokens per sequence of the prefill append "
                                                             "(default 2048)")


def main(argv=None):
    runner = BenchRunner("bench_kv_cache_layout", description=__doc__, add_args=_add_args, argv=argv)
    a = runner.args
    dev = a.device
    gpu = dev.type == "cuda"
    path = path_label(dev)
    if path is None:
        runner.note(f"the Triton append and decode kernels cannot run on {dev} (CUDA, or CPU with "
                    f"TRITON_INTERPRET=1): nothing measured")
        runner.finish()
        return
    if path == "triton-interpreter":
        runner.note("kernels run through the CPU interpreter here: the times say nothing about the layouts")
    heads = a.heads or (["glm47-flash-gqa-standin", "llama3-8b"] if gpu else list(SMOKE_HEADS))
    batches = a.batches or (([1, 16] if a.quick else [1, 16, 64]) if gpu else [2])
    ctx = a.context or (4096 if gpu else 48)
    prefill = a.prefill or (2048 if gpu else 32)
    if prefill > ctx:
        runner.parser.error(f"--prefill ({prefill}) must not exceed --context ({ctx})")
    dtype = DTYPES[a.dtype]
    copy_gbps = load_baseline(dev)["copy_GBps"]
    # GPU time of one call after an L2 flush (a decode step meets each layer's cache cold), by graph replay
    timing = {"cuda_graph": True, **({} if a.warm_cache else {"graph_calls": 1, "flush_cache": True})} if gpu else {}
    steps = a.warmup + a.repeats + 8          # appends one timed KVCache.append loop makes
    cases = [(h, B, layout) for h in heads for B in batches for layout in a.layouts]
    for h, B, layout in runner.progress(cases, desc="layouts"):
        cfg = ALL_HEADS[h]
        Hq, Hkv, D = cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]
        el = torch.tensor([], dtype=dtype).element_size()
        gen = torch.Generator(device=dev).manual_seed(a.seed)
        cache = KVCache(B, Hkv, D, ctx + steps, layout=layout, dtype=dtype, device=dev)
        base_case = {"heads": h, "B": B, "layout": layout, "dtype": a.dtype,
                     "l2": "flushed" if gpu and not a.warm_cache else "warm"}

        # prefill append of `prefill` tokens at position 0
        k_new = torch.randn(B, Hkv, prefill, D, device=dev, dtype=dtype, generator=gen)
        v_new = torch.randn(B, Hkv, prefill, D, device=dev, dtype=dtype, generator=gen)
        zeros = torch.zeros(B, dtype=torch.int32, device=dev)
        st = time_fn(lambda: kv_append_triton(cache.keys(), cache.values(), k_new, v_new, zeros),
                     device=dev, warmup=a.warmup, repeats=a.repeats, **timing)
        case = {**base_case, "op": "prefill_append", "tokens": prefill}
        runner.record(case, "time_graph" if gpu else "time", st.median_us, "us", stats=st)
        gbps = 2 * 2 * B * Hkv * prefill * D * el / (st.median_us * 1e-6) / 1e9  # K and V, read + write
        runner.record(case, "bandwidth", gbps, "GB/s", roofline=gbps / copy_gbps)

        # fill the context, then one-token appends at position ctx
        for start in range(0, ctx, prefill):
            n = min(prefill, ctx - start)
            cache.append(k_new[:, :, :n], v_new[:, :, :n])
        k_tok = torch.randn(B, Hkv, 1, D, device=dev, dtype=dtype, generator=gen)
        v_tok = torch.randn(B, Hkv, 1, D, device=dev, dtype=dtype, generator=gen)
        at_ctx = cache.seq_lens.clone()
        st = time_fn(lambda: kv_append_triton(cache.keys(), cache.values(), k_tok, v_tok, at_ctx),
                     device=dev, warmup=a.warmup, repeats=a.repeats, **timing)
        case = {**base_case, "op": "token_append", "tokens": 1}
        runner.record(case, "time_graph" if gpu else "time", st.median_us, "us", stats=st)

        # decode attention over ctx tokens (before the appends below move the lengths)
        q = torch.randn(B, Hq, D, device=dev, dtype=dtype, generator=gen)
        out = torch.empty_like(q)
        keys, values, seq_lens = cache.keys(), cache.values(), cache.seq_lens.clone()
        st = time_fn(lambda: decode_attention_triton(q, keys, values, seq_lens, max_seq_len=ctx, out=out),
                     device=dev, warmup=a.warmup, repeats=a.repeats, **timing)
        case = {**base_case, "op": "decode_attention", "tokens": ctx}
        runner.record(case, "time_graph" if gpu else "time", st.median_us, "us", stats=st)
        gbps = decode_bytes([ctx] * B, Hq, Hkv, D, el) / (st.median_us * 1e-6) / 1e9
        runner.record(case, "bandwidth", gbps, "GB/s", roofline=gbps / copy_gbps)

        # what a decode loop pays per step for the append: KVCache.append from Python, lengths included
        st = time_fn(lambda: cache.append(k_tok, v_tok), device=dev, warmup=a.warmup, repeats=a.repeats)
        case = {**base_case, "op": "cache_append_call", "tokens": 1, "l2": "warm"}
        runner.record(case, "time_with_launch", st.median_us, "us", stats=st)
        del cache, k_new, v_new, q, out, keys, values
    runner.finish()


if __name__ == "__main__":
    main()
