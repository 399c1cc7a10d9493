"""A/B of the selection table's tie rule: where a call's M bucket lies as far from a smaller measured bucket as from a
larger one, the lookup now takes the larger (its configuration takes all the rows in one pass) where it used to take
the smaller. For every case whose two choices differ, both are timed interleaved over rounds in one process (CUDA-graph
replay), with fp16 cuBLAS and torch's int4 kernel of the same case, each output checked against an fp32 product.

    python gpu/qgemm_lookup_ab.py [--out DIR] [--rounds 3]

Writes ``lookup_ab.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import triton_marlin as tm  # noqa: E402
from triton_marlin.bench import time_fn  # noqa: E402
from triton_marlin.kernels import qgemm as Q  # noqa: E402
from triton_marlin.kernels import qgemm_config as C  # noqa: E402

SHAPES = ("3072x2048", "2048x1536", "4096x4096", "8192x8192", "28672x8192")
MS = (2, 8, 32, 128, 512)


def smaller_bucket_lookup(table: dict, N: int, K: int, M: int):
    """The int4 lookup with ties going to the smaller bucket (the rule before this change)."""
    mb = C.m_bucket(M)
    best = None
    for shape, buckets in table["entries"]["int4"].items():
        n, k = (int(v) for v in shape.split("x"))
        ds = abs(math.log(n / N)) + abs(math.log(k / K))
        for b, cfg in buckets.items():
            score = (round(ds + 0.5 * abs(math.log2(int(b)) - math.log2(mb)), 6), int(b))
            if best is None or score < best[0]:
                best = (score, cfg)
    return Q.KernelConfig.from_dict(best[1])


def timed(fn, dev):
    return time_fn(fn, device=dev, warmup=3, repeats=20, cuda_graph=True).median_us


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".", help="folder for lookup_ab.jsonl")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    args = p.parse_args()
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    table = C.current_table(C.device_gpu_name(dev))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rec = open(out / "lookup_ab.jsonl", "w")
    gen = torch.Generator().manual_seed(0)
    from _gemm_common import TorchInt4, WeightCase
    for shape in SHAPES:
        N, K = (int(v) for v in shape.split("x"))
        qt = tm.quantize(torch.randn(N, K, generator=gen) * 0.02, "int4", group_size=128).to(dev)
        w16 = qt.dequantize(torch.float16)
        w32 = w16.float()
        ti = TorchInt4(WeightCase(shape, "int4", N, K, qt, w16))
        for M in MS:
            x = torch.randn(M, K, generator=gen).to(dev, torch.float16)
            new = C.lookup(table, "int4", N, K, M)[0]
            old = smaller_bucket_lookup(table, N, K, M)
            if new == old:
                print(f"{shape:11} M={M:<4} same choice {Q._config_key(new)}", flush=True)
                continue
            ref = x.float() @ w32.T
            errs = {}
            times = {"old": [], "new": []}
            cfgs = {"old": old, "new": new}
            for k, cfg in cfgs.items():
                errs[k] = ((Q.launch(x, qt, None, cfg).float() - ref).norm() / ref.norm()).item()
            for _ in range(args.rounds):
                for k, cfg in cfgs.items():
                    times[k].append(timed(lambda: Q.launch(x, qt, None, cfg), dev))
            med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
            cublas = timed(lambda: torch.nn.functional.linear(x, w16), dev)
            xb = x.to(torch.bfloat16)
            tint4 = timed(lambda: ti(xb), dev)
            row = {"shape": shape, "M": M, "old": old.as_dict(), "new": new.as_dict(), "us": med, "times": times,
                   "err": errs, "cublas_us": cublas, "torch_int4_us": tint4}
            rec.write(json.dumps(row) + "\n")
            rec.flush()
            print(f"{shape:11} M={M:<4} smaller bucket {med['old']:8.2f} us ({old.family})  larger bucket "
                  f"{med['new']:8.2f} us ({new.family})  cuBLAS {cublas:8.2f}  torch int4 {tint4:8.2f}  "
                  f"err {max(errs.values()):.1e}", flush=True)
    rec.close()


if __name__ == "__main__":
    main()
