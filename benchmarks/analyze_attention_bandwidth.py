#!/usr/bin/env python
"""Decode attention as a memory-bound op: bytes of K/V that one step must read vs the bandwidth achieved.

For each (context length, batch size): the bytes a decode step cannot avoid (K and V of every cached token,
plus q and the output), the floor time those bytes take at the measured copy bandwidth, the measured GPU time
of our split-K decode kernel (CUDA-graph replay of one call after an L2 flush: in a real step each layer's
K/V comes from HBM; --warm-cache times back-to-back calls instead), the achieved GB/s and its fraction of the copy bandwidth,
and the number of split-K chunks used. Short contexts are dominated by fixed costs (two kernel launches inside
the graph, the merge); the fraction should climb with context and batch. --plot writes GB/s against context.
"""
from __future__ import annotations

import torch

from triton_marlin.bench import BenchRunner, load_baseline, plot_lines, time_fn
from triton_marlin.kernels.attention import (HEAD_CONFIGS, choose_num_splits, decode_attention_triton, decode_bytes,
                                             default_decode_config, path_label, split_plan)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
SMOKE_HEADS = {"smoke-gqa": {"num_heads": 4, "num_kv_heads": 2, "head_dim": 64}}
ALL_HEADS = {**HEAD_CONFIGS, **SMOKE_HEADS}


def _add_args(p):
    p.add_argument("--heads", choices=sorted(ALL_HEADS), default=None,
                   help="head configuration (default glm47-flash-gqa-standin on GPU, smoke-gqa elsewhere)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    p.add_argument("--contexts", type=int, nargs="+", default=None,
                   help="context lengths (default 256 512 ... 32768 on GPU)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 4 16 64 on GPU)")
    p.add_argument("--warm-cache", action="store_true",
                   help="time back-to-back calls on the same K/V (L2-resident when small) instead of one call after "
                        "flushing the cache")
    p.add_argument("--splits", type=int, nargs="+", default=[0],
                   help="split-K chunk counts to time per case (0 = the kernel's own choice); a sweep shows "
                        "the parallelism vs merge-cost trade-off")
    p.add_argument("--plot", default=None, metavar="PNG", help="write achieved GB/s against context length here")


def main(argv=None):
    runner = BenchRunner("analyze_attention_bandwidth", description=__doc__, add_args=_add_args, argv=argv)
    a = runner.args
    dev = a.device
    gpu = dev.type == "cuda"
    path = path_label(dev)
    if path is None:
        runner.note(f"our Triton decode kernel cannot run on {dev} (CUDA, or CPU with TRITON_INTERPRET=1): "
                    f"nothing to measure; the byte counts are still recorded")
    elif path == "triton-interpreter":
        runner.note("the decode kernel runs through the CPU interpreter here: the GB/s say nothing about the kernel")
    heads = a.heads or ("glm47-flash-gqa-standin" if gpu else "smoke-gqa")
    cfg = ALL_HEADS[heads]
    Hq, Hkv, D = cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]
    if a.quick:
        contexts, batches = ([1024, 8192] if gpu else [48]), ([1, 16] if gpu else [2])
    else:
        contexts = [256 << i for i in range(8)] if gpu else [64, 256]
        batches = [1, 4, 16, 64] if gpu else [1, 4]
    contexts, batches = a.contexts or contexts, a.batches or batches
    dtype = DTYPES[a.dtype]
    base = load_baseline(dev)
    copy_gbps = base["copy_GBps"]
    block_n = default_decode_config(D, dev).block_n
    if any(s < 0 for s in a.splits):
        runner.parser.error(f"--splits: expected counts >= 0, got {a.splits}")
    cases = [(ctx, B, s) for ctx in contexts for B in batches for s in a.splits]
    for ctx, B, want_splits in runner.progress(cases, desc="decode bandwidth"):
        lengths = [ctx] * B
        nbytes = decode_bytes(lengths, Hq, Hkv, D, torch.tensor([], dtype=dtype).element_size())
        _, splits = split_plan(ctx, want_splits or choose_num_splits(B, Hkv, ctx, block_n, dev), block_n)
        case = {"heads": heads, "context": ctx, "B": B, "dtype": a.dtype, "splits": splits,
                "split_choice": "auto" if want_splits == 0 else "forced",
                "l2": "flushed" if gpu and not a.warm_cache else "warm"}
        runner.record(case, "bytes", nbytes, "B")
        runner.record(case, "floor_time", nbytes / (copy_gbps * 1e9) * 1e6, "us")
        if path is None:
            continue
        k = torch.randn(B, Hkv, ctx, D, device=dev, dtype=dtype)
        v = torch.randn(B, Hkv, ctx, D, device=dev, dtype=dtype)
        q = torch.randn(B, Hq, D, device=dev, dtype=dtype)
        out = torch.empty_like(q)
        seq_lens = torch.full((B,), ctx, dtype=torch.int32, device=dev)
        st = time_fn(lambda: decode_attention_triton(q, k, v, seq_lens, max_seq_len=ctx, num_splits=splits, out=out),
                     device=dev, warmup=a.warmup, repeats=a.repeats, cuda_graph=gpu,
                     **({"graph_calls": 1, "flush_cache": True} if gpu and not a.warm_cache else {}))
        gbps = nbytes / (st.median_us * 1e-6) / 1e9
        runner.record(case, "time_graph" if gpu else "time", st.median_us, "us", stats=st)
        runner.record(case, "bandwidth", gbps, "GB/s", roofline=gbps / copy_gbps)
        del k, v, q, out
    if a.plot:
        plot_lines([r for r in runner.records if r["metric"] == "bandwidth" and r["case"]["split_choice"] == "auto"],
                   x="context", series="B",
                   path=a.plot, metric="bandwidth", logx=True,
                   title=f"decode attention ({heads}, {a.dtype}): achieved GB/s; copy {copy_gbps:.0f} GB/s")
    runner.finish()


if __name__ == "__main__":
    main()
