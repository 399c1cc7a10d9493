"""Quantized GEMM (triton_marlin.qmatmul) against fp16 cuBLAS and torch's int4 kernel, same run.

Per case (shape x format x M): time by CUDA-graph replay (GPU time, launch excluded) and
launch-inclusive time; effective GB/s of the bytes the call must move (packed weight with scales,
x, out) and its fraction of the measured copy bandwidth; TFLOP/s and its fraction of the measured
fp16 matmul rate; speedup against fp16 cuBLAS (torch.nn.functional.linear on the dequantized weight)
and against torch._weight_int4pack_mm (int4 only; it takes bf16 activations); the kernel
configuration the selection chose; relative error against an fp32 reference.

    python benchmarks/bench_gemm.py --shapes 8192x8192,28672x8192 --m 1,16,64,256 --formats int4,fp4
    python benchmarks/bench_gemm.py --shapes 8192x8192 --m 1,16 --formats int4,int8 --format-m "int8=1"
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _gemm_common as G  # noqa: E402

from triton_marlin.bench import BenchRunner, load_baseline  # noqa: E402


def add_args(p):
    G.add_case_args(p)
    p.add_argument("--format-m", default=None,
                   help="per-format batch sizes overriding --m, e.g. 'fp4=1;int8=1,16' (formats not named "
                        "use --m)")


def format_m_values(args) -> dict:
    """{format: [M, ...]} from --format-m (formats not named take --m)."""
    out = {}
    for part in (args.format_m or "").split(";"):
        if not part.strip():
            continue
        if "=" not in part:
            raise SystemExit(f"--format-m: expected FORMAT=M1,M2 items separated by ';', got {part!r}")
        fmt, ms = part.split("=", 1)
        out[fmt.strip()] = G.parse_list(ms, int)
    return out


def main(argv=None):
    runner = BenchRunner("bench_gemm", description=__doc__.split("\n\n")[0],
                         add_args=add_args, argv=argv)
    args = runner.args
    G.prepare(args.device)
    import triton_marlin as tm
    from triton_marlin.kernels import qgemm_config as C

    dtype = G.act_dtype(args)
    base = load_baseline(args.device)
    copy_gbps = base["copy_GBps"]
    mm_tflops = base["matmul_TFLOPs"][args.dtype]
    gen = torch.Generator().manual_seed(args.seed)
    graph = not args.no_graph
    int4_reason = G.torch_int4_available(args.device)
    if int4_reason:
        runner.note(f"torch int4 baseline skipped: {int4_reason}")
    if args.device.type == "cpu":
        runner.note("CPU: Triton kernels run in the interpreter; times are not performance figures")

    per_format = format_m_values(args)
    cases = [(s, f, m) for s in G.shapes_from(args).items() for f in G.parse_list(args.formats)
             for m in per_format.get(f, G.m_values_from(args))]
    weights = {}
    for (name, (N, K)), fmt, M in runner.progress(cases, desc="gemm"):
        key = (name, fmt)
        if key not in weights:
            weights.clear()
            G_case = G.make_weight(name, fmt, N, K, args.device, dtype, gen)
            tiny = None
            if fmt == "int4" and not int4_reason:
                try:
                    tiny = G.TorchInt4(G_case)
                except (ValueError, RuntimeError) as e:
                    runner.note(f"torch int4 baseline skipped for {name}: {e}")
            weights[key] = (G_case, tiny)
        wc, tiny = weights[key]
        x = torch.randn(M, K, generator=gen).to(dtype).to(args.device)
        base_case = {"shape": name, "N": N, "K": K, "M": M, "format": fmt, "dtype": args.dtype}

        out = tm.qmatmul(x, wc.qt)
        ref = x.float() @ wc.w16.float().t()
        err = ((out.float() - ref).norm() / ref.norm()).item()
        path = {"selection": C.explain(x, wc.qt), **C.select_config(x, wc.qt).as_dict()}

        ours_g, ours_l = G.time_both(lambda: tm.qmatmul(x, wc.qt), args, graph)
        fp_g, fp_l = G.time_both(lambda: F.linear(x, wc.w16), args, graph)
        ours_t, fp_t = G.headline(ours_g, ours_l), G.headline(fp_g, fp_l)
        timing = "graph" if ours_g is not None else "launch"

        case = dict(base_case, impl="triton_marlin")
        if ours_g is not None:
            runner.record(case, "time", ours_g.median_us, "us", stats=ours_g, timing="graph", path=path)
        runner.record(case, "time_launch", ours_l.median_us, "us", stats=ours_l, timing="launch", path=path)
        gbps = wc.io_bytes(M) / (ours_t * 1e-6) / 1e9
        runner.record(case, "bandwidth", gbps, "GB/s", roofline=gbps / copy_gbps, timing=timing)
        tflops = wc.flops(M) / (ours_t * 1e-6) / 1e12
        runner.record(case, "tflops", tflops, "TFLOP/s", roofline=tflops / mm_tflops, timing=timing)
        runner.record(case, "speedup_vs_fp16", fp_t / ours_t, "x", timing=timing)
        runner.record(case, "rel_err_vs_fp32", err, "", timing=timing)

        dense = ("fp16" if dtype == torch.float16 else "bf16") + \
            ("_cublas" if args.device.type == "cuda" else f"_torch_{args.device.type}")
        fcase = dict(base_case, impl=dense)
        if fp_g is not None:
            runner.record(fcase, "time", fp_g.median_us, "us", stats=fp_g, timing="graph")
        runner.record(fcase, "time_launch", fp_l.median_us, "us", stats=fp_l, timing="launch")
        fgbps = wc.fp16_bytes(M) / (fp_t * 1e-6) / 1e9
        runner.record(fcase, "bandwidth", fgbps, "GB/s", roofline=fgbps / copy_gbps, timing=timing)

        if tiny is not None:
            xb = x.to(torch.bfloat16)
            t_g, t_l = G.time_both(lambda: tiny(xb), args, graph)
            t_t = G.headline(t_g, t_l)
            tcase = dict(base_case, impl="torch_int4", dtype="bfloat16")
            if t_g is not None:
                runner.record(tcase, "time", t_g.median_us, "us", stats=t_g, timing="graph")
            runner.record(tcase, "time_launch", t_l.median_us, "us", stats=t_l, timing="launch")
            t_out = tiny(xb).float()
            t_err = ((t_out - ref).norm() / ref.norm()).item()
            runner.record(tcase, "rel_err_vs_fp32", t_err, "", timing=timing)
            runner.record(case, "speedup_vs_torch_int4", t_t / ours_t, "x", timing=timing)
    runner.finish()


if __name__ == "__main__":
    main()
