#!/usr/bin/env python
"""The MoE kernels one by one at GLM-4.7-Flash expert dimensions (64 experts, hidden 2048, intermediate 1536,
top-4 + 1 shared slot): the routing kernel, the token/expert alignment kernel, and the fused expert kernels
(gate_up with SwiGLU + down with routing weight and scatter-add), each beside its torch reference.

Times are by CUDA-graph replay (launch overhead excluded) with the launch-inclusive time beside them. The
expert kernels also report the bandwidth of the active experts' weight bytes (each expert read once is the
floor) against the measured copy bandwidth. ``--formats`` runs the expert kernels for several weight formats
(every expert in that format).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _moe_common import active_bytes, cap_interpreter_runs, fused_note, uniform_experts  # noqa: E402
from triton_marlin.bench import BenchRunner, load_baseline, time_fn  # noqa: E402
from triton_marlin.device import triton_enabled_for  # noqa: E402
from triton_marlin.moe.align import align_capacity, align_reference  # noqa: E402
from triton_marlin.moe.routing import RoutingConfig, route_reference  # noqa: E402
from triton_marlin.moe.strategies import rel_error  # noqa: E402

FORMATS = ("int2", "int3", "int4", "int8", "fp4", "mxfp4", "nvfp4", "fp8")


def add_args(p):
    p.add_argument("--tokens", type=int, nargs="+", default=None,
                   help="tokens per forward (default 1 16 256; 1 16 with --quick; 2 off CUDA)")
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=["int4"], help="expert weight formats")


def main(argv=None):
    runner = BenchRunner("bench_moe_kernel", description=__doc__, add_args=add_args, argv=argv)
    a = runner.args
    dev = a.device
    cuda = dev.type == "cuda"
    tokens = a.tokens or ([1, 16] if a.quick and cuda else [1, 16, 256] if cuda else [2])
    tokens = cap_interpreter_runs(runner, tokens)
    E, K_ROUTED, S = (64, 4, 1) if cuda else (8, 2, 1)
    H, I = (2048, 1536) if cuda else (64, 64)
    if not cuda:
        runner.note(f"off CUDA: {E} experts, top-{K_ROUTED} + {S} shared, hidden {H}, intermediate {I}")
    note = fused_note(dev)
    if note:
        runner.note(note)
    triton_ok = triton_enabled_for(dev)
    base = load_baseline(dev)
    cfg = RoutingConfig(E, K_ROUTED, "sigmoid", routed_scaling_factor=1.8)
    bias = (torch.rand(E, device=dev) - 0.5) * 0.02

    def timed(fn, case, floor_bytes=None):
        if cuda:
            st = time_fn(fn, device=dev, warmup=a.warmup, repeats=a.repeats, cuda_graph=True)
            runner.record(case, "graph_time", st.median_us, "us", stats=st)
        st_l = time_fn(fn, device=dev, warmup=a.warmup, repeats=a.repeats)
        runner.record(case, "time", st_l.median_us, "us", stats=st_l)
        if floor_bytes:
            us = st.median_us if cuda else st_l.median_us
            gbps = floor_bytes / (us * 1e-6) / 1e9
            runner.record(case, "weight_bandwidth", gbps, "GB/s", roofline=gbps / base["copy_GBps"])

    for T in runner.progress(tokens, desc="tokens"):
        logits = torch.randn(T, E, device=dev)
        ref = route_reference(logits, cfg, bias)
        timed(lambda: route_reference(logits, cfg, bias, check_finite=False),
              {"kernel": "route", "impl": "torch", "tokens": T})
        if triton_ok:
            from triton_marlin.kernels.moe_align import align_triton, route_triton
            ids, _ = route_triton(logits, cfg, bias, num_shared=S)
            if not torch.equal(ids[:, :K_ROUTED], ref.topk_ids):
                raise RuntimeError("routing kernel disagrees with the reference")
            timed(lambda: route_triton(logits, cfg, bias, num_shared=S), {"kernel": "route", "impl": "triton",
                                                                          "tokens": T})
        ids = torch.cat([ref.topk_ids, torch.full((T, S), E, dtype=torch.int32, device=dev)], dim=1)
        weights = torch.cat([ref.topk_weights, torch.ones(T, S, device=dev)], dim=1)
        from triton_marlin.kernels.moe_gemm import default_config
        mcfg = default_config(ids.numel(), E + S, H, I)
        if not cuda:  # the reference alignment loops on the host; on the GPU that would time copies
            timed(lambda: align_reference(ids, E + S, max(16, mcfg.block_m)), {"kernel": "align", "impl": "torch",
                                                                               "tokens": T})
        if not triton_ok:
            continue
        cap, blocks = align_capacity(ids.numel(), E + S, mcfg.block_m)
        timed(lambda: align_triton(ids, E + S, mcfg.block_m, cap, blocks), {"kernel": "align", "impl": "triton",
                                                                            "tokens": T})
        sorted_ids, expert_ids, npost = align_triton(ids, E + S, mcfg.block_m, cap, blocks)
        for fmt in a.formats:
            gs = None if fmt in ("mxfp4", "nvfp4", "fp8") else (128 if cuda else 32)
            experts = uniform_experts(E + S, H, I, dev, fmt, gs, seed=a.seed)
            from triton_marlin.kernels.moe_gemm import fused_moe_reference, moe_gemm_launch
            x = torch.randn(T, H, device=dev).half()
            out = torch.empty(T, H, device=dev)
            flats = [experts.flat(p) for p in ("gate", "up", "down")]

            def run():
                return moe_gemm_launch(x, weights, sorted_ids, expert_ids, npost, *flats, config=mcfg,
                                       uniform=True, out=out)

            err = rel_error(run(), fused_moe_reference(x, ids, weights, experts))
            case = {"kernel": "experts", "impl": "triton", "tokens": T, "format": fmt, "block_m": mcfg.block_m}
            runner.record(case, "rel_error_vs_fp64", err, "")
            timed(run, case, floor_bytes=active_bytes(experts, ids))
            del experts, flats
    return runner.finish()


if __name__ == "__main__":
    main()
