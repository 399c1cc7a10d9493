"""Where the launch-inclusive time of a small quantized GEMM goes (host side), on CUDA.

Times, from an idle GPU (launch included) and as host submit rate (no sync, many calls), for int4
8192x8192 at M=1: the public qmatmul, qgemm, launch_fused with a fixed config, the bare Triton
launch with prepared arguments, an empty Triton kernel, and F.linear for reference; then profiles
qmatmul's host time by function (cProfile). Prints one table.
"""
import cProfile
import io
import pstats
import time

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

import triton_marlin as tm
from triton_marlin.bench import time_fn
from triton_marlin.kernels import qgemm as Q
from triton_marlin.kernels import qgemm_config as C


@triton.jit
def _empty(x_ptr):
    pass


def host_us(fn, n=2000):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return host


def main():
    dev = torch.device("cuda")
    qt = tm.quantize(torch.randn(8192, 8192) * 0.02, "int4", group_size=128).to(dev)
    x = torch.randn(1, 8192, device=dev, dtype=torch.float16)
    w16 = qt.dequantize(torch.float16)
    cfg = C.select_config(x, qt)
    spec = Q.format_spec(qt)
    out = torch.empty(1, 8192, device=dev, dtype=torch.float16)
    buf = torch.empty(16, device=dev)
    cases = {
        "F.linear fp16": lambda: F.linear(x, w16),
        "empty triton kernel": lambda: _empty[(1,)](buf),
        "tm.qmatmul": lambda: tm.qmatmul(x, qt),
        "Q.qgemm": lambda: Q.qgemm(x, qt),
        "Q.launch (cfg fixed)": lambda: Q.launch(x, qt, None, cfg),
        "Q.launch_fused (out given)": lambda: Q.launch_fused(x, qt, None, cfg, out=out, spec=spec),
        "Q.launch_fused split_k=1": lambda: Q.launch_fused(x, qt, None, Q.KernelConfig(
            "dot", block_m=16, block_n=128, fold=1, num_stages=3), out=out, spec=spec),
    }
    print(f"config: {Q._config_key(cfg)}")
    print(f"{'case':30} {'launch-incl us':>15} {'graph us':>9} {'host submit us':>15}")
    for name, fn in cases.items():
        st = time_fn(fn, device=dev, warmup=10, repeats=50)
        gr = time_fn(fn, device=dev, warmup=10, repeats=30, cuda_graph=True)
        print(f"{name:30} {st.median_us:15.1f} {gr.median_us:9.1f} {host_us(fn):15.1f}", flush=True)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(500):
        tm.qmatmul(x, qt)
    prof.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(22)
    print("\n".join(line for line in s.getvalue().splitlines() if line.strip())[-3000:])


if __name__ == "__main__":
    main()
