#!/usr/bin/env python
"""The FP4 family on the same weights: fp4 (E2M1 codes, fp16 scales per group), mxfp4 (blocks of 32, E8M0
power-of-two scales) and nvfp4 (blocks of 16, E4M3 scales and one fp32 tensor scale).

Per format: pack throughput (quantize + pack, weights per second), dequantize throughput (to fp16; bytes read
from the packed tensors plus bytes written, against the measured copy bandwidth), and the error of each on the
same weights (MSE, SQNR in dB) beside its bits per weight. Dequantize here is the exact torch reference."""
from __future__ import annotations

import math

import torch

import triton_marlin as tm
from triton_marlin.bench import BenchRunner, load_baseline, time_fn


def _add_args(p):
    p.add_argument("--shape", type=int, nargs=2, metavar=("N", "K"), default=None,
                   help="weight shape (default 8192 8192 on GPU, 1024 1024 on CPU; 64 256 quick)")
    p.add_argument("--fp4-group-sizes", type=int, nargs="+", default=[128, 32],
                   help="group sizes of plain fp4 (mxfp4 and nvfp4 have fixed blocks)")


def main(argv=None):
    runner = BenchRunner("bench_fp4_metal", description=__doc__, add_args=_add_args, argv=argv)
    a = runner.args
    dev = a.device
    n, k = a.shape or ((64, 256) if a.quick else ((8192, 8192) if dev.type == "cuda" else (1024, 1024)))
    base = load_baseline(dev)
    g = torch.Generator().manual_seed(a.seed)
    w = (torch.randn(n, k, generator=g) / math.sqrt(k)).to(dev)
    acc = torch.float32 if dev.type == "mps" else torch.float64
    w_acc = w.to(acc)
    energy = (w_acc ** 2).sum()
    configs = [("fp4", gs) for gs in a.fp4_group_sizes] + [("mxfp4", 32), ("nvfp4", 16)]
    for fmt, gs in runner.progress(configs, desc="fp4 family"):
        case = {"format": fmt, "group_size": gs, "N": n, "K": k}
        qt = tm.quantize(w, fmt, group_size=gs)
        st = time_fn(lambda: tm.quantize(w, fmt, group_size=gs), device=dev, warmup=min(a.warmup, 2),
                     repeats=a.repeats)
        runner.record({**case, "op": "pack"}, "time", st.median_us, "us", stats=st)
        runner.record({**case, "op": "pack"}, "throughput", n * k / (st.median_us * 1e-6) / 1e9, "Gweight/s")

        out = qt.dequantize(torch.float16)
        st = time_fn(lambda: qt.dequantize(torch.float16), device=dev, warmup=a.warmup, repeats=a.repeats)
        moved = qt.nbytes + out.numel() * out.element_size()
        gbps = moved / (st.median_us * 1e-6) / 1e9
        runner.record({**case, "op": "dequant"}, "time", st.median_us, "us", stats=st)
        runner.record({**case, "op": "dequant"}, "throughput", n * k / (st.median_us * 1e-6) / 1e9, "Gweight/s")
        runner.record({**case, "op": "dequant"}, "bandwidth", gbps, "GB/s", roofline=gbps / base["copy_GBps"])

        err = w_acc - qt.dequantize(torch.float32).to(acc)
        runner.record({**case, "op": "error"}, "mse", (err ** 2).mean().item(), "")
        runner.record({**case, "op": "error"}, "sqnr", (10 * torch.log10(energy / (err ** 2).sum())).item(), "dB")
        runner.record({**case, "op": "error"}, "bits_per_weight", qt.bits_per_weight, "bit")
        del qt, out, err
    runner.finish()


if __name__ == "__main__":
    main()
