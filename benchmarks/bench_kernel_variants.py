"""Every quantized-GEMM kernel variant on every shape: the evidence behind the selection table.

For each shape x format x M, times each candidate configuration (gemv / tensor-core dot with its
block sizes, split-K, warps and pipeline stages / Triton dequantize + cuBLAS) by CUDA-graph replay,
checks its answer against an fp32 reference first (a variant that is wrong is reported, never
timed), and records time, GB/s (fraction of copy bandwidth) and the speedup over fp16 cuBLAS on
the same weight. The fastest variant per case is marked ``best``.

    python benchmarks/bench_kernel_variants.py --shapes 8192x8192 --m 1,16 --formats int4
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _gemm_common as G  # noqa: E402

from triton_marlin.bench import BenchRunner, load_baseline  # noqa: E402

# fp16 weights, fp32 accumulation, one rounding of the output: 2**-10 (see tests/test_qgemm.py)
TOL = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -6}


def add_args(p):
    G.add_case_args(p)
    p.add_argument("--families", default="gemv,dot,dequant,mma", help="kernel families to include")


def sweep(runner, args, on_case=None):
    """Time every candidate on every case; returns {(shape, fmt, M): [(config, us), ...]} sorted."""
    from triton_marlin.kernels import qgemm as Q

    dtype = G.act_dtype(args)
    base = load_baseline(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    families = set(G.parse_list(args.families))
    graph = not args.no_graph
    results = {}
    cases = [(s, f) for s in G.shapes_from(args).items() for f in G.parse_list(args.formats)]
    for (name, (N, K)), fmt in runner.progress(cases, desc="weights"):
        wc = G.make_weight(name, fmt, N, K, args.device, dtype, gen)
        for M in G.m_values_from(args):
            x = torch.randn(M, K, generator=gen).to(dtype).to(args.device)
            ref = x.float() @ wc.w16.float().t()
            fp_g, fp_l = G.time_both(lambda: F.linear(x, wc.w16), args, graph)
            fp_t = G.headline(fp_g, fp_l)
            case0 = {"shape": name, "N": N, "K": K, "M": M, "format": fmt, "dtype": args.dtype}
            runner.record(dict(case0, variant="fp16_dense"), "time", fp_t, "us",
                          stats=fp_g or fp_l, timing="graph" if fp_g else "launch")
            timed = []
            for cfg in G.candidate_configs(M, quick=args.quick):
                if cfg.family not in families:
                    continue
                if cfg.family == "mma" and Q.mma_unsupported_reason(x, wc.qt) is not None:
                    continue  # would run another kernel under this label
                label = Q._config_key(cfg)
                case = dict(case0, variant=label, family=cfg.family)
                try:
                    out = Q.launch(x, wc.qt, None, cfg)
                except Exception as e:  # a config the compiler rejects (e.g. out of shared memory)
                    runner.note(f"{name} {fmt} M={M} {label}: did not run ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:120]})")
                    continue
                err = ((out.float() - ref).norm() / ref.norm()).item()
                if not err < TOL[dtype]:
                    runner.record(case, "rel_err_vs_fp32", err if err == err else 1e30, "", wrong=True)
                    runner.note(f"{name} {fmt} M={M} {label}: WRONG (rel err {err:.3e}), not timed")
                    continue
                st_g, st_l = G.time_both(lambda: Q.launch(x, wc.qt, None, cfg), args, graph)
                t = G.headline(st_g, st_l)
                runner.record(case, "time", t, "us", stats=st_g or st_l,
                              timing="graph" if st_g else "launch")
                gbps = wc.io_bytes(M) / (t * 1e-6) / 1e9
                runner.record(case, "bandwidth", gbps, "GB/s", roofline=gbps / base["copy_GBps"])
                runner.record(case, "speedup_vs_fp16", fp_t / t, "x")
                timed.append((cfg, t))
            timed.sort(key=lambda ct: ct[1])
            results[(name, fmt, M)] = timed
            if timed:
                best_cfg, best_t = timed[0]
                runner.record(dict(case0, variant=Q._config_key(best_cfg), family=best_cfg.family),
                              "best_time", best_t, "us", best=True, fp16_us=fp_t,
                              speedup_vs_fp16=fp_t / best_t)
            if on_case is not None:
                on_case(name, fmt, M, timed, fp_t)
    return results


def main(argv=None):
    runner = BenchRunner("bench_kernel_variants", description=__doc__.split("\n\n")[0],
                         add_args=add_args, argv=argv)
    G.prepare(runner.args.device)
    if runner.args.device.type == "cpu":
        runner.note("CPU: Triton kernels run in the interpreter; times are not performance figures")
    sweep(runner, runner.args)
    runner.finish()


if __name__ == "__main__":
    main()
