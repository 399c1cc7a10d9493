"""Register caps on the trellis tensor-core GEMV: the dispatched configuration (``gemv="auto"``, code 1mad2r) against
the same launch compiled with a register cap (``tc_maxnreg``), fp16 cuBLAS in the same process, CUDA-graph replay in
interleaved rounds; M = 1, fp32 rotated activations (the kernel alone, as ``bench_gemm_trellis`` times it).

    python gpu/trellis_regcap.py [--shapes 8192x8192,28672x8192] [--bits 2,3,4] [--rounds 3] [--out FILE]

Caps: 96 and 128 registers for one 16x16 tile a thread (72-80 registers uncapped: more registers let ptxas issue the
next K step's loads earlier; the resident-wave K split follows the programs the cap leaves an SM), 168 / 200 / 232
for two tiles a thread (155-167 uncapped). Each configuration is checked against the fp64 product first (relative
error below 1e-4). Prints one JSON line per timing and a summary per case (best median of the rounds, speedup over
cuBLAS).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from triton_marlin.bench import time_fn  # noqa: E402
from triton_marlin.formats import trellis as tf  # noqa: E402
from triton_marlin.kernels import trellis_gemm as tg  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="8192x8192,28672x8192", help="comma-separated NxK")
    p.add_argument("--bits", default="2,3,4", help="trellis bits per weight")
    p.add_argument("--code", default="1mad2r", help="trellis code (tensor-core decodes: 1mad, 1mad2, 1mad2r)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (the best median is kept)")
    p.add_argument("--out", default=None, help="append JSON lines here")
    args = p.parse_args()
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    gen = torch.Generator().manual_seed(0)
    recs, failures = [], 0
    for shape in args.shapes.split(","):
        N, K = (int(v) for v in shape.split("x"))
        w16 = torch.randn(N, K, generator=gen).to(dev, torch.float16)
        x16 = torch.randn(1, K, generator=gen).to(dev, torch.float16)
        for bits in (int(b) for b in args.bits.split(",")):
            qt = tf.random_trellis_weight(N, K, bits, args.code, -1, gen, device=dev)
            xr = torch.randn(1, K, generator=gen).to(dev)
            ref = xr.double() @ qt.fmt.rotated_weight(qt).double().t()
            cfg = tg.tc_config(qt)
            caps = (0, 96, 128) if cfg["tn"] == 1 else (0, 168, 200, 232)
            ok = []
            for cap in caps:
                y = tg.trellis_matmul_rotated(xr, qt, parts=True, tc_maxnreg=cap).sum(0)
                err = ((y.double() - ref).norm() / ref.norm()).item()
                if err > 1e-4:
                    failures += 1
                    print(f"{shape} {bits} bits cap {cap}: error {err:.2e} FAIL", flush=True)
                    continue
                ok.append(cap)
            best = {}
            for rnd in range(args.rounds):
                cub = time_fn(lambda: torch.nn.functional.linear(x16, w16), device=dev, warmup=5, repeats=30,
                              cuda_graph=True).median_us
                best["cublas"] = min(best.get("cublas", cub), cub)
                for cap in ok:
                    us = time_fn(lambda: tg.trellis_matmul_rotated(xr, qt, parts=True, tc_maxnreg=cap), device=dev,
                                 warmup=5, repeats=30, cuda_graph=True).median_us
                    best[cap] = min(best.get(cap, us), us)
                    rec = {"shape": shape, "bits": bits, "code": args.code, "round": rnd, "tc_config": cfg,
                           "maxnreg": cap, "us": us, "cublas_us": cub}
                    recs.append(rec)
                    print(json.dumps(rec), flush=True)
            print(f"\n{shape} trellis{bits} {args.code} (tn {cfg['tn']}): cuBLAS {best['cublas']:.2f} us")
            for cap in sorted(ok, key=lambda c: best[c]):
                print(f"  maxnreg {cap:3d}: {best[cap]:7.2f} us  {best['cublas'] / best[cap]:5.2f}x", flush=True)
    if args.out:
        with open(args.out, "a") as f:
            for rec in recs:
                f.write(json.dumps(rec) + "\n")
    print(f"failures: {failures}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
