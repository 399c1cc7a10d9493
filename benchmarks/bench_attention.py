#!/usr/bin/env python
"""Attention: our Triton kernels against torch scaled_dot_product_attention on the same inputs.

Prefill (our FlashAttention-2-style kernel vs SDPA, causal and not): time, TFLOP/s of the useful work (only
the (query, key) pairs the mask lets through) against the measured dense matmul rate, and the relative
difference of the two outputs. A fixed number of tokens per case (batch = tokens // seq_len).

Decode (our split-K kernel over a KV cache vs SDPA with one query token): GPU time by CUDA-graph replay of one
call after an L2 flush (each layer's K/V comes from HBM in a real step; --warm-cache times back-to-back calls
instead) and launch-inclusive time, GB/s of K/V bytes that must be read against the measured copy bandwidth. A
"varlen" case draws each sequence's length uniformly in [1, context]; SDPA then needs a mask.

Head configurations (--heads): HEAD_CONFIGS and MLA_CONFIGS in triton_marlin/kernels/attention.py. GLM-4.7-Flash
uses MLA: its prefill is measured exactly (glm47-flash-mla-prefill: 20 heads of 256), its decode both by our
absorbed-MLA kernel (glm47-flash-mla: 512-wide latent + 64-wide rope rows, against SDPA as MQA over the same
rows) and by a GQA stand-in with the same 20 query heads and a similar cache size per token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from triton_marlin.bench import BenchRunner, load_baseline, time_fn
from triton_marlin.kernels.attention import (HEAD_CONFIGS, MLA_CONFIGS, attention_flops, decode_attention_triton,
                                             decode_bytes, flash_attention_triton, mla_decode_attention_triton,
                                             mla_decode_bytes, path_label)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# Off the GPU (smoke runs; under TRITON_INTERPRET=1 every kernel program is interpreted in Python) only this
# small GQA configuration is run unless --heads says otherwise.
SMOKE_HEADS = {"smoke-gqa": {"num_heads": 4, "num_kv_heads": 2, "head_dim": 64}}
ALL_HEADS = {**HEAD_CONFIGS, **SMOKE_HEADS}
SMOKE_MLA = {"smoke-mla": {"num_heads": 4, "kv_lora_rank": 64, "rope_dim": 16, "sm_scale": 0.125}}
ALL_MLA = {**MLA_CONFIGS, **SMOKE_MLA}
DECODE_SKIP = {"glm47-flash-mla-prefill"}


def _add_args(p):
    p.add_argument("--heads", nargs="+", choices=sorted(ALL_HEADS) + sorted(ALL_MLA), default=None,
                   help="head configurations (default on GPU: all of HEAD_CONFIGS and MLA_CONFIGS; decode skips "
                        "glm47-flash-mla-prefill, whose per-head 256-d cache no MLA decode reads, and MLA "
                        "configs are decode-only; smoke-gqa and smoke-mla elsewhere)")
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["float16"])
    p.add_argument("--part", choices=["prefill", "decode", "both"], default="both")
    p.add_argument("--seq-lens", type=int, nargs="+", default=None,
                   help="prefill sequence lengths (default 512 1024 2048 4096 8192 on GPU)")
    p.add_argument("--tokens", type=int, default=16384, help="prefill tokens per case: batch = tokens // seq_len")
    p.add_argument("--contexts", type=int, nargs="+", default=None,
                   help="decode context lengths (default 1024 4096 16384 on GPU)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="decode batch sizes (default 1 8 32)")
    p.add_argument("--warm-cache", action="store_true",
                   help="decode: time back-to-back calls on the same K/V (L2-resident when small) instead of one "
                        "call after flushing the cache")


def _sdpa(q, k, v, causal, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                          enable_gqa=k.shape[1] != q.shape[1])


def _decode_timing(args, graph: bool) -> dict:
    """Decode reads each layer's K/V once per step, from HBM: by default each sample replays one call
    after a cache flush, so small caches are not served from L2 by the previous call."""
    if not graph or args.warm_cache:
        return {}
    return {"graph_calls": 1, "flush_cache": True}


def _rel_diff(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def run_prefill(runner, heads, dtype_name, seq_lens, tokens, path, base):
    a, dev = runner.args, runner.args.device
    dtype = DTYPES[dtype_name]
    cfg = ALL_HEADS[heads]
    Hq, Hkv, D = cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]
    peak = base["matmul_TFLOPs"].get(dtype_name)
    for S in seq_lens:
        B = max(1, tokens // S)
        q = torch.randn(B, Hq, S, D, device=dev, dtype=dtype)
        k = torch.randn(B, Hkv, S, D, device=dev, dtype=dtype)
        v = torch.randn(B, Hkv, S, D, device=dev, dtype=dtype)
        out = torch.empty_like(q)
        for causal in (True, False):
            flops = attention_flops(B, Hq, S, S, D, causal)
            impls = {"sdpa": lambda: _sdpa(q, k, v, causal)}
            if path is not None:
                impls[path] = lambda: flash_attention_triton(q, k, v, causal, out=out)
            times = {}
            for name, fn in impls.items():
                st = time_fn(fn, device=dev, warmup=a.warmup, repeats=a.repeats)
                times[name] = st.median_us
                case = {"part": "prefill", "heads": heads, "impl": name, "B": B, "S": S, "causal": causal,
                        "dtype": dtype_name}
                runner.record(case, "time", st.median_us, "us", stats=st)
                tflops = flops / (st.median_us * 1e-6) / 1e12
                runner.record(case, "rate", tflops, "TFLOP/s", roofline=tflops / peak if peak else None)
            if path is not None:
                case = {"part": "prefill", "heads": heads, "impl": path, "B": B, "S": S, "causal": causal,
                        "dtype": dtype_name}
                runner.record(case, "speedup_vs_sdpa", times["sdpa"] / times[path], "x")
                runner.record(case, "rel_diff_vs_sdpa", _rel_diff(impls[path](), _sdpa(q, k, v, causal)), "1")
        del q, k, v, out


class _GqaDecode:
    """Inputs of one GQA decode case: q [B, Hq, D], K/V caches [B, Hkv, ctx, D]."""

    def __init__(self, cfg, B, ctx, dev, dtype):
        self.cfg = cfg
        Hq, Hkv, D = cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]
        self.k = torch.randn(B, Hkv, ctx, D, device=dev, dtype=dtype)
        self.v = torch.randn(B, Hkv, ctx, D, device=dev, dtype=dtype)
        self.q = torch.randn(B, Hq, D, device=dev, dtype=dtype)
        self.out = torch.empty_like(self.q)

    def nbytes(self, lengths):
        c = self.cfg
        return decode_bytes(lengths, c["num_heads"], c["num_kv_heads"], c["head_dim"], self.q.element_size())

    def ours(self, seq_lens, max_len):
        return lambda: decode_attention_triton(self.q, self.k, self.v, seq_lens, max_seq_len=max_len, out=self.out)

    def sdpa(self, mask):
        q4 = self.q[:, :, None, :]
        return lambda: _sdpa(q4, self.k, self.v, False, mask)[:, :, 0]


class _MlaDecode:
    """Inputs of one absorbed-MLA decode case: one [B, ctx, R + P] cache ([latent | rope] per token)."""

    def __init__(self, cfg, B, ctx, dev, dtype):
        self.cfg = cfg
        H, R, P = cfg["num_heads"], cfg["kv_lora_rank"], cfg["rope_dim"]
        self.cache = torch.randn(B, ctx, R + P, device=dev, dtype=dtype)
        self.q = torch.randn(B, H, R + P, device=dev, dtype=dtype)
        self.out = torch.empty(B, H, R, device=dev, dtype=dtype)

    def nbytes(self, lengths):
        c = self.cfg
        return mla_decode_bytes(lengths, c["num_heads"], c["kv_lora_rank"], c["rope_dim"], self.q.element_size())

    def ours(self, seq_lens, max_len):
        R = self.cfg["kv_lora_rank"]
        q_nope, q_rope, ckv, kpe = self.q[..., :R], self.q[..., R:], self.cache[..., :R], self.cache[..., R:]
        return lambda: mla_decode_attention_triton(q_nope, q_rope, ckv, kpe, seq_lens, self.cfg["sm_scale"],
                                                   max_seq_len=max_len, out=self.out)

    def sdpa(self, mask):
        # MQA over the shared cache rows: keys [latent | rope] (576 wide for GLM), values the latent (512)
        R = self.cfg["kv_lora_rank"]
        q4, k, v = self.q[:, :, None, :], self.cache[:, None], self.cache[:, None, :, :R]
        return lambda: F.scaled_dot_product_attention(q4, k, v, attn_mask=mask, scale=self.cfg["sm_scale"],
                                                      enable_gqa=True)[:, :, 0]


def run_decode(runner, heads, dtype_name, contexts, batches, path, base):
    a, dev = runner.args, runner.args.device
    dtype = DTYPES[dtype_name]
    make = _MlaDecode if heads in ALL_MLA else _GqaDecode
    cfg = ALL_MLA.get(heads) or ALL_HEADS[heads]
    graph = dev.type == "cuda"
    gen = torch.Generator().manual_seed(a.seed)
    for ctx in contexts:
        for B in batches:
            inputs = make(cfg, B, ctx, dev, dtype)
            for lengths_kind in ("uniform", "varlen"):
                if lengths_kind == "uniform":
                    lengths = [ctx] * B
                    mask = None
                else:
                    if B == 1:
                        continue
                    lengths = torch.randint(1, ctx + 1, (B,), generator=gen).tolist()
                    pos = torch.arange(ctx, device=dev)
                    mask = (pos[None, :] < torch.tensor(lengths, device=dev)[:, None])[:, None, None, :]
                seq_lens = torch.tensor(lengths, dtype=torch.int32, device=dev)
                nbytes = inputs.nbytes(lengths)
                impls = {"sdpa": inputs.sdpa(mask)}
                if path is not None:
                    impls[path] = inputs.ours(seq_lens, max(lengths))
                gpu_times = {}
                for name, fn in impls.items():
                    case = {"part": "decode", "heads": heads, "impl": name, "B": B, "context": ctx,
                            "lengths": lengths_kind, "dtype": dtype_name,
                            "l2": "flushed" if _decode_timing(a, graph) else "warm"}
                    st = time_fn(fn, device=dev, warmup=a.warmup, repeats=a.repeats, cuda_graph=graph,
                                 **_decode_timing(a, graph))
                    gpu_times[name] = st.median_us
                    runner.record(case, "time_graph" if graph else "time", st.median_us, "us", stats=st)
                    gbps = nbytes / (st.median_us * 1e-6) / 1e9
                    runner.record(case, "bandwidth", gbps, "GB/s", roofline=gbps / base["copy_GBps"])
                    if graph:
                        st = time_fn(fn, device=dev, warmup=a.warmup, repeats=a.repeats)
                        runner.record(case, "time_with_launch", st.median_us, "us", stats=st)
                if path is not None:
                    case = {"part": "decode", "heads": heads, "impl": path, "B": B, "context": ctx,
                            "lengths": lengths_kind, "dtype": dtype_name}
                    runner.record(case, "speedup_vs_sdpa", gpu_times["sdpa"] / gpu_times[path], "x")
                    runner.record(case, "rel_diff_vs_sdpa", _rel_diff(impls[path](), impls["sdpa"]()), "1")
            del inputs


def main(argv=None):
    runner = BenchRunner("bench_attention", description=__doc__, add_args=_add_args, argv=argv)
    a = runner.args
    dev = a.device
    path = path_label(dev)
    if path is None:
        runner.note(f"our Triton kernels cannot run on {dev} (CUDA, or CPU with TRITON_INTERPRET=1): only torch "
                    f"SDPA is measured")
    elif path == "triton-interpreter":
        runner.note("Triton kernels run through the CPU interpreter here: their times say nothing about "
                    "kernel speed")
    gpu = dev.type == "cuda"
    heads = a.heads or (sorted(HEAD_CONFIGS) + sorted(MLA_CONFIGS) if gpu else list(SMOKE_HEADS) + list(SMOKE_MLA))
    if a.quick:
        seq_lens, contexts, batches = [1024] if gpu else [33], [4096] if gpu else [48], [1, 8] if gpu else [1, 3]
    else:
        seq_lens = [512, 1024, 2048, 4096, 8192] if gpu else [64, 128]
        contexts = [1024, 4096, 16384] if gpu else [128, 512]
        batches = [1, 8, 32] if gpu else [1, 4]
    seq_lens, contexts, batches = a.seq_lens or seq_lens, a.contexts or contexts, a.batches or batches
    tokens = a.tokens if gpu or a.seq_lens else max(seq_lens)
    base = load_baseline(dev)
    for h in runner.progress(heads, desc="heads"):
        for dtype_name in a.dtypes:
            if a.part in ("prefill", "both") and h not in ALL_MLA:
                run_prefill(runner, h, dtype_name, seq_lens, tokens, path, base)
            if a.part in ("decode", "both") and (a.heads or h not in DECODE_SKIP):
                run_decode(runner, h, dtype_name, contexts, batches, path, base)
    runner.finish()


if __name__ == "__main__":
    main()
