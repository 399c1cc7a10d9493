#!/usr/bin/env python
"""FP16 vs BF16 vs FP32 on the same work: square matmul (compute-bound, TFLOP/s against the measured matmul
rate of that dtype), matrix-vector product (memory-bound, GB/s against the measured copy bandwidth), and an
elementwise add and a sum reduction (GB/s)."""
from __future__ import annotations

import torch

from triton_marlin.bench import BenchRunner, load_baseline, time_fn

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _add_args(p):
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["float16", "bfloat16", "float32"])
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="matrix sides (default 1024 4096 8192 on GPU, 256 512 on CPU; 128 quick)")


def main(argv=None):
    runner = BenchRunner("bench_dtype_perf", description=__doc__, add_args=_add_args, argv=argv)
    a = runner.args
    dev = a.device
    sizes = a.sizes or ([128] if a.quick else ([1024, 4096, 8192] if dev.type == "cuda" else [256, 512]))
    base = load_baseline(dev)
    if dev.type == "cpu" and "float16" in a.dtypes:
        runner.note("CPU float16 matmul runs an unoptimized path in most torch builds; its rate says little "
                    "about fp16 arithmetic")
    for name in runner.progress(a.dtypes, desc="dtypes"):
        dtype = DTYPES[name]
        peak = base["matmul_TFLOPs"].get(name)
        for n in sizes:
            m1 = torch.randn(n, n, device=dev).to(dtype)
            m2 = torch.randn(n, n, device=dev).to(dtype)
            out = torch.empty(n, n, device=dev, dtype=dtype)
            st = time_fn(lambda: torch.matmul(m1, m2, out=out), device=dev, warmup=a.warmup, repeats=a.repeats)
            tflops = 2 * n ** 3 / (st.median_us * 1e-6) / 1e12
            case = {"op": "matmul", "size": n, "dtype": name}
            runner.record(case, "time", st.median_us, "us", stats=st)
            runner.record(case, "rate", tflops, "TFLOP/s", roofline=tflops / peak if peak else None)

            v = torch.randn(n, device=dev).to(dtype)
            y = torch.empty(n, device=dev, dtype=dtype)
            st = time_fn(lambda: torch.mv(m1, v, out=y), device=dev, warmup=a.warmup, repeats=a.repeats)
            gbps = (n * n + 2 * n) * m1.element_size() / (st.median_us * 1e-6) / 1e9
            case = {"op": "gemv", "size": n, "dtype": name}
            runner.record(case, "time", st.median_us, "us", stats=st)
            runner.record(case, "bandwidth", gbps, "GB/s", roofline=gbps / base["copy_GBps"])

            st = time_fn(lambda: torch.add(m1, m2, out=out), device=dev, warmup=a.warmup, repeats=a.repeats)
            gbps = 3 * n * n * m1.element_size() / (st.median_us * 1e-6) / 1e9
            case = {"op": "add", "size": n, "dtype": name}
            runner.record(case, "time", st.median_us, "us", stats=st)
            runner.record(case, "bandwidth", gbps, "GB/s", roofline=gbps / base["copy_GBps"])

            st = time_fn(lambda: m1.sum(dim=1), device=dev, warmup=a.warmup, repeats=a.repeats)
            gbps = (n * n + n) * m1.element_size() / (st.median_us * 1e-6) / 1e9
            case = {"op": "row_sum", "size": n, "dtype": name}
            runner.record(case, "time", st.median_us, "us", stats=st)
            runner.record(case, "bandwidth", gbps, "GB/s", roofline=gbps / base["copy_GBps"])
            del m1, m2, out, v, y
    runner.finish()


if __name__ == "__main__":
    main()
