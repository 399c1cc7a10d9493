#!/usr/bin/env python
"""Measure the device's ceilings and write them to the baseline file other benchmarks read.

* copy bandwidth: device-to-device copy_, counting bytes read plus bytes written;
* dense matmul rate: fp16, bf16 and fp32 square matmul (2*n^3 FLOPs per call);
* torch scaled_dot_product_attention rate (4*B*H*S^2*D FLOPs, non-causal);
* launch overhead: a one-element torch op timed plainly (launch included) and by CUDA-graph replay.

A full run writes results/baseline-<device name>.json (or $TRITON_MARLIN_BASELINE); --quick writes nothing
unless --save is given, so a smoke run never replaces careful figures.
"""
from __future__ import annotations

import platform

import torch

from triton_marlin.bench import BenchRunner, baseline_path, save_baseline, time_fn
from triton_marlin.device import triton_enabled_for

MM_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _name(dtype):
    return str(dtype).removeprefix("torch.")


def _add_args(p):
    p.add_argument("--copy-mib", type=int, nargs="+", default=None,
                   help="copy sizes in MiB (default 64 256 1024 on GPU, 16 64 on CPU; 8 quick)")
    p.add_argument("--mm-size", type=int, default=None,
                   help="matmul side (default 8192 on GPU, 1024 on CPU; 128 quick)")
    p.add_argument("--sdpa", type=int, nargs=4, metavar=("B", "H", "S", "D"), default=None,
                   help="attention shape (default 4 32 4096 128 on GPU, 1 8 512 64 on CPU; 1 2 64 32 quick)")
    p.add_argument("--save", action=argparse_bool(), default=None,
                   help="write the baseline file (default: yes for a full run, no with --quick)")
    p.add_argument("--baseline-out", default=None, help="where to write it (default: baseline_path(device))")


def argparse_bool():
    import argparse
    return argparse.BooleanOptionalAction


def main(argv=None):
    runner = BenchRunner("baseline_benchmark", description=__doc__, add_args=_add_args, argv=argv)
    a = runner.args
    dev = a.device
    gpu = dev.type == "cuda"
    copy_mib = a.copy_mib or ([8] if a.quick else ([64, 256, 1024] if gpu else [16, 64]))
    mm_size = a.mm_size or (128 if a.quick else (8192 if gpu else 1024))
    B, H, S, D = a.sdpa or ((1, 2, 64, 32) if a.quick else ((4, 32, 4096, 128) if gpu else (1, 8, 512, 64)))
    result = {"device": dev.type, "torch": torch.__version__, "host": platform.node()}

    best_copy = 0.0
    for mib in runner.progress(copy_mib, desc="copy"):
        n = mib * (1 << 20) // 4
        src = torch.empty(n, dtype=torch.float32, device=dev).uniform_()
        dst = torch.empty_like(src)
        st = time_fn(lambda: dst.copy_(src), device=dev, warmup=a.warmup, repeats=a.repeats)
        if not torch.equal(dst, src):
            raise RuntimeError("copy produced a wrong result")
        gbps = 2 * n * 4 / (st.median_us * 1e-6) / 1e9
        best_copy = max(best_copy, gbps)
        case = {"op": "copy", "MiB": mib}
        runner.record(case, "time", st.median_us, "us", stats=st)
        runner.record(case, "bandwidth", gbps, "GB/s", bytes_counted="read+write")
        del src, dst
    result["copy_GBps"] = best_copy
    result["copy_sizes_MiB"] = copy_mib

    rates = {}
    for dtype in runner.progress(MM_DTYPES, desc="matmul"):
        g = torch.Generator(device=dev).manual_seed(a.seed)
        m1 = torch.randn(mm_size, mm_size, device=dev, generator=g).to(dtype)
        m2 = torch.randn(mm_size, mm_size, device=dev, generator=g).to(dtype)
        out = torch.empty(mm_size, mm_size, device=dev, dtype=dtype)
        st = time_fn(lambda: torch.matmul(m1, m2, out=out), device=dev, warmup=a.warmup, repeats=a.repeats)
        tflops = 2 * mm_size ** 3 / (st.median_us * 1e-6) / 1e12
        rates[_name(dtype)] = tflops
        case = {"op": "matmul", "size": mm_size, "dtype": dtype}
        if dtype == torch.float32 and gpu:
            case["tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
        runner.record(case, "time", st.median_us, "us", stats=st)
        runner.record(case, "rate", tflops, "TFLOP/s")
        del m1, m2, out
    result["matmul_TFLOPs"] = rates
    result["matmul_size"] = mm_size
    # float32 matmul runs on tensor cores (TF32) only when this is on; torch leaves it off by default
    result["float32_matmul_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32) if gpu else False

    sdpa_dtype = torch.float16 if gpu else torch.float32
    q, k, v = (torch.randn(B, H, S, D, device=dev, dtype=sdpa_dtype) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    st = time_fn(lambda: sdpa(q, k, v), device=dev, warmup=a.warmup, repeats=a.repeats)
    tflops = 4 * B * H * S * S * D / (st.median_us * 1e-6) / 1e12
    case = {"op": "sdpa", "B": B, "H": H, "S": S, "D": D, "dtype": sdpa_dtype}
    runner.record(case, "time", st.median_us, "us", stats=st)
    runner.record(case, "rate", tflops, "TFLOP/s", roofline=tflops / rates[_name(sdpa_dtype)])
    result["sdpa_TFLOPs"] = {"value": tflops, "shape": [B, H, S, D], "dtype": _name(sdpa_dtype)}
    del q, k, v

    tiny = torch.zeros(1, device=dev)
    launch = {}
    st = time_fn(lambda: tiny.add_(1.0), device=dev, warmup=a.warmup, repeats=max(a.repeats, 20))
    runner.record({"op": "launch", "what": "torch add_, 1 element"}, "time", st.median_us, "us", stats=st)
    launch["torch_op_us"] = st.median_us
    if gpu:
        st = time_fn(lambda: tiny.add_(1.0), device=dev, warmup=a.warmup, repeats=max(a.repeats, 20),
                     cuda_graph=True, graph_calls=50)
        runner.record({"op": "launch", "what": "torch add_, 1 element, CUDA graph"}, "time", st.median_us, "us",
                      stats=st)
        launch["torch_op_graph_us"] = st.median_us
    if triton_enabled_for(dev) and gpu:
        from triton_marlin.kernels.bf16_convert import convert_triton
        xs = torch.zeros(128, device=dev)
        ys = torch.empty(128, device=dev, dtype=torch.bfloat16)
        st = time_fn(lambda: convert_triton(xs, torch.bfloat16, block=128, out=ys), device=dev,
                     warmup=a.warmup, repeats=max(a.repeats, 20))
        runner.record({"op": "launch", "what": "triton kernel from Python, 128 elements"}, "time", st.median_us,
                      "us", stats=st)
        launch["triton_kernel_us"] = st.median_us
    else:
        runner.note("Triton launch overhead is measured on CUDA only (the CPU interpreter is not a launch)")
    result["launch_us"] = launch

    save = a.save if a.save is not None else not a.quick
    if save:
        path = save_baseline(dev, result, path=a.baseline_out)
        runner.note(f"baseline written to {path}: copy {best_copy:.1f} GB/s, fp16 matmul "
                    f"{rates['float16']:.2f} TFLOP/s on {runner.gpu}")
    else:
        runner.note(f"baseline file not written (--quick); a full run writes {a.baseline_out or baseline_path(dev)}")
    runner.finish()


if __name__ == "__main__":
    main()
