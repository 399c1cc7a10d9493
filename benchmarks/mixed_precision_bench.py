"""Mixed-precision MoE benchmark framework (used by scripts/run_mixed_precision_bench.py).

Builds an MoE layer whose experts carry mixed (gate, up, down) widths, routes one batch of tokens, and runs
the five dispatch strategies of :mod:`triton_marlin.moe.strategies` on the same routing and the same
quantized weights. Per strategy it records: time per forward (launch-inclusive, and by CUDA-graph replay for
the fused strategies), kernel launches per forward (CUDA profiler), weight bytes of the active experts and
the bandwidth that implies (against the measured copy ceiling), allocator peak, extra weight memory, the
relative error against ``slow_path`` and the speedup over it.

Models:

- ``synthetic``: 8 experts, top-2 softmax routing, hidden 512, intermediate 1408, no shared expert; recipe
  :data:`SYNTHETIC_RECIPE`.
- ``glm4``: one GLM-4.7-Flash MoE layer at its real dimensions (hidden 2048, 64 experts of intermediate 1536,
  top-4 sigmoid/noaux_tc routing, 1 shared expert), generated weights, recipe
  :data:`triton_marlin.models.glm4_moe_lite.GLM4_RECIPE_TEXT`.

``fast_uniform`` needs one format per projection; on a mixed model it runs on a uniformly int4-quantized
copy of the same float weights (recorded as ``model=<name>-uniform-int4``) against that copy's own slow_path.
On CPU the fused strategies need ``TRITON_INTERPRET=1`` (interpreter times are not performance; they are
recorded for the error and byte figures) and quick runs shrink the dimensions (stated in the output).
"""
from __future__ import annotations

import torch

from triton_marlin.bench import BenchRunner, load_baseline, time_fn
from triton_marlin.device import triton_enabled_for, triton_interpret
from triton_marlin.models.glm4_moe_lite import GLM4_RECIPE_TEXT, Glm4MoeLiteConfig, build_glm4_moe_lite_layer
from triton_marlin.moe.experts import QuantizedExperts
from triton_marlin.moe.layer import MoELayer
from triton_marlin.moe.routing import RoutingConfig
from triton_marlin.moe.strategies import STRATEGIES, report

SYNTHETIC = {"num_experts": 8, "top_k": 2, "hidden": 512, "intermediate": 1408}
SYNTHETIC_RECIPE = [("int4", "int4", "int4")] * 4 + [("int2", "int2", "int3"), ("int3", "int3", "int4"),
                                                     ("int8", "int8", "int8"), ("int4", "int4", "int8")]
SYNTHETIC_RECIPE_TEXT = ("synthetic recipe (gate/up/down): experts 0-3 int4/int4/int4, 4 int2/int2/int3, "
                         "5 int3/int3/int4, 6 int8/int8/int8, 7 int4/int4/int8")
MODELS = ("synthetic", "glm4")
FULL_TOKENS = (1, 16, 256)
FUSED = ("fast_uniform", "fast_mixed", "max_bits_padded")  # capturable in a CUDA graph


def add_args(p):
    p.add_argument("--full", action="store_true",
                   help=f"every strategy at {FULL_TOKENS} tokens (batch-size x seq-len is ignored)")
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES), metavar="NAME",
                   help=f"strategies to run, of {', '.join(STRATEGIES)}")
    p.add_argument("--model", choices=MODELS, default="synthetic",
                   help="synthetic: 8 experts, top-2, hidden 512, intermediate 1408; glm4: one GLM-4.7-Flash MoE layer")
    p.add_argument("--batch-size", type=int, default=1, help="sequences per forward")
    p.add_argument("--seq-len", type=int, default=1, help="tokens per sequence (tokens = batch-size x seq-len)")
    p.add_argument("--iterations", type=int, default=None,
                   help="timed forwards per strategy (overrides --repeats)")


def small_dims(device: torch.device, quick: bool) -> bool:
    """CPU runs (interpreter or torch reference) shrink the dimensions to stay within seconds."""
    return device.type != "cuda" and quick


def build_model(model: str, device: torch.device, *, shrink: bool, seed: int, uniform: bool = False
                ) -> tuple[MoELayer, dict]:
    gen = torch.Generator(device=device).manual_seed(seed)
    if model == "synthetic":
        E, k = SYNTHETIC["num_experts"], SYNTHETIC["top_k"]
        H, I = (128, 128) if shrink else (SYNTHETIC["hidden"], SYNTHETIC["intermediate"])
        gs = 32 if shrink else 128
        recipe = [("int4", gs)] * E if uniform else [tuple((f, gs) for f in t) for t in SYNTHETIC_RECIPE]

        def w(*shape):
            return torch.randn(*shape, generator=gen, device=device) * 0.02

        experts = QuantizedExperts.from_float(w(E, I, H), w(E, I, H), w(E, H, I), recipe)
        layer = MoELayer(w(E, H), RoutingConfig(E, k, "softmax"), experts)
        text = ("uniform int4" if uniform else SYNTHETIC_RECIPE_TEXT) + f", group size {gs}"
    else:
        cfg = Glm4MoeLiteConfig()
        if shrink:
            cfg = cfg.scaled(128, 128, 16)
        layer = build_glm4_moe_lite_layer(cfg, "int4" if uniform else "glm4", group_size=32 if shrink else 128,
                                          seed=seed, device=device)
        text = "uniform int4 (shared expert too)" if uniform else GLM4_RECIPE_TEXT
    info = {"hidden": layer.hidden_size, "intermediate": layer.experts.intermediate_size,
            "experts": layer.experts.num_experts, "shared": layer.experts.num_shared, "top_k": layer.routing.top_k,
            "recipe": text, "weight_bytes_total": layer.experts.nbytes}
    return layer, info


def _graph_time(fn, dev, a):
    return time_fn(fn, device=dev, warmup=a.warmup, repeats=a.repeats, cuda_graph=True)


def run_model(runner: BenchRunner, layer: MoELayer, model_name: str, strategies, tokens: int, base: dict) -> None:
    a = runner.args
    dev = a.device
    H = layer.hidden_size
    x = torch.randn(tokens, H, device=dev).half()
    ids, w = layer.route(x)
    fused_ok = triton_enabled_for(dev)
    slow = layer.get_strategy("slow_path")
    ref = slow(x, ids, w)
    slow_us = None
    for name in runner.progress(strategies, desc=f"{model_name} T={tokens}"):
        case = {"model": model_name, "tokens": tokens, "strategy": name}
        if name != "slow_path" and not fused_ok:
            runner.note(f"{name}: fused Triton kernels need CUDA (or TRITON_INTERPRET=1 on CPU); not measured on {dev}")
            continue
        try:
            strat = layer.get_strategy(name)  # built once per model (max_bits_padded re-packs here)
        except ValueError as err:
            runner.note(f"{name} on {model_name}: {err}")
            continue
        out, rep = report(strat, x, ids, w, ref if name != "slow_path" else None)
        st = time_fn(lambda: strat(x, ids, w), device=dev, warmup=a.warmup, repeats=a.repeats)
        runner.record(case, "time", st.median_us, "us", stats=st)
        if name == "slow_path":
            slow_us = st.median_us
        elif slow_us is not None:
            runner.record(case, "speedup_vs_slow_path", slow_us / st.median_us, "x")
        best_us = st.median_us
        if dev.type == "cuda" and name in FUSED:
            gst = _graph_time(lambda: strat(x, ids, w), dev, a)
            runner.record(case, "graph_time", gst.median_us, "us", stats=gst)
            best_us = gst.median_us
            if slow_us is not None:
                runner.record(case, "graph_speedup_vs_slow_path", slow_us / gst.median_us, "x")
        gbps = rep.weight_bytes / (best_us * 1e-6) / 1e9
        runner.record(case, "weight_bytes", rep.weight_bytes, "B")
        runner.record(case, "weight_bandwidth", gbps, "GB/s", roofline=gbps / base["copy_GBps"])
        if rep.rel_error_vs_slow_path is not None:
            runner.record(case, "rel_error_vs_slow_path", rep.rel_error_vs_slow_path, "")
        if rep.kernel_launches is not None:
            runner.record(case, "kernel_launches", rep.kernel_launches, "count")
        if rep.peak_memory_bytes is not None:
            runner.record(case, "peak_memory", rep.peak_memory_bytes, "B")
        runner.record(case, "extra_weight_memory", rep.extra_memory_bytes, "B")


def main(argv=None, name: str = "mixed_precision_bench"):
    runner = BenchRunner(name, description=__doc__, add_args=add_args, argv=argv)
    a = runner.args
    if a.iterations is not None:
        if a.iterations < 1:
            runner.parser.error(f"--iterations: expected >= 1, got {a.iterations}")
        a.repeats = a.iterations
    if a.batch_size < 1 or a.seq_len < 1:
        runner.parser.error("--batch-size and --seq-len must be >= 1")
    dev = a.device
    base = load_baseline(dev)
    shrink = small_dims(dev, a.quick)
    strategies = list(STRATEGIES) if a.full else list(dict.fromkeys(["slow_path"] + a.strategies))
    tokens_list = FULL_TOKENS if a.full else (a.batch_size * a.seq_len,)
    if dev.type == "cpu" and triton_enabled_for(dev) and triton_interpret():
        a.warmup, a.repeats = min(a.warmup, 1), min(a.repeats, 2)
        tokens_list = tokens_list[:1]
        runner.note("Triton CPU interpreter: 1 warmup and 2 timed calls per case, first token count only")
    if shrink:
        tokens_list = tuple(min(t, 4) for t in tokens_list)
        runner.note("quick run off CUDA: dimensions shrunk to hidden 128, intermediate 128 (and 16 experts for "
                    "glm4), tokens capped at 4")
    layer, info = build_model(a.model, dev, shrink=shrink, seed=a.seed)
    runner.note(f"model {a.model}: {info['experts']} experts (+{info['shared']} shared), top-{info['top_k']}, "
                f"hidden {info['hidden']}, intermediate {info['intermediate']}; {info['recipe']}; "
                f"{layer.experts.describe()}")
    uniform_layer = None
    if "fast_uniform" in strategies and not layer.experts.is_uniform():
        uniform_layer, uinfo = build_model(a.model, dev, shrink=shrink, seed=a.seed, uniform=True)
        runner.note(f"fast_uniform runs on {a.model}-uniform-int4 (same float weights, {uinfo['recipe']}), "
                    f"compared with that model's own slow_path")
    for tokens in dict.fromkeys(tokens_list):
        run_model(runner, layer, a.model, [s for s in strategies if s != "fast_uniform" or uniform_layer is None],
                  tokens, base)
        if uniform_layer is not None:
            run_model(runner, uniform_layer, f"{a.model}-uniform-int4", ["slow_path", "fast_uniform"], tokens, base)
    if dev.type != "cuda":
        runner.note("kernel launches and peak memory are measured on CUDA only")
        if triton_enabled_for(dev) and triton_interpret():
            runner.note("fused strategies ran in the Triton CPU interpreter: their times are not performance")
    return runner.finish()


if __name__ == "__main__":
    main()
