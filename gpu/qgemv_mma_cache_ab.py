"""A/B of the mma GEMV's load cache policy (``qgemv_mma.CACHE_MODE``: 0 default, 1 weight words L2-only, 2 also the
activations marked last out) on fixed launches, the modes interleaved over rounds in one process (CUDA-graph
replay), each output checked against an fp32 product first.

    python gpu/qgemv_mma_cache_ab.py [--out DIR] [--rounds 3]

Cases: the table's mma entries of int4 on 8192x8192 and 28672x8192 at M = 1 and 8, int8 / int2 / fp4 at M = 1, and
mma launches at M = 16 (two row blocks: the activations are twice a tile's weight bytes, so their L1 hit rate is
what the policy is for). Writes ``cache_ab.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import triton_marlin as tm  # noqa: E402
from triton_marlin.bench import time_fn  # noqa: E402
from triton_marlin.kernels import qgemm as Q  # noqa: E402
from triton_marlin.kernels import qgemm_config as C  # noqa: E402
from triton_marlin.kernels import qgemv_mma  # noqa: E402

M16 = [Q.KernelConfig("mma", block_m=16, block_n=32, num_warps=4, prefetch=1),
       Q.KernelConfig("mma", block_m=16, block_n=32, num_warps=8, prefetch=1),
       Q.KernelConfig("mma", block_m=16, block_n=64, num_warps=4, prefetch=0),
       Q.KernelConfig("mma", block_m=16, block_n=16, num_warps=8, prefetch=1)]
CASES = [("int4", "8192x8192", 1), ("int4", "8192x8192", 8), ("int4", "28672x8192", 1), ("int4", "28672x8192", 8),
         ("int8", "8192x8192", 1), ("int8", "28672x8192", 1), ("int2", "8192x8192", 1), ("fp4", "8192x8192", 1),
         ("int4", "8192x8192", 16), ("int4", "28672x8192", 16)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".", help="folder for cache_ab.jsonl")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per mode")
    p.add_argument("--modes", default="0,1,2", help="CACHE_MODE values to compare")
    args = p.parse_args()
    modes = [int(v) for v in args.modes.split(",")]
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rec = open(out / "cache_ab.jsonl", "w")
    gen = torch.Generator().manual_seed(0)
    qts = {}
    for fmt, shape, M in CASES:
        N, K = (int(v) for v in shape.split("x"))
        if (fmt, shape) not in qts:
            qts[(fmt, shape)] = tm.quantize(torch.randn(N, K, generator=gen) * 0.02, fmt, group_size=128).to(dev)
        qt = qts[(fmt, shape)]
        x = torch.randn(M, K, generator=gen).to(dev, torch.float16)
        ref = x.float() @ qt.dequantize(torch.float32).T
        table = C.select_config(x, qt)
        cfgs = [table] if table.family == "mma" else []
        if M > 8:
            cfgs += [c for c in M16 if c not in cfgs]
        for cfg in cfgs:
            times = {m: [] for m in modes}
            errs = {}
            for m in modes:
                qgemv_mma.CACHE_MODE = m
                y = Q.launch(x, qt, None, cfg)
                errs[m] = ((y.float() - ref).norm() / ref.norm()).item()
            for _ in range(args.rounds):
                for m in modes:
                    qgemv_mma.CACHE_MODE = m
                    times[m].append(time_fn(lambda: Q.launch(x, qt, None, cfg), device=dev, warmup=3, repeats=20,
                                            cuda_graph=True).median_us)
            qgemv_mma.CACHE_MODE = 0
            med = {m: sorted(t)[len(t) // 2] for m, t in times.items()}
            row = {"format": fmt, "shape": shape, "M": M, "config": cfg.as_dict(), "table": cfg == table,
                   "us": med, "times": times, "err": errs}
            rec.write(json.dumps(row) + "\n")
            rec.flush()
            print(f"{fmt:5} {shape:11} M={M:<3} {Q._config_key(cfg)}{' (table)' if cfg == table else ''}: "
                  + "  ".join(f"mode {m}: {med[m]:7.2f} us" for m in modes)
                  + f"  err {max(errs.values()):.1e}", flush=True)
    rec.close()


if __name__ == "__main__":
    main()
