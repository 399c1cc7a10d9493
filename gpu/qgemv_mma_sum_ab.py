"""A/B of the mma GEMV's cross-warp reduction (``qgemv_mma.ONE_SUM``: the warps' partial sums in one reduction, or
one per accumulator) on every mma entry of the packaged table, the two interleaved over rounds in one process
(CUDA-graph replay), each output checked against an fp32 product first.

    python gpu/qgemv_mma_sum_ab.py [--out DIR] [--rounds 3]

Writes ``sum_ab.jsonl`` (per entry: times per mode, errors).
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

QUANT = {"mxfp4": dict(group_size=32), "nvfp4": dict(group_size=16), "fp8": dict(group_size=-1)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".", help="folder for sum_ab.jsonl")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per mode")
    args = p.parse_args()
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    table = C.current_table(C.device_gpu_name(dev))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rec = open(out / "sum_ab.jsonl", "w")
    gen = torch.Generator().manual_seed(0)
    for fmt, shapes in sorted(table["entries"].items()):
        for shape, buckets in sorted(shapes.items()):
            mma = {int(mb): Q.KernelConfig.from_dict(d) for mb, d in buckets.items() if d.get("family") == "mma"}
            if not mma or all(c.num_warps == 1 for c in mma.values()):
                continue
            N, K = (int(v) for v in shape.split("x"))
            qt = tm.quantize(torch.randn(N, K, generator=gen) * 0.02, fmt,
                             **QUANT.get(fmt, dict(group_size=128))).to(dev)
            w32 = qt.dequantize(torch.float32)
            for M, cfg in sorted(mma.items()):
                x = torch.randn(M, K, generator=gen).to(dev, torch.float16)
                ref = x.float() @ w32.T
                times = {m: [] for m in (False, True)}
                errs = {}
                for m in times:
                    qgemv_mma.ONE_SUM = m
                    y = Q.launch(x, qt, None, cfg)
                    errs[m] = ((y.float() - ref).norm() / ref.norm()).item()
                for _ in range(args.rounds):
                    for m in times:
                        qgemv_mma.ONE_SUM = m
                        times[m].append(time_fn(lambda: Q.launch(x, qt, None, cfg), device=dev, warmup=3,
                                                repeats=20, cuda_graph=True).median_us)
                qgemv_mma.ONE_SUM = True
                med = {m: sorted(t)[len(t) // 2] for m, t in times.items()}
                rec.write(json.dumps({"format": fmt, "shape": shape, "M": M, "config": cfg.as_dict(),
                                      "us_per_accumulator": med[False], "us_one_sum": med[True],
                                      "times": {str(k): v for k, v in times.items()},
                                      "err": {str(k): v for k, v in errs.items()}}) + "\n")
                rec.flush()
                print(f"{fmt:5} {shape:11} M={M:<3} w{cfg.num_warps} bn{cfg.block_n}: per accumulator "
                      f"{med[False]:7.2f} us, one sum {med[True]:7.2f} us ({med[True] / med[False] - 1:+.1%}), "
                      f"err {max(errs.values()):.1e}", flush=True)
    rec.close()


if __name__ == "__main__":
    main()
