#!/usr/bin/env python
"""The fused MoE expert path across scenarios: tokens 1, 4, 16, 64, 256, 1024 x top-k 2, 4, 8 x expert counts
8, 64, 128, at GLM-4.7-Flash expert dimensions (hidden 2048, intermediate 1536), int4 experts (group 128),
softmax routing of random router logits.

Per case: time of the fused experts (fast_uniform) by CUDA-graph replay and launch-inclusive, tokens per
second, the active experts' weight bytes and the bandwidth they imply against the measured copy ceiling, and
the ratio to that weight-read floor. ``--with-slow-path`` adds the per-expert Python loop for comparison.
Off CUDA (no Triton) the slow path at shrunk dimensions is what is measured.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _moe_common import active_bytes, cap_interpreter_runs, fused_note, layer_for, uniform_experts  # noqa: E402
from triton_marlin.bench import BenchRunner, load_baseline, time_fn  # noqa: E402
from triton_marlin.device import triton_enabled_for  # noqa: E402
from triton_marlin.moe.strategies import make_strategy  # noqa: E402

TOKENS = (1, 4, 16, 64, 256, 1024)
TOPK = (2, 4, 8)
EXPERTS = (8, 64, 128)


def add_args(p):
    p.add_argument("--tokens", type=int, nargs="+", default=None, help=f"token counts (default {TOKENS})")
    p.add_argument("--topk", type=int, nargs="+", default=None, help=f"experts per token (default {TOPK})")
    p.add_argument("--experts", type=int, nargs="+", default=None, help=f"expert counts (default {EXPERTS})")
    p.add_argument("--with-slow-path", action="store_true", help="also time the per-expert Python loop")


def main(argv=None):
    runner = BenchRunner("bench_moe_multicase", description=__doc__, add_args=add_args, argv=argv)
    a = runner.args
    dev = a.device
    cuda = dev.type == "cuda"
    tokens = a.tokens or ([1, 16] if a.quick else list(TOKENS))
    topks = a.topk or ([2, 4] if a.quick else list(TOPK))
    counts = a.experts or ([8] if a.quick else list(EXPERTS))
    H, I, gs = (2048, 1536, 128) if cuda else (128, 128, 32)
    if not cuda:
        tokens = [min(t, 4) for t in tokens]
        runner.note("off CUDA: hidden 128, intermediate 128, tokens capped at 4")
    tokens = cap_interpreter_runs(runner, list(dict.fromkeys(tokens)))
    note = fused_note(dev)
    if note:
        runner.note(note)
    fused = triton_enabled_for(dev)
    base = load_baseline(dev)
    for E in counts:
        experts = uniform_experts(E, H, I, dev, "int4", gs, seed=a.seed)
        for k in topks:
            if k > E:
                runner.note(f"top-{k} > {E} experts: skipped")
                continue
            layer = layer_for(experts, k, seed=a.seed)
            strat = make_strategy("fast_uniform", experts)
            slow = make_strategy("slow_path", experts)
            for T in runner.progress(tokens, desc=f"E={E} k={k}"):
                x = torch.randn(T, H, device=dev).half()
                ids, w = layer.route(x)
                floor_bytes = active_bytes(experts, ids)
                floor_us = floor_bytes / (base["copy_GBps"] * 1e3)
                case = {"experts": E, "topk": k, "tokens": T}
                paths = []
                if fused:
                    paths.append(("fused", lambda: strat(x, ids, w)))
                if a.with_slow_path or not fused:
                    paths.append(("slow_path", lambda: slow(x, ids, w)))
                for path, fn in paths:
                    c = dict(case, path=path)
                    st = time_fn(fn, device=dev, warmup=a.warmup, repeats=a.repeats)
                    runner.record(c, "time", st.median_us, "us", stats=st)
                    us = st.median_us
                    if cuda and path == "fused":
                        gst = time_fn(fn, device=dev, warmup=a.warmup, repeats=a.repeats, cuda_graph=True)
                        runner.record(c, "graph_time", gst.median_us, "us", stats=gst)
                        us = gst.median_us
                    gbps = floor_bytes / (us * 1e-6) / 1e9
                    runner.record(c, "tokens_per_s", T / (us * 1e-6), "tok/s")
                    runner.record(c, "weight_bandwidth", gbps, "GB/s", roofline=gbps / base["copy_GBps"])
                    runner.record(c, "x_weight_floor", us / floor_us, "x", floor_us=floor_us)
        del experts
    return runner.finish()


if __name__ == "__main__":
    main()
