"""Where a mixed-width MoE layer's time goes: the GLM-4.7-Flash layer (int4 g128 elsewhere) with one format for
every expert (int2, int3, int4, int8) and with the glm4 mixed recipe, each run as ``fast_uniform`` (one kind
compiled per projection) and ``fast_mixed`` (the kind read from the per-expert table), at 1 and 16 tokens:
graph-replayed time of the capturable forward and the expert kernels' GPU time from the profiler.

Usage (repository root, GPU machine): python gpu/moe_mixed_kinds.py [--tokens 1 16] [--recipes int4 int8 glm4 ...]
"""
import argparse

import torch

from _kernel_times import cuda_kernel_times
from triton_marlin.bench.timing import time_fn
from triton_marlin.models.glm4_moe_lite import build_glm4_moe_lite_layer

RECIPES = {  # name: (routed recipe, shared recipe)
    "int2": ("int2", None), "int3": ("int3", None), "int4": ("int4", None), "int8": ("int8", None),
    "glm4": ("glm4", None), "glm4-int4-shared": ("glm4", "int4"),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 16], help="tokens per forward (default 1 16)")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES),
                   help="expert recipes (default: all)")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    dev = torch.device("cuda")
    print(f"{'recipe':18} {'T':>4} {'strategy':13} {'graph us':>9} {'gate_up us':>10} {'down us':>8}  weight MB")
    for name in a.recipes:
        routed, shared = RECIPES[name]
        layer = build_glm4_moe_lite_layer(recipe=routed, shared_recipe=shared, device=dev)
        mb = layer.experts.nbytes / 1e6
        strategies = ["fast_mixed"] + (["fast_uniform"] if layer.experts.is_uniform() else [])
        for T in a.tokens:
            x = torch.randn(T, layer.hidden_size, device=dev, dtype=torch.float16)
            nv = torch.tensor([T], dtype=torch.int32, device=dev)
            for strat in strategies:
                fn = lambda: layer.forward_static(x, nv, strat)  # noqa: E731
                st = time_fn(fn, device=dev, warmup=3, repeats=30, cuda_graph=True)
                per = cuda_kernel_times(fn, 10, warmup=0)
                gu = sum(us for k, (us, _) in per.items() if "gate_up" in k)
                dn = sum(us for k, (us, _) in per.items() if "down" in k)
                print(f"{name:18} {T:>4} {strat:13} {st.median_us:9.1f} {gu:10.1f} {dn:8.1f}  {mb:.1f} (all experts)",
                      flush=True)


if __name__ == "__main__":
    main()
