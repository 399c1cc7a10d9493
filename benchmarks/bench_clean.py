#!/usr/bin/env python
"""Minimal sanity benchmark: a vector add and a square matmul, timed by the harness, checked for correctness.

If these figures look wrong (bandwidth above the copy ceiling, a matmul faster than the device's peak), the
timing setup is broken; every other benchmark rests on the same harness.
"""
from __future__ import annotations

import torch

from triton_marlin.bench import BenchRunner, load_baseline, time_fn

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def main(argv=None):
    runner = BenchRunner("bench_clean", description=__doc__, argv=argv, add_args=lambda p: (
        p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                       help="element type (default: float16 on GPU, float32 on CPU)"),
        p.add_argument("--numel", type=int, default=None, help="vector length of the add (default 2^26; 2^18 quick)"),
        p.add_argument("--size", type=int, default=None, help="matmul side (default 4096 on GPU, 512 on CPU; "
                                                               "256 quick)"),
    ))
    a = runner.args
    dev = a.device
    dtype = DTYPES[a.dtype] if a.dtype else (torch.float32 if dev.type == "cpu" else torch.float16)
    numel = a.numel or (1 << 18 if a.quick else 1 << 26)
    size = a.size or (256 if a.quick else (4096 if dev.type == "cuda" else 512))
    base = load_baseline(dev)

    x = torch.randn(numel, device=dev, dtype=dtype)
    y = torch.randn(numel, device=dev, dtype=dtype)
    out = torch.full_like(x, float("nan"))
    torch.add(x, y, out=out)
    if not torch.equal(out, x + y):
        raise RuntimeError("vector add produced a wrong result")
    st = time_fn(lambda: torch.add(x, y, out=out), device=dev, warmup=a.warmup, repeats=a.repeats)
    gbps = 3 * numel * x.element_size() / (st.median_us * 1e-6) / 1e9
    case = {"op": "add", "numel": numel, "dtype": dtype}
    runner.record(case, "time", st.median_us, "us", stats=st)
    runner.record(case, "bandwidth", gbps, "GB/s", roofline=gbps / base["copy_GBps"])

    m1 = torch.randn(size, size, device=dev, dtype=dtype)
    m2 = torch.randn(size, size, device=dev, dtype=dtype)
    prod = torch.matmul(m1, m2)
    ref = m1.double() @ m2.double()
    err = ((prod.double() - ref).norm() / ref.norm()).item()
    tol = 1e-2 if dtype != torch.float32 else 1e-4  # fp16/bf16 accumulate-and-round vs fp64
    if not err < tol:
        raise RuntimeError(f"matmul relative error {err:.3g} exceeds {tol}")
    st = time_fn(lambda: torch.matmul(m1, m2, out=prod), device=dev, warmup=a.warmup, repeats=a.repeats)
    tflops = 2 * size ** 3 / (st.median_us * 1e-6) / 1e12
    case = {"op": "matmul", "size": size, "dtype": dtype}
    runner.record(case, "time", st.median_us, "us", stats=st)
    peak = base["matmul_TFLOPs"].get(str(dtype).removeprefix("torch."))
    runner.record(case, "rate", tflops, "TFLOP/s", roofline=tflops / peak if peak else None)
    runner.record(case, "rel_error_vs_fp64", err, "")
    runner.finish()


if __name__ == "__main__":
    main()
