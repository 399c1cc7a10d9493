#!/usr/bin/env python
"""Decode attention as a memory-bound op: bytes of K/V that one step must read vs the bandwidth achieved.

For each (head configuration, context length, batch size): the bytes a decode step cannot avoid (every cached
token's K and V once, plus q and the output), the floor time those bytes take at the measured copy bandwidth,
the measured GPU time of our split-K decode kernel, the achieved GB/s and its fraction of the copy bandwidth,
and the number of split-K chunks used. GPU time is a CUDA-graph replay of one call after an L2 flush (in a real
step each layer's cache comes from HBM); --warm-cache times back-to-back calls instead.

Configurations: GQA (HEAD_CONFIGS; glm47-flash-gqa-standin by default) through the GQA decode kernel, and
GLM-4.7-Flash's own absorbed MLA (MLA_CONFIGS: 20 heads over one 512 + 64 wide cache row per token) through the
MLA decode kernel. Short contexts are dominated by fixed costs (the kernels' launch inside the graph, the merge);
the fraction should climb with context and batch. --plot writes GB/s against context (one PNG per config).
"""
from __future__ import annotations

from pathlib import Path

import torch

from triton_marlin.bench import BenchRunner, load_baseline, plot_lines, time_fn
from triton_marlin.kernels.attention import (HEAD_CONFIGS, MLA_CONFIGS, decode_attention_triton, decode_bytes,
                                             decode_num_splits, default_decode_config, default_mla_decode_config,
                                             mla_decode_attention_triton, mla_decode_bytes, mla_decode_num_splits,
                                             path_label, split_plan)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
SMOKE = {"smoke-gqa": {"num_heads": 4, "num_kv_heads": 2, "head_dim": 64},
         "smoke-mla": {"num_heads": 4, "kv_lora_rank": 64, "rope_dim": 16, "sm_scale": 0.125}}
ALL = {**HEAD_CONFIGS, **MLA_CONFIGS, **SMOKE}


def _add_args(p):
    p.add_argument("--heads", nargs="+", choices=sorted(ALL), default=None,
                   help="configurations (default glm47-flash-mla and glm47-flash-gqa-standin on GPU, smoke-gqa and "
                        "smoke-mla elsewhere)")
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
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="write achieved GB/s against context length here (config name appended per config)")


class _Gqa:
    def __init__(self, cfg, dev, dtype):
        self.cfg, self.dev, self.dtype = cfg, dev, dtype
        self.block_n = default_decode_config(cfg["head_dim"], dev).block_n

    def nbytes(self, lengths, el):
        c = self.cfg
        return decode_bytes(lengths, c["num_heads"], c["num_kv_heads"], c["head_dim"], el)

    def auto_splits(self, B, ctx, el):
        c = self.cfg
        return decode_num_splits(B, c["num_heads"], c["num_kv_heads"], c["head_dim"], el, ctx, self.block_n, self.dev)

    def make(self, B, ctx, splits):
        c, dev, dtype = self.cfg, self.dev, self.dtype
        k = torch.randn(B, c["num_kv_heads"], ctx, c["head_dim"], device=dev, dtype=dtype)
        v = torch.randn_like(k)
        q = torch.randn(B, c["num_heads"], c["head_dim"], device=dev, dtype=dtype)
        out = torch.empty_like(q)
        seq_lens = torch.full((B,), ctx, dtype=torch.int32, device=dev)
        return lambda: decode_attention_triton(q, k, v, seq_lens, max_seq_len=ctx, num_splits=splits, out=out)


class _Mla:
    def __init__(self, cfg, dev, dtype):
        self.cfg, self.dev, self.dtype = cfg, dev, dtype
        self.block_n = default_mla_decode_config(cfg["kv_lora_rank"], dev).block_n

    def nbytes(self, lengths, el):
        c = self.cfg
        return mla_decode_bytes(lengths, c["num_heads"], c["kv_lora_rank"], c["rope_dim"], el)

    def auto_splits(self, B, ctx, el):
        c = self.cfg
        return mla_decode_num_splits(B, c["num_heads"], c["kv_lora_rank"], c["rope_dim"], el, ctx, self.block_n,
                                     self.dev)

    def make(self, B, ctx, splits):
        c, dev, dtype = self.cfg, self.dev, self.dtype
        R, P = c["kv_lora_rank"], c["rope_dim"]
        cache = torch.randn(B, ctx, R + P, device=dev, dtype=dtype)
        q = torch.randn(B, c["num_heads"], R + P, device=dev, dtype=dtype)
        out = torch.empty(B, c["num_heads"], R, device=dev, dtype=dtype)
        seq_lens = torch.full((B,), ctx, dtype=torch.int32, device=dev)
        return lambda: mla_decode_attention_triton(q[..., :R], q[..., R:], cache[..., :R], cache[..., R:], seq_lens,
                                                   c["sm_scale"], max_seq_len=ctx, num_splits=splits, out=out)


def main(argv=None):
    runner = BenchRunner("analyze_attention_bandwidth", description=__doc__, add_args=_add_args, argv=argv)
    a = runner.args
    dev = a.device
    gpu = dev.type == "cuda"
    path = path_label(dev)
    if path is None:
        runner.note(f"our Triton decode kernels cannot run on {dev} (CUDA, or CPU with TRITON_INTERPRET=1): "
                    f"nothing to measure; the byte counts are still recorded")
    elif path == "triton-interpreter":
        runner.note("the decode kernels run through the CPU interpreter here: the GB/s say nothing about them")
    heads = a.heads or (["glm47-flash-mla", "glm47-flash-gqa-standin"] if gpu else list(SMOKE))
    if a.quick:
        contexts, batches = ([1024, 8192] if gpu else [48]), ([1, 16] if gpu else [2])
    else:
        contexts = [256 << i for i in range(8)] if gpu else [64, 256]
        batches = [1, 4, 16, 64] if gpu else [1, 4]
    contexts, batches = a.contexts or contexts, a.batches or batches
    if any(s < 0 for s in a.splits):
        runner.parser.error(f"--splits: expected counts >= 0, got {a.splits}")
    dtype = DTYPES[a.dtype]
    el = torch.tensor([], dtype=dtype).element_size()
    copy_gbps = load_baseline(dev)["copy_GBps"]
    timing = {"cuda_graph": True, **({} if a.warm_cache else {"graph_calls": 1, "flush_cache": True})} if gpu else {}
    cases = [(h, ctx, B, s) for h in heads for ctx in contexts for B in batches for s in a.splits]
    for h, ctx, B, want_splits in runner.progress(cases, desc="decode bandwidth"):
        kind = (_Mla if "kv_lora_rank" in ALL[h] else _Gqa)(ALL[h], dev, dtype)
        lengths = [ctx] * B
        nbytes = kind.nbytes(lengths, el)
        _, splits = split_plan(ctx, want_splits or kind.auto_splits(B, ctx, el), kind.block_n)
        case = {"heads": h, "context": ctx, "B": B, "dtype": a.dtype, "splits": splits,
                "split_choice": "auto" if want_splits == 0 else "forced",
                "l2": "flushed" if gpu and not a.warm_cache else "warm"}
        runner.record(case, "bytes", nbytes, "B")
        runner.record(case, "floor_time", nbytes / (copy_gbps * 1e9) * 1e6, "us")
        if path is None:
            continue
        fn = kind.make(B, ctx, splits)
        st = time_fn(fn, device=dev, warmup=a.warmup, repeats=a.repeats, **timing)
        gbps = nbytes / (st.median_us * 1e-6) / 1e9
        runner.record(case, "time_graph" if gpu else "time", st.median_us, "us", stats=st)
        runner.record(case, "bandwidth", gbps, "GB/s", roofline=gbps / copy_gbps)
        del fn
    if a.plot and path is not None:
        for h in heads:
            rows = [r for r in runner.records if r["metric"] == "bandwidth" and r["case"]["heads"] == h
                    and r["case"]["split_choice"] == "auto"]
            if rows:
                out = Path(a.plot)
                plot_lines(rows, x="context", series="B", path=out.with_name(f"{out.stem}-{h}{out.suffix}"),
                           metric="bandwidth", logx=True,
                           title=f"decode attention ({h}, {a.dtype}): achieved GB/s; copy {copy_gbps:.0f} GB/s")
    runner.finish()


if __name__ == "__main__":
    main()
