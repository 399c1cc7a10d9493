#!/usr/bin/env python
"""MoE dispatch mechanisms on one GLM-4.7-Flash MoE layer (router, top-4 of 64 experts + 1 shared, hidden 2048,
expert intermediate 1536; generated weights): the whole layer per forward, three ways.

- ``slow_path``: router, routing, then a Python loop over the active experts (three qmatmul each).
- ``fused_eager``: router-logits and routing kernels, the alignment (tensor-core blocks only; one slot per
  program needs none), fused gate_up (SwiGLU) and down (weight + scatter-add) kernels, launched from Python.
- ``fused_graph``: the same captured once as a CUDA graph per batch bucket and replayed
  (:class:`triton_marlin.moe.graph.GraphedMoE`); also ``fused_in_graph``: the per-layer time when ten layers
  run back to back inside one graph, as in a captured decode step.

Each figure carries the weight-read floor: the active experts' bytes over the measured copy bandwidth.
Kernel launches per forward come from the CUDA profiler.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _moe_common import active_bytes, cap_interpreter_runs, fused_note, glm_layer  # noqa: E402
from triton_marlin.bench import BenchRunner, load_baseline, time_fn  # noqa: E402
from triton_marlin.device import triton_enabled_for  # noqa: E402
from triton_marlin.models.glm4_moe_lite import GLM4_RECIPE_TEXT  # noqa: E402
from triton_marlin.moe.strategies import count_kernel_launches, rel_error  # noqa: E402


def add_args(p):
    p.add_argument("--tokens", type=int, nargs="+", default=None,
                   help="tokens per forward (default 1 8 64; 1 with --quick; 1 2 off CUDA)")
    p.add_argument("--recipe", choices=("int4", "glm4"), default="int4",
                   help="int4: every expert int4 (group 128); glm4: the mixed-width recipe")


def main(argv=None):
    runner = BenchRunner("bench_moe_kernel_dispatch", description=__doc__, add_args=add_args, argv=argv)
    a = runner.args
    dev = a.device
    cuda = dev.type == "cuda"
    tokens = a.tokens or ([1] if a.quick and cuda else [1, 8, 64] if cuda else [1, 2])
    shrink = not cuda
    tokens = cap_interpreter_runs(runner, tokens)
    layer = glm_layer(dev, shrink=shrink, recipe=a.recipe, seed=a.seed)
    base = load_baseline(dev)
    runner.note(f"layer: {layer.experts.describe()}" + (f"; {GLM4_RECIPE_TEXT}" if a.recipe == "glm4" else ""))
    if shrink:
        runner.note("off CUDA the layer is shrunk to hidden 128, intermediate 128, 16 experts")
    note = fused_note(dev)
    if note:
        runner.note(note)
    graphed = None
    if cuda:
        from triton_marlin.moe.graph import GraphedMoE
        graphed = GraphedMoE(layer, buckets=sorted(set(tokens)))
    for T in runner.progress(tokens, desc="tokens"):
        x = torch.randn(T, layer.hidden_size, device=dev).half()
        ids, _ = layer.route(x)
        floor_us = active_bytes(layer.experts, ids) / (base["copy_GBps"] * 1e3)
        ref = layer(x, "slow_path")

        def put(path, st, launches=None):
            case = {"tokens": T, "path": path, "recipe": a.recipe}
            runner.record(case, "time", st.median_us, "us", stats=st)
            runner.record(case, "x_weight_floor", st.median_us / floor_us, "x", floor_us=floor_us)
            if launches is not None:
                runner.record(case, "kernel_launches", launches, "count")
            return st.median_us

        slow_us = put("slow_path", time_fn(lambda: layer(x, "slow_path"), device=dev, warmup=a.warmup,
                                           repeats=a.repeats),
                      count_kernel_launches(lambda: layer(x, "slow_path"), dev))
        if not triton_enabled_for(dev):
            continue
        err = rel_error(layer(x, "fast_mixed"), ref)
        runner.record({"tokens": T, "path": "fused_eager", "recipe": a.recipe}, "rel_error_vs_slow_path", err, "")
        eager_us = put("fused_eager", time_fn(lambda: layer(x, "fast_mixed"), device=dev, warmup=a.warmup,
                                              repeats=a.repeats),
                       count_kernel_launches(lambda: layer(x, "fast_mixed"), dev))
        runner.record({"tokens": T, "path": "fused_eager", "recipe": a.recipe}, "speedup_vs_slow_path",
                      slow_us / eager_us, "x")
        if graphed is None:
            continue
        out = graphed(x)
        runner.record({"tokens": T, "path": "fused_graph", "recipe": a.recipe}, "rel_error_vs_slow_path",
                      rel_error(out, ref), "")
        bucket = graphed.bucket_for(T)
        g_us = put("fused_graph", time_fn(lambda: graphed.replay(bucket), device=dev, warmup=a.warmup,
                                          repeats=a.repeats),
                   count_kernel_launches(lambda: graphed.replay(bucket), dev))
        runner.record({"tokens": T, "path": "fused_graph", "recipe": a.recipe}, "speedup_vs_slow_path",
                      slow_us / g_us, "x")
        n = torch.tensor([T], dtype=torch.int32, device=dev)
        st = time_fn(lambda: layer.forward_static(x, n), device=dev, warmup=a.warmup, repeats=a.repeats,
                     cuda_graph=True, graph_calls=10)
        in_us = put("fused_in_graph", st)
        runner.record({"tokens": T, "path": "fused_in_graph", "recipe": a.recipe}, "speedup_vs_slow_path",
                      slow_us / in_us, "x")
    from triton_marlin.moe.strategies import tuning_enabled
    if tuning_enabled():
        from triton_marlin.kernels.moe_gemm import tuned_configs
        for key, cfg in tuned_configs().items():
            runner.note(f"tuned launch config: tokens<={key[0]}, slots/token {key[1]}: {cfg}")
    return runner.finish()


if __name__ == "__main__":
    main()
