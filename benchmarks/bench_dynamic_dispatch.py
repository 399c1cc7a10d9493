#!/usr/bin/env python
"""Cost of choosing the MoE path at run time.

Host-side decisions, timed alone (any device): picking the kernels' launch configuration for a problem
(``select_config``: problem key + table lookup), looking up the layer's strategy object, picking the CUDA-graph
bucket for a batch. On CUDA, end to end on one GLM-4.7-Flash MoE layer: the dynamic call ``graphed(x)``
(checks, bucket choice, copy into the static buffer, token count, replay, copy out) against the bare replay
of the captured bucket, and the eager layer call ``layer(x)`` (argument checks, strategy dispatch) against
the same kernels launched with everything precomputed. The differences are the price of deciding at run
time.
"""
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _moe_common import cap_interpreter_runs, fused_note, glm_layer  # noqa: E402
from triton_marlin.bench import BenchRunner, time_fn  # noqa: E402
from triton_marlin.device import triton_enabled_for  # noqa: E402
from triton_marlin.moe.graph import DEFAULT_BUCKETS, GraphedMoE  # noqa: E402


def add_args(p):
    p.add_argument("--tokens", type=int, nargs="+", default=None,
                   help="tokens per forward for the end-to-end comparison (default 1 16; 1 off CUDA)")


def main(argv=None):
    runner = BenchRunner("bench_dynamic_dispatch", description=__doc__, add_args=add_args, argv=argv)
    a = runner.args
    dev = a.device
    cuda = dev.type == "cuda"
    tokens = cap_interpreter_runs(runner, a.tokens or ([1, 16] if cuda else [1]))
    layer = glm_layer(dev, shrink=not cuda, seed=a.seed)
    if not cuda:
        runner.note("off CUDA the layer is shrunk to hidden 128, intermediate 128, 16 experts")
    note = fused_note(dev)
    if note:
        runner.note(note)
    host_reps = max(a.repeats, 20)

    # host-side decisions, each timed as the mean of 1000 calls per sample
    fake = SimpleNamespace(buckets=DEFAULT_BUCKETS)
    st = time_fn(lambda: GraphedMoE.bucket_for(fake, 100), device=None, warmup=2, repeats=host_reps, inner=1000)
    runner.record({"decision": "graph_bucket", "tokens": 100}, "per_call", st.median_us, "us", stats=st)
    st = time_fn(lambda: layer.get_strategy("fast_mixed"), device=None, warmup=2, repeats=host_reps, inner=1000)
    runner.record({"decision": "strategy_lookup"}, "per_call", st.median_us, "us", stats=st)
    from triton_marlin.moe.strategies import select_config
    x = torch.randn(tokens[0], layer.hidden_size, device=dev).half()
    ids, w = layer.route(x)
    if triton_enabled_for(dev):
        st = time_fn(lambda: select_config(x, ids, w, layer.experts, False, tune=False), device=None, warmup=2,
                     repeats=host_reps, inner=1000)
        runner.record({"decision": "launch_config"}, "per_call", st.median_us, "us", stats=st)
    else:
        runner.note("launch_config: the fused kernels' configuration is chosen only where Triton runs")

    if not cuda:
        return runner.finish()
    from triton_marlin.moe.strategies import _fused_acc, select_config as sel

    graphed = GraphedMoE(layer, buckets=sorted(set(tokens)))
    for T in tokens:
        x = torch.randn(T, layer.hidden_size, device=dev).half()
        graphed(x)
        bucket = graphed.bucket_for(T)
        dyn = time_fn(lambda: graphed(x), device=dev, warmup=a.warmup, repeats=a.repeats)
        sta = time_fn(lambda: graphed.replay(bucket), device=dev, warmup=a.warmup, repeats=a.repeats)
        case = {"tokens": T, "mode": "graph"}
        runner.record(dict(case, call="dynamic"), "time", dyn.median_us, "us", stats=dyn)
        runner.record(dict(case, call="static_replay"), "time", sta.median_us, "us", stats=sta)
        runner.record(case, "overhead", dyn.median_us - sta.median_us, "us")

        ids, w = layer.route(x)
        cfg = sel(x, ids, w, layer.experts, False)
        eager = time_fn(lambda: layer(x), device=dev, warmup=a.warmup, repeats=a.repeats)
        pre = time_fn(lambda: (layer.route(x, check_finite=False),
                               _fused_acc(x, ids, w, layer.experts, uniform=False, config=cfg)),
                      device=dev, warmup=a.warmup, repeats=a.repeats)
        case = {"tokens": T, "mode": "eager"}
        runner.record(dict(case, call="dynamic"), "time", eager.median_us, "us", stats=eager)
        runner.record(dict(case, call="precomputed"), "time", pre.median_us, "us", stats=pre)
        runner.record(case, "overhead", eager.median_us - pre.median_us, "us")
    return runner.finish()


if __name__ == "__main__":
    main()
