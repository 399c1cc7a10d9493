"""Register caps (``KernelConfig.maxnreg``) on the quantized GEMM: the table's configuration against the same tiles
compiled with fewer registers (more programs an SM, so a grid fits one wave) or more (room for the prefetched words),
with fp16 cuBLAS, all timed by CUDA-graph replay in one process, in interleaved rounds.

    python gpu/qgemm_regcap.py [--shapes 8192x8192,28672x8192] [--rounds 2] [--out FILE]

Cases (int4, group 128, fp16): M=16, the swap-AB fold tiles (16 x 128, 4 warps, scales ahead) at split-K 2-8 with no
cap and with 80 registers (96 uncapped: 5 programs an SM; 80: 6), and the register-fragment GEMV with two row blocks
(88 registers uncapped, 72 capped: 28 warps an SM); M=1, the register-fragment GEMV with its words one or two tiles
ahead, uncapped and with 96 / 128 registers (``--block-n 64``: 64 columns a program, 2-4 warps, 0-2 tiles ahead,
uncapped and with 128 registers: 448 programs of 4 warps fit one wave of 28672x8192 at 128). ``--default-rule``:
the configuration the default rule gives a shape without a table entry ("table" in the summary) against the same
without its register cap ("uncapped"). Every configuration is checked against an fp32 product first (relative
Frobenius error below 2e-3). Prints one JSON line per timing and a summary per case: median us per configuration
(the best of the rounds), the speedup over cuBLAS.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import triton_marlin as tm  # noqa: E402
from triton_marlin.bench import time_fn  # noqa: E402
from triton_marlin.kernels import qgemm as Q  # noqa: E402
from triton_marlin.kernels import qgemm_config as C  # noqa: E402


def configs(M: int, block_n: int = 32) -> list:
    KC = Q.KernelConfig
    out = []
    if M == 16:
        for split in (2, 3, 4, 6, 8):
            for cap in (0, 80):
                out.append(KC("dot", block_m=16, block_n=128, split_k=split, num_warps=4, num_stages=3, fold=1,
                              prefetch=1, swap_ab=1, maxnreg=cap))
        for cap in (0, 72):
            out.append(KC("mma", block_m=16, block_n=32, num_warps=4, prefetch=0, maxnreg=cap))
        out.append(KC("mma", block_m=16, block_n=32, num_warps=2, prefetch=0))
    else:
        caps = (0, 96, 128) if block_n == 32 else (0, 128)
        for nw in ((2, 4, 8) if block_n == 32 else (2, 4)):
            for pf in ((1, 2) if block_n == 32 else (0, 1, 2)):
                for cap in caps:
                    out.append(KC("mma", block_m=8, block_n=block_n, num_warps=nw, prefetch=pf, maxnreg=cap))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="8192x8192,28672x8192", help="comma-separated NxK")
    p.add_argument("--m", default="1,16", help="activation rows (1 and/or 16)")
    p.add_argument("--block-n", type=int, default=32, choices=(32, 64),
                   help="M=1: columns a program (64: 2-4 warps, 0-2 tiles ahead, no cap / 128 registers)")
    p.add_argument("--default-rule", action="store_true",
                   help="instead: the default rule's configuration (no table) against the same without its cap")
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds (the best median is kept)")
    p.add_argument("--out", default=None, help="append JSON lines here")
    args = p.parse_args()
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    gen = torch.Generator().manual_seed(0)
    recs, failures = [], 0
    for shape in args.shapes.split(","):
        N, K = (int(v) for v in shape.split("x"))
        w = torch.randn(N, K, generator=gen) * 0.02
        w16 = w.to(dev, torch.float16)
        qt = tm.quantize(w, "int4", group_size=128).to(dev)
        wt = qt.dequantize(torch.float32).T.contiguous()
        for M in (int(v) for v in args.m.split(",")):
            x = torch.randn(M, K, generator=gen).to(dev, torch.float16)
            ref = x.float() @ wt
            if args.default_rule:
                table = C.default_config(M, N, K, qt, dev)
                cands = [("table", table), ("uncapped", replace(table, maxnreg=0))]
            else:
                table = C.select_config(x, qt)
                cands = [("table", table)] + [(Q._config_key(c), c) for c in configs(M, args.block_n)]
            ok = []
            for name, cfg in cands:
                try:
                    y = Q.launch(x, qt, None, cfg).float()
                    err = ((y - ref).norm() / ref.norm()).item()
                except Exception as e:  # noqa: BLE001 (report, keep going)
                    print(f"{shape} M={M} {name}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                    continue
                if err > 2e-3:
                    failures += 1
                    print(f"{shape} M={M} {name}: error {err:.2e} FAIL", flush=True)
                    continue
                ok.append((name, cfg))
            best = {}
            for rnd in range(args.rounds):
                cub = time_fn(lambda: torch.nn.functional.linear(x, w16), device=dev, warmup=5, repeats=30,
                              cuda_graph=True).median_us
                best["cublas"] = min(best.get("cublas", cub), cub)
                for name, cfg in ok:
                    us = time_fn(lambda: Q.launch(x, qt, None, cfg), device=dev, warmup=5, repeats=30,
                                 cuda_graph=True).median_us
                    best[name] = min(best.get(name, us), us)
                    rec = {"shape": shape, "M": M, "round": rnd, "config": cfg.as_dict(), "label": name, "us": us,
                           "cublas_us": cub}
                    recs.append(rec)
                    print(json.dumps(rec), flush=True)
            print(f"\n{shape} M={M}: cuBLAS {best['cublas']:.2f} us, table {best.get('table', float('nan')):.2f} us "
                  f"({json.dumps(table.as_dict())})")
            for name, _ in sorted(ok, key=lambda nc: best[nc[0]]):
                print(f"  {best[name]:8.2f} us  {best['cublas'] / best[name]:5.2f}x  {name}")
    if args.out:
        with open(args.out, "a") as f:
            for rec in recs:
                f.write(json.dumps(rec) + "\n")
    print(f"failures: {failures}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
