"""The fused dequant-GEMM against dequantize-then-``torch.matmul``.

Three ways to compute ``x @ W.T`` for a quantized W, timed in the same run per shape x format x M:
- ``fused``: triton_marlin.qmatmul (the selected kernel: weights dequantize in registers);
- ``torch_dequant_matmul``: the torch reference dequantizer (``QuantizedTensor.dequantize``) then
  ``torch.matmul``, what a plain PyTorch implementation does on every call;
- ``triton_dequant_cublas``: the Triton dequantize kernel to an fp16 buffer, then cuBLAS.
Records time (CUDA-graph replay on GPU, launch-inclusive beside it), GB/s of the bytes the fused call
must move, and the fused speedup over each.

    python benchmarks/bench_fused_vs_pytorch.py --shapes 4096x4096 --m 1,16,256 --formats int4,fp8
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _gemm_common as G  # noqa: E402

from triton_marlin.bench import BenchRunner, load_baseline  # noqa: E402


def main(argv=None):
    runner = BenchRunner("bench_fused_vs_pytorch", description=__doc__.split("\n\n")[0],
                         add_args=G.add_case_args, argv=argv)
    args = runner.args
    G.prepare(args.device)
    import triton_marlin as tm
    from triton_marlin.kernels import qgemm as Q

    if args.device.type == "cpu":
        runner.note("CPU: Triton kernels run in the interpreter; times are not performance figures")
    dtype = G.act_dtype(args)
    base = load_baseline(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    graph = not args.no_graph
    cases = [(s, f) for s in G.shapes_from(args).items() for f in G.parse_list(args.formats)]
    for (name, (N, K)), fmt in runner.progress(cases, desc="fused vs pytorch"):
        wc = G.make_weight(name, fmt, N, K, args.device, dtype, gen)
        for M in G.m_values_from(args):
            x = torch.randn(M, K, generator=gen).to(dtype).to(args.device)
            impls = {
                "fused": lambda: tm.qmatmul(x, wc.qt),
                "torch_dequant_matmul": lambda: torch.matmul(x, wc.qt.dequantize(dtype).t()),
                "triton_dequant_cublas": lambda: Q.launch(x, wc.qt, None, Q.KernelConfig("dequant")),
            }
            ref = x.float() @ wc.w16.float().t()
            times = {}
            for impl, fn in impls.items():
                err = ((fn().float() - ref).norm() / ref.norm()).item()
                st_g, st_l = G.time_both(fn, args, graph)
                t = G.headline(st_g, st_l)
                times[impl] = t
                case = {"shape": name, "N": N, "K": K, "M": M, "format": fmt, "dtype": args.dtype,
                        "impl": impl}
                if st_g is not None:
                    runner.record(case, "time", st_g.median_us, "us", stats=st_g, timing="graph")
                runner.record(case, "time_launch", st_l.median_us, "us", stats=st_l, timing="launch")
                gbps = wc.io_bytes(M) / (t * 1e-6) / 1e9
                runner.record(case, "bandwidth", gbps, "GB/s", roofline=gbps / base["copy_GBps"])
                runner.record(case, "rel_err_vs_fp32", err, "")
            for impl in ("torch_dequant_matmul", "triton_dequant_cublas"):
                runner.record({"shape": name, "N": N, "K": K, "M": M, "format": fmt, "dtype": args.dtype,
                               "impl": "fused", "against": impl}, "speedup", times[impl] / times["fused"], "x")
    runner.finish()


if __name__ == "__main__":
    main()
