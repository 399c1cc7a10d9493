#!/usr/bin/env python
"""MoE launch-configuration exploration on the GPU (issue 4 follow-up): for one GLM-4.7-Flash layer (int4 experts,
and the glm4 mixed recipe at one token), time the fused expert kernels (alignment + gate_up + down, CUDA-graph
replay of 10 calls) for each candidate configuration, each first checked against the float64 reference, and
the per-kernel GPU times of the default configuration from the profiler. Prints one table; usage:
    python gpu/moe_explore.py [--tokens 256 1 16] [--recipes int4 glm4] [--candidates all|swap]

``--candidates swap``: the default, the unswapped 16/32-row tiles beside it and the swapped-operand tiles
(``swap_ab=1``) only, and the per-kernel profile of the default and of the fastest configuration.
``--candidates fused``: the default and the swapped tiles with ``dot_k=128`` / ``prefetch`` / ``fuse_gu``.
``--candidates library``: exactly what ``select_config`` times when ``TRITON_MARLIN_MOE_TUNE=1``.
``--candidates tune``: neighbours of the default (the down kernel's column block and warps, 64-row blocks, the
fused loop at 16 tokens), each with its gate_up / down split.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _kernel_times import cuda_kernel_times  # noqa: E402
from _moe_common import active_bytes, glm_layer  # noqa: E402
from triton_marlin.bench import load_baseline, time_fn  # noqa: E402
from triton_marlin.kernels.moe_gemm import (MoEGemmConfig as C, candidate_configs, default_config,  # noqa: E402
                                            fused_moe_reference)
from triton_marlin.moe.strategies import _fused_acc  # noqa: E402

CANDIDATES = {
    1: [C(1, 32, 4, 32, 3, 4, up_split_k=4), C(1, 64, 4, 64, 3, 4, up_split_k=4), C(16, 128, 4, 128, 2, 4)],
    16: [C(16, 64, 4, 64, 1, 4), C(16, 128, 4, 128, 1, 4)],
    256: [C(32, 128, 4, 128, 1, 4), C(16, 128, 4, 128, 1, 4), C(16, 64, 4, 64, 1, 4), C(32, 64, 4, 64, 1, 4),
          C(64, 128, 8, 128, 1, 8), C(32, 128, 8, 128, 1, 8), C(32, 128, 4, 128, 1, 4, stages=1)],
}
SWAP = {  # swapped operands (weights the left MMA operand, wgmma from registers on sm_90) and their references
    16: [C(16, 64, 4, 64, 1, 4), C(16, 64, 4, 64, 1, 4, swap_ab=1), C(16, 128, 4, 128, 1, 4, swap_ab=1)],
    256: [C(16, 64, 4, 64, 1, 4), C(32, 128, 4, 128, 1, 4), C(16, 128, 4, 128, 1, 4, swap_ab=1),
          C(16, 64, 4, 64, 1, 4, swap_ab=1), C(32, 128, 4, 128, 1, 4, swap_ab=1), C(32, 64, 4, 64, 1, 4, swap_ab=1),
          C(32, 128, 8, 128, 1, 8, swap_ab=1)],
}
# --candidates fused: the swapped tiles with one dot per scale group (dot_k=128), scales a tile ahead (prefetch),
# gate+up in one K loop (fuse_gu), against the default (offline sm_90 counts in docs/perf/moe.md)
S = dict(swap_ab=1)
FUSED = {
    16: [C(16, 128, 4, 128, 1, 4, **S, dot_k=128), C(16, 128, 4, 128, 1, 4, **S, dot_k=128, fuse_gu=1),
         C(16, 64, 4, 64, 1, 4, **S, dot_k=128, fuse_gu=1)],
    256: [C(32, 64, 4, 64, 1, 4, **S, dot_k=128), C(32, 64, 4, 64, 1, 4, **S, dot_k=128, prefetch=1),
          C(32, 64, 4, 64, 1, 4, **S, fuse_gu=1), C(32, 64, 4, 64, 1, 4, **S, dot_k=128, fuse_gu=1),
          C(32, 64, 4, 64, 1, 4, **S, dot_k=128, fuse_gu=1, prefetch=1),
          C(32, 64, 4, 64, 1, 4, **S, dot_k=128, fuse_gu=1, stages=2),
          C(32, 64, 4, 64, 1, 4, **S, dot_k=128, fuse_gu=1, stages=4),
          C(32, 128, 8, 128, 1, 8, **S, dot_k=128), C(32, 128, 8, 128, 1, 8, **S, dot_k=128, fuse_gu=1),
          C(32, 128, 4, 128, 1, 4, **S, dot_k=128, fuse_gu=1)],
}

# --candidates tune: neighbours of the default: the down
# kernel's column block and warps, 64-row blocks, and at 16 tokens the fused loop
P = dict(swap_ab=1, dot_k=128, prefetch=1, fuse_gu=1)
TUNE = {
    256: [C(32, 64, 4, 128, 1, 4, **P), C(32, 64, 4, 128, 1, 8, **P), C(32, 64, 4, 32, 1, 4, **P),
          C(64, 64, 4, 64, 1, 4, **P), C(32, 64, 4, 64, 1, 4, **P, stages=3), C(32, 64, 4, 64, 2, 4, **P)],
    16: [C(16, 128, 4, 128, 1, 4, **P), C(16, 64, 4, 64, 1, 4, **P), C(16, 128, 4, 64, 1, 4, **S)],
}


def short(cfg: C) -> str:
    """The fields of ``cfg`` that differ from the dataclass defaults, ``block_m x up_block_n`` first."""
    extra = [f"{f}={getattr(cfg, f)}" for f in ("up_warps", "stages", "swap_ab", "dot_k", "prefetch", "fuse_gu")
             if getattr(cfg, f) != getattr(C(16, 64, 4, 64, 1, 4), f)]
    return f"{cfg.block_m}x{cfg.up_block_n} " + " ".join(extra)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 256])
    p.add_argument("--recipes", nargs="+", default=["int4", "glm4"], choices=["int4", "glm4"])
    p.add_argument("--candidates", default="all", choices=["all", "swap", "fused", "tune", "library"])
    p.add_argument("--smoke", action="store_true", help="CPU interpreter, shrunk layer: checks the script runs")
    a = p.parse_args()
    dev = torch.device("cpu" if a.smoke else "cuda")
    copy_gbps = load_baseline(dev)["copy_GBps"]
    rows = []
    kernels = {}
    for recipe in a.recipes:
        layer = glm_layer(dev, shrink=a.smoke, recipe=recipe, seed=0)
        ex = layer.experts
        for T in a.tokens:
            if recipe == "glm4" and T != 1:
                continue
            torch.manual_seed(T)
            x = torch.randn(T, layer.hidden_size, device=dev).half()
            ids, w = layer.route(x)
            ref = fused_moe_reference(x, ids, w, ex)
            nbytes = active_bytes(ex, ids)
            dflt = default_config(ids.numel(), ex.num_total, ex.hidden_size, ex.intermediate_size)
            if a.candidates == "library":  # what select_config tries with TRITON_MARLIN_MOE_TUNE=1
                cands = candidate_configs(ids.numel(), ex.num_total, ex.hidden_size, ex.intermediate_size)
            else:
                table = {"swap": SWAP, "fused": FUSED, "tune": TUNE}.get(a.candidates, CANDIDATES)
                cands = [dflt] + [c for c in table.get(T, []) if c != dflt]
            for cfg in cands[:2] if a.smoke else cands:
                try:
                    out = _fused_acc(x, ids, w, ex, uniform=False, config=cfg)
                    err = ((out.double() - ref).norm() / ref.norm()).item()
                    st = time_fn(lambda: _fused_acc(x, ids, w, ex, uniform=False, config=cfg), device=dev,
                                 warmup=1 if a.smoke else 3, repeats=2 if a.smoke else 20,
                                 cuda_graph=not a.smoke, graph_calls=10)
                    us = st.median_us
                    rows.append((recipe, T, cfg, err, us, nbytes / us / 1e3))
                except Exception as exc:  # a configuration that does not compile is reported, not fatal
                    rows.append((recipe, T, cfg, float("nan"), float("nan"), float("nan")))
                    print(f"{recipe} T={T} {cfg}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                r = rows[-1]
                print(f"{r[0]:5s} T={r[1]:4d} err={r[3]:.2e} {r[4]:9.1f} us {r[5]:7.0f} GB/s  {r[2]}", flush=True)
                if a.candidates in ("tune", "library") and not a.smoke and r[4] == r[4]:
                    try:  # gate_up and down apart, every configuration
                        kt = cuda_kernel_times(lambda: _fused_acc(x, ids, w, ex, uniform=False, config=cfg), 5,
                                               warmup=1)
                        split = {n: t for n, (t, _) in kt.items() if n in ("_moe_gate_up_kernel", "_moe_down_kernel")}
                        kernels[(recipe, T, cfg)] = split
                        print(f"  T={T} kernels gate_up {split.get('_moe_gate_up_kernel', float('nan')):8.2f} us "
                              f"down {split.get('_moe_down_kernel', float('nan')):8.2f} us  {short(cfg)}", flush=True)
                    except Exception as exc:  # a diagnostic: report, keep the table
                        print(f"profile failed: {type(exc).__name__}: {exc}", flush=True)
            if a.smoke or a.candidates in ("tune", "library"):
                continue
            # per-kernel GPU times of the default configuration (and of the fastest, where another)
            from torch.profiler import ProfilerActivity, profile
            timed = [r for r in rows if r[0] == recipe and r[1] == T and r[4] == r[4]]
            best = min(timed, key=lambda r: r[4])[2] if timed else dflt
            for cfg in [dflt] + ([best] if best != dflt else []):
                try:
                    _fused_acc(x, ids, w, ex, uniform=False, config=cfg)
                    torch.cuda.synchronize()
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        for _ in range(5):
                            _fused_acc(x, ids, w, ex, uniform=False, config=cfg)
                        torch.cuda.synchronize()
                    print(f"  T={T} profile of {cfg}", flush=True)
                    for ev in prof.key_averages():
                        dt = getattr(ev, "device_time", 0.0)
                        if dt:
                            print(f"  T={T} kernel {ev.key[:60]:60s} count {ev.count:3d} avg {dt:8.2f} us",
                                  flush=True)
                except Exception as exc:  # the profile is a diagnostic: report, keep the table
                    print(f"profile failed: {type(exc).__name__}: {exc}", flush=True)
    print("\nrecipe  T     err        us     GB/s  frac  config")
    for r in rows:
        print(f"{r[0]:6s} {r[1]:4d} {r[3]:9.2e} {r[4]:8.1f} {r[5]:8.0f} {r[5] / copy_gbps:5.2f}  {r[2]}")
    if kernels:
        print("\nrecipe  T   graph us  gate_up    down  vs default  config (fields off their defaults)")
        for r in rows:
            k = kernels.get((r[0], r[1], r[2]), {})
            base = next((b for b in rows if b[0] == r[0] and b[1] == r[1]), r)  # the default: first of its T
            print(f"{r[0]:6s} {r[1]:4d} {r[4]:9.1f} {k.get('_moe_gate_up_kernel', float('nan')):8.1f} "
                  f"{k.get('_moe_down_kernel', float('nan')):7.1f} {r[4] / base[4]:10.3f}  {short(r[2])}")


if __name__ == "__main__":
    main()
