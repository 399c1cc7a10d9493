"""How fast is the dequantize step of the dequantize + cuBLAS path? (int4 g128, fp16 out, CUDA graphs)

For each weight shape: the Triton dequantize kernel (``qgemm.dequantize_kn``) at a few block widths,
its effective GB/s over the bytes it must move (packed weight + scales read, fp16 [K, N] written)
and the fraction of the measured copy bandwidth; then cuBLAS alone on that fp16 weight and the whole
dequantize + cuBLAS path at M = 256 and 1024, to show which part of the path costs what.

    python gpu/qgemm_dequant.py --shapes 8192x8192,28672x8192
"""
import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="8192x8192,28672x8192")
    p.add_argument("--m", default="256,1024")
    args = p.parse_args()
    import _gemm_common as G
    from triton_marlin.bench import load_baseline, time_fn
    from triton_marlin.kernels import qgemm as Q

    dev = torch.device("cuda")
    copy = load_baseline(dev)["copy_GBps"]
    gen = torch.Generator().manual_seed(0)
    print(f"copy bandwidth (harness baseline): {copy:.0f} GB/s")
    print(f"{'shape':>12} {'what':>28} {'us':>8} {'GB/s':>8} {'copy %':>7}")
    for shape in args.shapes.split(","):
        N, K = (int(v) for v in shape.split("x"))
        wc = G.make_weight(shape, "int4", N, K, dev, torch.float16, gen)
        moved = wc.qt.nbytes + N * K * 2
        ref = wc.w16.t()
        for bn, warps in ((64, 4), (128, 4), (256, 4), (256, 8)):
            w = Q.dequantize_kn(wc.qt, torch.float16, block_n=bn, num_warps=warps)
            err = ((w.float() - ref.float()).norm() / ref.float().norm()).item()
            assert err < 2.0 ** -10, f"dequantize_kn differs from the reference dequantizer ({err:.2e})"
            st = time_fn(lambda: Q.dequantize_kn(wc.qt, torch.float16, block_n=bn, num_warps=warps),
                         device=dev, warmup=3, repeats=15, cuda_graph=True)
            gbps = moved / (st.median_us * 1e-6) / 1e9
            print(f"{shape:>12} {f'dequant bn{bn} w{warps}':>28} {st.median_us:8.1f} {gbps:8.0f} "
                  f"{100 * gbps / copy:7.1f}")
        w16 = Q.dequantize_kn(wc.qt, torch.float16)
        for M in (int(m) for m in args.m.split(",")):
            x = torch.randn(M, K, generator=gen).half().to(dev)
            mm = time_fn(lambda: x @ w16, device=dev, warmup=3, repeats=15, cuda_graph=True)
            both = time_fn(lambda: Q.launch(x, wc.qt, None, Q.KernelConfig("dequant")), device=dev,
                           warmup=3, repeats=15, cuda_graph=True)
            print(f"{shape:>12} {f'M={M} cuBLAS on fp16 W':>28} {mm.median_us:8.1f}")
            print(f"{shape:>12} {f'M={M} dequant + cuBLAS':>28} {both.median_us:8.1f}")


if __name__ == "__main__":
    main()
